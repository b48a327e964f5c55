//! The vocabulary every layer shares: what a source produces, where it was, and how devices
//! map to key groups and shards. Depends on nothing else in plume.
//!
//! # Layout
//! - `chunk`: [`Chunk`], [`ChunkData`], [`Message`], [`SourcePosition`] (a [`Position`]: file offset, log sequence or Kafka partitions) and the [`ChunkTicket`]
//!   that holds a chunk's place in the runtime (backpressure).
//! - `record`: [`OutputRecord`] and its [`RecordKind`] (the `type` of every output record).
//! - `ids`: [`SourceId`] and [`SinkId`], the names of sources and sinks that reach disk.
//! - `keys`: [`key_group_of`] and [`shard_of`], the stable device → key group → shard mapping.
//! - `codec`: [`codec::bincode_decode`], the one way stored bytes are decoded (lengths bounded
//!   by the input, so forged values cannot claim huge allocations).
//! - `duration`: [`DurationSpec`], the strict durations of pipeline files (`500ms`, `5m`, `1h30m`).
//! - `redact`: [`redact::url`], how every log line, error and summary shows a URL (no password,
//!   path or query: they can hold secrets).
//! - `location`: [`location::Path`], a place in a pipeline file (`operators[2].hysteresis.exit`)
//!   that a problem is reported at.
//! - `json_text`: [`json_text::plain_json_string`], which bytes of a string JSON would escape,
//!   eight at a time (the decoder's fast path and the output's strings).

pub mod chunk;
pub mod codec;
pub mod duration;
pub mod ids;
pub mod json_text;
pub mod keys;
pub mod location;
pub mod record;
pub mod redact;

pub use chunk::{
    BufferPool, Chunk, ChunkData, ChunkTicket, InFlight, LineBytes, LineRouting, Message, MessagePosition, Position,
    RoutedKind, RoutedLine, RoutedLinePool, SourcePosition,
};
pub use duration::DurationSpec;
pub use ids::{NotifierKind, SinkId, SourceId};
pub use keys::{key_group_of, key_group_of_hash, shard_of};
pub use record::{OpIndex, OutputRecord, RecordBatchBuilder, RecordKind, RecordText, RecordTexts};
