//! [`ShardSupervisor`]: one per shard thread. It owns the devices of its key groups: runs its
//! payloads of every chunk ([`RunChunk`], see `run`: decoded and applied one after the other,
//! in arrival order, a few payloads ahead of each other so that devices are in the cache when
//! their readings run), activates a [`DeviceActor`] on a device's first reading (device actors
//! are hosted by their supervisor, see [`device`]), restarts a device whose operator panicked
//! from its last good state, passivates actors idle longer than `runtime.passivate_after`
//! (their encoded state is kept and restored on the next reading), and flushes every device at
//! the end of the input.
//!
//! # Layout
//! - this file: the supervisor, its messages and their handlers.
//! - `run`: how a chunk runs (decode, device look-up ahead, apply, records; panic recovery).
//! - `active`: [`ActiveDevices`](active::ActiveDevices), the live devices by id hash.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rustc_hash::FxHashMap;
use tracing::{debug, error, info, info_span, warn};

use super::checkpointer::{CheckpointDone, ShardCheckpointed};
use super::device::{self, DeviceActor};
use super::hub::BarrierReached;
use super::{Chunk, RuntimeMetrics, ShardOutput, SourcePosition, key_group_of, shard_of};
use crate::clock::Clock;
use crate::operators::{DeviceChain, Emit, Reading};
use crate::output::RecordFormatter;
use crate::pipeline::CompiledPipeline;
use crate::store::{DeviceWrite, StateStore, device_key};

mod active;
mod run;

use active::ActiveDevices;

/// A test hook called before every reading a device actor applies (a panic in it is treated as
/// an operator panic). Only in builds with the `fault-injection` feature (the tests').
#[cfg(feature = "fault-injection")]
pub type FaultHook = Arc<dyn Fn(&str, &Reading) + Send + Sync>;

/// What every device actor of a shard shares (they all live on the shard's thread).
pub struct ShardLocal {
    pub shard: usize,
    pub pipeline: Arc<CompiledPipeline>,
    pub formatter: RecordFormatter,
    pub output: Arc<ShardOutput>,
    pub metrics: Arc<RuntimeMetrics>,
    #[cfg(feature = "fault-injection")]
    pub fault_hook: Option<FaultHook>,
    /// Processing time.
    pub clock: Clock,
    /// `runtime.clock: event`: devices act on their readings' arrival times and the fleet's
    /// clock, not on processing time.
    pub event_clock: bool,
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

/// A chunk of input (shared by every shard): run this shard's payloads of it (see [`run`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunChunk(pub Arc<Chunk>);

/// A checkpoint barrier, after every reading of the checkpoint has been handed to this shard:
/// snapshot the changed devices, mark the end of the checkpoint's records for the hub, and
/// reply once done (the router holds new input until then).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardBarrier {
    pub id: u64,
    pub positions: Vec<SourcePosition>,
}

/// End of input: flush every device, reply with the shard's totals.
#[derive(Message)]
#[rtype(result = "ShardTotals")]
pub struct FinishShard;

/// Asks a shard for its observable state (tests and the admin view; the pattern of Quickwit's
/// `observable_state`): its counters, and what it holds of the devices named.
#[derive(Message)]
#[rtype(result = "ShardObservation")]
pub struct ObserveShard {
    pub devices: Vec<String>,
}

/// A shard's observable state.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardObservation {
    pub counters: ShardCounters,
    /// The devices asked about that this shard holds, in the order asked.
    pub devices: Vec<(String, DeviceObservation)>,
}

/// What a shard holds of one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeviceObservation {
    /// A live device: its actor's counters and processing time of its last batch.
    Active {
        counters: device::DeviceActorCounters,
        last_active: i64,
    },
    /// Passivated: only its encoded state is in memory.
    Passive { dirty: bool },
}

/// Forget these devices (a Kafka partition was handed to another member right after a
/// checkpoint that holds their state): active ones stop, passive copies go. Replies with how
/// many were in memory.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct EvictDevices(pub Vec<String>);

/// Devices whose state was just imported into the store (a Kafka partition taken over from
/// another member): their deadlines are read from their stored state, so that a device that
/// stays quiet from now on is still reported offline, as after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdoptDevices(pub Vec<String>);

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
    /// Passivated devices woken because their operators had something to do at that time
    /// (an offline report, an idle flush), then passivated again.
    pub deadline_wakeups: u64,
    /// Entries in the deadline index now (passive devices and devices only in the store whose
    /// operators act at a set time; stale entries included), and the most there have been.
    pub deadline_entries: u64,
    pub deadline_entries_peak: u64,
    /// The most memory the index held (heap, id arena, stored set).
    pub deadline_bytes_peak: u64,
    /// Times the index was rebuilt without its stale entries.
    pub deadline_compactions: u64,
}

