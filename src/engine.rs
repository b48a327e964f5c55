//! Assembling and running the actor runtime for one pipeline.
//!
//! [`start`] builds the runtime inside a running actix `System`: sink threads and the
//! [`OutputHub`] (own arbiter), one arbiter per shard with its [`Router`] and
//! [`ShardSupervisor`], and the [`RunCoordinator`]; it returns a [`Runtime`] with the addresses
//! (for tests and the admin view) and a feeder per source. [`run`] is what `plume run` does:
//! it starts the runtime and the source threads, handles Ctrl-C (graceful: sources stop, every
//! in-flight reading is processed, windows are flushed if the pipeline says so) and returns the
//! report when the run has ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{Semaphore, oneshot};
use tracing::{info, warn};

use crate::actors::coordinator::{RunCoordinator, RunOutcome};
use crate::actors::output_hub::OutputHub;
use crate::actors::router::Router;
use crate::actors::shard::{FaultHook, ShardSupervisor};
use crate::actors::{RuntimeMetrics, ShardOutput};
use crate::config::{Pace, SinkSpec, SourceSpec};
use crate::output::{RecordFormatter, RunTotals};
use crate::pipeline::CompiledPipeline;
use crate::sinks::file::FileSink;
use crate::sinks::routes::{RouteTable, distinct_sinks};
use crate::sinks::stdout::StdoutSink;
use crate::sinks::{Sink, SinkError, SinkHandle, spawn_sink};
use crate::sources::lines::{LineInput, LineSource};
use crate::sources::{ChunkFeeder, SourceError};

/// Why a run could not start or did not end well.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("the runtime stopped before the run ended")]
    Aborted,
}

/// Sinks and the routes to them.
pub struct OutputPlan {
    pub sinks: Vec<Box<dyn Sink>>,
    pub routes: RouteTable,
}

impl OutputPlan {
    /// The pipeline's own `outputs`, or everything to one file with `--output`.
    pub fn for_pipeline(pipeline: &CompiledPipeline, output: Option<&PathBuf>) -> Result<Self, EngineError> {
        if let Some(path) = output {
            let sink = FileSink::open(path, 0)?;
            return Ok(OutputPlan {
                sinks: vec![Box::new(sink)],
                routes: RouteTable::everything_to(pipeline, 0),
            });
        }
        let (specs, of_route) = distinct_sinks(&pipeline.spec.outputs);
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        for spec in specs {
            sinks.push(match spec {
                SinkSpec::Stdout(s) => Box::new(StdoutSink::new(s.format)),
                SinkSpec::File(f) => Box::new(FileSink::open(std::path::Path::new(&f.path), 0)?),
                SinkSpec::Mqtt(m) => Box::new(crate::sinks::mqtt::MqttSink::connect(
                    &m,
                    &format!("plume-{}-out-{}", pipeline.name, sinks.len()),
                    (0..pipeline.operators.len())
                        .map(|i| pipeline.operator_name(i as _).to_string())
                        .collect(),
                )?),
                other => {
                    return Err(EngineError::Unsupported(format!(
                        "the {} sink is not built into this plume yet",
                        sink_kind(&other)
                    )));
                }
            });
        }
        Ok(OutputPlan {
            sinks,
            routes: RouteTable::compile(pipeline, &pipeline.spec.outputs, &of_route),
        })
    }
}

fn sink_kind(spec: &SinkSpec) -> &'static str {
    match spec {
        SinkSpec::Stdout(_) => "stdout",
        SinkSpec::File(_) => "file",
        SinkSpec::Webhook(_) => "webhook",
        SinkSpec::Push(_) => "push",
        SinkSpec::Mqtt(_) => "mqtt",
        SinkSpec::Kafka(_) => "kafka",
    }
}

