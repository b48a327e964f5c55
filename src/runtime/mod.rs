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
//!   actor): activates, passivates and restarts the device actors of its key groups and
//!   delivers their messages.
//! - [`router`]: [`Router`](router::Router), one per shard thread: takes every input chunk,
//!   decodes the readings of its own key groups (so parsing runs in parallel) and hands them to
//!   its supervisor in per-device batches; bad payloads become dead letters.
//! - [`hub`]: [`OutputHub`](hub::OutputHub): fans records out to sinks over bounded queues,
//!   by the pipeline's routes ([`routes`]).
//! - [`checkpointer`]: consistent checkpoints by barriers, written on a thread of their own.
//! - [`coordinator`]: [`RunCoordinator`](coordinator::RunCoordinator): end of input, shutdown,
//!   the final summary.
//! - [`ownership`]: the runtime's side of [`ports::PartitionOwnership`].
//! - this file: what they share: the shard output buffer and the metrics.
//!
//! Data flow: source thread -> (chunk, broadcast) -> Router of every shard -> ShardSupervisor
//! -> DeviceActor -> shard output buffer -> OutputHub -> sink queues -> sink threads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;

pub use crate::model::{Chunk, ChunkData, ChunkTicket, Message, SourcePosition, key_group_of, shard_of};
use crate::output::OutputRecord;

pub mod checkpointer;
pub mod coordinator;
pub mod device;
pub mod hub;
pub mod ownership;
pub mod ports;
pub mod router;
pub mod routes;
pub mod shard;

/// Records produced on one shard thread, collected until the chunk that produced them is done.
pub struct ShardOutput {
    records: Mutex<Vec<OutputRecord>>,
    hub: Addr<hub::OutputHub>,
    shard: usize,
}

impl ShardOutput {
    pub fn new(hub: Addr<hub::OutputHub>, shard: usize) -> Arc<Self> {
        Arc::new(ShardOutput {
            records: Mutex::new(Vec::new()),
            hub,
            shard,
        })
    }

    pub fn hub(&self) -> &Addr<hub::OutputHub> {
        &self.hub
    }

    pub fn push(&self, record: OutputRecord) {
        self.records.lock().expect("shard output lock").push(record);
    }

    pub fn extend(&self, records: impl IntoIterator<Item = OutputRecord>) {
        self.records.lock().expect("shard output lock").extend(records);
    }

    /// Sends what has been collected to the hub, keeping `ticket` alive until it is written.
    pub fn flush(&self, ticket: Option<Arc<ChunkTicket>>) {
        let records = std::mem::take(&mut *self.records.lock().expect("shard output lock"));
        if !records.is_empty() {
            self.hub.do_send(hub::RouteRecords {
                records,
                ticket,
                shard: Some(self.shard),
            });
        }
    }
}

/// Shared by every device batch of one chunk on one shard: when the last batch is done (this
/// is dropped), the records they produced go to the hub in one message.
pub struct ChunkProgress {
    pub output: Arc<ShardOutput>,
    pub ticket: Arc<ChunkTicket>,
}

impl Drop for ChunkProgress {
    fn drop(&mut self) {
        self.output.flush(Some(self.ticket.clone()));
    }
}

/// Live counters for the progress line and the admin view (relaxed atomics: monotonic counts).
#[derive(Debug, Default)]
pub struct RuntimeMetrics {
    pub readings: AtomicU64,
    pub dead_letters: AtomicU64,
    pub late: AtomicU64,
    pub records: AtomicU64,
    pub events_open: AtomicI64,
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
}

impl RuntimeMetrics {
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
