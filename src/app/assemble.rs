//! Building the runtime inside a running actix `System`: sink threads, the hub, one arbiter
//! per shard with its router and supervisor, the checkpointer and the coordinator.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use tokio::sync::{Semaphore, oneshot};
use tracing::info;

use crate::clock::Clock;
use crate::output::RecordFormatter;
use crate::pipeline::CompiledPipeline;
use crate::runtime::checkpointer::{CheckpointSettings, Checkpointer};
use crate::runtime::coordinator::{RunCoordinator, RunOutcome};
use crate::runtime::hub::OutputHub;
use crate::runtime::ports::BarrierSignal;
use crate::runtime::ports::ChunkFeeder;
use crate::runtime::ports::{SinkHandle, spawn_sink};
use crate::runtime::router::{LineRouter, Router};
#[cfg(feature = "fault-injection")]
use crate::runtime::shard::FaultHook;
use crate::runtime::shard::{ShardCheckpointing, ShardOptions, ShardSupervisor};
use crate::runtime::{RuntimeMetrics, ShardOutput, SourcePosition};

use super::*;

/// Knobs of the runtime.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Shard threads (default: the pipeline's `runtime.shards`, 0 = one per core).
    pub shards: Option<usize>,
    /// Bytes per input chunk.
    pub chunk_bytes: usize,
    /// Chunks in flight across all sources (backpressure bound).
    pub chunks_in_flight: usize,
    /// Processing time for the whole runtime (chunks' arrival, passivation, idle flush, offline
    /// detection); tests inject a manual or accelerated one.
    pub clock: Clock,
    #[cfg(feature = "fault-injection")]
    pub fault_hook: Option<FaultHook>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            shards: None,
            chunk_bytes: 16 << 20,
            chunks_in_flight: 4,
            clock: Clock::Wall,
            #[cfg(feature = "fault-injection")]
            fault_hook: None,
        }
    }
}

/// A running runtime (inside an actix `System`).
pub struct Runtime {
    pub shards: Vec<Addr<ShardSupervisor>>,
    pub routers: Vec<Addr<Router>>,
    pub hub: Addr<OutputHub>,
    pub coordinator: Addr<RunCoordinator>,
    pub metrics: Arc<RuntimeMetrics>,
    pub sinks: Vec<SinkHandle>,
    pub checkpointer: Option<Addr<Checkpointer>>,
    permits: Arc<Semaphore>,
    barriers: Option<Arc<BarrierSignal>>,
    arbiters: Vec<Arbiter>,
    sink_threads: Vec<std::thread::JoinHandle<()>>,
    clock: Clock,
    /// With more than one shard: each chunk's lines routed once, by the sources' feeders.
    line_router: Option<Arc<LineRouter>>,
}

impl Runtime {
    /// A feeder for source number `source` (there must be exactly `sources` of them, as given
    /// to [`start`], each ending with [`ChunkFeeder::end`]).
    pub fn feeder(&self, source: usize, name: &str) -> ChunkFeeder {
        if let Some(counters) = self.metrics.sources.get(source) {
            let _ = counters.name.set(name.to_string());
        }
        let feeder = ChunkFeeder::new(
            source,
            name,
            self.routers.clone(),
            self.permits.clone(),
            self.metrics.clone(),
        )
        .with_clock(self.clock.clone())
        .with_line_router(self.line_router.clone());
        match &self.barriers {
            Some(signal) => feeder.with_barriers(signal.clone()),
            None => feeder,
        }
    }

    /// Stops the arbiters and joins the sink threads (after `done`).
    pub fn shut_down(self) {
        for a in &self.arbiters {
            a.stop();
        }
        // joined, so every actor (and what it holds, such as the state store) is gone
        for a in self.arbiters {
            let _ = a.join();
        }
        for t in self.sink_threads {
            let _ = t.join();
        }
    }
}

/// The number of shards a run uses.
pub fn shard_count(pipeline: &CompiledPipeline, options: &RuntimeOptions) -> usize {
    let configured = options.shards.unwrap_or(pipeline.spec.runtime.shards as usize);
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}

/// Builds the runtime. Must be called inside a running actix `System`. The receiver resolves
/// when the run has ended (every source ended, every device flushed, every sink closed).
pub fn start(
    pipeline: Arc<CompiledPipeline>,
    plan: OutputPlan,
    sources: usize,
    options: RuntimeOptions,
) -> (Runtime, oneshot::Receiver<RunOutcome>) {
    start_with_state(pipeline, plan, sources, options, None)
}

/// What a run with a state store needs besides the pipeline.
pub struct RunState {
    pub settings: CheckpointSettings,
    pub allow_pipeline_change: bool,
}