/// A passivated device's encoded state, kept until the store holds it.
struct PassiveDevice {
    bytes: crate::store::SnapshotBytes,
    /// Changed since the last checkpoint that included it.
    dirty: bool,
    /// When clean: the checkpoint whose durability makes this copy redundant.
    clean_as_of: u64,
    /// When its operators next act on processing time (its entry in the deadline index).
    deadline: Option<i64>,
}

/// How a shard takes part in checkpoints.
pub struct ShardCheckpointing {
    pub store: Arc<StateStore>,
    pub checkpointer: Recipient<ShardCheckpointed>,
    pub last_checkpoint: u64,
    pub allow_pipeline_change: bool,
}

/// What the assembly injects into every shard.
#[derive(Clone, Default)]
pub struct ShardOptions {
    /// Processing time (passivation, idle flush, offline detection).
    pub clock: Clock,
    #[cfg(feature = "fault-injection")]
    pub fault_hook: Option<FaultHook>,
}

pub struct ShardSupervisor {
    local: Rc<ShardLocal>,
    active: ActiveDevices,
    /// Encoded state of passivated devices.
    passive: FxHashMap<Arc<str>, PassiveDevice>,
    /// Passivated devices by the processing time their operators next act on (offline
    /// detection, idle flush): woken then, ticked and passivated again. An entry whose device
    /// was re-activated, dropped or given another deadline since is skipped when it comes up.
    deadlines: super::deadlines::DeadlineIndex,
    counters: ShardCounters,
    passivate_after_ms: i64,
    /// Most devices (active and passive) this shard holds: `runtime.max_devices` / shards.
    max_devices: usize,
    /// Devices refused since the start (for the warnings).
    refused: u64,
    /// Devices were passivated to make room since the last durable checkpoint.
    passivated_for_room: bool,
    tick_ms: Option<i64>,
    shards: usize,
    checkpointing: Option<ShardCheckpointing>,
    /// Devices created (not found anywhere) since the last barrier.
    created: u64,
    barrier_seen: u64,
    /// Event clock: the fleet's clock as the last batch left it, and when the devices are
    /// next checked for deadlines it passed.
    fleet_ms: Option<i64>,
    next_fleet_tick: i64,
    runner: run::ChunkRunner,
}

impl ShardSupervisor {
    pub fn new(
        shard: usize,
        pipeline: Arc<CompiledPipeline>,
        output: Arc<ShardOutput>,
        metrics: Arc<RuntimeMetrics>,
        options: ShardOptions,
        shards: usize,
        checkpointing: Option<ShardCheckpointing>,
    ) -> Self {
        let passivate_after_ms = pipeline.spec.runtime.passivate_after.as_millis();
        let max_devices = (pipeline.spec.runtime.max_devices.div_ceil(shards.max(1) as u64)).max(1) as usize;
        let tick_ms = pipeline.tick_interval_ms();
        let event_clock = pipeline.spec.runtime.clock == crate::spec::DecisionClock::Event;
        let runner = run::ChunkRunner::new(&pipeline, shards);
        let local = Rc::new(ShardLocal {
            shard,
            formatter: RecordFormatter::new(&pipeline),
            pipeline,
            output,
            metrics,
            #[cfg(feature = "fault-injection")]
            fault_hook: options.fault_hook,
            clock: options.clock,
            event_clock,
            scratch: RefCell::new(Vec::new()),
        });
        ShardSupervisor {
            local,
            active: ActiveDevices::default(),
            passive: FxHashMap::default(),
            deadlines: Default::default(),
            counters: ShardCounters::default(),
            passivate_after_ms,
            max_devices,
            refused: 0,
            passivated_for_room: false,
            tick_ms,
            shards,
            barrier_seen: checkpointing.as_ref().map_or(0, |c| c.last_checkpoint),
            checkpointing,
            created: 0,
            fleet_ms: None,
            next_fleet_tick: i64::MIN,
            runner,
        }
    }

    fn key_groups(&self) -> u32 {
        self.local.pipeline.spec.runtime.key_groups
    }

