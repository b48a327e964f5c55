//! [`ShardSupervisor`]: one per shard thread. It owns the devices of its key groups: activates
//! a [`DeviceActor`] (under an actix `Supervisor`, so a panicking device is restarted) on a
//! device's first reading, passivates actors idle longer than `runtime.passivate_after` (their
//! encoded state is kept and restored on the next reading), and flushes every device at the
//! end of the input.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tracing::{debug, error, info_span};

use super::checkpointer::{CheckpointDone, ShardCheckpointed};
use super::device::{self, DeviceActor};
use super::output_hub::BarrierReached;
use super::{ChunkProgress, RuntimeMetrics, ShardOutput, SourcePosition, key_group_of, shard_of};
use crate::clock;
use crate::operators::{DeviceChain, DeviceSnapshot, Emit, Reading};
use crate::output::RecordFormatter;
use crate::pipeline::CompiledPipeline;
use crate::store::{StateStore, device_key};

/// A test hook called before every reading a device actor applies (a panic in it is treated as
/// an operator panic). Production runs have none.
pub type FaultHook = Arc<dyn Fn(&str, &Reading) + Send + Sync>;

/// Devices asked to passivate at once (see `passivate_idle`).
const PASSIVATION_BATCH: usize = 4096;

/// What every device actor of a shard shares (they all live on the shard's thread).
pub struct ShardLocal {
    pub shard: usize,
    pub pipeline: Arc<CompiledPipeline>,
    pub formatter: RecordFormatter,
    pub output: Arc<ShardOutput>,
    pub metrics: Arc<RuntimeMetrics>,
    pub fault_hook: Option<FaultHook>,
    scratch: RefCell<Vec<Vec<Emit>>>,
}

impl ShardLocal {
    pub fn take_scratch(&self) -> Vec<Emit> {
        self.scratch.borrow_mut().pop().unwrap_or_default()
    }

    pub fn return_scratch(&self, mut v: Vec<Emit>) {
        v.clear();
        self.scratch.borrow_mut().push(v);
    }
}

/// Readings for several devices of this shard, from one chunk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceBatches {
    pub batches: Vec<(Box<str>, Vec<Reading>)>,
    pub now: i64,
    pub progress: Arc<ChunkProgress>,
}

/// A checkpoint barrier, after every reading of the checkpoint has been handed to this shard:
/// snapshot the changed devices, mark the end of the checkpoint's records for the hub, and
/// reply once done (the router holds new input until then).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardBarrier {
    pub id: u64,
    pub positions: Vec<SourcePosition>,
    pub dead_letters: u64,
}

/// End of input: flush every device, reply with the shard's totals.
#[derive(Message)]
#[rtype(result = "ShardTotals")]
pub struct FinishShard;

/// For tests and the admin view.
#[derive(Message)]
#[rtype(result = "ShardCounters")]
pub struct ReportShardCounters;

/// Per-device actor counters (tests).
#[derive(Message)]
#[rtype(result = "Option<device::DeviceActorCounters>")]
pub struct ReportDeviceCounters(pub String);

/// Passivate the idle devices now (tests; the timer does it in normal runs).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct PassivateIdleNow {
    /// Idle for at least this long (ms of processing time).
    pub idle_ms: i64,
}

/// Forget these devices (a Kafka partition was handed to another member right after a
/// checkpoint that holds their state): active ones stop, passive copies go. Replies with how
/// many were in memory.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct EvictDevices(pub Vec<String>);

/// Sums over the devices of one shard at the end of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardTotals {
    pub readings: u64,
    pub late: u64,
    pub devices: u64,
}

/// What a shard supervisor has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardCounters {
    pub active: u64,
    pub passive: u64,
    pub activations: u64,
    pub reactivations: u64,
    pub passivations: u64,
    pub batches: u64,
    pub readings: u64,
}

struct ActiveDevice {
    addr: Addr<DeviceActor>,
    last_active: i64,
}

/// A passivated device's encoded state, kept until the store holds it.
struct PassiveDevice {
    bytes: crate::store::SnapshotBytes,
    /// Changed since the last checkpoint that included it.
    dirty: bool,
    /// When clean: the checkpoint whose durability makes this copy redundant.
    clean_as_of: u64,
}

