//! What sources produce: chunks of payloads with their end position, and the ticket that holds
//! a chunk's place in the runtime until its results are written (backpressure).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

/// Where a chunk came from and how far its source had read after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// Index of the source in the pipeline.
    pub source: usize,
    /// How far the source had read.
    pub at: Position,
}

/// How far a source had read, in its own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A file or standard input (and the simulator's stream of lines): the byte offset after
    /// the chunk and the 1-based number of the next line.
    File { offset: u64, line: u64 },
    /// A log (the MQTT ingest log, or a per-process count when there is none): the next
    /// sequence number.
    Sequence(u64),
    /// A Kafka source: the next offset of every partition it reads, `(topic, partition,
    /// offset)` (one stored position each in the checkpoint).
    Partitions(Arc<Vec<(String, i32, i64)>>),
}

impl Position {
    /// Nothing read yet.
    pub const START: Position = Position::File { offset: 0, line: 1 };

    /// The byte offset (files) or sequence number (logs) to resume from; 0 for partitions.
    pub fn offset(&self) -> u64 {
        match self {
            Position::File { offset, .. } => *offset,
            Position::Sequence(n) => *n,
            Position::Partitions(_) => 0,
        }
    }

    /// The 1-based number of the next line (files); the sequence number for logs, as stored.
    pub fn line(&self) -> u64 {
        match self {
            Position::File { line, .. } => *line,
            Position::Sequence(n) => *n,
            Position::Partitions(_) => 0,
        }
    }
}

/// The payloads of one chunk.
#[derive(Debug)]
pub enum ChunkData {
    /// Newline-separated lines (file, stdin, simulator). `first_line` is the 1-based line
    /// number of the first line, `start_offset` its byte offset in the source.
    Lines {
        bytes: LineBytes,
        first_line: u64,
        start_offset: u64,
    },
    /// Separate messages (MQTT, Kafka), each with its own position and device capture.
    Messages(Vec<Message>),
    /// A line longer than the source could hold (over any payload limit), skipped by the source:
    /// its number, where it started, its length (without the newline), and its first bytes for
    /// the dead letter.
    SkippedLine {
        line: u64,
        start_offset: u64,
        length: u64,
        prefix: Vec<u8>,
    },
}

/// The bytes of a chunk of lines. A file source's chunks come from a [`BufferPool`] and go back
/// to it when the last router drops the chunk: a fresh 16 MiB buffer per chunk made the kernel
/// fault in and zero every page of it again (`clear_page_erms`, 2.5–17 % of a 2-shard run's
/// CPU, BENCHMARKS.md).
pub struct LineBytes {
    bytes: Vec<u8>,
    pool: Option<BufferPool>,
}

impl LineBytes {
    /// Bytes that go back to `pool` once dropped.
    pub fn pooled(bytes: Vec<u8>, pool: &BufferPool) -> Self {
        LineBytes {
            bytes,
            pool: Some(pool.clone()),
        }
    }
}

impl From<Vec<u8>> for LineBytes {
    fn from(bytes: Vec<u8>) -> Self {
        LineBytes { bytes, pool: None }
    }
}

impl std::ops::Deref for LineBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for LineBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineBytes({} bytes)", self.bytes.len())
    }
}

impl Drop for LineBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

/// Vectors handed back by dropped chunks, for the next chunks (at most `KEPT` of them are kept;
/// the rest are freed): reused, their pages are already mapped.
pub struct VecPool<T, const KEPT: usize>(Arc<std::sync::Mutex<Vec<Vec<T>>>>);

/// A file source's chunk buffers ([`LineBytes`]).
pub type BufferPool = VecPool<u8, 8>;

impl<T, const KEPT: usize> VecPool<T, KEPT> {
    /// The most vectors kept for reuse (more chunks than this are rarely in flight at once).
    pub const KEPT: usize = KEPT;

    /// An empty vector with room for at least `capacity` items: a returned one if there is one
    /// (its pages already mapped), else a new one.
    pub fn take(&self, capacity: usize) -> Vec<T> {
        let reused = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match reused {
            Some(mut items) => {
                items.clear();
                items.reserve(capacity);
                items
            }
            None => Vec::with_capacity(capacity),
        }
    }

    fn give_back(&self, items: Vec<T>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT && items.capacity() > 0 {
            kept.push(items);
        }
    }

    /// How many vectors are waiting to be reused.
    pub fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<T, const KEPT: usize> Clone for VecPool<T, KEPT> {
    fn clone(&self) -> Self {
        VecPool(self.0.clone())
    }
}

impl<T, const KEPT: usize> Default for VecPool<T, KEPT> {
    fn default() -> Self {
        VecPool(Default::default())
    }
}

impl<T, const KEPT: usize> std::fmt::Debug for VecPool<T, KEPT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VecPool").field("kept", &self.kept()).finish()
    }
}

/// One message of a message-based source.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its bytes: for MQTT, the broker's or client's own buffer (shared, not copied; the copy
    /// and its allocation were a fifth of the embedded broker's source thread).
    pub payload: bytes::Bytes,
    /// The `{device}` capture of the MQTT topic, or the Kafka record key.
    pub device_hint: Option<String>,
    /// Where it was, for dead letters.
    pub position: MessagePosition,
    /// Arrival time (epoch ms), the event time when the pipeline has no time field.
    pub arrival_ms: i64,
}

/// Where a message was, for its dead letters: kept in parts and formatted only when a dead
/// letter names it (formatting it per message cost the MQTT source an allocation and a
/// `format!` for every message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessagePosition {
    /// An MQTT message: its topic and its number (in the ingest log, or counted in this run
    /// without it).
    Mqtt { topic: String, number: u64 },
    /// A Kafka record.
    Kafka { topic: String, partition: i32, offset: i64 },
}