    /// The stored state of a device, if the store has one that restores (see
    /// [`Self::chain_from_stored`]).
    fn load(&self, device: &str) -> Option<DeviceChain> {
        let c = self.checkpointing.as_ref()?;
        let kg = key_group_of(device, self.key_groups());
        match c.store.load_device(kg, device) {
            Ok(None) => None,
            Ok(Some(bytes)) => self.chain_from_stored(device, Ok(bytes)),
            Err(e) => self.chain_from_stored(device, Err(e.to_string())),
        }
    }

    /// A device's chain from its stored value. A damaged value (or one that does not restore)
    /// is reported, and the device's state in the newest retained checkpoint that holds a sound
    /// copy is used instead (older: the readings since that checkpoint are not in it); without
    /// one the device starts afresh (`None`).
    fn chain_from_stored(&self, device: &str, stored: Result<Vec<u8>, String>) -> Option<DeviceChain> {
        let c = self.checkpointing.as_ref()?;
        let restore = |bytes: &[u8]| {
            let _span = info_span!("device_restore", device, shard = self.local.shard).entered();
            self.local
                .pipeline
                .restore_chain(device, bytes, c.allow_pipeline_change)
        };
        let damaged = match stored.and_then(|bytes| restore(&bytes).map_err(|e| e.to_string())) {
            Ok(chain) => {
                self.local.metrics.devices_loaded.fetch_add(1, Ordering::Relaxed);
                return Some(chain);
            }
            Err(e) => e,
        };
        self.local.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        let kg = key_group_of(device, self.key_groups());
        match c.store.load_device_from_retained(kg, device) {
            Some((checkpoint, bytes)) => match restore(&bytes) {
                Ok(chain) => {
                    self.local.metrics.devices_loaded.fetch_add(1, Ordering::Relaxed);
                    error!(
                        device,
                        error = %damaged,
                        checkpoint,
                        "stored device state is damaged: using its state from retained checkpoint (readings since then are not in it)"
                    );
                    Some(chain)
                }
                Err(e) => {
                    error!(device, error = %damaged, retained_error = %e, "stored device state is damaged and its retained copy does not restore: the device starts afresh");
                    None
                }
            },
            None => {
                error!(device, error = %damaged, "stored device state is damaged and no retained checkpoint holds it: the device starts afresh");
                None
            }
        }
    }

    /// Activates a device that is not active; its number in `active`.
    fn activate(&mut self, device: &str, now: i64) -> usize {
        self.activate_hashed(device, xxhash_rust::xxh3::xxh3_64(device.as_bytes()), now)
    }

    /// [`ShardSupervisor::activate`] with the xxh3 hash of the device's id.
    fn activate_hashed(&mut self, device: &str, hash: u64, now: i64) -> usize {
        let key: Arc<str> = Arc::from(device);
        // in memory from now on: its deadline comes from its chain when it is passivated
        self.deadlines.unmark_stored(&key);
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
        self.active.insert(key, hash, DeviceActor::new(chain, reactivated, now))
    }

    fn restore(&self, device: &str, bytes: &[u8]) -> DeviceChain {
        self.local
            .pipeline
            .restore_chain(device, bytes, true)
            .expect("a snapshot this process wrote itself restores")
    }

    /// At the device limit: drops passivated devices whose state the store holds (a tenth of the
    /// limit at a time, so the work is amortised); without any, passivates the least recently
    /// active tenth so that the next checkpoint frees their room. Whether there is room now.
    fn make_room(&mut self) -> bool {
        if self.checkpointing.is_none() {
            return false;
        }
        let want = (self.max_devices / 10).max(1);
        let clean: Vec<Arc<str>> = self
            .passive
            .iter()
            .filter(|(_, p)| !p.dirty)
            .map(|(k, _)| k.clone())
            .take(want)
            .collect();
        let dropped = clean.len();
        for device in clean {
            if let Some(p) = self.passive.remove(&device)
                && p.deadline.is_some()
            {
                // still due at its deadline: woken from the store then
                self.deadlines.mark_stored(&device);
            }
        }
        if dropped > 0 {
            let metrics = &self.local.metrics;
            metrics.devices_passive.fetch_sub(dropped as i64, Ordering::Relaxed);
            metrics.devices_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            self.passive.shrink_to_fit();
            debug!(
                shard = self.local.shard,
                dropped, "dropped stored passive devices from memory to make room"
            );
        }
        if self.active.len() + self.passive.len() < self.max_devices {
            return true;
        }
        // nothing stored to drop: passivate the least recently active devices, once per
        // checkpoint; the checkpoint stores them and frees their room
        if !self.passivated_for_room {
            self.passivated_for_room = true;
            let n = self.passivate_least_recently_active(want);
            debug!(
                shard = self.local.shard,
                passivated = n,
                "at the device limit: passivated the least recently active devices"
            );
        }
        false
    }

