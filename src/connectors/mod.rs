//! Connectors: where readings come from and where results go. They use the runtime only through
//! [`crate::runtime::ports`]: a source gets a [`ChunkFeeder`](crate::runtime::ports::ChunkFeeder)
//! and runs on its own thread (blocking reads); a sink implements
//! [`Sink`](crate::runtime::ports::Sink) and runs on its own thread behind a bounded queue.
//!
//! # Layout
//! - `file`: JSON-lines files and standard input (full speed, or paced by event time) as a
//!   source; JSON lines appended to a file as a sink.
//! - `stdout`: JSON lines or readable text on standard output.
//! - `simulator`: a fleet of simulated air-quality monitors.
//! - `mqtt`: an MQTT subscription (rumqttc) with manual acks and its ingest log (RocksDB), the
//!   MQTT sink, and the embedded broker (rumqttd).
//! - `kafka`: a Kafka consumer-group source (rdkafka) with checkpointed offsets and partition
//!   hand-offs, and an idempotent Kafka sink.

pub mod file;
pub mod kafka;
pub mod mqtt;
pub mod simulator;
pub mod stdout;

/// A source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {operation}: {error}")]
    Io {
        source_name: String,
        operation: &'static str,
        error: std::io::Error,
    },
    #[error(transparent)]
    Mqtt(#[from] mqtt::source::MqttError),
    #[error(transparent)]
    Kafka(#[from] kafka::source::KafkaSourceError),
    #[error("ingest log {path}: {operation}: {error}")]
    Ingest {
        path: String,
        operation: &'static str,
        error: String,
    },
}
