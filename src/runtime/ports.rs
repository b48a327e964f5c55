//! The runtime's ports: the only things connectors (sources, sinks, notifiers) use.
//!
//! # Layout
//! - [`ChunkFeeder`]: a source hands chunks to the runtime (numbered, with tickets: at most
//!   `chunks_in_flight` alive, the backpressure), sends checkpoint barriers when asked
//!   ([`BarrierSignal`]) and learns which checkpoint is durable.
//! - [`Sink`]: the blocking interface a sink implements; [`spawn_sink`] runs it on its own
//!   thread behind a queue bounded in records ([`SinkHandle`]), so blocking writes never run on
//!   an async thread and a slow sink holds the tickets of what waits for it.
//! - [`PartitionOwnership`]: what a partitioned source (Kafka) asks of the runtime when the
//!   group moves partitions: a checkpoint covering what it read, and the eviction of the
//!   devices of partitions it gave up.
//! - [`Shutdown`]: the graceful stop a source polls, passed in by whoever runs it (Ctrl-C, the
//!   end of a demo, a test).

pub use super::histogram::{Histogram, HistogramValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use actix::Addr;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::error;

use super::RuntimeMetrics;
pub use super::checkpointer::CheckpointError;
use super::router::{LineRouter, RouteChunk, Router, SourceBarrier, SourceEnded};
use crate::clock::Clock;
use crate::model::{Chunk, ChunkData, ChunkTicket, LineRouting, Position, SourcePosition};
use crate::output::OutputRecord;

/// How the checkpointer asks the sources for a barrier, and tells them what is durable.
#[derive(Debug, Default)]
pub struct BarrierSignal {
    /// The newest checkpoint id asked for: a source sends a barrier with it before its next
    /// chunk (so the barrier sits between two chunks, at the end position of the first).
    pub requested: std::sync::atomic::AtomicU64,
    /// The newest checkpoint that is durable: upstream positions up to it may be committed.
    pub durable: std::sync::atomic::AtomicU64,
}

/// Numbers chunks, hands out tickets and broadcasts to every router.
pub struct ChunkFeeder {
    pub source: usize,
    pub name: Arc<str>,
    routers: Vec<Addr<Router>>,
    permits: Arc<Semaphore>,
    metrics: Arc<RuntimeMetrics>,
    seq: u64,
    barriers: Option<Arc<BarrierSignal>>,
    last_barrier: u64,
    /// Whether the routers were told that this source ended.
    ended: std::cell::Cell<bool>,
    /// Processing time, stamped on every chunk.
    clock: Clock,
    /// With more than one shard: finds each line's shard once, here, for every router.
    line_router: Option<Arc<LineRouter>>,
}

impl ChunkFeeder {
    pub fn new(
        source: usize,
        name: impl Into<Arc<str>>,
        routers: Vec<Addr<Router>>,
        permits: Arc<Semaphore>,
        metrics: Arc<RuntimeMetrics>,
    ) -> Self {
        ChunkFeeder {
            source,
            name: name.into(),
            routers,
            permits,
            metrics,
            seq: 0,
            barriers: None,
            last_barrier: 0,
            ended: std::cell::Cell::new(false),
            clock: Clock::Wall,
            line_router: None,
        }
    }

    /// Finds each line's shard as a chunk of lines comes in, so that each router reads only
    /// its own lines (see [`LineRouter`]).
    pub fn with_line_router(mut self, line_router: Option<Arc<LineRouter>>) -> Self {
        self.line_router = line_router;
        self
    }

    /// Stamps chunks with `clock`'s time instead of the wall clock's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Takes part in checkpoints.
    pub fn with_barriers(mut self, signal: Arc<BarrierSignal>) -> Self {
        self.last_barrier = signal.requested.load(Ordering::Acquire);
        self.barriers = Some(signal);
        self
    }

    /// Sends a checkpoint barrier if one was asked for, and returns its id. Called before every
    /// chunk; a source that may sit idle for long calls it while idle too.
    pub fn poll_barrier(&mut self) -> Option<u64> {
        if let Some(signal) = &self.barriers {
            let requested = signal.requested.load(Ordering::Acquire);
            if requested > self.last_barrier {
                self.last_barrier = requested;
                for router in &self.routers {
                    router.do_send(SourceBarrier {
                        source: self.source,
                        id: requested,
                    });
                }
                return Some(requested);
            }
        }
        None
    }

    /// The checkpoint signal, when the run takes checkpoints.
    pub fn barrier_signal(&self) -> Option<&Arc<BarrierSignal>> {
        self.barriers.as_ref()
    }

    /// The newest durable checkpoint (0: none, or no checkpoints).
    pub fn durable_checkpoint(&self) -> u64 {
        self.barriers.as_ref().map_or(0, |s| s.durable.load(Ordering::Acquire))
    }

    /// Waits (blocking the calling thread) until another chunk may be in flight.
    pub fn wait_for_room(&self) -> OwnedSemaphorePermit {
        futures::executor::block_on(self.permits.clone().acquire_owned()).expect("the semaphore is never closed")
    }

    /// Room for another chunk, if there is some now.
    pub fn try_room(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Waits (async) until another chunk may be in flight.
    pub async fn room(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Where this source says whether it can take input now (`/readyz`).
    pub fn health(&self) -> SourceHealth {
        SourceHealth {
            index: self.source,
            metrics: self.metrics.clone(),
        }
    }

    /// Sends a chunk to every router; `end` is how far the source had read after it.
    pub fn send(&mut self, data: ChunkData, end: Position, permit: OwnedSemaphorePermit) {
        let now = self.clock.now_ms();
        self.send_at(data, end, permit, now);
    }

    /// Which shard each line of a chunk goes to, for a source that routes its lines as it
    /// reads them ([`send_routed`](Self::send_routed)); `None` with one shard.
    pub fn line_router(&self) -> Option<&Arc<LineRouter>> {
        self.line_router.as_ref()
    }

    /// [`send`](Self::send) for a chunk of lines the source routed itself as it read them (with
    /// [`line_router`](Self::line_router)).
    pub fn send_routed(&mut self, data: ChunkData, routing: LineRouting, end: Position, permit: OwnedSemaphorePermit) {
        let now = self.clock.now_ms();
        self.send_with(data, Some(routing), end, permit, now, true);
    }

    /// [`send`](Self::send) for a source with a clock of its own (the simulator's simulated time):
    /// `source_time_ms` is that clock when the chunk was made, the centre of the window where the
    /// readings' event times are believed (`decode.plausible_time`).
    pub fn send_at(&mut self, data: ChunkData, end: Position, permit: OwnedSemaphorePermit, source_time_ms: i64) {
        self.send_with(data, None, end, permit, source_time_ms, true);
    }

    /// Tells the routers the source's position when it changed without a reading (a Kafka
    /// source that handed partitions off with their state): an empty chunk. No barrier is
    /// polled first, so the next checkpoint records this position, not the last chunk's.
    pub fn send_position(&mut self, end: Position, permit: OwnedSemaphorePermit) {
        let now = self.clock.now_ms();
        self.send_with(ChunkData::Messages(Vec::new()), None, end, permit, now, false);
    }

    /// Sends a chunk, after a barrier if one is asked for and `barrier_first`, routing its lines
    /// first unless `routed` already holds their routing.
    fn send_with(
        &mut self,
        data: ChunkData,
        routed: Option<LineRouting>,
        end: Position,
        permit: OwnedSemaphorePermit,
        source_time_ms: i64,
        barrier_first: bool,
    ) {
        if barrier_first {
            self.poll_barrier();
        }
        self.seq += 1;
        self.metrics.chunks_in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = ChunkTicket::new(Some(permit), Some(self.metrics.clone()));
        let routing = match (routed, &self.line_router, &data) {
            (Some(routing), _, ChunkData::Lines { .. }) => Some(routing),
            (None, Some(line_router), ChunkData::Lines { bytes, .. }) => line_router.route(bytes),
            _ => None,
        };
        let chunk = Arc::new(Chunk {
            seq: self.seq,
            source_name: self.name.clone(),
            data,
            end: SourcePosition {
                source: self.source,
                at: end,
            },
            read_at_ms: self.clock.now_ms(),
            source_time_ms,
            ticket,
            routing,
        });
        for router in &self.routers {
            router.do_send(RouteChunk(chunk.clone()));
        }
    }

    /// The source has no more chunks.
    /// The source has no more chunks. Also sent when the feeder is dropped without it (a source
    /// that failed, or panicked): the run then ends instead of waiting for it, and reports the
    /// source's error.
    pub fn end(&self) {
        if self.ended.replace(true) {
            return;
        }
        for router in &self.routers {
            router.do_send(SourceEnded { source: self.source });
        }
    }
}

impl Drop for ChunkFeeder {
    fn drop(&mut self) {
        self.end();
    }
}

/// A source's say in what `/metrics` and `/readyz` show of it: a source that cannot take input
/// (its broker is away) says why, and says when it can again; a partitioned one reports its lag.
/// Writes into the source's [`SourceCounters`](super::SourceCounters). Cheap to clone, usable
/// from any thread.
#[derive(Debug, Clone)]
pub struct SourceHealth {
    index: usize,
    metrics: Arc<RuntimeMetrics>,
}

impl SourceHealth {
    /// Health that no runtime reads (for a source's own tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        SourceHealth {
            index: 0,
            metrics: Arc::default(),
        }
    }

    fn with(&self, f: impl FnOnce(&super::SourceCounters)) {
        if let Some(counters) = self.metrics.sources.get(self.index) {
            f(counters);
        }
    }

    /// A partitioned source's lag: `(topic, partition, messages behind the newest)` of every
    /// partition it reads now.
    pub fn set_partition_lag(&self, lags: Vec<(String, i32, i64)>) {
        self.with(|c| *c.partition_lag.lock().unwrap_or_else(|e| e.into_inner()) = lags);
    }

    /// Input the source holds and has not handed on yet (`unit`: `messages`, `bytes`).
    pub fn set_backlog(&self, unit: &'static str, n: i64) {
        self.with(|c| *c.backlog.lock().unwrap_or_else(|e| e.into_inner()) = Some((unit, n)));
    }

    pub fn ready(&self) {
        self.with(|c| *c.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = None);
    }

    pub fn not_ready(&self, why: impl Into<String>) {
        let why = why.into();
        self.with(|c| *c.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(why));
    }
}

/// A sink failed. Says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or socket operation failed.
    #[error("sink {sink}: {operation}: {source}")]
    Io {
        sink: String,
        operation: &'static str,
        source: std::io::Error,
    },
    /// The system behind the sink (a broker, the outbox, the subscribers) refused or failed.
    #[error("sink {sink}: {operation}: {message}")]
    Failed {
        sink: String,
        operation: &'static str,
        message: String,
        /// Whether the same operation may succeed later (a broker that is away, a busy store).
        retryable: bool,
    },
    /// A write failed earlier; the sink takes nothing more.
    #[error("sink {sink}: an earlier write failed: {message}")]
    Earlier { sink: String, message: String },
    #[error("sink {sink} stopped unexpectedly")]
    Gone { sink: String },
}

