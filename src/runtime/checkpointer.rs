//! [`Checkpointer`]: takes consistent checkpoints without stopping the pipeline.
//!
//! Every `checkpoint.interval` it asks the sources for a barrier (a [`BarrierSignal`]); each
//! source sends it to every router between two chunks; each router, once the barrier of every
//! open source has arrived (holding, meanwhile, what a source sends after its barrier), hands
//! it to its shard; the shard snapshots the devices changed since the last checkpoint, sends
//! the records of the checkpoint's readings to the hub followed by a mark, and reports here.
//! The hub, once every shard's mark has arrived, makes the sinks durable and reports their
//! lengths here. Then the writer thread stores everything in one synced batch and keeps a
//! retained copy; only then is the checkpoint durable (shards may drop passive copies,
//! sources may commit upstream).
//!
//! Shards pause only while their changed devices encode their state; the write runs on its
//! own thread while processing goes on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use super::router::{ForceBarrier, Router};
use super::shard::ShardSupervisor;
use super::{RuntimeMetrics, SourcePosition};
use crate::model::Position;
use crate::runtime::ports::BarrierSignal;
use crate::runtime::ports::SinkError;
use crate::store::{CheckpointRecord, CheckpointWrite, StateStore, StoredPosition, StoredSink};

/// A shard's part of checkpoint `id`.
/// Why a checkpoint did not complete. Shared by everyone waiting on the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// A sink could not make what it was given durable (flush before the commit).
    #[error("a sink could not be made durable: {0}")]
    Sink(String),
    /// The state store refused the commit or the retained copy.
    #[error("writing the checkpoint: {0}")]
    Store(String),
    /// The checkpointer or its writer thread is gone (the run is ending).
    #[error("the checkpointer stopped")]
    Stopped,
    /// The run keeps no state.
    #[error("this run takes no checkpoints")]
    Disabled,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardCheckpointed {
    pub id: u64,
    pub shard: usize,
    /// `(device key, encoded snapshot)` of the devices changed since the last checkpoint.
    pub devices: Vec<crate::store::DeviceWrite>,
    pub positions: Vec<SourcePosition>,
    /// Undecodable payloads this shard's router reported in this process.
    pub dead_letters: u64,
    /// Devices first seen since the last checkpoint.
    pub new_devices: u64,
    /// How long the shard stopped processing.
    pub pause: Duration,
}

/// The sinks' lengths once every record of checkpoint `id` is durable in them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SinksFlushed {
    pub id: u64,
    pub lengths: Result<Vec<u64>, SinkError>,
}

/// Checkpoint `id` is durable.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CheckpointDone {
    pub id: u64,
}

/// Every source has ended: take a last checkpoint now; replies once it is durable.
/// `captured` is told as soon as that checkpoint holds all it will write (every shard's devices
/// and every sink's length), before it is written: what the run does from then on (the
/// end-of-input flush) comes after it, and can go on while it is written. (Dropped unsent when
/// the checkpoint fails before.)
#[derive(Message)]
#[rtype(result = "Result<u64, CheckpointError>")]
pub struct CheckpointNow {
    pub captured: oneshot::Sender<()>,
}

/// Take a checkpoint that covers everything the sources have sent so far (a Kafka source
/// giving up partitions); replies with its id once it is durable.
#[derive(Message)]
#[rtype(result = "Result<u64, CheckpointError>")]
pub struct CheckpointSoon;

/// A source changed the store's devices itself (a Kafka source importing a hand-off, or
/// dropping a partition it handed off): the next checkpoint's device count includes `.0`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StoredDevicesChanged(pub i64);

/// The sources of a run, as checkpoints record them.
#[derive(Debug, Clone)]
pub struct SourceIdentity {
    pub name: String,
    pub fingerprint: u64,
}

