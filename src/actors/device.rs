//! [`DeviceActor`]: one per active device. It runs the device's operator chain over batches of
//! readings and owns the device's state.
//!
//! A panic inside an operator does not take the shard down: the batch runs under
//! `catch_unwind`; on a panic the actor keeps the batch aside and stops, actix's
//! [`Supervisor`](actix::Supervisor) restarts the same instance, [`Supervised::restarting`]
//! puts back the last good state (the state before the batch), and `started` replays the batch
//! one reading at a time: the reading that panics again goes to dead letters with the panic
//! message, every other reading is applied. Other devices never notice.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::{Actor, ActorContext, Context, Handler, Message, MessageResult, Supervised};
use tracing::{info_span, warn};

use super::ChunkProgress;
use super::shard::ShardLocal;
use crate::operators::{DeviceChain, DeviceCounters, Emit, Reading};

/// Readings of this device from one chunk, in arrival order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyReadings {
    pub readings: Vec<Reading>,
    pub now: i64,
    pub progress: Arc<ChunkProgress>,
}

/// Processing-time work: idle flush, offline detection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick {
    pub now: i64,
}

/// Passivation: answer with the encoded state and whether it changed since the last
/// checkpoint; the supervisor has dropped the address and the actor stops once its mailbox is
/// empty.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivate(pub super::Answer<(Arc<str>, Vec<u8>, bool)>);

/// Checkpoint: the encoded state, if it changed since the last one, into the collector.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotIfDirty(pub super::Answer<(Arc<str>, Vec<u8>)>);

/// End of input / graceful shutdown: flush (if the pipeline says so) and report the counters.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushAtEnd {
    pub flush: bool,
    pub answer: super::Answer<DeviceCounters>,
}

/// For tests and the admin view.
#[derive(Message)]
#[rtype(result = "DeviceActorCounters")]
pub struct ReportCounters;

/// What one device actor has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceActorCounters {
    pub batches: u64,
    pub readings: u64,
    pub restarts: u64,
    pub poisoned_readings: u64,
}

struct FailedBatch {
    readings: Vec<Reading>,
    now: i64,
    progress: Arc<ChunkProgress>,
}

pub struct DeviceActor {
    device: Arc<str>,
    local: Rc<ShardLocal>,
    chain: DeviceChain,
    /// The state before the batch that panicked.
    /// (Both boxed: they are only set between a panic and the restart, and the actor's size is
    /// part of every active device's memory.)
    last_good: Option<Box<DeviceChain>>,
    failed: Option<Box<FailedBatch>>,
    counters: DeviceActorCounters,
    dirty: bool,
}