/// How a shard takes part in checkpoints.
pub struct ShardCheckpointing {
    pub store: Arc<StateStore>,
    pub checkpointer: Recipient<ShardCheckpointed>,
    pub last_checkpoint: u64,
    pub allow_pipeline_change: bool,
}

pub struct ShardSupervisor {
    local: Rc<ShardLocal>,
    active: FxHashMap<Arc<str>, ActiveDevice>,
    /// Encoded state of passivated devices.
    passive: FxHashMap<Arc<str>, PassiveDevice>,
    counters: ShardCounters,
    passivate_after_ms: i64,
    tick_ms: Option<i64>,
    shards: usize,
    checkpointing: Option<ShardCheckpointing>,
    /// Devices that got readings (or ticks) since the last barrier.
    touched: rustc_hash::FxHashSet<Arc<str>>,
    /// Devices created (not found anywhere) since the last barrier.
    created: u64,
    barrier_seen: u64,
}

impl ShardSupervisor {
    pub fn new(
        shard: usize,
        pipeline: Arc<CompiledPipeline>,
        output: Arc<ShardOutput>,
        metrics: Arc<RuntimeMetrics>,
        fault_hook: Option<FaultHook>,
        shards: usize,
        checkpointing: Option<ShardCheckpointing>,
    ) -> Self {
        let passivate_after_ms = pipeline.spec.runtime.passivate_after.as_millis();
        let tick_ms = pipeline.tick_interval_ms();
        let local = Rc::new(ShardLocal {
            shard,
            formatter: RecordFormatter::new(&pipeline),
            pipeline,
            output,
            metrics,
            fault_hook,
            scratch: RefCell::new(Vec::new()),
        });
        ShardSupervisor {
            local,
            active: FxHashMap::default(),
            passive: FxHashMap::default(),
            counters: ShardCounters::default(),
            passivate_after_ms,
            tick_ms,
            shards,
            barrier_seen: checkpointing.as_ref().map_or(0, |c| c.last_checkpoint),
            checkpointing,
            touched: Default::default(),
            created: 0,
        }
    }

    fn key_groups(&self) -> u32 {
        self.local.pipeline.spec.runtime.key_groups
    }

    /// The stored state of a device, if the store has one that restores.
    fn load(&self, device: &str) -> Option<DeviceChain> {
        let c = self.checkpointing.as_ref()?;
        let kg = key_group_of(device, self.key_groups());
        match c.store.load_device(kg, device) {
            Ok(Some(bytes)) => {
                let _span = info_span!("device_restore", device, shard = self.local.shard).entered();
                let restored = DeviceSnapshot::decode(&bytes).and_then(|snapshot| {
                    DeviceChain::restore(
                        &self.local.pipeline.operators,
                        device,
                        snapshot,
                        c.allow_pipeline_change,
                    )
                });
                match restored {
                    Ok(chain) => {
                        self.local.metrics.devices_loaded.fetch_add(1, Ordering::Relaxed);
                        Some(chain)
                    }
                    Err(e) => {
                        self.local.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                        error!(device, error = %e, "stored device state does not restore: the device starts afresh");
                        None
                    }
                }
            }
            Ok(None) => None,
            Err(e) => {
                self.local.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                error!(device, error = %e, "stored device state is damaged: the device starts afresh");
                None
            }
        }
    }

    fn activate(&mut self, device: &str, now: i64) -> &mut ActiveDevice {
        let key: Arc<str> = Arc::from(device);
        let (chain, reactivated) = match self.passive.remove(&key) {
            Some(p) => (self.restore(&key, &p.bytes), true),
            None => match self.load(device) {
                Some(chain) => (chain, true),
                None => {
                    self.created += 1;
                    (self.local.pipeline.new_chain(device), false)
                }
            },
        };
        let _span = info_span!("device_activate", device = %key, shard = self.local.shard, reactivated).entered();
        if reactivated {
            self.counters.reactivations += 1;
            self.local.metrics.devices_passive.fetch_sub(1, Ordering::Relaxed);
        }
        self.counters.activations += 1;
        self.local.metrics.activations.fetch_add(1, Ordering::Relaxed);
        self.local.metrics.devices_active.fetch_add(1, Ordering::Relaxed);
        let local = self.local.clone();
        let id = key.clone();
        let addr = actix::Supervisor::start(move |_| DeviceActor::new(id, local, chain, reactivated));
        self.active
            .entry(key)
            .or_insert(ActiveDevice { addr, last_active: now })
    }