    /// A new device at the limit: its readings become dead letters, and the first refusal (then
    /// every 100,000th) is logged as a warning.
    fn refuse(&mut self, device: &str, readings: &[Reading]) {
        let local = &self.local;
        self.refused += 1;
        local.metrics.devices_refused.fetch_add(1, Ordering::Relaxed);
        let limit = local.pipeline.spec.runtime.max_devices;
        if self.refused == 1 || self.refused % 100_000 == 0 {
            warn!(
                shard = local.shard,
                devices = self.active.len() + self.passive.len(),
                refused = self.refused,
                limit,
                "device limit reached (runtime.max_devices): readings of new devices are dead letters"
            );
        }
        let reason = format!(
            "device limit reached: this shard holds {} devices (runtime.max_devices {limit} over {} shards), \
             so a new device is refused",
            self.active.len() + self.passive.len(),
            self.shards
        );
        local
            .metrics
            .dead_letters
            .fetch_add(readings.len() as u64, Ordering::Relaxed);
        for reading in readings {
            let raw = serde_json::to_vec(reading).unwrap_or_default();
            local.output.push(local.formatter.dead_letter(
                &format!("device:{device}"),
                &format!("ts {}", reading.ts),
                &reason,
                &raw,
            ));
        }
    }

    /// Passivates devices idle for at least `idle_ms`.
    fn passivate_idle(&mut self, idle_ms: i64) -> usize {
        let now = self.local.clock.now_ms();
        let idle: Vec<Arc<str>> = self
            .active
            .iter()
            .filter(|(_, d)| now - d.last_active >= idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        self.passivate(idle)
    }

    /// Passivates the `n` active devices that were active least recently (at the device limit:
    /// the next checkpoint stores them, and then their room is free).
    fn passivate_least_recently_active(&mut self, n: usize) -> usize {
        let mut by_age: Vec<(i64, Arc<str>)> = self.active.iter().map(|(k, d)| (d.last_active, k.clone())).collect();
        if by_age.len() > n {
            by_age.select_nth_unstable_by_key(n, |(at, _)| *at);
            by_age.truncate(n);
        }
        self.passivate(by_age.into_iter().map(|(_, k)| k).collect())
    }

    /// Event clock: the fleet's clock moved to `fleet_ms`. Once per tick interval of it, every
    /// device whose deadline it passed acts (each at its own deadline, [`DeviceChain::catch_up`]):
    /// devices that went silent are reported offline and flushed in event time.
    fn advance_fleet_clock(&mut self, fleet_ms: i64) {
        let fleet_ms = self.fleet_ms.map_or(fleet_ms, |f| f.max(fleet_ms));
        self.fleet_ms = Some(fleet_ms);
        if fleet_ms < self.next_fleet_tick {
            return;
        }
        self.next_fleet_tick = fleet_ms.saturating_add(self.local.pipeline.event_tick_interval_ms());
        self.tick_all(fleet_ms);
    }

    /// Every device acts on time `now`: the active ones, then the passive ones due by then.
    fn tick_all(&mut self, now: i64) {
        let local = &*self.local;
        for (id, d) in self.active.iter_mut() {
            d.tick(id, local, now);
        }
        self.tick_due_passive(now);
    }

    /// Wakes the passivated devices whose deadline has come: each is restored, ticked (its
    /// offline report, its idle flush) and passivated again. Costs nothing for the others.
    fn tick_due_passive(&mut self, now: i64) {
        let mut due = Vec::new();
        while let Some(at) = self.deadlines.next_time() {
            if at > now {
                break;
            }
            let (at, device) = self.deadlines.pop().expect("peeked");
            let current = match self.passive.get(&device) {
                Some(p) => p.deadline == Some(at),
                // read from the store at the start, and not seen since
                None => self.deadlines.unmark_stored(&device) && !self.active.contains_key(&device),
            };
            if current {
                due.push(device);
            }
        }
        if due.is_empty() {
            return;
        }
        let local = self.local.clone();
        for device in &due {
            let index = self.activate(device, now);
            let actor = &mut self.active.at_mut(index).actor;
            // (a device from the store may have had its deadline moved by a later checkpoint)
            if actor.next_deadline().is_some_and(|at| at <= now) {
                actor.tick(device, &local, now);
            }
        }
        self.counters.deadline_entries = self.deadlines.len() as u64;
        self.counters.deadline_wakeups += due.len() as u64;
        debug!(
            shard = self.local.shard,
            woken = due.len(),
            "passive devices ticked at their deadline"
        );
        self.passivate(due);
    }

    /// A device's entry in the deadline index: the old entry of a device that moves or wakes stays
    /// in the heap until it comes up (and is skipped then), so when stale entries outnumber the
    /// live ones the heap is rebuilt from the live ones: it never holds more than about twice
    /// the devices that have a deadline.
    fn push_deadline(&mut self, at: i64, device: Arc<str>) {
        self.deadlines.push(at, &device);
        let c = &mut self.counters;
        c.deadline_entries = self.deadlines.len() as u64;
        c.deadline_entries_peak = c.deadline_entries_peak.max(c.deadline_entries);
        c.deadline_bytes_peak = c.deadline_bytes_peak.max(self.deadlines.bytes() as u64);
        if self.deadlines.len() > 1024 && self.deadlines.len() > 2 * (self.passive.len() + self.deadlines.stored_len())
        {
            let (passive, active) = (&self.passive, &self.active);
            self.deadlines.compact(|at, device, stored| match passive.get(device) {
                Some(p) => p.deadline == Some(at),
                None => stored && !active.contains_key(device),
            });
            self.counters.deadline_compactions += 1;
            self.counters.deadline_entries = self.deadlines.len() as u64;
        }
    }

    fn passivate(&mut self, idle: Vec<Arc<str>>) -> usize {
        if idle.is_empty() {
            return 0;
        }
        let n = idle.len();
        let clean_as_of = self.barrier_seen;
        for device in idle {
            let actor = self.active.remove(&device).expect("listed above");
            let deadline = actor.next_deadline();
            let (bytes, dirty) = actor.passivate(&device, &self.local);
            self.passive.insert(
                device.clone(),
                PassiveDevice {
                    bytes: Arc::new(bytes),
                    dirty,
                    clean_as_of,
                    deadline,
                },
            );
            if let Some(at) = deadline {
                self.push_deadline(at, device);
            }
        }
        self.counters.passivations += n as u64;
        let metrics = &self.local.metrics;
        metrics.passivations.fetch_add(n as u64, Ordering::Relaxed);
        metrics.devices_active.fetch_sub(n as i64, Ordering::Relaxed);
        metrics.devices_passive.fetch_add(n as i64, Ordering::Relaxed);
        // give back the table of a burst of devices that went quiet (not every round: a table
        // that keeps its size is not rebuilt)
        if self.active.capacity() > 4 * self.active.len().max(1024) {
            self.active.shrink_to_fit();
        }
        debug!(
            shard = self.local.shard,
            passivated = n,
            passive = self.passive.len(),
            "passivated idle devices"
        );
        n
    }
}

impl Actor for ShardSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let check = Duration::from_millis((self.passivate_after_ms / 4).clamp(50, 10_000) as u64);
        let after = self.passivate_after_ms;
        ctx.run_interval(self.local.clock.timer_period(check), move |act, _ctx| {
            act.passivate_idle(after);
        });
        if let Some(tick) = self.tick_ms {
            self.read_stored_deadlines(ctx);
            if self.local.event_clock {
                // the fleet's clock moves with the readings (`DeviceBatches`), not with timers
                return;
            }
            let period = self.local.clock.timer_period(Duration::from_millis(tick as u64));
            ctx.run_interval(period, |act, _ctx| {
                let now = act.local.clock.now_ms();
                act.tick_all(now);
                // what the tick emitted (offline reports, idle flushes) goes out now, not with
                // the next chunk or barrier
                act.local.output.flush(None);
            });
        }
    }
}