impl std::fmt::Display for MessagePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessagePosition::Mqtt { topic, number } => write!(f, "topic {topic} message {number}"),
            MessagePosition::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "topic {topic} partition {partition} offset {offset}"),
        }
    }
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
    /// The source's own time then: the processing time, except for a source with a clock of its
    /// own (the simulator). Lines are decoded against it (arrival time, plausible event times);
    /// messages carry their own arrival time.
    pub source_time_ms: i64,
    pub ticket: Arc<ChunkTicket>,
    /// With more than one shard, for a chunk of lines: each line's shard, found once by the
    /// runtime as the chunk enters it, so that a router reads only its own lines. `None`: every
    /// router scans every line itself.
    pub routing: Option<LineRouting>,
}

/// Where the lines of a chunk of lines go: per shard, its lines in order.
///
/// Found once per chunk, on the source's thread, by the runtime's feeder: before, every router
/// split every line and scanned its device id to find the ones it owns (about 27 ns a line
/// each, BENCHMARKS.md issue 18), so with two shards every line was split and scanned twice.
#[derive(Debug, Default)]
pub struct LineRouting {
    pub by_shard: Vec<Vec<RoutedLine>>,
    /// Where the lists go back when the chunk is dropped, for the next chunks (a fresh list of
    /// 80,000 lines per shard per chunk had its pages faulted in again each time).
    pub spare: Option<RoutedLinePool>,
}

impl Drop for LineRouting {
    fn drop(&mut self) {
        if let Some(pool) = &self.spare {
            for lines in self.by_shard.drain(..) {
                pool.give_back(lines);
            }
        }
    }
}

/// Lists of routed lines handed back by dropped chunks: four chunks' worth (the default
/// `chunks_in_flight`) of up to four shards.
pub type RoutedLinePool = VecPool<RoutedLine, 16>;

/// One line of a chunk of lines, for the shard whose list holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutedLine {
    /// Its bytes in the chunk (without the newline).
    pub start: u32,
    pub end: u32,
    /// Its number counted from the chunk's first line (0 for the first).
    pub index: u32,
    pub kind: RoutedKind,
    /// The device id's xxh3 hash (`RoutedKind::Device`), else 0.
    pub hash: u64,
}

/// What the feeder found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutedKind {
    /// A device id: the line is in its owner's list.
    Device,
    /// No device id found (a dead letter, or the decode finds one the scan could not): shard 0.
    NoDevice,
    /// Longer than `decode.max_payload_bytes`: shard 0 reports it.
    Oversized,
}

/// Held while any part of a chunk (its readings, or the records they produced) is still in
/// the runtime. The source may have only so many chunks in flight: this is the backpressure
/// that keeps memory bounded when a sink is slow.
#[derive(Debug)]
pub struct ChunkTicket {
    _permit: Option<OwnedSemaphorePermit>,
    in_flight: Option<Arc<dyn InFlight>>,
}

/// Told when a chunk's ticket is dropped (the runtime's count of chunks in flight).
pub trait InFlight: Send + Sync + std::fmt::Debug {
    fn released(&self);
}

impl ChunkTicket {
    pub fn new(permit: Option<OwnedSemaphorePermit>, in_flight: Option<Arc<dyn InFlight>>) -> Arc<Self> {
        Arc::new(ChunkTicket {
            _permit: permit,
            in_flight,
        })
    }
}

impl Drop for ChunkTicket {
    fn drop(&mut self) {
        if let Some(counter) = &self.in_flight {
            counter.released();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_position_reads_as_dead_letters_have_always_named_it() {
        let mqtt = MessagePosition::Mqtt {
            topic: "aq1/dev-7".into(),
            number: 42,
        };
        assert_eq!(mqtt.to_string(), "topic aq1/dev-7 message 42");
        let kafka = MessagePosition::Kafka {
            topic: "aq1".into(),
            partition: 3,
            offset: 17,
        };
        assert_eq!(kafka.to_string(), "topic aq1 partition 3 offset 17");
    }

    /// A pooled chunk's buffer comes back to the pool when the chunk is dropped, and the next
    /// `take` hands out that same allocation, empty; at most `KEPT` are kept, and bytes that
    /// were never pooled are not taken in.
    #[test]
    fn dropped_chunks_give_their_buffers_back_for_the_next_chunk() {
        let pool = BufferPool::default();
        let mut buffer = pool.take(1 << 16);
        assert!(buffer.capacity() >= 1 << 16);
        buffer.extend_from_slice(b"{\"device\":\"a\"}\n");
        let address = buffer.as_ptr();
        let bytes = LineBytes::pooled(buffer, &pool);
        assert_eq!(&bytes[..], b"{\"device\":\"a\"}\n");
        assert_eq!(pool.kept(), 0);
        drop(bytes);
        assert_eq!(pool.kept(), 1);
        let again = pool.take(1 << 16);
        assert_eq!(again.as_ptr(), address, "the same allocation, reused");
        assert!(again.is_empty());
        assert_eq!(pool.kept(), 0);

        let many: Vec<LineBytes> = (0..BufferPool::KEPT + 3)
            .map(|_| LineBytes::pooled(pool.take(64), &pool))
            .collect();
        drop(many);
        assert_eq!(pool.kept(), BufferPool::KEPT);

        let pool = BufferPool::default();
        drop(LineBytes::from(vec![1u8; 64]));
        assert_eq!(pool.kept(), 0);
    }
}
