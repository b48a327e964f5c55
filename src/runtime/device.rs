//! [`DeviceActor`]: one per active device. It runs the device's operator chain over batches of
//! readings and owns the device's state.
//!
//! A device actor is a lightweight actor hosted by its [`ShardSupervisor`](super::shard::ShardSupervisor)
//! rather than an actix actor of its own: the supervisor (an actix actor on the shard's
//! thread) delivers each message to it in order, one at a time, by a method call. Every device
//! of a shard ran on the shard's thread anyway; what an actix actor added per device was its
//! tokio task (512 bytes) and its mailbox (≈ 230 bytes), more than the device's own state,
//! which made the 1 KiB per idle device of issue 3 unreachable (see ARCHITECTURE.md). The
//! messages keep their names ([`DeviceActor::apply_readings`], [`DeviceActor::tick`],
//! [`DeviceActor::passivate`], [`DeviceActor::snapshot_if_dirty`],
//! [`DeviceActor::flush_at_end`], [`DeviceActor::counters`]).
//!
//! A panic inside an operator does not take the shard down: the batch runs under
//! `catch_unwind`; on a panic the actor is restarted from its last good state (the state before
//! the batch) and replays the batch one reading at a time: the reading that panics again goes
//! to dead letters with the panic message, every other reading is applied. Other devices never
//! notice.

use std::panic::{AssertUnwindSafe, catch_unwind};
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
}

impl DeviceActor {
    /// `dirty`: the state is not (yet) the one the store holds.
    pub fn new(chain: DeviceChain, dirty: bool, now: i64) -> Self {
        DeviceActor {
            chain,
            counters: Default::default(),
            last_active: now,
            dirty,
        }
    }

    fn apply(
        chain: &mut DeviceChain,
        local: &ShardLocal,
        device: &str,
        readings: &[Reading],
        now: i64,
        emits: &mut Vec<Emit>,
    ) {
        #[cfg(not(feature = "fault-injection"))]
        let _ = device;
        for reading in readings {
            #[cfg(feature = "fault-injection")]
            if let Some(hook) = &local.fault_hook {
                hook(device, reading);
            }
            // event clock: the reading is decided at its arrival on the fleet's clock, after
            // whatever the device had due before it (an offline report, an idle flush)
            let at = if local.event_clock {
                chain.catch_up(reading.arrival, emits);
                reading.arrival
            } else {
                now
            };
            chain.on_reading(reading.clone(), at, emits);
        }
    }

    fn publish(device: &str, local: &ShardLocal, emits: &mut Vec<Emit>) {
        if emits.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(emits.len());
        for emit in emits.drain(..) {
            match emit {
                Emit::EventStart { severity, .. } => {
                    let m = &local.metrics;
                    m.events_open.fetch_add(1, Ordering::Relaxed);
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(severity)]
                        .fetch_add(1, Ordering::Relaxed);
                }
                Emit::EventUpdate { previous, severity, .. } => {
                    // the open event moves to its new band
                    let m = &local.metrics;
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(previous)]
                        .fetch_sub(1, Ordering::Relaxed);
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(severity)]
                        .fetch_add(1, Ordering::Relaxed);
                }
                Emit::EventEnd { severity, .. } => {
                    let m = &local.metrics;
                    m.events_open.fetch_sub(1, Ordering::Relaxed);
                    m.events_open_by_severity[super::RuntimeMetrics::severity_slot(severity)]
                        .fetch_sub(1, Ordering::Relaxed);
                }
                Emit::Late { .. } => {
                    local.metrics.late.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            records.push(local.formatter.format(device, &emit));
        }
        local.output.extend(records);
    }

    /// Readings of this device from one chunk, in arrival order.
    pub fn apply_readings(&mut self, device: &str, local: &ShardLocal, readings: Vec<Reading>, now: i64) {
        self.counters.batches += 1;
        self.counters.readings += readings.len() as u64;
        self.dirty = true;
        self.last_active = now;
        let before = self.chain.clone();
        let chain = &mut self.chain;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut emits = local.take_scratch();
            Self::apply(chain, local, device, &readings, now, &mut emits);
            emits
        }));
        match result {
            Ok(mut emits) => {
                Self::publish(device, local, &mut emits);
                local.return_scratch(emits);
            }
            Err(_) => {
                self.restart(device, local, before);
                self.replay(device, local, readings, now);
            }
        }
    }

    /// After a panic: back to the last good state (the one before the batch).
    fn restart(&mut self, device: &str, local: &ShardLocal, last_good: DeviceChain) {
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

    /// After a restart: the failed batch, one reading at a time.
    fn replay(&mut self, device: &str, local: &ShardLocal, readings: Vec<Reading>, now: i64) {
        let mut emits = Vec::new();
        for reading in readings {
            let before = self.chain.clone();
            let chain = &mut self.chain;
            let result = catch_unwind(AssertUnwindSafe(|| {
                let mut out = Vec::new();
                Self::apply(chain, local, device, std::slice::from_ref(&reading), now, &mut out);
                out
            }));
            match result {
                Ok(out) => emits.extend(out),
                Err(panic) => {
                    self.chain = before;
                    self.counters.poisoned_readings += 1;
                    let message = panic_message(&panic);
                    warn!(device, ts = reading.ts, panic = %message, "reading made an operator panic: sent to dead letters");
                    let raw = serde_json::to_vec(&reading).unwrap_or_default();
                    local.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                    local.output.push(local.formatter.dead_letter(
                        &format!("device:{device}"),
                        &format!("ts {}", reading.ts),
                        &format!("an operator panicked on this reading: {message}"),
                        &raw,
                    ));
                }
            }
        }
        Self::publish(device, local, &mut emits);
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

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
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
