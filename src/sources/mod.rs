//! Sources: where readings come from. Each source runs on its own thread (blocking reads) and
//! broadcasts chunks of payloads to every shard's router through a [`ChunkFeeder`], which
//! allows only so many chunks in flight (backpressure from slow shards and sinks).
//!
//! # Layout
//! - [`ChunkFeeder`]: chunk numbering, tickets, broadcast, end of source.
//! - `lines`: JSON-lines files and standard input (full speed, or paced by event time).
//! - `simulator`: a fleet of simulated air-quality monitors.
//! - `mqtt`: an MQTT subscription (rumqttc), with manual acks.
//! - `ingest`: the ingest log (RocksDB) where the MQTT source keeps messages before acking them.
//! - `simulator_mqtt`: `plume demo --mqtt`: the simulator publishing through the embedded broker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::Addr;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::actors::router::{RouteChunk, Router, SourceBarrier, SourceEnded};
use crate::actors::{Chunk, ChunkData, ChunkTicket, RuntimeMetrics, SourcePosition};
use crate::clock;

pub mod ingest;
pub mod kafka;
pub mod lines;
pub mod mqtt;
pub mod simulator;
pub mod simulator_mqtt;

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
    Mqtt(#[from] mqtt::MqttError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSourceError),
    #[error("ingest log {path}: {operation}: {error}")]
    Ingest {
        path: String,
        operation: &'static str,
        error: String,
    },
}

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
        }
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

    /// Sends a chunk to every router.
    pub fn send(&mut self, data: ChunkData, end_offset: u64, end_line: u64, permit: OwnedSemaphorePermit) {
        self.send_at(data, end_offset, end_line, None, permit)
    }

    /// [`ChunkFeeder::send`] with the offsets of a partitioned source (Kafka).
    pub fn send_at(
        &mut self,
        data: ChunkData,
        end_offset: u64,
        end_line: u64,
        partitions: Option<Arc<Vec<(String, i32, i64)>>>,
        permit: OwnedSemaphorePermit,
    ) {
        self.poll_barrier();
        self.seq += 1;
        self.metrics.chunks_in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = ChunkTicket::new(Some(permit), self.metrics.clone());
        let chunk = Arc::new(Chunk {
            seq: self.seq,
            source_name: self.name.clone(),
            data,
            end: SourcePosition {
                source: self.source,
                offset: end_offset,
                line: end_line,
                partitions,
            },
            read_at_ms: clock::now_ms(),
            ticket,
        });
        for router in &self.routers {
            router.do_send(RouteChunk(chunk.clone()));
        }
    }

    /// The source has no more chunks.
    pub fn end(&self) {
        for router in &self.routers {
            router.do_send(SourceEnded { source: self.source });
        }
    }
}
