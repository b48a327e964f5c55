//! Where a notifier keeps its policy's state ([`PolicyState`]) between runs: in the `outbox`
//! column family of the state store, one value per checkpoint, so a restart continues from the
//! state as of the checkpoint it resumes from.
//!
//! | key | value |
//! | --- | --- |
//! | `q` ns 0 checkpoint id (u64 BE) | [`crate::notify::policy::encode_state`] of the state as of that checkpoint |
//!
//! The notifier writes the value when the hub flushes it for checkpoint `id`, which is before
//! the checkpoint commits: a value may exist for a checkpoint that never committed. So a start
//! takes the newest value at or below the checkpoint it resumes from, and deletes those above it
//! (ids are reused after such a failure). A checkpoint whose state did not change since the last
//! value written writes nothing: the newest value at or below it is its state. Values below the
//! newest one at or below the committed checkpoint are deleted as checkpoints commit. A
//! retained checkpoint (a RocksDB checkpoint taken after the commit) holds the value of its id,
//! so a recovery that falls back to it finds the state that goes with it.
//!
//! Blocking RocksDB work: call it from the sink thread (or at start), never on an async thread.

use std::sync::Arc;

use crate::notify::outbox::outbox_key;
use crate::notify::policy::{PolicyError, PolicyState, decode_state, encode_state};
use crate::store::StateStore;

const TAG_POLICY_STATE: u8 = b'q';

/// Failure of the store under the policy state.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    #[error("policy state of {namespace}: {message}")]
    Store { namespace: String, message: String },
    #[error("policy state of {namespace} at checkpoint {checkpoint}: {source}")]
    Damaged {
        namespace: String,
        checkpoint: u64,
        source: PolicyError,
    },
}

/// The saved policy states of one notifier sink (namespace `webhook:0`, …).
pub struct PolicyStateStore {
    store: Arc<StateStore>,
    namespace: String,
}

impl PolicyStateStore {
    pub fn new(store: Arc<StateStore>, namespace: &str) -> Self {
        PolicyStateStore {
            store,
            namespace: namespace.to_string(),
        }
    }

    fn error(&self, message: impl ToString) -> PolicyStoreError {
        PolicyStoreError::Store {
            namespace: self.namespace.clone(),
            message: message.to_string(),
        }
    }

    fn key(&self, checkpoint: u64) -> Vec<u8> {
        outbox_key(TAG_POLICY_STATE, &self.namespace, &checkpoint.to_be_bytes())
    }

    /// The checkpoint ids that have a saved state, ascending.
    fn saved(&self) -> Result<Vec<u64>, PolicyStoreError> {
        let prefix = outbox_key(TAG_POLICY_STATE, &self.namespace, &[]);
        let mut ids = Vec::new();
        for item in self.store.outbox_table().scan_prefix(&prefix) {
            let (key, _) = item.map_err(|e| self.error(e))?;
            if let Ok(id) = <[u8; 8]>::try_from(&key[prefix.len()..]) {
                ids.push(u64::from_be_bytes(id));
            }
        }
        Ok(ids)
    }

    /// The checkpoint the store's live state is at (`None`: none committed yet).
    fn committed(&self) -> Result<Option<u64>, PolicyStoreError> {
        Ok(self.store.checkpoint_record().map_err(|e| self.error(e))?.map(|r| r.id))
    }

    /// At start: the state as of the checkpoint the store is at, and that checkpoint's id of the
    /// value (`None`: nothing saved: start afresh). Values of checkpoints that never committed
    /// are deleted.
    pub fn load(&self) -> Result<Option<(u64, PolicyState)>, PolicyStoreError> {
        let committed = self.committed()?;
        let saved = self.saved()?;
        let table = self.store.outbox_table();
        let mut batch = table.batch();
        for &id in saved.iter().filter(|&&id| committed.is_none_or(|c| id > c)) {
            batch.delete(self.key(id));
        }
        if !batch.is_empty() {
            table.write(batch, true).map_err(|e| self.error(e))?;
        }
        let Some(id) = committed.and_then(|c| saved.iter().copied().filter(|&id| id <= c).max()) else {
            return Ok(None);
        };
        let bytes = table
            .get(self.key(id))
            .map_err(|e| self.error(e))?
            .ok_or_else(|| self.error(format!("the value of checkpoint {id} went away")))?;
        let state = decode_state(&bytes).map_err(|source| PolicyStoreError::Damaged {
            namespace: self.namespace.clone(),
            checkpoint: id,
            source,
        })?;
        Ok(Some((id, state)))
    }