/// Settings of the checkpointer.
pub struct CheckpointSettings {
    pub store: Arc<StateStore>,
    pub interval: Option<Duration>,
    pub retain: u32,
    pub pipeline: crate::store::PipelineIdentity,
    pub sources: Vec<SourceIdentity>,
    pub sinks: Vec<String>,
    /// The checkpoint this run resumed from.
    pub resumed: Option<CheckpointRecord>,
}

struct InProgress {
    id: u64,
    started: Instant,
    shards: Vec<Option<ShardCheckpointed>>,
    sinks: Option<Vec<u64>>,
    writing: bool,
    /// When each phase ended, for the checkpoint's span.
    phases: Phases,
    /// The part of [`Checkpointer::stored_devices_changed`] its record counts.
    stored_devices_changed: i64,
}

/// When the phases of a checkpoint happened (its span and its children's).
#[derive(Default)]
struct Phases {
    started_at: Option<std::time::SystemTime>,
    /// `(shard, when its part arrived, its pause, devices it encoded)`.
    shards: Vec<(usize, Instant, Duration, usize)>,
    sinks_flushed: Option<Instant>,
    write_started: Option<Instant>,
    bytes: u64,
}

impl Phases {
    /// Records the span of checkpoint `id` with a child per phase: the barrier reaching every
    /// shard (each shard's pause under it), the sinks made durable, the store write.
    /// Returns the checkpoint span's context (log lines about it are written in it).
    fn record(&self, id: u64, started: Instant, devices: u64, error: Option<String>) -> Option<crate::trace::Context> {
        use crate::trace::{Attribute, Finished, finished};
        let start = self.started_at?;
        let at = |i: Instant| start + i.saturating_duration_since(started);
        let now = Instant::now();
        let checkpoint = finished(
            Finished {
                name: "checkpoint",
                start,
                end: at(now),
                attributes: vec![
                    Attribute::new("plume.checkpoint.id", id as i64),
                    Attribute::new("plume.checkpoint.devices_written", devices as i64),
                    Attribute::new("plume.checkpoint.bytes", self.bytes as i64),
                ],
                error: error.clone(),
            },
            &crate::trace::root(),
        );
        let barriers_done = self.shards.iter().map(|s| s.1).max();
        if let Some(done) = barriers_done {
            let barrier = finished(
                Finished {
                    name: "checkpoint barrier",
                    start,
                    end: at(done),
                    attributes: vec![Attribute::new("plume.shards", self.shards.len() as i64)],
                    error: None,
                },
                &checkpoint,
            );
            for &(shard, arrived, pause, devices) in &self.shards {
                finished(
                    Finished {
                        name: "shard snapshot",
                        start: at(arrived.checked_sub(pause).unwrap_or(arrived)),
                        end: at(arrived),
                        attributes: vec![
                            Attribute::new("plume.shard", shard as i64),
                            Attribute::new("plume.devices", devices as i64),
                        ],
                        error: None,
                    },
                    &barrier,
                );
            }
        }
        if let Some(flushed) = self.sinks_flushed {
            finished(
                Finished {
                    name: "checkpoint sinks flush",
                    start: at(barriers_done.unwrap_or(started).min(flushed)),
                    end: at(flushed),
                    attributes: Vec::new(),
                    error: None,
                },
                &checkpoint,
            );
        }
        if let Some(write) = self.write_started {
            finished(
                Finished {
                    name: "checkpoint write",
                    start: at(write),
                    end: at(now),
                    attributes: Vec::new(),
                    error,
                },
                &checkpoint,
            );
        }
        Some(checkpoint)
    }
}

/// What the checkpointer has done (tests, admin view, logs).
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointerCounters {
    pub completed: u64,
    pub failed: u64,
    pub last_id: u64,
    pub last_devices: u64,
    pub last_total: Duration,
    pub last_write: Duration,
    pub max_pause: Duration,
    /// Checkpoints failed in a row since the last one that completed.
    pub failed_in_a_row: u64,
}