/// Knobs of the runtime.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Shard threads (default: the pipeline's `runtime.shards`, 0 = one per core).
    pub shards: Option<usize>,
    /// Bytes per input chunk.
    pub chunk_bytes: usize,
    /// Chunks in flight across all sources (backpressure bound).
    pub chunks_in_flight: usize,
    pub fault_hook: Option<FaultHook>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            shards: None,
            chunk_bytes: 4 << 20,
            chunks_in_flight: 4,
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
    permits: Arc<Semaphore>,
    arbiters: Vec<Arbiter>,
    sink_threads: Vec<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// A feeder for source number `source` (there must be exactly `sources` of them, as given
    /// to [`start`], each ending with [`ChunkFeeder::end`]).
    pub fn feeder(&self, source: usize, name: &str) -> ChunkFeeder {
        ChunkFeeder::new(
            source,
            name,
            self.routers.clone(),
            self.permits.clone(),
            self.metrics.clone(),
        )
    }

    /// Stops the arbiters and joins the sink threads (after `done`).
    pub fn shut_down(self) {
        for a in self.arbiters {
            a.stop();
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
    let shards = shard_count(&pipeline, &options);
    let metrics = Arc::new(RuntimeMetrics::default());
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
        OutputHub::start_in_arbiter(&hub_arbiter.handle(), move |_| OutputHub::new(routes, handles))
    };
    arbiters.push(hub_arbiter);

    let coordinator_ctx = Context::<RunCoordinator>::new();
    let coordinator = coordinator_ctx.address();
    let mut supervisors = Vec::new();
    let mut routers = Vec::new();
    for shard in 0..shards {
        let arbiter = Arbiter::new();
        let output = ShardOutput::new(hub.clone());
        let supervisor = {
            let (pipeline, output, metrics, hook) = (
                pipeline.clone(),
                output.clone(),
                metrics.clone(),
                options.fault_hook.clone(),
            );
            ShardSupervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                ShardSupervisor::new(shard, pipeline, output, metrics, hook)
            })
        };
        let router = {
            let (pipeline, supervisor, metrics, coordinator) = (
                pipeline.clone(),
                supervisor.clone(),
                metrics.clone(),
                coordinator.clone(),
            );
            Router::start_in_arbiter(&arbiter.handle(), move |_| {
                Router::new(
                    shard,
                    shards,
                    &pipeline,
                    supervisor,
                    output,
                    metrics,
                    coordinator,
                    sources,
                )
            })
        };
        supervisors.push(supervisor);
        routers.push(router);
        arbiters.push(arbiter);
    }
    let (done_tx, done) = oneshot::channel();
    coordinator_ctx.run(RunCoordinator::new(
        supervisors.clone(),
        hub.clone(),
        RecordFormatter::new(&pipeline),
        metrics.clone(),
        done_tx,
    ));
    info!(pipeline = %pipeline.name, shards, sources, "runtime started");
    let runtime = Runtime {
        shards: supervisors,
        routers,
        hub,
        coordinator,
        metrics,
        sinks: sink_handles,
        permits: Arc::new(Semaphore::new(options.chunks_in_flight.max(1))),
        arbiters,
        sink_threads,
    };
    (runtime, done)
}

/// Where `plume run` reads from.
#[derive(Debug, Clone)]
pub enum InputOverride {
    File(PathBuf),
    Stdin,
}

/// Options of `plume run` / `plume demo`.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub input: Option<InputOverride>,
    pub output: Option<PathBuf>,
    pub runtime: RuntimeOptions,
    /// Print a live progress line to stderr every this often.
    pub progress: Option<Duration>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub totals: RunTotals,
    pub elapsed: Duration,
    pub shards: usize,
    pub restarts: u64,
    pub passivations: u64,
}

enum SourcePlan {
    Lines(LineSource),
    Simulator(crate::config::SimulatorSourceSpec),
    Mqtt(crate::sources::mqtt::MqttSource),
}

fn plan_sources(pipeline: &CompiledPipeline, options: &RunOptions) -> Result<Vec<(String, SourcePlan)>, EngineError> {
    let chunk_bytes = options.runtime.chunk_bytes;
    let lines = |input: LineInput, pace: Option<f64>| {
        SourcePlan::Lines(LineSource {
            input,
            start_offset: 0,
            start_line: 1,
            chunk_bytes,
            pace,
        })
    };
    if let Some(input) = &options.input {
        return Ok(vec![match input {
            InputOverride::File(p) => (format!("file:{}", p.display()), lines(LineInput::File(p.clone()), None)),
            InputOverride::Stdin => ("stdin".to_string(), lines(LineInput::Stdin, None)),
        }]);
    }
    let mut plans = Vec::new();
    for source in &pipeline.spec.sources {
        plans.push(match source {
            SourceSpec::File(f) => {
                let pace = (f.pace == Pace::EventTime).then_some(f.speed);
                (
                    format!("file:{}", f.path),
                    lines(LineInput::File(PathBuf::from(&f.path)), pace),
                )
            }
            SourceSpec::Stdin(_) => ("stdin".to_string(), lines(LineInput::Stdin, None)),
            SourceSpec::Simulator(s) => ("simulator".to_string(), SourcePlan::Simulator(s.clone())),
            SourceSpec::Mqtt(m) => (
                format!("mqtt:{}", m.topic),
                SourcePlan::Mqtt(crate::sources::mqtt::MqttSource {
                    spec: m.clone(),
                    default_client_id: format!("plume-{}-{}", pipeline.name, plans.len()),
                    stats: Default::default(),
                }),
            ),
            SourceSpec::Kafka(_) => {
                return Err(EngineError::Unsupported(
                    "the kafka source is not built into this plume yet".into(),
                ));
            }
        });
    }
    if plans.is_empty() {
        return Err(EngineError::Unsupported(
            "the pipeline has no sources: add one, or pass --input FILE".into(),
        ));
    }
    Ok(plans)
}