impl Handler<RunChunk> for ShardSupervisor {
    type Result = ();

    fn handle(&mut self, RunChunk(chunk): RunChunk, _ctx: &mut Context<Self>) {
        let began = Instant::now();
        self.local.output.begin_chunk(&chunk.ticket);
        let counts = self.run_chunk(&chunk, chunk.read_at_ms);
        if counts.readings > 0 && self.counters.readings == 0 {
            tracing::info!(
                shard = self.local.shard,
                since_start_ms = crate::clock::since_start().as_secs_f64() * 1000.0,
                "first readings reached the devices"
            );
        }
        self.counters.readings += counts.readings;
        let metrics = self.local.metrics.clone();
        metrics.readings.fetch_add(counts.readings, Ordering::Relaxed);
        if let Some(source) = metrics.sources.get(chunk.end.source) {
            source.readings.fetch_add(counts.readings, Ordering::Relaxed);
            if counts.dead_letters > 0 {
                source.dead_letters.fetch_add(counts.dead_letters, Ordering::Relaxed);
            }
        }
        if let Some(fleet_ms) = self.runner.arrival.fleet_ms()
            && counts.readings > 0
        {
            self.advance_fleet_clock(fleet_ms);
        }
        // per chunk, into this shard's own slots (`/metrics`)
        if let Some(h) = metrics.timings.shard_batch_seconds.get(self.local.shard) {
            h.observe(began.elapsed().as_secs_f64());
        }
        if let Some([active, passive]) = metrics.shard_devices.get(self.local.shard) {
            active.store(self.active.len() as i64, Ordering::Relaxed);
            passive.store(self.passive.len() as i64, Ordering::Relaxed);
        }
        // the chunk's records go to the hub, and hold the chunk's place until they are written
        self.local.output.flush(Some(chunk.ticket.clone()));
    }
}