impl DeviceActor {
    pub fn new(device: Arc<str>, local: Rc<ShardLocal>, chain: DeviceChain, dirty: bool) -> Self {
        DeviceActor {
            device,
            local,
            chain,
            last_good: None,
            failed: None,
            counters: Default::default(),
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
        for reading in readings {
            if let Some(hook) = &local.fault_hook {
                hook(device, reading);
            }
            chain.on_reading(reading.clone(), now, emits);
        }
    }

    fn publish(&self, emits: &mut Vec<Emit>) {
        if emits.is_empty() {
            return;
        }
        let local = &*self.local;
        let mut records = Vec::with_capacity(emits.len());
        for emit in emits.drain(..) {
            match emit {
                Emit::EventStart { .. } => {
                    local.metrics.events_open.fetch_add(1, Ordering::Relaxed);
                }
                Emit::EventEnd { .. } => {
                    local.metrics.events_open.fetch_sub(1, Ordering::Relaxed);
                }
                Emit::Late { .. } => {
                    local.metrics.late.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            records.push(local.formatter.format(&self.device, &emit));
        }
        local.output.extend(records);
    }

    /// After a restart: the failed batch, one reading at a time.
    fn replay_failed(&mut self, failed: FailedBatch) {
        let mut emits = Vec::new();
        for reading in failed.readings {
            let before = self.chain.clone();
            let local = &*self.local;
            let device = &*self.device;
            let result = catch_unwind(AssertUnwindSafe(|| {
                let mut out = Vec::new();
                Self::apply(
                    &mut self.chain,
                    local,
                    device,
                    std::slice::from_ref(&reading),
                    failed.now,
                    &mut out,
                );
                out
            }));
            match result {
                Ok(out) => emits.extend(out),
                Err(panic) => {
                    self.chain = before;
                    self.counters.poisoned_readings += 1;
                    let message = panic_message(&panic);
                    warn!(device = %self.device, ts = reading.ts, panic = %message, "reading made an operator panic: sent to dead letters");
                    let raw = serde_json::to_vec(&reading).unwrap_or_default();
                    local.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                    local.output.push(local.formatter.dead_letter(
                        &format!("device:{}", self.device),
                        &format!("ts {}", reading.ts),
                        &format!("an operator panicked on this reading: {message}"),
                        &raw,
                    ));
                }
            }
        }
        self.publish(&mut emits);
        drop(failed.progress);
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

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        if let Some(failed) = self.failed.take() {
            self.replay_failed(*failed);
        }
    }
}

impl Supervised for DeviceActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let _span = info_span!("device_restart", device = %self.device, shard = self.local.shard).entered();
        if let Some(good) = self.last_good.take() {
            self.chain = *good;
        }
        self.counters.restarts += 1;
        self.local.metrics.restarts.fetch_add(1, Ordering::Relaxed);
        warn!(device = %self.device, restarts = self.counters.restarts, "device actor restarted from its last good state");
    }
}

impl Handler<ApplyReadings> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyReadings, ctx: &mut Context<Self>) {
        self.counters.batches += 1;
        self.counters.readings += msg.readings.len() as u64;
        self.dirty = true;
        let before = self.chain.clone();
        let local = &*self.local;
        let device = &*self.device;
        let chain = &mut self.chain;
        let readings = &msg.readings;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut emits = local.take_scratch();
            Self::apply(chain, local, device, readings, msg.now, &mut emits);
            emits
        }));
        match result {
            Ok(mut emits) => {
                self.publish(&mut emits);
                self.local.return_scratch(emits);
            }
            Err(_) => {
                self.last_good = Some(Box::new(before));
                self.failed = Some(Box::new(FailedBatch {
                    readings: msg.readings,
                    now: msg.now,
                    progress: msg.progress,
                }));
                ctx.stop();
            }
        }
    }
}

impl Handler<Tick> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: Tick, _ctx: &mut Context<Self>) {
        let mut emits = Vec::new();
        self.chain.on_time(msg.now, &mut emits);
        if !emits.is_empty() {
            self.dirty = true;
            self.publish(&mut emits);
        }
    }
}

impl Handler<Passivate> for DeviceActor {
    type Result = ();

    fn handle(&mut self, Passivate(answer): Passivate, _ctx: &mut Context<Self>) {
        let _span = info_span!("device_passivate", device = %self.device, shard = self.local.shard).entered();
        answer.give((self.device.clone(), self.chain.snapshot().encode(), self.dirty));
    }
}

impl Handler<SnapshotIfDirty> for DeviceActor {
    type Result = ();

    fn handle(&mut self, SnapshotIfDirty(answer): SnapshotIfDirty, _ctx: &mut Context<Self>) {
        if self.dirty {
            self.dirty = false;
            answer.give((self.device.clone(), self.chain.snapshot().encode()));
        }
    }
}

impl Handler<FlushAtEnd> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: FlushAtEnd, _ctx: &mut Context<Self>) {
        if msg.flush {
            let mut emits = Vec::new();
            self.chain.on_end(&mut emits);
            self.dirty = true;
            self.publish(&mut emits);
        }
        msg.answer.give(self.chain.counters());
    }
}

impl Handler<ReportCounters> for DeviceActor {
    type Result = MessageResult<ReportCounters>;

    fn handle(&mut self, _: ReportCounters, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.counters)
    }
}