    fn restore(&self, device: &str, bytes: &[u8]) -> DeviceChain {
        let pipeline = &self.local.pipeline;
        DeviceSnapshot::decode(bytes)
            .and_then(|snapshot| DeviceChain::restore(&pipeline.operators, device, snapshot, true))
            .expect("a snapshot this process wrote itself restores")
    }

    /// Passivates devices idle for at least `idle_ms`; the mailbox waits until they replied.
    fn passivate_idle(&mut self, idle_ms: i64, ctx: &mut Context<Self>) -> usize {
        let now = clock::now_ms();
        let idle: Vec<Arc<str>> = self
            .active
            .iter()
            .filter(|(_, d)| now - d.last_active >= idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        if idle.is_empty() {
            return 0;
        }
        let n = idle.len();
        let addrs: Vec<_> = idle
            .into_iter()
            .map(|device| self.active.remove(&device).expect("listed above").addr)
            .collect();
        // in batches: each batch's actors (and their messages) are freed once it has answered,
        // so passivating most of a million devices at once does not hold them all until the end
        let all = async move {
            let mut replies = Vec::with_capacity(addrs.len());
            let mut rest = addrs.into_iter();
            loop {
                // the addresses live until every answer of the batch is in, so no actor stops
                // before answering
                let batch: Vec<_> = rest.by_ref().take(PASSIVATION_BATCH).collect();
                if batch.is_empty() {
                    return Ok::<_, oneshot::error::RecvError>(replies);
                }
                let (answers, all) = super::Collector::new(batch.len());
                for (addr, answer) in batch.iter().zip(answers) {
                    addr.do_send(device::Passivate(answer));
                }
                replies.extend(all.await?);
            }
        };
        let fut = all.into_actor(self).map(move |replies, act, _ctx| {
            let replies = replies.expect("the collector answers");
            for (device, bytes, dirty) in replies {
                let clean_as_of = act.barrier_seen;
                act.passive.insert(
                    device,
                    PassiveDevice {
                        bytes: Arc::new(bytes),
                        dirty,
                        clean_as_of,
                    },
                );
                act.counters.passivations += 1;
                act.local.metrics.passivations.fetch_add(1, Ordering::Relaxed);
                act.local.metrics.devices_active.fetch_sub(1, Ordering::Relaxed);
                act.local.metrics.devices_passive.fetch_add(1, Ordering::Relaxed);
            }
            debug!(
                shard = act.local.shard,
                passive = act.passive.len(),
                "passivated idle devices"
            );
        });
        ctx.wait(fut);
        n
    }
}

impl Actor for ShardSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let check = Duration::from_millis((self.passivate_after_ms / 4).clamp(50, 10_000) as u64);
        let after = self.passivate_after_ms;
        ctx.run_interval(check, move |act, ctx| {
            act.passivate_idle(after, ctx);
        });
        if let Some(tick) = self.tick_ms {
            ctx.run_interval(Duration::from_millis(tick as u64), |act, _ctx| {
                let now = clock::now_ms();
                for (id, d) in &act.active {
                    d.addr.do_send(device::Tick { now });
                    if act.checkpointing.is_some() {
                        act.touched.insert(id.clone());
                    }
                }
            });
        }
    }
}

impl Handler<DeviceBatches> for ShardSupervisor {
    type Result = ();

    fn handle(&mut self, msg: DeviceBatches, _ctx: &mut Context<Self>) {
        if self.counters.batches == 0 {
            tracing::info!(
                shard = self.local.shard,
                since_start_ms = crate::clock::since_start().as_secs_f64() * 1000.0,
                "first readings reached the devices"
            );
        }
        self.counters.batches += msg.batches.len() as u64;
        for (device, readings) in msg.batches {
            self.counters.readings += readings.len() as u64;
            if self.checkpointing.is_some() && !self.touched.contains(&*device) {
                self.touched.insert(Arc::from(&*device));
            }
            let entry = match self.active.get_mut(&*device) {
                Some(entry) => entry,
                None => self.activate(&device, msg.now),
            };
            entry.last_active = msg.now;
            entry.addr.do_send(device::ApplyReadings {
                readings,
                now: msg.now,
                progress: msg.progress.clone(),
            });
        }
    }
}

