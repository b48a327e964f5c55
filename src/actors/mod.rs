//! The actor runtime: one actor per device, shard supervisors, routers, the output hub and
//! the run coordinator.
//!
//! # Layout
//! - [`device`]: [`DeviceActor`](device::DeviceActor), one per active device: runs the device's
//!   operator chain, owns its state, restarts from its last good state after a panic. Hosted by
//!   its shard supervisor (not an actix actor of its own: see the module).
//! - [`shard`]: [`ShardSupervisor`](shard::ShardSupervisor), one per shard thread (an actix
//!   actor): activates, passivates and restarts the device actors of its key groups and
//!   delivers their messages.
//! - [`router`]: [`Router`](router::Router), one per shard thread: takes every input chunk,
//!   decodes the readings of its own key groups (so parsing runs in parallel) and hands them to
//!   its supervisor in per-device batches; bad payloads become dead letters.
//! - [`output_hub`]: [`OutputHub`](output_hub::OutputHub): fans records out to sinks over
//!   bounded queues.
//! - [`coordinator`]: [`RunCoordinator`](coordinator::RunCoordinator): end of input, shutdown,
//!   the final summary.
//! - this file: what they share: chunks and their tickets (backpressure), the shard output
//!   buffer, key groups, metrics.
//!
//! Data flow: source thread -> (chunk, broadcast) -> Router of every shard -> ShardSupervisor
//! -> DeviceActor -> shard output buffer -> OutputHub -> sink queues -> sink threads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;
use tokio::sync::OwnedSemaphorePermit;

use crate::output::OutputRecord;

pub mod checkpointer;
pub mod coordinator;
pub mod device;
pub mod output_hub;
pub mod router;
pub mod shard;

/// The key group of a device: a stable hash of its id, modulo the fixed number of key groups.
/// (xxh3 is a specified algorithm: the mapping does not change between versions or machines.)
pub fn key_group_of(device: &str, key_groups: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(device.as_bytes()) % key_groups as u64) as u32
}

/// The shard that owns a key group: contiguous ranges of key groups per shard.
pub fn shard_of(key_group: u32, key_groups: u32, shards: usize) -> usize {
    (key_group as u64 * shards as u64 / key_groups as u64) as usize
}

/// Where a chunk came from and how far its source had read after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// Index of the source in the pipeline.
    pub source: usize,
    /// Source-specific position after this chunk (the file source: byte offset).
    pub offset: u64,
    /// The file source: the 1-based number of the next line.
    pub line: u64,
    /// A Kafka source: the next offset of every partition it reads, `(topic, partition,
    /// offset)` (one stored position each in the checkpoint).
    pub partitions: Option<Arc<Vec<(String, i32, i64)>>>,
}

/// The payloads of one chunk.
#[derive(Debug)]
pub enum ChunkData {
    /// Newline-separated lines (file, stdin, simulator). `first_line` is the 1-based line
    /// number of the first line, `start_offset` its byte offset in the source.
    Lines {
        bytes: Vec<u8>,
        first_line: u64,
        start_offset: u64,
    },
    /// Separate messages (MQTT, Kafka), each with its own position and device capture.
    Messages(Vec<Message>),
}

/// One message of a message-based source.
#[derive(Debug, Clone)]
pub struct Message {
    pub payload: Vec<u8>,
    /// The `{device}` capture of the MQTT topic, or the Kafka record key.
    pub device_hint: Option<String>,
    /// Human-readable position for dead letters (`topic aq1/x`, `partition 2 offset 17`).
    pub position: String,
    /// Arrival time (epoch ms), the event time when the pipeline has no time field.
    pub arrival_ms: i64,
}

/// A chunk of input, broadcast to every shard's router.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    /// `file:PATH`, `stdin`, `simulator`, … (for dead letters).
    pub source_name: Arc<str>,
    pub data: ChunkData,
    pub end: SourcePosition,
    /// Processing time at which the chunk was read.
    pub read_at_ms: i64,
    pub ticket: Arc<ChunkTicket>,
}

/// Held while any part of a chunk (its readings, or the records they produced) is still in
/// the runtime. The source may have only so many chunks in flight: this is the backpressure
/// that keeps memory bounded when a sink is slow.
#[derive(Debug)]
pub struct ChunkTicket {
    _permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<RuntimeMetrics>,
}

impl ChunkTicket {
    pub fn new(permit: Option<OwnedSemaphorePermit>, metrics: Arc<RuntimeMetrics>) -> Arc<Self> {
        Arc::new(ChunkTicket {
            _permit: permit,
            metrics,
        })
    }
}

impl Drop for ChunkTicket {
    fn drop(&mut self) {
        self.metrics.chunks_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records produced on one shard thread, collected until the chunk that produced them is done.
pub struct ShardOutput {
    records: Mutex<Vec<OutputRecord>>,
    hub: Addr<output_hub::OutputHub>,
    shard: usize,
}

impl ShardOutput {
    pub fn new(hub: Addr<output_hub::OutputHub>, shard: usize) -> Arc<Self> {
        Arc::new(ShardOutput {
            records: Mutex::new(Vec::new()),
            hub,
            shard,
        })
    }

    pub fn hub(&self) -> &Addr<output_hub::OutputHub> {
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
            self.hub.do_send(output_hub::RouteRecords {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_stable_and_spread() {
        // fixed values: the mapping must never change (stored state is laid out by it)
        assert_eq!(key_group_of("dev-000001", 256), key_group_of("dev-000001", 256));
        let mut counts = vec![0u32; 256];
        for i in 0..25_600 {
            counts[key_group_of(&format!("dev-{i:06}"), 256) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50 && c < 150), "{counts:?}");
        let shards: Vec<usize> = (0..256).map(|kg| shard_of(kg, 256, 3)).collect();
        assert_eq!(shards[0], 0);
        assert_eq!(shards[255], 2);
        assert!(shards.windows(2).all(|w| w[0] <= w[1]));
    }
}
