//! The actor runtime: routers, shard supervisors hosting the device actors, the output hub,
//! checkpoints and the run coordinator. Connectors (sources, sinks, notifiers) see it only
//! through [`ports`].
//!
//! # Layout
//! - [`ports`]: the only part of the runtime that connectors use: [`ports::ChunkFeeder`] (a
//!   source hands chunks to the runtime and learns what is durable), [`ports::Sink`] (what a
//!   sink implements) with its queue, [`ports::PartitionOwnership`] (a partitioned source gives
//!   partitions up and takes them over).
//! - [`device`]: [`DeviceActor`](device::DeviceActor), one per active device: runs the device's
//!   operator chain, owns its state, restarts from its last good state after a panic. Hosted by
//!   its shard supervisor (not an actix actor of its own: see the module).
//! - [`shard`]: [`ShardSupervisor`](shard::ShardSupervisor), one per shard thread (an actix
//!   actor): decodes the payloads of its own key groups (so parsing runs in parallel), runs each
//!   through its device's actor, activates, passivates and restarts the device actors.
//! - [`router`]: [`Router`](router::Router), one per shard thread: takes every input chunk,
//!   aligns the sources' checkpoint barriers, and hands chunks and barriers to its shard in
//!   order; [`LineRouter`](router::LineRouter) lists each shard's lines once per chunk, on the
//!   source's thread.
//! - [`hub`]: [`OutputHub`](hub::OutputHub): fans records out to sinks over bounded queues,
//!   by the pipeline's routes ([`routes`]).
//! - [`checkpointer`]: consistent checkpoints by barriers, written on a thread of their own.
//! - [`coordinator`]: [`RunCoordinator`](coordinator::RunCoordinator): end of input, shutdown,
//!   the final summary.
//! - [`ownership`]: the runtime's side of [`ports::PartitionOwnership`].
//! - this file: what they share: the shard output buffer and the metrics.
//!
//! Data flow: source thread (lines routed to shards) -> (chunk, broadcast) -> Router of every
//! shard -> ShardSupervisor (decode, device look-up) -> DeviceActor -> shard output buffer ->
//! OutputHub -> sink queues -> sink threads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;

pub use crate::model::{Chunk, ChunkData, ChunkTicket, Message, SourcePosition, key_group_of, shard_of};
use crate::output::OutputRecord;

pub mod checkpointer;
pub mod coordinator;
pub mod deadlines;
pub mod device;
pub mod histogram;
pub mod hub;
pub mod ownership;
pub mod ports;
pub mod router;
pub mod routes;
pub mod shard;

/// Records produced on one shard thread, collected until the chunk that produced them is done,
/// or until their text reaches [`SEND_AFTER_BYTES`]. Formatted as they come into one buffer of
/// text ([`RecordBatchBuilder`]): the records point into it, so none has an allocation of its
/// own.
pub struct ShardOutput {
    pending: Mutex<PendingOutput>,
    hub: Addr<hub::OutputHub>,
    shard: usize,
}

#[derive(Default)]
struct PendingOutput {
    /// Records made from the buffers filled so far (one, unless a buffer reached its limit).
    records: Vec<OutputRecord>,
    text: crate::model::RecordBatchBuilder,
    /// The ticket of the chunk running ([`ShardOutput::begin_chunk`]): the records sent before
    /// the chunk's end hold it too, so it lives until the last of them is written.
    ticket: Option<Arc<ChunkTicket>>,
}

/// A shard sends its records to the hub once their text reaches this many bytes, not only when
/// its chunk is done. The buffer they were formatted into is then written by the sink and comes
/// back (`model::record::text_pool`) while it is still in the cache: a chunk's text grew to
/// about 3 MB per shard, and the shard wrote every record into memory it had not touched for a
/// chunk or more (formatting was 9 % of a two-shard run's samples, half of it `memmove` into
/// the buffer; 4 % after: BENCHMARKS.md, issue 18, "A shard's records sent in parts").
pub const SEND_AFTER_BYTES: usize = 512 << 10;

impl PendingOutput {
    /// Room for a record of about `bytes`: a buffer near its 32-bit limit is closed first.
    #[inline]
    fn room(&mut self, bytes: usize) -> &mut crate::model::RecordBatchBuilder {
        if self.text.near_full(bytes) {
            self.text.finish(&mut self.records);
        }
        &mut self.text
    }
}

impl ShardOutput {
    pub fn new(hub: Addr<hub::OutputHub>, shard: usize) -> Arc<Self> {
        Arc::new(ShardOutput {
            pending: Mutex::new(PendingOutput::default()),
            hub,
            shard,
        })
    }

    pub fn hub(&self) -> &Addr<hub::OutputHub> {
        &self.hub
    }

    /// A record made elsewhere (a dead letter): its text is copied into the buffer.
    pub fn push(&self, record: OutputRecord) {
        let mut pending = self.pending.lock().expect("shard output lock");
        pending.room(record.json.len() + 1).add_record(&record);
    }

