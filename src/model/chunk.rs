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
        bytes: Vec<u8>,
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
    /// The source's own time then: the processing time, except for a source with a clock of its
    /// own (the simulator). Lines are decoded against it (arrival time, plausible event times);
    /// messages carry their own arrival time.
    pub source_time_ms: i64,
    pub ticket: Arc<ChunkTicket>,
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
