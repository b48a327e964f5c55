//! Sources: where readings come from. Each source runs on its own thread (blocking reads) and
//! broadcasts chunks of payloads to every shard's router through a [`ChunkFeeder`], which
//! allows only so many chunks in flight (backpressure from slow shards and sinks).
//!
//! # Layout
//! - [`ChunkFeeder`]: chunk numbering, tickets, broadcast, end of source.
//! - `lines`: JSON-lines files and standard input (full speed, or paced by event time).
//! - `simulator`: a fleet of simulated air-quality monitors.
//! - `mqtt`: an MQTT subscription (rumqttc), with manual acks.
//! - `simulator_mqtt`: `plume demo --mqtt`: the simulator publishing through the embedded broker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::Addr;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::actors::router::{RouteChunk, Router, SourceEnded};
use crate::actors::{Chunk, ChunkData, ChunkTicket, RuntimeMetrics, SourcePosition};
use crate::clock;

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
}

/// Numbers chunks, hands out tickets and broadcasts to every router.
pub struct ChunkFeeder {
    pub source: usize,
    pub name: Arc<str>,
    routers: Vec<Addr<Router>>,
    permits: Arc<Semaphore>,
    metrics: Arc<RuntimeMetrics>,
    seq: u64,
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
        }
    }

    /// Waits (blocking the calling thread) until another chunk may be in flight.
    pub fn wait_for_room(&self) -> OwnedSemaphorePermit {
        futures::executor::block_on(self.permits.clone().acquire_owned()).expect("the semaphore is never closed")
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
    pub fn send(&mut self, data: ChunkData, end_offset: u64, permit: OwnedSemaphorePermit) {
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