    /// The chunk about to run: the records sent before it is done hold its ticket (see
    /// [`PendingOutput::ticket`]); [`ShardOutput::flush`] ends it.
    pub fn begin_chunk(&self, ticket: &Arc<ChunkTicket>) {
        self.pending.lock().expect("shard output lock").ticket = Some(ticket.clone());
    }

    /// A device's results, formatted into the buffer; sent to the hub once the buffer holds
    /// [`SEND_AFTER_BYTES`].
    pub fn format(
        &self,
        formatter: &crate::output::RecordFormatter,
        device: &str,
        emits: impl IntoIterator<Item = crate::operators::Emit>,
    ) {
        let mut pending = self.pending.lock().expect("shard output lock");
        for emit in emits {
            pending.room(4096).add_with(Some(device), |line| {
                let head = formatter.format_into(device, &emit, line);
                (Some(head.op), head.kind, head.id, head.backfill)
            });
        }
        if pending.text.text_bytes() >= SEND_AFTER_BYTES {
            let ticket = pending.ticket.clone();
            self.send(&mut pending, ticket);
        }
    }

    /// Sends the records `pending` holds to the hub with `ticket`. (Under the output's lock, so
    /// that batches reach the hub in the order they were made.)
    fn send(&self, pending: &mut PendingOutput, ticket: Option<Arc<ChunkTicket>>) {
        let mut records = std::mem::take(&mut pending.records);
        pending.text.finish(&mut records);
        self.hub.do_send(hub::RouteRecords {
            records,
            ticket,
            shard: Some(self.shard),
        });
    }

    /// Sends what has been collected to the hub, keeping `ticket` alive until it is written.
    pub fn flush(&self, ticket: Option<Arc<ChunkTicket>>) {
        let mut pending = self.pending.lock().expect("shard output lock");
        // (the batches already sent hold the chunk's ticket: without records left it goes here)
        pending.ticket = None;
        if pending.text.is_empty() && pending.records.is_empty() {
            return;
        }
        self.send(&mut pending, ticket);
    }
}

/// Live counters for the progress line and the admin view (relaxed atomics: monotonic counts).
#[derive(Debug, Default)]
pub struct RuntimeMetrics {
    pub readings: AtomicU64,
    pub dead_letters: AtomicU64,
    pub late: AtomicU64,
    pub events_open: AtomicI64,
    /// Events open now by severity: index 0 for events without one, `s + 1` for severity `s`
    /// (at most [`SEVERITY_SLOTS`] - 1).
    pub events_open_by_severity: [AtomicI64; SEVERITY_SLOTS],
    /// Records routed to the sinks per operator (by index) and kind; the last row counts the
    /// records of no operator (dead letters, summaries).
    pub records_by_operator: Vec<[AtomicU64; crate::model::RecordKind::ALL.len()]>,
    /// Bytes of device state the newest durable checkpoint wrote.
    pub last_checkpoint_bytes: AtomicU64,
    /// Per shard, by index: devices in memory (active, passive) as the shard last reported.
    pub shard_devices: Vec<[AtomicI64; 2]>,
    pub devices_active: AtomicI64,
    pub devices_passive: AtomicI64,
    pub activations: AtomicU64,
    pub passivations: AtomicU64,
    pub restarts: AtomicU64,
    pub chunks_in_flight: AtomicI64,
    pub records_waiting: AtomicI64,
    pub checkpoints: AtomicU64,
    /// Longest time a shard stopped processing for a checkpoint (µs).
    pub checkpoint_pause_max_us: AtomicU64,
    pub devices_loaded: AtomicU64,
    pub devices_evicted: AtomicU64,
    /// New devices refused because the shard held `runtime.max_devices` / shards already.
    pub devices_refused: AtomicU64,
    /// Passivated devices dropped from memory (their state is in the store) to make room.
    pub devices_dropped: AtomicU64,
    pub store_errors: AtomicU64,
    /// Why the run must stop: a sink or the store can no longer make anything durable in this
    /// process (a write failed; RocksDB stays read-only after an IO error such as a full disk),
    /// so every later checkpoint would fail. The run stops, and the next start resumes from the
    /// last durable checkpoint. Set once, by the checkpointer.
    pub stopped_by: std::sync::OnceLock<String>,
    /// Durations, as histograms (observed per checkpoint, never per reading).
    pub timings: Timings,
    /// Per source, by index (`/metrics`).
    pub sources: Vec<SourceCounters>,
    /// Wall-clock time (epoch ms) of the newest durable checkpoint of this process (0: none yet).
    pub last_checkpoint_at_ms: AtomicI64,
    pub checkpoint_failures: AtomicU64,
    /// Input refused or changed by a limit (see [`LimitCounts`]).
    pub payloads_oversized: AtomicU64,
    pub payloads_too_many_fields: AtomicU64,
    pub device_ids_refused: AtomicU64,
    pub times_implausible: AtomicU64,
}