impl Handler<FinishShard> for ShardSupervisor {
    type Result = MessageResult<FinishShard>;

    fn handle(&mut self, _: FinishShard, _ctx: &mut Context<Self>) -> Self::Result {
        let flush = self.local.pipeline.spec.flush_at_end();
        if self.tick_ms.is_some() {
            let c = &self.counters;
            info!(
                shard = self.local.shard,
                entries_peak = c.deadline_entries_peak,
                bytes_peak = c.deadline_bytes_peak,
                compactions = c.deadline_compactions,
                wakeups = c.deadline_wakeups,
                "deadline index"
            );
        }
        if let Some(fleet_ms) = self.fleet_ms {
            // event clock: what the input's last readings made due happens before the end
            self.tick_all(fleet_ms);
        }
        // passive devices: restore and flush right here (no actor needed)
        let mut totals = ShardTotals::default();
        // a device, its encoded state (from the store: possibly damaged), whether from the store
        type Ending = (Arc<str>, Result<Vec<u8>, String>, bool);
        let mut passive: Vec<Ending> = self
            .passive
            .drain()
            .map(|(k, p)| (k, Ok(Arc::unwrap_or_clone(p.bytes)), false))
            .collect();
        // devices only in the store (not seen in this run) end too
        let in_memory: rustc_hash::FxHashSet<Arc<str>> = passive.iter().map(|(d, _, _)| d.clone()).collect();
        if let Some(c) = &self.checkpointing {
            let (from, to) = key_group_range(self.local.shard, self.key_groups(), self.shards);
            for item in c.store.devices_in(from, to) {
                match item {
                    Ok((device, stored)) => {
                        if !self.active.contains_key(device.as_str()) && !in_memory.contains(device.as_str()) {
                            passive.push((Arc::from(device.as_str()), stored.map_err(|e| e.to_string()), true));
                        }
                    }
                    Err(e) => {
                        self.local.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                        error!(error = %e, "the stored devices could not be read on at the end of the run");
                        break;
                    }
                }
            }
        }
        passive.sort_by(|a, b| a.0.cmp(&b.0));
        for (device, encoded, from_store) in passive {
            let mut chain = if from_store {
                match self.chain_from_stored(&device, encoded) {
                    Some(chain) => chain,
                    None => continue,
                }
            } else {
                self.restore(&device, &encoded.expect("in memory"))
            };
            if flush {
                let mut emits = Vec::new();
                chain.on_end(&mut emits);
                self.local.output.format(&self.local.formatter, &device, emits);
            }
            let c = chain.counters();
            totals.readings += c.readings;
            totals.late += c.late;
            totals.devices += 1;
        }
        let local = &*self.local;
        let mut devices: Vec<(&Arc<str>, &mut DeviceActor)> = self.active.iter_mut().collect();
        devices.sort_by(|a, b| a.0.cmp(b.0));
        for (device, actor) in devices {
            let c = actor.flush_at_end(device, local, flush);
            totals.readings += c.readings;
            totals.late += c.late;
            totals.devices += 1;
        }
        local.output.flush(None);
        MessageResult(totals)
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
    type Result = ();

    fn handle(&mut self, msg: ShardBarrier, _ctx: &mut Context<Self>) {
        let _span = info_span!("checkpoint_barrier", shard = self.local.shard, checkpoint = msg.id).entered();
        let started = Instant::now();
        let id = msg.id;
        // Every reading before the barrier has been applied (device actors take their messages
        // in the shard's order), and nothing after it has started.
        let key_groups = self.key_groups();
        let mut devices = Vec::new();
        for (device, actor) in self.active.iter_mut() {
            if let Some(bytes) = actor.snapshot_if_dirty() {
                devices.push(DeviceWrite {
                    key: device_key(key_group_of(device, key_groups), device),
                    snapshot: Arc::new(bytes),
                    deadline: actor.next_deadline(),
                });
            }
        }
        for (device, p) in self.passive.iter_mut() {
            if p.dirty {
                devices.push(DeviceWrite {
                    key: device_key(key_group_of(device, key_groups), device),
                    snapshot: p.bytes.clone(),
                    deadline: p.deadline,
                });
                p.dirty = false;
                p.clean_as_of = id;
            }
        }
        self.barrier_seen = id;
        // the records of the checkpoint's readings, then the mark
        self.local.output.flush(None);
        self.local.output.hub().do_send(BarrierReached {
            shard: self.local.shard,
            id,
        });
        let pause = started.elapsed();
        self.local
            .metrics
            .checkpoint_pause_max_us
            .fetch_max(pause.as_micros() as u64, Ordering::Relaxed);
        if let Some(c) = &self.checkpointing {
            c.checkpointer.do_send(ShardCheckpointed {
                id,
                shard: self.local.shard,
                devices,
                positions: msg.positions,
                dead_letters: self.runner.dead_letters,
                new_devices: std::mem::take(&mut self.created),
                pause,
            });
        }
    }
}

/// The deadlines of devices the store holds for this shard (read once, at the start).
#[derive(Message)]
#[rtype(result = "()")]
struct StoredDeadlines(Vec<(i64, Arc<str>)>);

impl ShardSupervisor {
    /// Reads the deadlines of the store's devices of this shard's key groups on a thread of its
    /// own and sends them here: devices that were quiet before a restart are never loaded by a
    /// reading, so without this they would never be reported offline. From the deadline index
    /// the checkpoints keep (no state decoded); from every stored state, decoded once, when the
    /// store has no complete index (written before it existed, a partition imported since) or
    /// the pipeline may have changed (`--allow-pipeline-change`: new settings, new deadlines).
    fn read_stored_deadlines(&self, ctx: &mut Context<Self>) {
        let Some(c) = &self.checkpointing else { return };
        let (store, pipeline, allow) = (c.store.clone(), self.local.pipeline.clone(), c.allow_pipeline_change);
        let (from, to) = key_group_range(self.local.shard, self.key_groups(), self.shards);
        let shard = self.local.shard;
        let addr = ctx.address();
        let from_index = store.has_deadline_index() && !allow;
        let spawned = std::thread::Builder::new()
            .name(format!("shard {shard} deadlines"))
            .spawn(move || {
                let started = Instant::now();
                let mut deadlines = Vec::new();
                let mut decoded = 0u64;
                if from_index {
                    for item in store.deadlines_in(from, to) {
                        match item {
                            Ok((device, at)) => deadlines.push((at, Arc::from(device.as_str()))),
                            Err(e) => warn!(shard, error = %e, "a deadline index entry is skipped"),
                        }
                    }
                } else {
                    for item in store.devices_in(from, to) {
                        // (a damaged device is reported when it is loaded; here it is only skipped)
                        let Ok((device, Ok(bytes))) = item else { continue };
                        decoded += 1;
                        if let Ok(chain) = pipeline.restore_chain(&device, &bytes, allow)
                            && let Some(at) = chain.next_deadline()
                        {
                            deadlines.push((at, Arc::from(device.as_str())));
                        }
                    }
                }
                tracing::info!(
                    shard,
                    decoded,
                    with_deadline = deadlines.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "{}",
                    if from_index {
                        "deadline index read"
                    } else {
                        "stored devices' deadlines read"
                    }
                );
                addr.do_send(StoredDeadlines(deadlines));
            });
        if let Err(e) = spawned {
            error!(error = %e, "the stored devices' deadlines could not be read");
        }
    }
}

impl Handler<AdoptDevices> for ShardSupervisor {
    type Result = ();

