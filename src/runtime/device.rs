//! [`DeviceActor`]: one per active device. It runs the device's operator chain over its
//! readings and owns the device's state.
//!
//! A device actor is a lightweight actor hosted by its [`ShardSupervisor`](super::shard::ShardSupervisor)
//! rather than an actix actor of its own: the supervisor (an actix actor on the shard's
//! thread) delivers each message to it in order, one at a time, by a method call. Every device
//! of a shard ran on the shard's thread anyway; what an actix actor added per device was its
//! tokio task (512 bytes) and its mailbox (≈ 230 bytes), more than the device's own state,
//! which made the 1 KiB per idle device of issue 3 unreachable (see ARCHITECTURE.md). The
//! messages keep their names ([`DeviceActor::apply_reading`], [`DeviceActor::tick`],
//! [`DeviceActor::passivate`], [`DeviceActor::snapshot_if_dirty`],
//! [`DeviceActor::flush_at_end`], [`DeviceActor::counters`]).
//!
//! A panic inside an operator does not take the shard down: the shard runs a chunk's readings
//! under `catch_unwind`, keeps every device's state as it was before its first reading of the
//! chunk, and on a panic restarts the device from it ([`DeviceActor::restart`]), applies its
//! earlier readings of the chunk again and tries the failed one once more: if it panics again
//! it goes to dead letters with the panic message ([`DeviceActor::poisoned`]). Other devices
//! never notice (see [`run`](super::shard) in the shard).

use std::sync::atomic::Ordering;

use tracing::{info_span, warn};

use super::shard::ShardLocal;
use crate::operators::{DeviceChain, DeviceCounters, Emit, Reading};

/// What one device actor has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceActorCounters {
    pub batches: u64,
    pub readings: u64,
    pub restarts: u32,
    pub poisoned_readings: u32,
}

pub struct DeviceActor {
    chain: DeviceChain,
    counters: DeviceActorCounters,
    /// Processing time of the last batch (or of the activation), for passivation.
    pub last_active: i64,
    /// Changed since the last checkpoint that took its state.
    dirty: bool,
    /// The shard's number of the chunk in which it last had a reading (0: none yet).
    chunk: u32,
}

impl DeviceActor {
    /// `dirty`: the state is not (yet) the one the store holds.
    pub fn new(chain: DeviceChain, dirty: bool, now: i64) -> Self {
        DeviceActor {
            chain,
            counters: Default::default(),
            last_active: now,
            dirty,
            chunk: 0,
        }
    }

    /// A reading of the shard's chunk `seq` (never 0) for this device. The first of the chunk
    /// counts a batch and marks the state changed. Whether it is the first (the shard then keeps
    /// a copy of the state as it was before the chunk: its last good state, should an operator
    /// panic).
    #[inline]
    pub fn note_reading(&mut self, seq: u32, now: i64) -> bool {
        self.last_active = now;
        self.counters.readings += 1;
        if self.chunk == seq {
            return false;
        }
        self.chunk = seq;
        self.counters.batches += 1;
        self.dirty = true;
        true
    }

    /// The shard numbers its chunks again from 1 (see [`DeviceActor::note_reading`]).
    pub fn forget_chunk(&mut self) {
        self.chunk = 0;
    }

    /// The operator chain (the shard copies it as the last good state, and prefetches it).
    #[inline]
    pub fn chain(&self) -> &DeviceChain {
        &self.chain
    }

    /// One reading through the chain (after [`DeviceActor::note_reading`]; again, not noted,
    /// after a restart), decided at `now` (processing time; with the event clock
    /// at the reading's arrival, after whatever the device had due before it: an offline
    /// report, an idle flush). What the operators emit is added to `emits`.
    #[inline]
    pub fn apply_reading(
        &mut self,
        device: &str,
        local: &ShardLocal,
        reading: &mut Reading,
        now: i64,
        emits: &mut Vec<Emit>,
    ) {
        #[cfg(not(feature = "fault-injection"))]
        let _ = device;
        #[cfg(feature = "fault-injection")]
        if let Some(hook) = &local.fault_hook {
            hook(device, reading);
        }
        let at = if local.event_clock {
            self.chain.catch_up(reading.arrival, emits);
            reading.arrival
        } else {
            now
        };
        self.chain.on_reading_in_place(reading, at, emits);
    }