impl SinkError {
    /// A failure of the broker behind a sink (MQTT, Kafka): it may be back later.
    pub fn broker(sink: &str, operation: &'static str, message: impl ToString) -> SinkError {
        SinkError::Failed {
            sink: sink.to_string(),
            operation,
            message: message.to_string(),
            retryable: true,
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            SinkError::Failed { retryable, .. } => *retryable,
            SinkError::Earlier { .. } | SinkError::Gone { .. } => false,
        }
    }
}

/// A blocking sink, driven by its own thread.
pub trait Sink: Send + 'static {
    /// For logs and errors (`file:out.jsonl`, `stdout`).
    fn describe(&self) -> String;
    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError>;
    /// Makes everything written so far durable; returns the sink's position (bytes for files).
    fn flush(&mut self) -> Result<u64, SinkError>;
    /// [`Sink::flush`] for checkpoint `checkpoint`: called after the checkpoint's records were
    /// written and before any later one, so a sink with state of its own (a notifier's policy)
    /// saves it here, as of the checkpoint's input position.
    fn flush_for_checkpoint(&mut self, checkpoint: u64) -> Result<u64, SinkError> {
        let _ = checkpoint;
        self.flush()
    }
    /// End of the run: flush and close.
    fn finish(&mut self) -> Result<u64, SinkError>;
    /// Whether the end of the run finishes this sink before the others: a notifier's end
    /// drains its deliveries, whose dead letters go to the other sinks.
    fn finishes_first(&self) -> bool {
        false
    }
    /// Counters the sink keeps of its own (a notifier's deliveries), for `/metrics`.
    fn counters(&self) -> Option<Arc<dyn SinkCounters>> {
        None
    }
}