    /// The checkpoint id of the value that holds the state as of checkpoint `checkpoint` (the
    /// newest at or below it), read only: what a Kafka source publishes with that checkpoint's
    /// device states ([`PolicyStateStore::state_of`] reads it).
    pub fn saved_at(&self, checkpoint: u64) -> Result<Option<u64>, PolicyStoreError> {
        Ok(self.saved()?.into_iter().filter(|&id| id <= checkpoint).max())
    }

    /// The state saved with checkpoint `id`, if there is one.
    pub fn state_of(&self, id: u64) -> Result<Option<PolicyState>, PolicyStoreError> {
        let Some(bytes) = self.store.outbox_table().get(self.key(id)).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        decode_state(&bytes).map(Some).map_err(|source| PolicyStoreError::Damaged {
            namespace: self.namespace.clone(),
            checkpoint: id,
            source,
        })
    }

    /// Saves `state` as of checkpoint `checkpoint` (synced), and deletes the values no restart
    /// can need any more (below the newest one at or below the committed checkpoint).
    pub fn save(&self, checkpoint: u64, state: &PolicyState) -> Result<(), PolicyStoreError> {
        let committed = self.committed()?;
        let saved = self.saved()?;
        let table = self.store.outbox_table();
        let mut batch = table.batch();
        if let Some(keep) = committed.and_then(|c| saved.iter().copied().filter(|&id| id <= c).max()) {
            for &id in saved.iter().filter(|&&id| id < keep) {
                batch.delete(self.key(id));
            }
        }
        batch.put(self.key(checkpoint), encode_state(state));
        table.write(batch, true).map_err(|e| self.error(e))
    }

    /// The checkpoint ids with a saved state (tests, `plume outbox`).
    pub fn checkpoints(&self) -> Result<Vec<u64>, PolicyStoreError> {
        self.saved()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::commit as commit_devices;

    fn commit(store: &StateStore, id: u64) {
        commit_devices(store, id, &[]);
    }

    fn state(newest_ms: i64) -> PolicyState {
        PolicyState {
            last: vec![("d".into(), "op".into(), newest_ms)],
            newest_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_start_takes_the_state_of_the_committed_checkpoint_not_a_later_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let policy = PolicyStateStore::new(store.clone(), "webhook:0");
        assert!(policy.load().unwrap().is_none(), "nothing saved");
        policy.save(1, &state(10)).unwrap();
        // checkpoint 1 never committed: a start begins afresh and forgets the value
        assert!(policy.load().unwrap().is_none());
        assert!(policy.checkpoints().unwrap().is_empty());
        policy.save(1, &state(11)).unwrap();
        commit(&store, 1);
        // 2 unchanged (nothing saved), 3 saved, then the run dies before 3 commits
        commit(&store, 2);
        policy.save(3, &state(30)).unwrap();
        assert_eq!(policy.load().unwrap(), Some((1, state(11))), "2's state is 1's");
        assert_eq!(policy.checkpoints().unwrap(), [1], "3 never committed");
        // another namespace is another notifier's
        assert!(
            PolicyStateStore::new(store.clone(), "webhook:1")
                .load()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn values_no_restart_can_need_are_deleted_as_checkpoints_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let policy = PolicyStateStore::new(store.clone(), "ntfy:0");
        for id in 1..=5 {
            policy.save(id, &state(id as i64)).unwrap();
            commit(&store, id);
        }
        // at 5's save, 4 was committed: everything below 4 went
        assert_eq!(policy.checkpoints().unwrap(), [4, 5]);
        assert_eq!(policy.load().unwrap(), Some((5, state(5))));
        let damaged = {
            let table = store.outbox_table();
            let mut batch = table.batch();
            batch.put(policy.key(5), b"not a state");
            table.write(batch, true).unwrap();
            policy.load().unwrap_err().to_string()
        };
        assert!(
            damaged.contains("ntfy:0") && damaged.contains("checkpoint 5"),
            "{damaged}"
        );
    }
}
