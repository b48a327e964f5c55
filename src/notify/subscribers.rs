//! Which device tokens follow which device, for FCM and APNs.
//!
//! [`Subscribers`] is the contract the store implements (one namespace per push sink);
//! [`FileSubscribers`] keeps the map in memory, loaded from a JSON file
//! (`{"<device>": ["<token>", …], "*": […]}`, `*`: tokens that follow every device) and written
//! back (atomically: temporary file, rename) when a token is added or removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The subscriptions could not be read or written. Retrying helps only where it says so.
#[derive(Debug, thiserror::Error)]
pub enum SubscribersError {
    #[error("subscribers file {path}: {operation}: {source}")]
    Io {
        path: String,
        operation: &'static str,
        source: std::io::Error,
    },
    #[error("subscribers file {path}: not a JSON map of device to tokens: {message}")]
    Format { path: String, message: String },
}

impl SubscribersError {
    pub fn retryable(&self) -> bool {
        matches!(self, SubscribersError::Io { source, .. } if source.kind() == std::io::ErrorKind::Interrupted)
    }
}

/// Device → tokens subscriptions of one push sink. `*` as a device: tokens that follow every
/// device.
pub trait Subscribers: Send + Sync + 'static {
    /// Subscribes `token` to `device`; false if it already was.
    fn add(&self, device: &str, token: &str) -> Result<bool, SubscribersError>;
    /// Unsubscribes `token` from `device` (`*`: from every device); false if it was not.
    fn remove(&self, device: &str, token: &str) -> Result<bool, SubscribersError>;
    /// The tokens a notification about `device` goes to (its own and `*`'s, each once, sorted).
    fn tokens_for(&self, device: &str) -> Result<Vec<String>, SubscribersError>;
    /// Every subscription, by device.
    fn list(&self) -> Result<BTreeMap<String, Vec<String>>, SubscribersError>;

    /// Whether a push of `entry` should still go out: its token is still subscribed to its
    /// device (a digest spans devices: while the token is subscribed anywhere).
    fn still_wanted(&self, entry: &super::outbox::OutboxEntry) -> bool {
        entry.kind == "digest"
            || self
                .tokens_for(&entry.device)
                .map_or(true, |tokens| tokens.contains(&entry.target))
    }

    /// A provider (`fcm`, `apns`) reported `token` as unregistered: remove it everywhere.
    fn forget_unregistered(&self, token: &str, provider: &str) {
        if let Err(e) = self.remove("*", token) {
            tracing::warn!(error = %e, provider, "removing an unregistered token failed");
        }
    }
}

/// Subscriptions in memory, optionally backed by a JSON file.
#[derive(Default)]
pub struct FileSubscribers {
    path: Option<PathBuf>,
    map: Mutex<BTreeMap<String, Vec<String>>>,
}

impl FileSubscribers {
    /// In memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Loads `path` (a missing file is an empty map).
    pub fn open(path: &Path) -> Result<Self, SubscribersError> {
        let shown = path.display().to_string();
        let map = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SubscribersError::Format {
                path: shown,
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SubscribersError::Io {
                    path: shown,
                    operation: "reading",
                    source,
                });
            }
        };
        Ok(FileSubscribers {
            path: Some(path.to_path_buf()),
            map: Mutex::new(map),
        })
    }

    fn save(&self, map: &BTreeMap<String, Vec<String>>) -> Result<(), SubscribersError> {
        let Some(path) = &self.path else { return Ok(()) };
        let err = |operation, source| SubscribersError::Io {
            path: path.display().to_string(),
            operation,
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(map).expect("a map of strings serializes");
        std::fs::write(&tmp, text + "\n").map_err(|e| err("writing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| err("renaming into place", e))
    }
}

impl Subscribers for FileSubscribers {
    fn add(&self, device: &str, token: &str) -> Result<bool, SubscribersError> {
        let mut map = self.map.lock().unwrap();
        let tokens = map.entry(device.to_string()).or_default();
        if tokens.iter().any(|t| t == token) {
            return Ok(false);
        }
        tokens.push(token.to_string());
        self.save(&map)?;
        Ok(true)
    }

    fn remove(&self, device: &str, token: &str) -> Result<bool, SubscribersError> {
        let mut map = self.map.lock().unwrap();
        let mut removed = false;
        for (d, tokens) in map.iter_mut() {
            if device == "*" || d == device {
                let before = tokens.len();
                tokens.retain(|t| t != token);
                removed |= tokens.len() != before;
            }
        }
        map.retain(|_, tokens| !tokens.is_empty());
        if removed {
            self.save(&map)?;
        }
        Ok(removed)
    }

    fn tokens_for(&self, device: &str) -> Result<Vec<String>, SubscribersError> {
        let map = self.map.lock().unwrap();
        let mut out: Vec<String> = map
            .get(device)
            .into_iter()
            .chain(map.get("*"))
            .flatten()
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn list(&self) -> Result<BTreeMap<String, Vec<String>>, SubscribersError> {
        Ok(self.map.lock().unwrap().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_wildcard_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subs.json");
        let s = FileSubscribers::open(&path).unwrap();
        assert!(s.add("lab-1", "tok-a").unwrap());
        assert!(!s.add("lab-1", "tok-a").unwrap());
        s.add("*", "tok-ops").unwrap();
        assert_eq!(s.tokens_for("lab-1").unwrap(), ["tok-a", "tok-ops"]);
        assert_eq!(s.tokens_for("lab-2").unwrap(), ["tok-ops"]);
        let again = FileSubscribers::open(&path).unwrap();
        assert_eq!(again.list().unwrap(), s.list().unwrap());
        assert!(again.remove("*", "tok-a").unwrap());
        assert_eq!(
            FileSubscribers::open(&path).unwrap().tokens_for("lab-1").unwrap(),
            ["tok-ops"]
        );
    }
}