/// Store failures in a row after which the store is taken to be unwritable for this process.
const STORE_FAILURES_BEFORE_STOP: u64 = 3;

#[derive(Message)]
#[rtype(result = "CheckpointerCounters")]
pub struct ReportCheckpointerCounters;

/// The run is over: stop the writer thread (after what it is writing) and the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCheckpointer;

impl Handler<StopCheckpointer> for Checkpointer {
    type Result = ();

    fn handle(&mut self, _: StopCheckpointer, ctx: &mut Context<Self>) {
        self.stop_writer();
        ctx.stop();
    }
}

struct WriteJob {
    write: CheckpointWrite,
    retain: u32,
    reply: oneshot::Sender<Result<Duration, CheckpointError>>,
}

pub struct Checkpointer {
    settings: CheckpointSettings,
    routers: Vec<Addr<Router>>,
    shards: Vec<Addr<ShardSupervisor>>,
    signal: Arc<BarrierSignal>,
    metrics: Arc<RuntimeMetrics>,
    writer: std::sync::mpsc::Sender<WriteJob>,
    next_id: u64,
    /// Totals as of the last durable checkpoint.
    devices: u64,
    /// Devices the sources imported into the store (positive) or dropped from it since then.
    stored_devices_changed: i64,
    dead_letters_base: u64,
    in_progress: Option<InProgress>,
    /// The end of the sources: force barriers, then one last checkpoint, then reply.
    finishing: Option<oneshot::Sender<Result<u64, CheckpointError>>>,
    /// Told when the last checkpoint has all it will write ([`CheckpointNow::captured`]).
    final_captured: Option<oneshot::Sender<()>>,
    final_id: Option<u64>,
    counters: CheckpointerCounters,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// [`CheckpointSoon`] callers: the first checkpoint id that answers them.
    waiters: Vec<(u64, oneshot::Sender<Result<u64, CheckpointError>>)>,
}

impl Checkpointer {
    pub fn new(
        settings: CheckpointSettings,
        routers: Vec<Addr<Router>>,
        shards: Vec<Addr<ShardSupervisor>>,
        signal: Arc<BarrierSignal>,
        metrics: Arc<RuntimeMetrics>,
    ) -> Self {
        let (writer, jobs) = std::sync::mpsc::channel::<WriteJob>();
        let store = settings.store.clone();
        let writer_thread = std::thread::Builder::new()
            .name("checkpoint writer".into())
            .spawn(move || {
                while let Ok(job) = jobs.recv() {
                    let started = Instant::now();
                    let record = job.write.record.clone();
                    let devices = job.write.devices.len();
                    let result = store
                        .commit(job.write)
                        .and_then(|()| {
                            let committed = started.elapsed();
                            store.retain(&record, job.retain)?;
                            tracing::debug!(
                                checkpoint = record.id,
                                devices,
                                commit_ms = committed.as_secs_f64() * 1000.0,
                                retain_ms = (started.elapsed() - committed).as_secs_f64() * 1000.0,
                                "checkpoint written"
                            );
                            Ok(())
                        })
                        .map(|()| started.elapsed())
                        .map_err(|e| CheckpointError::Store(e.to_string()));
                    let _ = job.reply.send(result);
                }
            })
            .expect("spawning the checkpoint writer");
        let last = settings.resumed.as_ref();
        let next_id = last.map_or(1, |r| r.id + 1);
        let devices = last.map_or(0, |r| r.devices);
        let dead_letters_base = last.map_or(0, |r| r.dead_letters);
        signal.requested.store(next_id - 1, Ordering::Release);
        signal.durable.store(next_id - 1, Ordering::Release);
        Checkpointer {
            settings,
            routers,
            shards,
            signal,
            metrics,
            writer,
            next_id,
            devices,
            stored_devices_changed: 0,
            dead_letters_base,
            in_progress: None,
            finishing: None,
            final_captured: None,
            final_id: None,
            counters: Default::default(),
            writer_thread: Some(writer_thread),
            waiters: Vec::new(),
        }
    }