/// [`start`], taking part in checkpoints when `state` is given (and resuming from the
/// checkpoint it names).
pub fn start_with_state(
    pipeline: Arc<CompiledPipeline>,
    plan: OutputPlan,
    sources: usize,
    options: RuntimeOptions,
    state: Option<RunState>,
) -> (Runtime, oneshot::Receiver<RunOutcome>) {
    let shards = shard_count(&pipeline, &options);
    let metrics = Arc::new(RuntimeMetrics::for_run(sources, pipeline.operators.len(), shards));
    let resumed = state.as_ref().and_then(|s| s.settings.resumed.clone());
    let last_checkpoint = resumed.as_ref().map_or(0, |r| r.id);
    if let Some(r) = &resumed {
        metrics.dead_letters.store(r.dead_letters, Ordering::Relaxed);
    }
    let positions: Vec<SourcePosition> = (0..sources)
        .map(|source| {
            resumed
                .as_ref()
                .and_then(|r| r.sources.iter().find(|p| p.source == source))
                .map(|p| {
                    // a Kafka source keeps one position per partition: carry them all on
                    let partitions: Vec<(String, i32, i64)> = resumed
                        .iter()
                        .flat_map(|r| r.sources.iter())
                        .filter(|q| q.source == source)
                        .filter_map(|q| {
                            let (topic, partition) = crate::store::partitions::parse_position_name(&q.name)?;
                            Some((topic, partition, q.offset as i64))
                        })
                        .collect();
                    let at = if !partitions.is_empty() {
                        crate::model::Position::Partitions(Arc::new(partitions))
                    } else {
                        crate::model::Position::File {
                            offset: p.offset,
                            line: p.line,
                        }
                    };
                    SourcePosition { source, at }
                })
                .unwrap_or(SourcePosition {
                    source,
                    at: crate::model::Position::START,
                })
        })
        .collect();
    let checkpointer_ctx = state.as_ref().map(|_| Context::<Checkpointer>::new());
    let checkpointer = checkpointer_ctx.as_ref().map(|c| c.address());
    let mut sink_handles = Vec::new();
    let mut sink_threads = Vec::new();
    for sink in plan.sinks {
        let (handle, thread) = spawn_sink(sink, pipeline.spec.runtime.sink_queue);
        sink_handles.push(handle);
        sink_threads.push(thread);
    }
    let mut arbiters = Vec::new();
    let hub_arbiter = Arbiter::new();
    let hub = {
        let routes = plan.routes;
        let handles = sink_handles.clone();
        let checkpointer = checkpointer.clone().map(Addr::recipient);
        let metrics = metrics.clone();
        OutputHub::start_in_arbiter(&hub_arbiter.handle(), move |_| {
            OutputHub::new(routes, handles, shards, checkpointer, metrics)
        })
    };
    {
        let hub = hub.clone();
        plan.dead_letters.connect(move |record| {
            hub.do_send(crate::runtime::hub::RouteRecords {
                records: vec![record],
                ticket: None,
                shard: None,
            })
        });
    }
    arbiters.push(hub_arbiter);

    let coordinator_ctx = Context::<RunCoordinator>::new();
    let coordinator = coordinator_ctx.address();
    let mut supervisors = Vec::new();
    let mut routers = Vec::new();
    for shard in 0..shards {
        let arbiter = Arbiter::new();
        let output = ShardOutput::new(hub.clone(), shard);
        let checkpointing = match (&state, &checkpointer) {
            (Some(s), Some(c)) => Some(ShardCheckpointing {
                store: s.settings.store.clone(),
                checkpointer: c.clone().recipient(),
                last_checkpoint,
                allow_pipeline_change: s.allow_pipeline_change,
            }),
            _ => None,
        };
        let supervisor = {
            let (pipeline, output, metrics) = (pipeline.clone(), output.clone(), metrics.clone());
            let shard_options = ShardOptions {
                clock: options.clock.clone(),
                #[cfg(feature = "fault-injection")]
                fault_hook: options.fault_hook.clone(),
            };
            ShardSupervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                // operator settings of its own, allocated on its own thread (no atomic shared
                // with the other shards on every device clone)
                let pipeline = Arc::new(pipeline.for_one_thread());
                ShardSupervisor::new(shard, pipeline, output, metrics, shard_options, shards, checkpointing)
            })
        };
        let router = {
            let (supervisor, coordinator, positions) = (supervisor.clone(), coordinator.clone(), positions.clone());
            Router::start_in_arbiter(&arbiter.handle(), move |_| {
                Router::new(
                    shard,
                    supervisor,
                    output,
                    coordinator,
                    sources,
                    positions,
                    last_checkpoint,
                )
            })
        };
        supervisors.push(supervisor);
        routers.push(router);
        arbiters.push(arbiter);
    }
    let (done_tx, done) = oneshot::channel();
    let coordinator_actor = RunCoordinator::new(
        supervisors.clone(),
        hub.clone(),
        RecordFormatter::new(&pipeline),
        metrics.clone(),
        checkpointer.clone(),
        done_tx,
    );
    let mut barriers = None;
    if let (Some(ctx), Some(state)) = (checkpointer_ctx, state) {
        let signal = Arc::new(BarrierSignal::default());
        ctx.run(Checkpointer::new(
            state.settings,
            routers.clone(),
            supervisors.clone(),
            signal.clone(),
            metrics.clone(),
        ));
        barriers = Some(signal);
    }
    coordinator_ctx.run(coordinator_actor);
    info!(pipeline = %pipeline.name, shards, sources, "runtime started");
    let runtime = Runtime {
        shards: supervisors,
        routers,
        hub,
        coordinator,
        metrics,
        sinks: sink_handles,
        checkpointer,
        barriers,
        permits: Arc::new(Semaphore::new(options.chunks_in_flight.max(1))),
        clock: options.clock.clone(),
        arbiters,
        sink_threads,
        line_router: LineRouter::new(&pipeline, shards).map(Arc::new),
    };
    (runtime, done)
}