/// A sink's own counters, read at each scrape from any thread.
pub trait SinkCounters: Send + Sync + std::fmt::Debug {
    /// `(metric name, value)`; the names are in the admin endpoint's list.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Gauges, as [`SinkCounters::counters`].
    fn gauges(&self) -> Vec<(&'static str, i64)> {
        Vec::new()
    }
    /// Histograms, as [`SinkCounters::counters`].
    fn histograms(&self) -> Vec<(&'static str, super::histogram::HistogramValue)> {
        Vec::new()
    }
}

pub enum SinkCommand {
    Write {
        records: Vec<OutputRecord>,
        _permit: OwnedSemaphorePermit,
        _ticket: Option<Arc<ChunkTicket>>,
    },
    Flush(oneshot::Sender<Result<u64, SinkError>>),
    /// A flush for checkpoint `id` ([`Sink::flush_for_checkpoint`]).
    Checkpoint(u64, oneshot::Sender<Result<u64, SinkError>>),
    Finish(oneshot::Sender<Result<u64, SinkError>>),
}

/// Counters of one sink.
#[derive(Debug)]
pub struct SinkStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    /// How long each batch took to write (seconds; observed per batch).
    pub write_seconds: super::histogram::Histogram,
}

impl Default for SinkStats {
    fn default() -> Self {
        SinkStats {
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            write_seconds: Default::default(),
        }
    }
}

