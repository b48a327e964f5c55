//! Sinks: where output records end up. Each sink runs on its own thread behind a queue bounded
//! in records (a semaphore of `runtime.sink_queue` permits): blocking writes never run on an
//! async thread, and a slow sink holds the chunk tickets of what waits for it, which stops the
//! sources instead of growing memory.
//!
//! # Layout
//! - [`Sink`]: the blocking interface a sink implements.
//! - [`SinkHandle`]: the queue in front of a sink thread, with its counters.
//! - `file`: JSON lines appended to a file. `stdout`: JSON lines or readable text. `mqtt`:
//!   one message per record on a topic template.
//! - `routes`: which records go to which sinks (`outputs:` in the pipeline).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::error;

use crate::actors::ChunkTicket;
use crate::output::OutputRecord;

pub mod file;
pub mod kafka;
pub mod mqtt;
pub mod routes;
pub mod stdout;

/// A sink failed. Says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {operation}: {source}")]
    Io {
        sink: String,
        operation: &'static str,
        source: std::io::Error,
    },
    #[error("sink {sink} stopped unexpectedly")]
    Gone { sink: String },
}

impl SinkError {
    /// Whether retrying the same operation later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            SinkError::Gone { .. } => false,
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
    /// End of the run: flush and close.
    fn finish(&mut self) -> Result<u64, SinkError>;
    /// Whether the end of the run finishes this sink before the others: a notifier's end
    /// drains its deliveries, whose dead letters go to the other sinks.
    fn finishes_first(&self) -> bool {
        false
    }
}

pub enum SinkCommand {
    Write {
        records: Vec<OutputRecord>,
        _permit: OwnedSemaphorePermit,
        _ticket: Option<Arc<ChunkTicket>>,
    },
    Flush(oneshot::Sender<Result<u64, SinkError>>),
    Finish(oneshot::Sender<Result<u64, SinkError>>),
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
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
                        match sink.write(&records) {
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
                            Some(e) => Err(SinkError::Io {
                                sink: thread_name.clone(),
                                operation: "earlier write",
                                source: std::io::Error::other(e.clone()),
                            }),
                            None => sink.flush(),
                        };
                        let _ = reply.send(result);
                    }
                    SinkCommand::Finish(reply) => {
                        let result = match &failed {
                            Some(e) => Err(SinkError::Io {
                                sink: thread_name.clone(),
                                operation: "earlier write",
                                source: std::io::Error::other(e.clone()),
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
        },
        thread,
    )
}