    fn begin(&mut self, forced: bool) {
        let id = self.next_id;
        self.next_id += 1;
        self.in_progress = Some(InProgress {
            id,
            started: Instant::now(),
            shards: (0..self.shards.len()).map(|_| None).collect(),
            sinks: None,
            writing: false,
            phases: Phases {
                started_at: Some(std::time::SystemTime::now()),
                ..Default::default()
            },
            stored_devices_changed: 0,
        });
        if forced {
            self.final_id = Some(id);
            for r in &self.routers {
                r.do_send(ForceBarrier { id });
            }
        } else {
            self.signal.requested.store(id, Ordering::Release);
        }
    }

    fn try_write(&mut self, ctx: &mut Context<Self>) {
        let Some(p) = self.in_progress.as_mut() else { return };
        if p.writing || p.sinks.is_none() || p.shards.iter().any(Option::is_none) {
            return;
        }
        p.writing = true;
        p.phases.write_started = Some(Instant::now());
        let id = p.id;
        let parts: Vec<ShardCheckpointed> = p.shards.iter_mut().map(|s| s.take().expect("checked")).collect();
        let sink_lengths = p.sinks.clone().unwrap_or_default();
        let positions = parts[0].positions.clone();
        let new_devices: u64 = parts.iter().map(|s| s.new_devices).sum();
        let dead_letters = self.dead_letters_base + parts.iter().map(|s| s.dead_letters).sum::<u64>();
        let pause = parts.iter().map(|s| s.pause).max().unwrap_or_default();
        let devices: Vec<crate::store::DeviceWrite> = parts.into_iter().flat_map(|s| s.devices).collect();
        p.phases.bytes = devices.iter().map(|d| (d.key.len() + d.snapshot.len()) as u64).sum();
        p.stored_devices_changed = self.stored_devices_changed;
        let record = CheckpointRecord {
            id,
            pipeline: self.settings.pipeline.name.clone(),
            pipeline_hash: self.settings.pipeline.hash.clone(),
            created_ms: crate::clock::now_ms(),
            sources: positions
                .iter()
                .flat_map(|p| {
                    let s = &self.settings.sources[p.source];
                    match &p.at {
                        // a Kafka source: one position per partition
                        Position::Partitions(partitions) => partitions
                            .iter()
                            .map(|(topic, partition, offset)| StoredPosition {
                                source: p.source,
                                name: crate::store::partitions::position_name(topic, *partition),
                                offset: *offset as u64,
                                line: 0,
                                fingerprint: 0,
                            })
                            .collect::<Vec<_>>(),
                        at => vec![StoredPosition {
                            source: p.source,
                            name: s.name.clone(),
                            offset: at.offset(),
                            line: at.line(),
                            fingerprint: s.fingerprint,
                        }],
                    }
                })
                .collect(),
            sinks: self
                .settings
                .sinks
                .iter()
                .zip(sink_lengths)
                .map(|(name, length)| StoredSink {
                    name: name.clone(),
                    length,
                })
                .collect(),
            dead_letters,
            devices: (self.devices as i64 + new_devices as i64 + p.stored_devices_changed).max(0) as u64,
            key_groups: self.settings.pipeline.key_groups,
            devices_written: devices.len() as u64,
        };
        let (reply, written) = oneshot::channel();
        let n = devices.len() as u64;
        let job = WriteJob {
            write: CheckpointWrite {
                record: record.clone(),
                devices,
            },
            retain: self.settings.retain,
            reply,
        };
        if self.writer.send(job).is_err() {
            self.fail(id, CheckpointError::Stopped);
            return;
        }
        if self.final_id == Some(id)
            && let Some(captured) = self.final_captured.take()
        {
            let _ = captured.send(());
        }
        ctx.wait(written.into_actor(self).map(move |result, act, _ctx| {
            let result = result.unwrap_or(Err(CheckpointError::Stopped));
            match result {
                Ok(write) => act.completed(record, n, write, pause),
                Err(e) => act.fail(id, e),
            }
        }));
    }

