//! The outbox of a run without a data directory: in memory, gone with the process.

use super::*;

#[derive(Default)]
struct MemoryState {
    next: u64,
    /// By insertion number, so `pending` is in put order.
    pending: BTreeMap<u64, OutboxEntry>,
    index: std::collections::HashMap<String, u64>,
    done: HashSet<String>,
    dead: Vec<DeadLetter>,
    delivered: u64,
}

/// An outbox in memory: survives nothing, but has the same semantics as the durable one.
#[derive(Default)]
pub struct MemoryOutbox {
    state: Mutex<MemoryState>,
}

impl MemoryOutbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Outbox for MemoryOutbox {
    fn put(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut s = self.state.lock().unwrap();
        let mut added = Vec::with_capacity(entries.len());
        for e in entries {
            if s.done.contains(&e.id) || s.index.contains_key(&e.id) {
                continue;
            }
            let n = s.next;
            s.next += 1;
            s.index.insert(e.id.clone(), n);
            s.pending.insert(n, e.clone());
            added.push(e);
        }
        Ok(added)
    }

    fn acknowledge(&self, id: &str) -> Result<(), OutboxError> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.index.remove(id) {
            s.pending.remove(&n);
            s.delivered += 1;
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn discard(&self, id: &str) -> Result<(), OutboxError> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.index.remove(id) {
            s.pending.remove(&n);
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn delivered(&self) -> Result<u64, OutboxError> {
        Ok(self.state.lock().unwrap().delivered)
    }

    fn is_acknowledged(&self, id: &str) -> Result<bool, OutboxError> {
        Ok(self.state.lock().unwrap().done.contains(id))
    }

    fn pending(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        Ok(self.state.lock().unwrap().pending.values().cloned().collect())
    }

    fn dead_letter(&self, id: &str, error: &str, attempts: u32) -> Result<(), OutboxError> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.index.remove(id)
            && let Some(entry) = s.pending.remove(&n)
        {
            s.dead.push(DeadLetter {
                entry,
                error: error.to_string(),
                attempts,
            });
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        Ok(self.state.lock().unwrap().dead.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// the outbox in the state store