impl Handler<FinishShard> for ShardSupervisor {
    type Result = ResponseActFuture<Self, ShardTotals>;

    fn handle(&mut self, _: FinishShard, _ctx: &mut Context<Self>) -> Self::Result {
        let flush = self.local.pipeline.spec.shutdown.flush;
        // passive devices: restore and flush right here (no actor needed)
        let mut totals = ShardTotals::default();
        let mut passive: Vec<(Arc<str>, Vec<u8>)> = self.passive.drain().map(|(k, p)| (k, Arc::unwrap_or_clone(p.bytes))).collect();
        // devices only in the store (not seen in this run) end too
        let in_memory: rustc_hash::FxHashSet<Arc<str>> = passive.iter().map(|(d, _)| d.clone()).collect();
        if let Some(c) = &self.checkpointing {
            let (from, to) = key_group_range(self.local.shard, self.key_groups(), self.shards);
            for item in c.store.devices_in(from, to) {
                match item {
                    Ok((device, bytes)) => {
                        if !self.active.contains_key(device.as_str()) && !in_memory.contains(device.as_str()) {
                            passive.push((Arc::from(device.as_str()), bytes));
                        }
                    }
                    Err(e) => {
                        self.local.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                        error!(error = %e, "a stored device could not be read at the end of the run");
                    }
                }
            }
        }
        passive.sort_by(|a, b| a.0.cmp(&b.0));
        for (device, bytes) in passive {
            let mut chain = self.restore(&device, &bytes);
            if flush {
                let mut emits = Vec::new();
                chain.on_end(&mut emits);
                let records: Vec<_> = emits.iter().map(|e| self.local.formatter.format(&device, e)).collect();
                self.local.output.extend(records);
            }
            let c = chain.counters();
            totals.readings += c.readings;
            totals.late += c.late;
            totals.devices += 1;
        }
        let mut devices: Vec<(&Arc<str>, &ActiveDevice)> = self.active.iter().collect();
        devices.sort_by(|a, b| a.0.cmp(b.0));
        let (answers, all) = super::Collector::new(devices.len());
        for ((_, d), answer) in devices.into_iter().zip(answers) {
            d.addr.do_send(device::FlushAtEnd { flush, answer });
        }
        Box::pin(all.into_actor(self).map(move |replies, act, _ctx| {
            for c in replies.unwrap_or_default() {
                totals.readings += c.readings;
                totals.late += c.late;
                totals.devices += 1;
            }
            act.local.output.flush(None);
            totals
        }))
    }
}

/// The key groups `from..to` that shard `shard` owns (contiguous, see [`shard_of`]).
pub fn key_group_range(shard: usize, key_groups: u32, shards: usize) -> (u32, u32) {
    let from = (0..key_groups)
        .find(|&kg| shard_of(kg, key_groups, shards) == shard)
        .unwrap_or(key_groups);
    let to = (from..key_groups)
        .find(|&kg| shard_of(kg, key_groups, shards) != shard)
        .unwrap_or(key_groups);
    (from, to)
}