    /// Records for what the operators emitted (and the metrics of events and late readings),
    /// into the shard's output.
    pub fn publish(device: &str, local: &ShardLocal, emits: &mut Vec<Emit>) {
        if emits.is_empty() {
            return;
        }
        let emits = emits.drain(..).inspect(|emit| {
            let m = &local.metrics;
            match emit {
                Emit::EventStart { severity, .. } => {
                    m.events_open.fetch_add(1, Ordering::Relaxed);
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(*severity)]
                        .fetch_add(1, Ordering::Relaxed);
                }
                Emit::EventUpdate { previous, severity, .. } => {
                    // the open event moves to its new band
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(*previous)]
                        .fetch_sub(1, Ordering::Relaxed);
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(*severity)]
                        .fetch_add(1, Ordering::Relaxed);
                }
                Emit::EventEnd { severity, .. } => {
                    m.events_open.fetch_sub(1, Ordering::Relaxed);
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(*severity)]
                        .fetch_sub(1, Ordering::Relaxed);
                }
                Emit::Late { .. } => {
                    m.late.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        });
        local.output.format(&local.formatter, device, emits);
    }

    /// After a panic: back to the last good state.
    pub fn restart(&mut self, device: &str, local: &ShardLocal, last_good: DeviceChain) {
        let _span = info_span!("device_restart", device, shard = local.shard).entered();
        self.chain = last_good;
        self.counters.restarts += 1;
        local.metrics.restarts.fetch_add(1, Ordering::Relaxed);
        warn!(
            device,
            restarts = self.counters.restarts,
            "device actor restarted from its last good state"
        );
    }

    /// A reading made an operator panic again after a restart: the state goes back to what it
    /// was before it (`before`), and the reading to dead letters.
    pub fn poisoned(&mut self, before: DeviceChain) {
        self.chain = before;
        self.counters.poisoned_readings += 1;
    }

    /// Time passes (`now`, processing time or the fleet's clock): idle flush, offline detection.
    pub fn tick(&mut self, device: &str, local: &ShardLocal, now: i64) {
        let mut emits = Vec::new();
        if local.event_clock {
            self.chain.catch_up(now, &mut emits);
        } else {
            self.chain.on_time(now, &mut emits);
        }
        if !emits.is_empty() {
            self.dirty = true;
            Self::publish(device, local, &mut emits);
        }
    }

    /// When its operators next act on processing time (`None`: not before its next reading).
    pub fn next_deadline(&self) -> Option<i64> {
        self.chain.next_deadline()
    }

    /// Passivation: the encoded state and whether it changed since the last checkpoint.
    pub fn passivate(self, device: &str, local: &ShardLocal) -> (Vec<u8>, bool) {
        let _span = info_span!("device_passivate", device, shard = local.shard).entered();
        (self.chain.snapshot().encode(), self.dirty)
    }

    /// Checkpoint: the encoded state, if it changed since the last one.
    pub fn snapshot_if_dirty(&mut self) -> Option<Vec<u8>> {
        if self.dirty {
            self.dirty = false;
            Some(self.chain.snapshot().encode())
        } else {
            None
        }
    }

    /// End of input / graceful shutdown: flush (if the pipeline says so); the chain's counters.
    pub fn flush_at_end(&mut self, device: &str, local: &ShardLocal, flush: bool) -> DeviceCounters {
        if flush {
            let mut emits = Vec::new();
            self.chain.on_end(&mut emits);
            self.dirty = true;
            Self::publish(device, local, &mut emits);
        }
        self.chain.counters()
    }

    /// For tests and the admin view.
    pub fn counters(&self) -> DeviceActorCounters {
        self.counters
    }
}

pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_copied_once_per_chunk_and_again_after_the_numbers_restart() {
        let mut actor = DeviceActor::new(DeviceChain::new(&[], "d"), false, 0);
        assert!(actor.note_reading(1, 10), "first reading of chunk 1");
        assert!(!actor.note_reading(1, 11), "second reading of chunk 1");
        assert!(actor.note_reading(2, 12), "first reading of chunk 2");
        // the shard numbers its chunks from 1 again after u32::MAX
        actor.forget_chunk();
        assert!(actor.note_reading(2, 13), "chunk 2 of the new numbering");
        let c = actor.counters();
        assert_eq!((c.batches, c.readings), (3, 4));
        assert_eq!(actor.last_active, 13);
    }

    #[test]
    fn a_device_actor_is_small() {
        // every active device holds one of these (and its key) in its shard's map: its size is
        // part of the memory per idle device (BENCHMARKS.md)
        assert!(
            std::mem::size_of::<DeviceActor>() <= 72,
            "{}",
            std::mem::size_of::<DeviceActor>()
        );
    }
}