    fn completed(&mut self, record: CheckpointRecord, devices_written: u64, write: Duration, pause: Duration) {
        let p = self.in_progress.take().expect("a checkpoint in progress");
        self.devices = record.devices;
        self.stored_devices_changed -= p.stored_devices_changed;
        self.dead_letters_base = record.dead_letters;
        self.signal.durable.store(record.id, Ordering::Release);
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        let total = p.started.elapsed();
        self.metrics.timings.checkpoint_seconds.observe(total.as_secs_f64());
        self.metrics
            .last_checkpoint_bytes
            .store(p.phases.bytes, Ordering::Relaxed);
        let span = p.phases.record(record.id, p.started, devices_written, None);
        let _current = span.map(crate::trace::Context::attach);
        self.counters.completed += 1;
        self.counters.failed_in_a_row = 0;
        self.metrics
            .last_checkpoint_at_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        self.counters.last_id = record.id;
        self.counters.last_devices = devices_written;
        self.counters.last_total = total;
        self.counters.last_write = write;
        self.counters.max_pause = self.counters.max_pause.max(pause);
        let since = |i: Option<Instant>| {
            i.map(|i| i.saturating_duration_since(p.started).as_secs_f64() * 1000.0)
                .unwrap_or(f64::NAN)
        };
        debug!(
            checkpoint = record.id,
            barriers_ms = since(p.phases.shards.iter().map(|s| s.1).max()),
            sinks_flushed_ms = since(p.phases.sinks_flushed),
            write_started_ms = since(p.phases.write_started),
            bytes = p.phases.bytes,
            "checkpoint phases"
        );
        info!(
            checkpoint = record.id,
            devices_written,
            devices = record.devices,
            total_ms = total.as_secs_f64() * 1000.0,
            write_ms = write.as_secs_f64() * 1000.0,
            pause_ms = pause.as_secs_f64() * 1000.0,
            "checkpoint durable"
        );
        for s in &self.shards {
            s.do_send(CheckpointDone { id: record.id });
        }
        let (answered, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(needed, _)| *needed <= record.id);
        self.waiters = waiting;
        for (_, reply) in answered {
            let _ = reply.send(Ok(record.id));
        }
        if self.final_id == Some(record.id) {
            // the last checkpoint covers everything
            for (_, reply) in self.waiters.drain(..) {
                let _ = reply.send(Ok(record.id));
            }
            if let Some(reply) = self.finishing.take() {
                let _ = reply.send(Ok(record.id));
            }
        } else if self.finishing.is_some() {
            // the sources ended while this one was under way: now the last one
            self.begin(true);
        } else if !self.waiters.is_empty() {
            self.begin(false);
        }
    }

    fn stop_writer(&mut self) {
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.writer, tx));
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }

    fn fail(&mut self, id: u64, e: CheckpointError) {
        self.fail_because(id, e, false);
    }

    /// A failed checkpoint; `sink_broken`: a sink failed a write earlier and will fail every
    /// flush from now on. When nothing can become durable again in this process, the run is
    /// told to stop ([`RuntimeMetrics::stopped_by`]).
    fn fail_because(&mut self, id: u64, e: CheckpointError, sink_broken: bool) {
        let span = self
            .in_progress
            .as_ref()
            .and_then(|p| p.phases.record(id, p.started, 0, Some(e.to_string())));
        let _current = span.map(crate::trace::Context::attach);
        error!(checkpoint = id, error = %e, "checkpoint failed: the previous one stays the latest");
        self.counters.failed += 1;
        self.counters.failed_in_a_row += 1;
        self.metrics.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
        let store_broken =
            matches!(e, CheckpointError::Store(_)) && self.counters.failed_in_a_row >= STORE_FAILURES_BEFORE_STOP;
        if (sink_broken || store_broken) && self.metrics.stopped_by.set(e.to_string()).is_ok() {
            error!(
                checkpoint = id,
                last_durable = self.signal.durable.load(Ordering::Acquire),
                error = %e,
                "nothing can be made durable any more in this process: stopping the run (the next start resumes from the last durable checkpoint)"
            );
        }
        self.in_progress = None;
        for (_, reply) in self.waiters.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
        if let Some(reply) = self.finishing.take() {
            let _ = reply.send(Err(e));
        }
        // (the run's end waits for it no longer)
        self.final_captured = None;
    }
}

