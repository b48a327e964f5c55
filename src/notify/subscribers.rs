//! Which device tokens follow which device, for FCM and APNs.
//!
//! [`Subscribers`] is the contract. [`SubscriberStore`] keeps the subscriptions of every
//! provider in the state store (managed with `plume subscribers`), with [`StoreSubscribers`] as
//! one provider's view; [`FileSubscribers`] keeps the map in memory, loaded from a JSON file
//! (`{"<device>": ["<token>", …], "*": […]}`, `*`: tokens that follow every device) and written
//! back (atomically: temporary file, rename) when a token is added or removed: for runs without
//! a store.
//!
//! # In the store
//! Column family `outbox`, key `s` provider 0 device 0 token (value: when it was added), and
//! `c` provider 0: how many tokens the provider reported unregistered (they are removed).
//! Values are store envelopes around the outbox's record version and bincode.
//!
//! # While a run holds the store
//! RocksDB allows one writer process, and a run holds the lock. `plume subscribers add|remove`
//! then appends the change to `<data dir>/subscribers.requests` (JSON lines, mode 0600, under
//! an exclusive file lock); the run applies that file to the store within
//! [`REQUEST_POLL`] and empties it (changes are idempotent, so a crash in between only applies
//! them twice). The CLI applies a leftover file itself the next time it holds the store.
//! Reading (`list`) opens the store read-only, which works while a run holds it.
//!
//! Tokens are secrets of a kind: logs and errors show [`token_hint`], never a whole token.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::outbox::{decode_record, encode_record};
use crate::store::StateStore;
use crate::store::tables::{OutboxBatch, OutboxTable};

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
    #[error("subscribers in the state store: {0}")]
    Store(String),
    #[error("unknown push provider `{0}` (fcm or apns)")]
    Provider(String),
    #[error("not a valid {provider} token: {reason}")]
    Token { provider: String, reason: String },
}

/// Whether `token` can be a `provider` token: an APNs device token (hexadecimal, 64 characters
/// today) is taken as letters, digits, `-` and `_`, at most 200; an FCM registration token as
/// letters, digits, `-`, `_` and `:`, at most 4096. An APNs token goes into the request path, so
/// nothing that could change the path (`/`, `?`, `#`, `%`, spaces) is accepted: such a token is
/// refused when it is added, and never sent.
pub fn check_token(provider: &str, token: &str) -> Result<(), SubscribersError> {
    let bad = |reason: String| SubscribersError::Token {
        provider: provider.to_string(),
        reason,
    };
    match provider {
        "apns" => {
            if token.is_empty() || token.len() > 200 {
                return Err(bad(format!("{} characters (1 to 200)", token.len())));
            }
            if !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            {
                return Err(bad("only letters, digits, `-` and `_`".into()));
            }
        }
        _ => {
            if token.is_empty() || token.len() > 4096 {
                return Err(bad(format!("{} characters (1 to 4096)", token.len())));
            }
            if !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))
            {
                return Err(bad("only letters, digits, `-`, `_` and `:`".into()));
            }
        }
    }
    Ok(())
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
        let text = serde_json::to_string_pretty(map).expect("a map of strings serializes");
        // (push tokens: readable by the owner only)
        crate::store::durable::write_file(path, (text + "\n").as_bytes(), true).map_err(|e| err("writing", e))
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
        Ok(tokens_in(&self.map.lock().unwrap(), device))
    }

    fn list(&self) -> Result<BTreeMap<String, Vec<String>>, SubscribersError> {
        Ok(self.map.lock().unwrap().clone())
    }
}

// ---------------------------------------------------------------------------------------------
// in the state store

/// How often a run applies `subscribers.requests`.
pub const REQUEST_POLL: Duration = Duration::from_millis(250);

/// The push providers that have device tokens.
pub const PROVIDERS: [&str; 2] = ["fcm", "apns"];

const TAG_SUBSCRIPTION: u8 = b's';
const TAG_REMOVED: u8 = b'c';

/// A token as logs and errors may show it: its first 4 characters and a hash.
pub fn token_hint(token: &str) -> String {
    let head: String = token.chars().take(4).collect();
    format!("{head}…{:08x}", xxhash_rust::xxh3::xxh3_64(token.as_bytes()) as u32)
}