/// Runs a pipeline to the end of its input (or Ctrl-C). Blocks the calling thread.
pub fn run(pipeline: Arc<CompiledPipeline>, options: RunOptions) -> Result<RunReport, EngineError> {
    let sources = plan_sources(&pipeline, &options)?;
    let _broker = crate::broker::start_for(&pipeline.spec)?;
    let plan = OutputPlan::for_pipeline(&pipeline, options.output.as_ref())?;
    let system = System::new();
    let started = Instant::now();
    let result = system.block_on(async move {
        let (runtime, done) = start(pipeline.clone(), plan, sources.len(), options.runtime.clone());
        let shards = runtime.shards.len();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, (name, source)) in sources.into_iter().enumerate() {
            let feeder = runtime.feeder(index, &name);
            let stop = stop.clone();
            let decoder = pipeline.decoder.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("source {name}"))
                    .spawn(move || match source {
                        SourcePlan::Lines(s) => crate::sources::lines::run(s, feeder, decoder, stop),
                        SourcePlan::Simulator(s) => crate::sources::simulator::run(s, feeder, stop),
                        SourcePlan::Mqtt(s) => crate::sources::mqtt::run(s, feeder, stop),
                    })
                    .expect("spawning a source thread"),
            );
        }
        {
            let stop = stop.clone();
            actix_rt::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    warn!("interrupted: stopping the sources, draining and flushing (Ctrl-C again to quit at once)");
                    stop.store(true, Ordering::Relaxed);
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                }
            });
        }
        if let Some(every) = options.progress {
            let metrics = runtime.metrics.clone();
            // On a terminal the line rewrites itself; elsewhere (a pipe, a log) it is one line
            // every ten seconds.
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let every = if terminal {
                every
            } else {
                every.max(Duration::from_secs(10))
            };
            actix_rt::spawn(async move {
                let mut last = (Instant::now(), 0u64);
                loop {
                    tokio::time::sleep(every).await;
                    let readings = RuntimeMetrics::get(&metrics.readings);
                    let now = Instant::now();
                    let rate = (readings - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                    last = (now, readings);
                    let (start, end) = if terminal { ("\r\x1b[K", "") } else { ("", "\n") };
                    eprint!(
                        "{start}{:>10} readings  {:>9.0}/s  {:>6} devices  {:>4} open events  {:>5} dead letters{end}",
                        readings,
                        rate,
                        metrics.devices_active.load(Ordering::Relaxed)
                            + metrics.devices_passive.load(Ordering::Relaxed),
                        metrics.events_open.load(Ordering::Relaxed),
                        RuntimeMetrics::get(&metrics.dead_letters),
                    );
                }
            });
        }
        let outcome = done.await;
        let mut source_error = None;
        for t in threads {
            if let Ok(Err(e)) = t.join() {
                source_error.get_or_insert(e);
            }
        }
        if options.progress.is_some() {
            eprintln!();
        }
        let restarts = RuntimeMetrics::get(&runtime.metrics.restarts);
        let passivations = RuntimeMetrics::get(&runtime.metrics.passivations);
        runtime.shut_down();
        let outcome = outcome.map_err(|_| EngineError::Aborted)?;
        outcome.sink_positions?;
        if let Some(e) = source_error {
            return Err(EngineError::Source(e));
        }
        Ok::<_, EngineError>((outcome.totals, shards, restarts, passivations))
    });
    System::current().stop();
    let (totals, shards, restarts, passivations) = result?;
    Ok(RunReport {
        totals,
        elapsed: started.elapsed(),
        shards,
        restarts,
        passivations,
    })
}