/// The queue in front of a sink thread.
#[derive(Clone)]
pub struct SinkHandle {
    pub name: String,
    pub tx: mpsc::UnboundedSender<SinkCommand>,
    /// Permits = records the queue may still take.
    pub capacity: Arc<Semaphore>,
    pub capacity_total: usize,
    pub stats: Arc<SinkStats>,
    /// See [`Sink::finishes_first`].
    pub finishes_first: bool,
    /// See [`Sink::counters`].
    pub counters: Option<Arc<dyn SinkCounters>>,
}

impl SinkHandle {
    /// Records queued and not yet written.
    pub fn waiting(&self) -> usize {
        self.capacity_total - self.capacity.available_permits()
    }
}

/// Starts `sink` on its own thread behind a queue of `capacity` records.
pub fn spawn_sink(mut sink: Box<dyn Sink>, capacity: usize) -> (SinkHandle, JoinHandle<()>) {
    let name = sink.describe();
    let finishes_first = sink.finishes_first();
    let counters = sink.counters();
    let (tx, mut rx) = mpsc::unbounded_channel::<SinkCommand>();
    let stats = Arc::new(SinkStats::default());
    let thread_stats = stats.clone();
    let thread_name = name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("sink {name}"))
        .spawn(move || {
            let mut failed: Option<String> = None;
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    SinkCommand::Write { records, .. } => {
                        if failed.is_some() {
                            continue;
                        }
                        let began = std::time::Instant::now();
                        let written = sink.write(&records);
                        thread_stats.write_seconds.observe(began.elapsed().as_secs_f64());
                        match written {
                            Ok(()) => {
                                thread_stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                                thread_stats.batches.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                thread_stats.errors.fetch_add(1, Ordering::Relaxed);
                                error!(sink = %thread_name, error = %e, "sink write failed");
                                failed = Some(e.to_string());
                            }
                        }
                    }
                    SinkCommand::Flush(reply) => {
                        let result = match &failed {
                            Some(e) => Err(SinkError::Earlier {
                                sink: thread_name.clone(),
                                message: e.clone(),
                            }),
                            None => sink.flush(),
                        };
                        let _ = reply.send(result);
                    }
                    SinkCommand::Checkpoint(id, reply) => {
                        let result = match &failed {
                            Some(e) => Err(SinkError::Earlier {
                                sink: thread_name.clone(),
                                message: e.clone(),
                            }),
                            None => sink.flush_for_checkpoint(id),
                        };
                        let _ = reply.send(result);
                    }
                    SinkCommand::Finish(reply) => {
                        let result = match &failed {
                            Some(e) => Err(SinkError::Earlier {
                                sink: thread_name.clone(),
                                message: e.clone(),
                            }),
                            None => sink.finish(),
                        };
                        let _ = reply.send(result);
                        break;
                    }
                }
            }
        })
        .expect("spawning a sink thread");
    let capacity = capacity.max(1);
    (
        SinkHandle {
            name,
            tx,
            capacity: Arc::new(Semaphore::new(capacity)),
            capacity_total: capacity,
            stats,
            finishes_first,
            counters,
        },
        thread,
    )
}