fn check_provider(provider: &str) -> Result<(), SubscribersError> {
    if PROVIDERS.contains(&provider) {
        Ok(())
    } else {
        Err(SubscribersError::Provider(provider.to_string()))
    }
}

fn subscription_key(provider: &str, device: &str, token: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + provider.len() + device.len() + token.len());
    k.push(TAG_SUBSCRIPTION);
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(token.as_bytes());
    k
}

fn removed_key(provider: &str) -> Vec<u8> {
    let mut k = vec![TAG_REMOVED];
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Subscription {
    added_ms: i64,
}

fn store_error(e: impl std::fmt::Display) -> SubscribersError {
    SubscribersError::Store(e.to_string())
}

type Map = BTreeMap<String, Vec<String>>;

/// The tokens of `device` and of `*` in `map`, each once, sorted.
fn tokens_in(map: &Map, device: &str) -> Vec<String> {
    let mut out: Vec<String> = map
        .get(device)
        .into_iter()
        .chain(map.get("*"))
        .flatten()
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The subscriptions of every provider in one state store, cached in memory (reads never touch
/// RocksDB; each change is one synced write, then the cache).
pub struct SubscriberStore {
    store: Arc<StateStore>,
    /// provider -> device -> tokens (sorted)
    cache: RwLock<BTreeMap<String, Map>>,
    removed: Mutex<BTreeMap<String, u64>>,
    /// Serializes changes (the write and the cache update).
    writing: Mutex<()>,
}

impl SubscriberStore {
    /// Loads every subscription of `store` (which may be read-only: then only reads work).
    pub fn open(store: Arc<StateStore>) -> Result<Arc<Self>, SubscribersError> {
        let mut cache: BTreeMap<String, Map> = BTreeMap::new();
        let mut removed = BTreeMap::new();
        {
            let table = store.outbox_table();
            for item in table.scan_prefix(&[TAG_REMOVED]) {
                let (k, v) = item.map_err(store_error)?;
                let provider = String::from_utf8_lossy(k[1..].strip_suffix(&[0]).unwrap_or(&k[1..])).into_owned();
                let n: u64 = decode_record(&v, "removed-token count").map_err(store_error)?;
                removed.insert(provider, n);
            }
            for item in table.scan_prefix(&[TAG_SUBSCRIPTION]) {
                let (k, v) = item.map_err(store_error)?;
                let _: Subscription = decode_record(&v, "subscription").map_err(store_error)?;
                let mut parts = k[1..].splitn(3, |b| *b == 0);
                let (Some(p), Some(d), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(store_error("a damaged subscription key"));
                };
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                cache
                    .entry(text(p))
                    .or_default()
                    .entry(text(d))
                    .or_default()
                    .push(text(t));
            }
        }
        for map in cache.values_mut() {
            for tokens in map.values_mut() {
                tokens.sort();
            }
        }
        Ok(Arc::new(SubscriberStore {
            store,
            cache: RwLock::new(cache),
            removed: Mutex::new(removed),
            writing: Mutex::new(()),
        }))
    }

    /// One provider's view, for its push sinks.
    pub fn for_provider(self: &Arc<Self>, provider: &str) -> Result<Arc<dyn Subscribers>, SubscribersError> {
        check_provider(provider)?;
        Ok(Arc::new(StoreSubscribers {
            inner: self.clone(),
            provider: provider.to_string(),
        }))
    }

    fn table(&self) -> OutboxTable<'_> {
        self.store.outbox_table()
    }

    fn write(&self, batch: OutboxBatch<'_>) -> Result<(), SubscribersError> {
        self.table().write(batch, true).map_err(store_error)
    }

    /// Subscribes `token` to `device` (`*`: every device); false if it already was.
    pub fn add(&self, provider: &str, device: &str, token: &str) -> Result<bool, SubscribersError> {
        check_provider(provider)?;
        if device.contains('\0') || device.is_empty() {
            return Err(store_error("the device must be non-empty and without NUL"));
        }
        check_token(provider, token)?;
        let _w = self.writing.lock().unwrap();
        if self.tokens_of(provider, device).iter().any(|t| t == token) {
            return Ok(false);
        }
        let mut batch = self.table().batch();
        batch.put(
            subscription_key(provider, device, token),
            encode_record(&Subscription {
                added_ms: jiff::Timestamp::now().as_millisecond(),
            }),
        );
        self.write(batch)?;
        let mut cache = self.cache.write().unwrap();
        let tokens = cache
            .entry(provider.to_string())
            .or_default()
            .entry(device.to_string())
            .or_default();
        tokens.push(token.to_string());
        tokens.sort();
        Ok(true)
    }

    /// Unsubscribes `token` from `device` (`*`: from every device, the wildcard included);
    /// false if it was not. `unregistered`: the provider reported it, count it.
    fn remove_inner(
        &self,
        provider: &str,
        device: &str,
        token: &str,
        unregistered: bool,
    ) -> Result<bool, SubscribersError> {
        check_provider(provider)?;
        let _w = self.writing.lock().unwrap();
        let devices: Vec<String> = {
            let cache = self.cache.read().unwrap();
            cache
                .get(provider)
                .map(|m| {
                    m.iter()
                        .filter(|(d, tokens)| (device == "*" || *d == device) && tokens.iter().any(|t| t == token))
                        .map(|(d, _)| d.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        if devices.is_empty() {
            return Ok(false);
        }
        let mut batch = self.table().batch();
        for d in &devices {
            batch.delete(subscription_key(provider, d, token));
        }
        let mut removed = self.removed.lock().unwrap();
        let count = removed.get(provider).copied().unwrap_or(0) + u64::from(unregistered);
        if unregistered {
            batch.put(removed_key(provider), encode_record(&count));
        }
        self.write(batch)?;
        removed.insert(provider.to_string(), count);
        let mut cache = self.cache.write().unwrap();
        if let Some(map) = cache.get_mut(provider) {
            for d in &devices {
                if let Some(tokens) = map.get_mut(d) {
                    tokens.retain(|t| t != token);
                }
            }
            map.retain(|_, tokens| !tokens.is_empty());
        }
        Ok(true)
    }

    pub fn remove(&self, provider: &str, device: &str, token: &str) -> Result<bool, SubscribersError> {
        self.remove_inner(provider, device, token, false)
    }

    /// The provider reported `token` unregistered: removed everywhere and counted.
    pub fn forget_unregistered(&self, provider: &str, token: &str) -> Result<bool, SubscribersError> {
        self.remove_inner(provider, "*", token, true)
    }

    fn tokens_of(&self, provider: &str, device: &str) -> Vec<String> {
        let cache = self.cache.read().unwrap();
        cache
            .get(provider)
            .and_then(|m| m.get(device))
            .cloned()
            .unwrap_or_default()
    }

    /// The tokens a notification about `device` goes to (its own and `*`'s, each once, sorted).
    pub fn tokens_for(&self, provider: &str, device: &str) -> Vec<String> {
        let cache = self.cache.read().unwrap();
        cache.get(provider).map_or_else(Vec::new, |map| tokens_in(map, device))
    }

    /// Every subscription of `provider`, by device.
    pub fn list(&self, provider: &str) -> BTreeMap<String, Vec<String>> {
        self.cache.read().unwrap().get(provider).cloned().unwrap_or_default()
    }

    /// Tokens `provider` reported unregistered (and that were removed), ever.
    pub fn removed_count(&self, provider: &str) -> u64 {
        self.removed.lock().unwrap().get(provider).copied().unwrap_or(0)
    }

    /// Applies one queued change.
    pub fn apply(&self, request: &SubscriberRequest) -> Result<bool, SubscribersError> {
        let changed = match request.op {
            RequestOp::Add => self.add(&request.provider, &request.device, &request.token)?,
            RequestOp::Remove => self.remove(&request.provider, &request.device, &request.token)?,
        };
        info!(
            op = ?request.op,
            provider = %request.provider,
            device = %request.device,
            token = %token_hint(&request.token),
            changed,
            "subscription change applied"
        );
        Ok(changed)
    }

    /// Applies (and empties) `<dir>/subscribers.requests`; returns how many changes it held.
    pub fn apply_requests(&self, dir: &Path) -> Result<usize, SubscribersError> {
        self.apply_requests_then(dir, &|_| {})
    }

    /// [`SubscriberStore::apply_requests`], calling `applied` with each change after applying it
    /// (a cluster shares it with the other members).
    pub fn apply_requests_then(
        &self,
        dir: &Path,
        applied: &dyn Fn(&SubscriberRequest),
    ) -> Result<usize, SubscribersError> {
        let path = requests_path(dir);
        let io = |operation, source| SubscribersError::Io {
            path: path.display().to_string(),
            operation,
            source,
        };
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("opening", e)),
        };
        if file.metadata().map_err(|e| io("reading", e))?.len() == 0 {
            return Ok(0);
        }
        file.lock().map_err(|e| io("locking", e))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| io("reading", e))?;
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<SubscriberRequest>(line) {
                Ok(request) => {
                    self.apply(&request)?;
                    applied(&request);
                    n += 1;
                }
                // never the line itself: it holds a token
                Err(e) => warn!(file = %path.display(), error = %e, "skipping a request line that does not parse"),
            }
        }
        file.set_len(0).map_err(|e| io("emptying", e))?;
        file.rewind().map_err(|e| io("emptying", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        file.unlock().map_err(|e| io("unlocking", e))?;
        Ok(n)
    }
}

/// One provider's subscriptions in the store.
pub struct StoreSubscribers {
    inner: Arc<SubscriberStore>,
    provider: String,
}

impl Subscribers for StoreSubscribers {
    fn add(&self, device: &str, token: &str) -> Result<bool, SubscribersError> {
        self.inner.add(&self.provider, device, token)
    }

    fn remove(&self, device: &str, token: &str) -> Result<bool, SubscribersError> {
        self.inner.remove(&self.provider, device, token)
    }

    fn tokens_for(&self, device: &str) -> Result<Vec<String>, SubscribersError> {
        Ok(self.inner.tokens_for(&self.provider, device))
    }

    fn list(&self) -> Result<BTreeMap<String, Vec<String>>, SubscribersError> {
        Ok(self.inner.list(&self.provider))
    }

    fn forget_unregistered(&self, token: &str, provider: &str) {
        if let Err(e) = self.inner.forget_unregistered(&self.provider, token) {
            warn!(error = %e, provider, token = %token_hint(token), "removing an unregistered token failed");
        }
    }
}

/// A change queued for the run that holds the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberRequest {
    pub op: RequestOp,
    pub provider: String,
    pub device: String,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    Add,
    Remove,
}

/// `<data dir>/subscribers.requests`.
pub fn requests_path(dir: &Path) -> PathBuf {
    dir.join("subscribers.requests")
}

/// Appends `request` to `<dir>/subscribers.requests` (durable when it returns).
pub fn queue_request(dir: &Path, request: &SubscriberRequest) -> Result<(), SubscribersError> {
    check_provider(&request.provider)?;
    let path = requests_path(dir);
    let io = |operation, source| SubscribersError::Io {
        path: path.display().to_string(),
        operation,
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| io("opening", e))?;
    file.lock().map_err(|e| io("locking", e))?;
    let mut line = serde_json::to_string(request).expect("a request serializes");
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(|e| io("appending", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    file.unlock().map_err(|e| io("unlocking", e))
}

/// Changes queued in `<dir>/subscribers.requests` and not applied yet.
pub fn queued_requests(dir: &Path) -> Vec<SubscriberRequest> {
    std::fs::read_to_string(requests_path(dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The thread of a run that applies `subscribers.requests` every [`REQUEST_POLL`] until `stop`.
/// `applied` is called with each change once applied. To stop it: set `stop`, then unpark the
/// thread (it waits parked, so the run's end does not wait out a poll interval) and join it.
pub fn spawn_request_applier(
    subscribers: Arc<SubscriberStore>,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    applied: Box<dyn Fn(&SubscriberRequest) + Send>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("subscriber requests".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = subscribers.apply_requests_then(&dir, &*applied) {
                    warn!(error = %e, "applying queued subscription changes failed; trying again");
                }
                // (an early or spurious wake only polls sooner)
                std::thread::park_timeout(REQUEST_POLL);
            }
            let _ = subscribers.apply_requests_then(&dir, &*applied);
        })
        .expect("spawning the subscriber requests thread")
}

#[cfg(test)]
#[path = "subscribers_tests.rs"]
mod tests;