/// How often each input limit was hit in a run (reported at its end, and by the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounts {
    /// Payloads over `decode.max_payload_bytes` (dead letters).
    pub payloads_oversized: u64,
    /// Payloads over `decode.max_fields` (dead letters).
    pub payloads_too_many_fields: u64,
    /// Device ids over `decode.max_device_id_bytes` or with control characters (dead letters).
    pub device_ids_refused: u64,
    /// Event times outside `decode.plausible_time` (dead letters, or clamped).
    pub times_implausible: u64,
    /// New devices refused at `runtime.max_devices` (dead letters).
    pub devices_refused: u64,
    /// Passive devices dropped from memory to make room (their state is in the store).
    pub devices_dropped: u64,
}

impl LimitCounts {
    /// `3 oversized payloads, 2 implausible times`: the counts that are not zero.
    pub fn describe(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.payloads_oversized, "oversized payloads"),
            (self.payloads_too_many_fields, "payloads with too many fields"),
            (self.device_ids_refused, "device ids refused"),
            (self.times_implausible, "implausible event times"),
            (self.devices_refused, "new devices refused (runtime.max_devices)"),
            (self.devices_dropped, "passive devices dropped from memory"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Histograms of durations (observed per checkpoint or per shard batch, never per reading).
#[derive(Debug, Default)]
pub struct Timings {
    /// A checkpoint from its barrier to durable (seconds).
    pub checkpoint_seconds: histogram::Histogram,
    /// Per shard, by index: how long one batch (a chunk's readings for the shard) took.
    pub shard_batch_seconds: Vec<histogram::Histogram>,
}

/// What one source brought in (counted per chunk by the routers).
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// The source's name (`file:aq1.jsonl`, `mqtt:aq1/{device}`), set when its feeder is made.
    pub name: std::sync::OnceLock<String>,
    pub readings: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Kafka: `(topic, partition, lag)` of the partitions read now (reported every second).
    pub partition_lag: std::sync::Mutex<Vec<(String, i32, i64)>>,
    /// Why the source cannot take input now (its broker is away); `None`: it can (`/readyz`).
    pub not_ready: std::sync::Mutex<Option<String>>,
    /// `(unit, amount)` of input the source holds and has not handed on yet (set per chunk).
    pub backlog: std::sync::Mutex<Option<(&'static str, i64)>>,
}

impl SourceCounters {
    /// The source's name, or its number before its feeder named it.
    pub fn label(&self, index: usize) -> String {
        self.name.get().cloned().unwrap_or_else(|| format!("source {index}"))
    }

    pub fn not_ready(&self) -> Option<String> {
        self.not_ready.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// See [`SourceCounters::backlog`].
    pub fn backlog(&self) -> Option<(&'static str, i64)> {
        *self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Severity slots of [`RuntimeMetrics::events_open_by_severity`].
pub const SEVERITY_SLOTS: usize = 9;

impl RuntimeMetrics {
    /// Counters for a run with `sources` sources, `operators` operators and `shards` shards.
    pub fn for_run(sources: usize, operators: usize, shards: usize) -> Self {
        RuntimeMetrics {
            sources: (0..sources).map(|_| SourceCounters::default()).collect(),
            records_by_operator: (0..=operators).map(|_| Default::default()).collect(),
            shard_devices: (0..shards).map(|_| Default::default()).collect(),
            timings: Timings {
                shard_batch_seconds: (0..shards).map(|_| Default::default()).collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Records routed to the sinks by [`crate::model::RecordKind`] (its index in `ALL`): the
    /// per-operator counts added up.
    pub fn records_by_kind(&self) -> [u64; crate::model::RecordKind::ALL.len()] {
        let mut total = [0; crate::model::RecordKind::ALL.len()];
        for row in &self.records_by_operator {
            for (t, n) in total.iter_mut().zip(row) {
                *t += n.load(Ordering::Relaxed);
            }
        }
        total
    }

    /// The slot of `severity` in [`RuntimeMetrics::events_open_by_severity`].
    pub fn severity_slot(severity: Option<u8>) -> usize {
        severity.map_or(0, |s| (s as usize + 1).min(SEVERITY_SLOTS - 1))
    }

    /// The limit counters now.
    pub fn limits(&self) -> LimitCounts {
        LimitCounts {
            payloads_oversized: Self::get(&self.payloads_oversized),
            payloads_too_many_fields: Self::get(&self.payloads_too_many_fields),
            device_ids_refused: Self::get(&self.device_ids_refused),
            times_implausible: Self::get(&self.times_implausible),
            devices_refused: Self::get(&self.devices_refused),
            devices_dropped: Self::get(&self.devices_dropped),
        }
    }

    /// Counts a decoding error that is a limit's.
    pub fn count_limit(&self, error: &crate::decode::DecodeError) {
        use crate::decode::DecodeError as E;
        let counter = match error {
            E::TooManyFields { .. } => &self.payloads_too_many_fields,
            E::DeviceIdTooLong { .. } | E::DeviceIdControl { .. } => &self.device_ids_refused,
            E::ImplausibleTime { .. } => &self.times_implausible,
            _ => return,
        };
        Self::add(counter, 1);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl crate::model::InFlight for RuntimeMetrics {
    fn released(&self) {
        self.chunks_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