impl Handler<ShardBarrier> for ShardSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ShardBarrier, ctx: &mut Context<Self>) -> Self::Result {
        let _span = info_span!("checkpoint_barrier", shard = self.local.shard, checkpoint = msg.id).entered();
        let started = Instant::now();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let touched: Vec<Addr<DeviceActor>> = self
            .touched
            .drain()
            .filter_map(|device| Some(self.active.get(&device)?.addr.clone()))
            .collect();
        let (answers, all) = super::Collector::new(touched.len());
        for (addr, answer) in touched.into_iter().zip(answers) {
            addr.do_send(device::SnapshotIfDirty(answer));
        }
        let id = msg.id;
        // The shard pauses (ctx.wait) until every changed device has answered: their earlier
        // readings are all applied by then, and nothing after the barrier has started.
        let fut = all.into_actor(self).map(move |replies, act, _ctx| {
            let key_groups = act.key_groups();
            let mut devices = Vec::new();
            for (device, bytes) in replies.unwrap_or_default() {
                devices.push((device_key(key_group_of(&device, key_groups), &device), Arc::new(bytes)));
            }
            for (device, p) in act.passive.iter_mut() {
                if p.dirty {
                    devices.push((device_key(key_group_of(device, key_groups), device), p.bytes.clone()));
                    p.dirty = false;
                    p.clean_as_of = id;
                }
            }
            act.barrier_seen = id;
            // the records of the checkpoint's readings, then the mark
            act.local.output.flush(None);
            act.local.output.hub().do_send(BarrierReached {
                shard: act.local.shard,
                id,
            });
            let pause = started.elapsed();
            act.local
                .metrics
                .checkpoint_pause_max_us
                .fetch_max(pause.as_micros() as u64, Ordering::Relaxed);
            if let Some(c) = &act.checkpointing {
                c.checkpointer.do_send(ShardCheckpointed {
                    id,
                    shard: act.local.shard,
                    devices,
                    positions: msg.positions,
                    dead_letters: msg.dead_letters,
                    new_devices: std::mem::take(&mut act.created),
                    pause,
                });
            }
            let _ = done_tx.send(());
        });
        ctx.wait(fut);
        Box::pin(async move {
            let _ = done_rx.await;
        })
    }
}

impl Handler<CheckpointDone> for ShardSupervisor {
    type Result = ();

    fn handle(&mut self, msg: CheckpointDone, _ctx: &mut Context<Self>) {
        // passive devices whose state the store now holds durably need no copy in memory
        let before = self.passive.len();
        self.passive.retain(|_, p| p.dirty || p.clean_as_of > msg.id);
        let evicted = before - self.passive.len();
        if evicted > 0 {
            self.local
                .metrics
                .devices_evicted
                .fetch_add(evicted as u64, Ordering::Relaxed);
            self.local
                .metrics
                .devices_passive
                .fetch_sub(evicted as i64, Ordering::Relaxed);
        }
    }
}

impl Handler<ReportShardCounters> for ShardSupervisor {
    type Result = MessageResult<ReportShardCounters>;

    fn handle(&mut self, _: ReportShardCounters, _ctx: &mut Context<Self>) -> Self::Result {
        let mut c = self.counters;
        c.active = self.active.len() as u64;
        c.passive = self.passive.len() as u64;
        MessageResult(c)
    }
}

impl Handler<ReportDeviceCounters> for ShardSupervisor {
    type Result = ResponseFuture<Option<device::DeviceActorCounters>>;

    fn handle(&mut self, msg: ReportDeviceCounters, _ctx: &mut Context<Self>) -> Self::Result {
        let addr = self.active.get(msg.0.as_str()).map(|d| d.addr.clone());
        Box::pin(async move {
            match addr {
                Some(addr) => addr.send(device::ReportCounters).await.ok(),
                None => None,
            }
        })
    }
}

impl Handler<EvictDevices> for ShardSupervisor {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, msg: EvictDevices, _ctx: &mut Context<Self>) -> Self::Result {
        let mut evicted = 0;
        let mut addrs = Vec::new();
        for device in &msg.0 {
            self.touched.remove(device.as_str());
            if let Some(p) = self.passive.remove(device.as_str()) {
                if p.dirty {
                    error!(device = %device, "evicting a device with changes no checkpoint holds");
                }
                self.local.metrics.devices_passive.fetch_sub(1, Ordering::Relaxed);
                evicted += 1;
            }
            if let Some(d) = self.active.remove(device.as_str()) {
                addrs.push(d.addr);
                self.local.metrics.devices_active.fetch_sub(1, Ordering::Relaxed);
                evicted += 1;
            }
        }
        // the actors stop once they have answered (their state is in the store)
        let (answers, all) = super::Collector::new(addrs.len());
        for (addr, answer) in addrs.iter().zip(answers) {
            addr.do_send(device::Passivate(answer));
        }
        Box::pin(all.into_actor(self).map(move |_, act, _ctx| {
            drop(addrs);
            debug!(shard = act.local.shard, evicted, "evicted the devices of a handed-off partition");
            evicted
        }))
    }
}

impl Handler<PassivateIdleNow> for ShardSupervisor {
    type Result = usize;

    fn handle(&mut self, msg: PassivateIdleNow, ctx: &mut Context<Self>) -> usize {
        self.passivate_idle(msg.idle_ms, ctx)
    }
}