    /// Decodes the adopted devices of this shard's key groups on a thread of its own (as
    /// [`ShardSupervisor::read_stored_deadlines`] does at start) and sends their deadlines here.
    fn handle(&mut self, msg: AdoptDevices, ctx: &mut Context<Self>) {
        let Some(c) = &self.checkpointing else { return };
        let (store, pipeline, allow) = (c.store.clone(), self.local.pipeline.clone(), c.allow_pipeline_change);
        let key_groups = self.key_groups();
        let (from, to) = key_group_range(self.local.shard, key_groups, self.shards);
        let mine: Vec<(u32, String)> = msg
            .0
            .into_iter()
            .map(|d| (crate::model::keys::key_group_of(&d, key_groups), d))
            .filter(|(kg, _)| (from..to).contains(kg))
            .collect();
        if mine.is_empty() {
            return;
        }
        let shard = self.local.shard;
        let addr = ctx.address();
        let spawned = std::thread::Builder::new()
            .name(format!("shard {shard} adopt"))
            .spawn(move || {
                let mut deadlines = Vec::new();
                for (kg, device) in &mine {
                    if let Ok(Some(bytes)) = store.load_device(*kg, device)
                        && let Ok(chain) = pipeline.restore_chain(device, &bytes, allow)
                        && let Some(at) = chain.next_deadline()
                    {
                        deadlines.push((at, Arc::from(device.as_str())));
                    }
                }
                debug!(shard, devices = mine.len(), with_deadline = deadlines.len(), "adopted devices' deadlines read");
                addr.do_send(StoredDeadlines(deadlines));
            });
        if let Err(e) = spawned {
            error!(error = %e, "the adopted devices' deadlines could not be read");
        }
    }
}

impl Handler<StoredDeadlines> for ShardSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StoredDeadlines, _ctx: &mut Context<Self>) {
        for (at, device) in msg.0 {
            // a device in memory already has its own deadline
            if !self.active.contains_key(&device) && !self.passive.contains_key(&device) {
                self.deadlines.mark_stored(&device);
                self.push_deadline(at, device);
            }
        }
    }
}