impl Actor for Checkpointer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(every) = self.settings.interval {
            ctx.run_interval(every, |act, _ctx| {
                if act.in_progress.is_none() && act.finishing.is_none() {
                    act.begin(false);
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.stop_writer();
    }
}

impl Handler<ShardCheckpointed> for Checkpointer {
    type Result = ();

    fn handle(&mut self, msg: ShardCheckpointed, ctx: &mut Context<Self>) {
        match self.in_progress.as_mut() {
            Some(p) if p.id == msg.id => {
                let shard = msg.shard;
                p.phases
                    .shards
                    .push((shard, Instant::now(), msg.pause, msg.devices.len()));
                p.shards[shard] = Some(msg);
            }
            _ => {
                error!(
                    checkpoint = msg.id,
                    shard = msg.shard,
                    "a shard reported a checkpoint that is not under way"
                );
                return;
            }
        }
        self.try_write(ctx);
    }
}

impl Handler<SinksFlushed> for Checkpointer {
    type Result = ();

    fn handle(&mut self, msg: SinksFlushed, ctx: &mut Context<Self>) {
        let Some(p) = self.in_progress.as_mut().filter(|p| p.id == msg.id) else {
            return;
        };
        match msg.lengths {
            Ok(lengths) => {
                p.phases.sinks_flushed = Some(Instant::now());
                p.sinks = Some(lengths);
                self.try_write(ctx);
            }
            Err(e) => {
                let broken = matches!(e, SinkError::Earlier { .. });
                self.fail_because(msg.id, CheckpointError::Sink(e.to_string()), broken);
            }
        }
    }
}

impl Handler<CheckpointNow> for Checkpointer {
    type Result = ResponseFuture<Result<u64, CheckpointError>>;

    fn handle(&mut self, msg: CheckpointNow, _ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.finishing = Some(tx);
        self.final_captured = Some(msg.captured);
        match &self.in_progress {
            // a barrier some routers never got (their sources ended first): force it through
            Some(p) if !p.writing => {
                let id = p.id;
                for r in &self.routers {
                    r.do_send(ForceBarrier { id });
                }
            }
            Some(_) => {}
            None => self.begin(true),
        }
        Box::pin(async move { rx.await.unwrap_or(Err(CheckpointError::Stopped)) })
    }
}

impl Handler<StoredDevicesChanged> for Checkpointer {
    type Result = ();

    fn handle(&mut self, msg: StoredDevicesChanged, _ctx: &mut Context<Self>) {
        self.stored_devices_changed += msg.0;
    }
}

impl Handler<CheckpointSoon> for Checkpointer {
    type Result = ResponseFuture<Result<u64, CheckpointError>>;

    fn handle(&mut self, _: CheckpointSoon, _ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        // the checkpoint under way may have its barrier before what was sent last: the next one
        let needed = self.next_id;
        self.waiters.push((needed, tx));
        if self.in_progress.is_none() && self.finishing.is_none() {
            self.begin(false);
        }
        Box::pin(async move { rx.await.unwrap_or(Err(CheckpointError::Stopped)) })
    }
}

impl Handler<ReportCheckpointerCounters> for Checkpointer {
    type Result = MessageResult<ReportCheckpointerCounters>;

    fn handle(&mut self, _: ReportCheckpointerCounters, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.counters)
    }
}