/// What a partitioned source (Kafka) asks of the runtime when its consumer group moves
/// partitions away: a checkpoint covering everything it sent, and the eviction of the devices
/// of partitions another member takes over. The runtime implements it
/// ([`crate::runtime::ownership::RuntimeOwnership`]); the source keeps the Kafka side (commits,
/// hand-offs, its store's partition index).
pub trait PartitionOwnership: Send + Sync {
    /// Asks for a checkpoint after everything the source sent so far. The answer (the
    /// checkpoint's id once durable, or why it failed) arrives on the receiver; meanwhile the
    /// source must keep answering barriers ([`ChunkFeeder::poll_barrier`]), since the
    /// checkpoint needs its barrier.
    fn checkpoint_soon(&self) -> oneshot::Receiver<Result<u64, CheckpointError>>;
    /// Stops the active devices among `devices` and forgets their passive copies (the store,
    /// or another member, holds their state); blocks until done and returns how many were in
    /// memory.
    fn evict(&self, devices: Vec<String>) -> usize;
    /// The store now holds `devices`' state, imported from another member: their deadlines
    /// (offline, idle flush, timeouts) are taken from it, as at a restart. Does not wait.
    fn adopt(&self, devices: Vec<String>);
    /// The source changed the store's devices itself: `by` states imported (positive) or
    /// dropped (negative). The next checkpoint's count of stored devices includes it.
    fn stored_devices_changed(&self, by: i64);
}

/// A notification waiting for delivery (an outbox entry), as a partitioned source moves it to
/// another member with its device's partition: the notifier (`webhook:0`, …) whose outbox holds
/// it, its delivery id, its device, and the outbox's own versioned record of it (opaque here).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingNotification {
    pub notifier: String,
    pub id: String,
    pub device: String,
    pub record: Vec<u8>,
}

/// One device's entries in a notifier's policy state (cooldowns, suppressed starts), as a
/// partitioned source moves them with the device's partition: the notifier, the device, and
/// the notifier's own versioned record of them (opaque here).
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePolicy {
    pub notifier: String,
    pub device: String,
    pub record: Vec<u8>,
}

/// What a partitioned source (Kafka with a changelog) asks of the run's notifiers so that
/// undelivered notifications move with their devices' partitions: what every outbox has
/// pending, and taking over what another member left pending. The notifiers implement it
/// (`notify::handover::NotifierHandles`).
pub trait NotificationHandover: Send + Sync {
    /// Every notification pending in the notifiers' outboxes (held ones included).
    fn pending(&self) -> Vec<PendingNotification>;
    /// Puts `notifications` into their notifiers' outboxes and hands the new ones to delivery
    /// (those already there, acknowledged or given up are skipped). Returns how many were new.
    fn take_over(&self, notifications: Vec<PendingNotification>) -> usize;
    /// Every device's entries in the notifiers' policy states as of checkpoint `checkpoint`
    /// (the state saved with it).
    fn device_policies(&self, checkpoint: u64) -> Vec<DevicePolicy>;
    /// Merges another member's entries into the notifiers' policies before they decide on the
    /// next records.
    fn take_over_policies(&self, policies: Vec<DevicePolicy>);
}

/// A graceful stop, passed into a run and on to its sources (as mini-redis passes `shutdown` into
/// `server::run`): any clone can request it; each source checks it between reads, stops reading
/// and ends, and the run drains and flushes what is in flight. Nothing global: a test makes its
/// own and requests it when it wants.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Asks every holder to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was requested.
    #[inline]
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