impl Handler<CheckpointDone> for ShardSupervisor {
    type Result = ();

    fn handle(&mut self, msg: CheckpointDone, _ctx: &mut Context<Self>) {
        // passive devices whose state the store now holds durably need no copy in memory
        self.passivated_for_room = false;
        let before = self.passive.len();
        let deadlines = &mut self.deadlines;
        self.passive.retain(|device, p| {
            let keep = p.dirty || p.clean_as_of > msg.id;
            if !keep && p.deadline.is_some() {
                // still due at its deadline: woken from the store then
                deadlines.mark_stored(device);
            }
            keep
        });
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

impl Handler<ObserveShard> for ShardSupervisor {
    type Result = MessageResult<ObserveShard>;

    fn handle(&mut self, msg: ObserveShard, _ctx: &mut Context<Self>) -> Self::Result {
        let mut counters = self.counters;
        counters.active = self.active.len() as u64;
        counters.passive = self.passive.len() as u64;
        let devices = msg
            .devices
            .into_iter()
            .filter_map(|id| {
                let seen = match (self.active.get(id.as_str()), self.passive.get(id.as_str())) {
                    (Some(d), _) => DeviceObservation::Active {
                        counters: d.counters(),
                        last_active: d.last_active,
                    },
                    (None, Some(p)) => DeviceObservation::Passive { dirty: p.dirty },
                    (None, None) => return None,
                };
                Some((id, seen))
            })
            .collect();
        MessageResult(ShardObservation { counters, devices })
    }
}

impl Handler<EvictDevices> for ShardSupervisor {
    type Result = usize;

    fn handle(&mut self, msg: EvictDevices, _ctx: &mut Context<Self>) -> usize {
        let mut evicted = 0;
        for device in &msg.0 {
            // another member's now: its deadlines too
            self.deadlines.unmark_stored(device);
            if let Some(p) = self.passive.remove(device.as_str()) {
                if p.dirty {
                    error!(device = %device, "evicting a device with changes no checkpoint holds");
                }
                self.local.metrics.devices_passive.fetch_sub(1, Ordering::Relaxed);
                evicted += 1;
            }
            // (their state is in the store: the checkpoint before the hand-off took it)
            if self.active.remove(device.as_str()).is_some() {
                self.local.metrics.devices_active.fetch_sub(1, Ordering::Relaxed);
                evicted += 1;
            }
        }
        debug!(
            shard = self.local.shard,
            evicted, "evicted the devices of a handed-off partition"
        );
        evicted
    }
}
