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

use crate::actors::checkpointer::{CheckpointSettings, Checkpointer, SourceIdentity};
use crate::actors::coordinator::{RunCoordinator, RunOutcome};
use crate::actors::output_hub::{OutputHub, SetCheckpointer};
use crate::actors::router::Router;
use crate::actors::shard::{FaultHook, ShardCheckpointing, ShardSupervisor};
use crate::actors::{RuntimeMetrics, ShardOutput, SourcePosition};
use crate::config::{Pace, SinkSpec, SourceSpec};
use crate::output::{RecordFormatter, RunTotals};
use crate::pipeline::CompiledPipeline;
use crate::sinks::file::FileSink;
use crate::sinks::routes::{RouteTable, distinct_sinks};
use crate::sinks::stdout::StdoutSink;
use crate::sinks::{Sink, SinkError, SinkHandle, spawn_sink};
use crate::sources::BarrierSignal;
use crate::sources::lines::{LineInput, LineSource};
use crate::sources::{ChunkFeeder, SourceError};
use crate::store::{PipelineIdentity, StateStore, StoreError};

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
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error("the runtime stopped before the run ended")]
    Aborted,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Resume(String),
    #[error("the last checkpoint of the run failed: {0}")]
    Checkpoint(String),
}

/// Sinks and the routes to them.
pub struct OutputPlan {
    pub sinks: Vec<Box<dyn Sink>>,
    pub routes: RouteTable,
    /// The notifiers' dead letters, routed like every other dead letter once the hub runs.
    pub dead_letters: crate::notify::DeadLetterOutlet,
}

impl OutputPlan {
    /// The pipeline's own `outputs`, or everything to one file with `--output`. File sinks
    /// are cut back to `keep(name)` bytes (the length the resumed checkpoint recorded);
    /// notifiers keep their outboxes in `store` when the run has one.
    pub fn for_pipeline(
        pipeline: &CompiledPipeline,
        output: Option<&PathBuf>,
        keep: &dyn Fn(&str) -> u64,
        store: Option<&crate::notify::NotifyStore>,
    ) -> Result<Self, EngineError> {
        let file_sink = |path: &std::path::Path| FileSink::open(path, keep(&FileSink::name_of(path)));
        let dead_letters = crate::notify::DeadLetterOutlet::default();
        if let Some(path) = output {
            let sink = file_sink(path)?;
            return Ok(OutputPlan {
                sinks: vec![Box::new(sink)],
                routes: RouteTable::everything_to(pipeline, 0),
                dead_letters,
            });
        }
        let (specs, of_route) = distinct_sinks(&pipeline.spec.outputs);
        let names = names_of(&specs);
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        for (spec, name) in specs.into_iter().zip(names) {
            sinks.push(match spec {
                SinkSpec::Stdout(s) => Box::new(StdoutSink::new(s.format)),
                SinkSpec::File(f) => Box::new(file_sink(std::path::Path::new(&f.path))?),
                SinkSpec::Webhook(_) | SinkSpec::Push(_) => Box::new(crate::notify::notifier_for(
                    pipeline,
                    &spec,
                    &name,
                    store,
                    dead_letters.clone(),
                )?),
                SinkSpec::Mqtt(m) => Box::new(crate::sinks::mqtt::MqttSink::connect(
                    &m,
                    &format!("plume-{}-out-{}", pipeline.name, sinks.len()),
                    (0..pipeline.operators.len())
                        .map(|i| pipeline.operator_name(i as _).to_string())
                        .collect(),
                )?),
                SinkSpec::Kafka(k) => Box::new(crate::sinks::kafka::KafkaSink::connect(
                    &k,
                    &format!("plume-{}-out-{}", pipeline.name, sinks.len()),
                )?),
            });
        }
        Ok(OutputPlan {
            sinks,
            routes: RouteTable::compile(pipeline, &pipeline.spec.outputs, &of_route),
            dead_letters,
        })
    }
}

/// The stable name of each sink: `file:<path>`, `stdout`, …; notifiers `<kind>:<n>` (`webhook:0`,
/// `fcm:0`, `apns:1`: the n-th of its kind in the order the outputs list them), which names their
/// outbox in the store, so a changed URL keeps its pending deliveries.
fn names_of(specs: &[SinkSpec]) -> Vec<String> {
    let mut counts: std::collections::HashMap<&'static str, usize> = Default::default();
    specs
        .iter()
        .map(|spec| {
            let kind = match spec {
                SinkSpec::File(f) => return FileSink::name_of(std::path::Path::new(&f.path)),
                SinkSpec::Webhook(_) => "webhook",
                SinkSpec::Push(crate::config::PushSinkSpec::Fcm(_)) => "fcm",
                SinkSpec::Push(crate::config::PushSinkSpec::Apns(_)) => "apns",
                SinkSpec::Push(crate::config::PushSinkSpec::Ntfy(_)) => "ntfy",
                other => return sink_kind(other).to_string(),
            };
            let n = counts.entry(kind).or_default();
            *n += 1;
            format!("{kind}:{}", *n - 1)
        })
        .collect()
}

/// The names of the sinks a run will have, in order (as checkpoints record their lengths).
pub fn sink_names(pipeline: &CompiledPipeline, output: Option<&PathBuf>) -> Vec<String> {
    if let Some(path) = output {
        return vec![FileSink::name_of(path)];
    }
    let (specs, _) = distinct_sinks(&pipeline.spec.outputs);
    names_of(&specs)
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
            chunk_bytes: 16 << 20,
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
    pub checkpointer: Option<Addr<Checkpointer>>,
    permits: Arc<Semaphore>,
    barriers: Option<Arc<BarrierSignal>>,
    arbiters: Vec<Arbiter>,
    sink_threads: Vec<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// A feeder for source number `source` (there must be exactly `sources` of them, as given
    /// to [`start`], each ending with [`ChunkFeeder::end`]).
    pub fn feeder(&self, source: usize, name: &str) -> ChunkFeeder {
        let feeder = ChunkFeeder::new(
            source,
            name,
            self.routers.clone(),
            self.permits.clone(),
            self.metrics.clone(),
        );
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
    let metrics = Arc::new(RuntimeMetrics::default());
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
                    SourcePosition {
                        source,
                        offset: p.offset,
                        line: p.line,
                        partitions: (!partitions.is_empty()).then(|| Arc::new(partitions)),
                    }
                })
                .unwrap_or(SourcePosition {
                    source,
                    offset: 0,
                    line: 1,
                    partitions: None,
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
        OutputHub::start_in_arbiter(&hub_arbiter.handle(), move |_| OutputHub::new(routes, handles))
    };
    {
        let hub = hub.clone();
        plan.dead_letters.connect(move |record| {
            hub.do_send(crate::actors::output_hub::RouteRecords {
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
            let (pipeline, output, metrics, hook) = (
                pipeline.clone(),
                output.clone(),
                metrics.clone(),
                options.fault_hook.clone(),
            );
            ShardSupervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                ShardSupervisor::new(shard, pipeline, output, metrics, hook, shards, checkpointing)
            })
        };
        let router = {
            let (pipeline, supervisor, metrics, coordinator, positions) = (
                pipeline.clone(),
                supervisor.clone(),
                metrics.clone(),
                coordinator.clone(),
                positions.clone(),
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
    let mut coordinator_actor = RunCoordinator::new(
        supervisors.clone(),
        hub.clone(),
        RecordFormatter::new(&pipeline),
        metrics.clone(),
        done_tx,
    );
    let mut barriers = None;
    if let (Some(ctx), Some(addr), Some(state)) = (checkpointer_ctx, checkpointer.clone(), state) {
        let signal = Arc::new(BarrierSignal::default());
        hub.do_send(SetCheckpointer {
            checkpointer: addr.clone().recipient(),
            shards,
        });
        coordinator_actor = coordinator_actor.with_checkpointer(addr);
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
    pub state: StateOptions,
}

/// Where state lives and how checkpoints are taken (command-line overrides).
#[derive(Clone, Debug, Default)]
pub struct StateOptions {
    /// Overrides `checkpoint.data_dir` (default `checkpoints/<pipeline>`).
    pub data_dir: Option<PathBuf>,
    /// No store at all: an in-memory run.
    pub disabled: bool,
    /// Overrides `checkpoint.interval`.
    pub interval: Option<Duration>,
    /// Resume even though the pipeline's operators or decode settings changed.
    pub allow_pipeline_change: bool,
}

/// The data directory a run of `pipeline` uses, if state is kept.
pub fn data_dir_of(pipeline: &CompiledPipeline, state: &StateOptions) -> Option<PathBuf> {
    if state.disabled || !pipeline.spec.checkpoint.enabled {
        return None;
    }
    Some(
        state
            .data_dir
            .clone()
            .or_else(|| pipeline.spec.checkpoint.data_dir.as_ref().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("checkpoints").join(&pipeline.name)),
    )
}

/// xxh3 of the first 64 KiB of a file (0 when it cannot be read).
pub fn file_fingerprint(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let mut buf = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            let _ = f.take(64 << 10).read_to_end(&mut buf);
            xxhash_rust::xxh3::xxh3_64(&buf)
        }
        Err(_) => 0,
    }
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
    Kafka(Box<crate::sources::kafka::KafkaSource>),
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
                    ingest: None,
                }),
            ),
            SourceSpec::Kafka(k) => (
                format!("kafka:{}", k.topics.join(",")),
                SourcePlan::Kafka(Box::new(crate::sources::kafka::KafkaSource {
                    spec: k.clone(),
                    decoder: pipeline.decoder.clone(),
                    store: None,
                    pipeline: None,
                    key_groups: pipeline.spec.runtime.key_groups,
                    handoff_dir: None,
                    checkpointer: None,
                    shards: Vec::new(),
                    stats: Default::default(),
                })),
            ),
        });
    }
    if plans.is_empty() {
        return Err(EngineError::Unsupported(
            "the pipeline has no sources: add one, or pass --input FILE".into(),
        ));
    }
    Ok(plans)
}

/// Opens the store (if any), matches the sources with the checkpoint they resume from (a
/// file source continues at its stored offset), and returns the state for [`start_with_state`].
fn prepare_state(
    pipeline: &CompiledPipeline,
    options: &RunOptions,
    sources: &mut [(String, SourcePlan)],
    sink_names: Vec<String>,
) -> Result<Option<RunState>, EngineError> {
    let Some(dir) = data_dir_of(pipeline, &options.state) else {
        return Ok(None);
    };
    let identity = PipelineIdentity::of(&pipeline.spec);
    let opened = StateStore::open(&dir, &identity, options.state.allow_pipeline_change)?;
    for note in &opened.notes {
        warn!(dir = %dir.display(), "{note}");
    }
    let mut identities = Vec::new();
    for (index, (name, plan)) in sources.iter_mut().enumerate() {
        let fingerprint = match plan {
            SourcePlan::Lines(LineSource {
                input: LineInput::File(path),
                ..
            }) => file_fingerprint(path),
            _ => 0,
        };
        let stored = opened
            .resume
            .as_ref()
            .and_then(|r| r.sources.iter().find(|p| p.source == index));
        if let SourcePlan::Mqtt(source) = &mut *plan {
            // the log's positions continue where the checkpoint left them
            source.ingest = Some(crate::sources::mqtt::IngestPlan {
                dir: crate::sources::ingest::dir_for(&dir, name),
                resume_from: stored.filter(|p| p.name == *name).map(|p| p.offset),
                keep_checkpoints: pipeline.spec.checkpoint.retain,
            });
        }
        if let (Some(p), SourcePlan::Lines(source)) = (stored, &mut *plan)
            && matches!(source.input, LineInput::File(_))
        {
            if p.name != *name {
                // another file: the device state goes on, the new file is read from its start
                info!(source = %name, previous = %p.name, "a new input: reading it from the start");
            } else if p.fingerprint != fingerprint {
                return Err(EngineError::Resume(format!(
                    "{} holds the state of a run that read `{name}` up to byte {}, but that file's contents changed since: resuming would skip or repeat readings. Use another --data-dir, or remove {} to start over",
                    dir.display(),
                    p.offset,
                    dir.display()
                )));
            } else {
                source.start_offset = p.offset;
                source.start_line = p.line.max(1);
                info!(source = %name, offset = p.offset, line = p.line, "resuming the source");
            }
        }
        if let SourcePlan::Kafka(k) = plan {
            k.store = Some(opened.store.clone());
            k.pipeline = Some(identity.clone());
            k.handoff_dir = Some(match &k.spec.handoff_dir {
                Some(d) => PathBuf::from(d),
                None => dir
                    .parent()
                    .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf())
                    .join("kafka-handoff")
                    .join(&k.spec.group),
            });
        }
        identities.push(SourceIdentity {
            name: name.clone(),
            fingerprint,
        });
    }
    let interval = options.state.interval.or_else(|| {
        pipeline
            .spec
            .checkpoint
            .interval
            .map(|d| Duration::from_millis(d.as_millis() as u64))
    });
    Ok(Some(RunState {
        settings: CheckpointSettings {
            store: opened.store,
            interval,
            retain: pipeline.spec.checkpoint.retain,
            pipeline: identity,
            sources: identities,
            sinks: sink_names,
            resumed: opened.resume,
        },
        allow_pipeline_change: options.state.allow_pipeline_change,
    }))
}

/// Takes Ctrl-C (SIGINT) over for the rest of the process, on a thread of its own, and returns
/// the flag it sets: the first Ctrl-C stops the sources of [`run`] (graceful: everything in flight
/// is processed and flushed), the second exits at once. The handler is installed when this
/// returns; later calls return the same flag. `plume run` calls it before it even loads the
/// pipeline, so an early Ctrl-C is never missed (it ends the run as soon as it starts).
pub fn catch_interrupts() -> Arc<AtomicBool> {
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let flag = stop.clone();
        let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                warn!("no Ctrl-C handling: its runtime could not start");
                return;
            };
            runtime.block_on(async move {
                let mut interrupts = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(error) => {
                        warn!(%error, "no Ctrl-C handling");
                        return;
                    }
                };
                let _ = ready_tx.send(());
                interrupts.recv().await;
                warn!("interrupted: stopping the sources, draining and flushing (Ctrl-C again to quit at once)");
                flag.store(true, Ordering::Relaxed);
                interrupts.recv().await;
                std::process::exit(130);
            });
        });
        if spawned.is_ok() {
            // returns at once if the thread gave up (its sender is gone)
            let _ = ready.recv();
        }
        stop
    })
    .clone()
}

/// Runs a pipeline to the end of its input (or Ctrl-C). Blocks the calling thread.
pub fn run(pipeline: Arc<CompiledPipeline>, options: RunOptions) -> Result<RunReport, EngineError> {
    // Ctrl-C is ours before anything starts: one early in the start-up is not missed
    let stop = catch_interrupts();
    let mut sources = plan_sources(&pipeline, &options)?;
    let _broker = crate::broker::start_for(&pipeline.spec)?;
    let planned_sinks = sink_names(&pipeline, options.output.as_ref());
    let state = prepare_state(&pipeline, &options, &mut sources, planned_sinks)?;
    let resumed_sinks: Vec<(String, u64)> = state
        .as_ref()
        .and_then(|s| s.settings.resumed.as_ref())
        .map(|r| r.sinks.iter().map(|s| (s.name.clone(), s.length)).collect())
        .unwrap_or_default();
    let keep = |name: &str| resumed_sinks.iter().find(|(n, _)| n == name).map_or(0, |(_, len)| *len);
    let notify_store = match &state {
        Some(s) => Some(crate::notify::NotifyStore::open(s.settings.store.clone())?),
        None => None,
    };
    // `plume subscribers add|remove` while this run holds the store: applied within a second
    let applier_stop = Arc::new(AtomicBool::new(false));
    let applier = notify_store.as_ref().map(|n| {
        crate::notify::subscribers::spawn_request_applier(
            n.subscribers.clone(),
            n.store.dir().to_path_buf(),
            applier_stop.clone(),
        )
    });
    let plan = OutputPlan::for_pipeline(&pipeline, options.output.as_ref(), &keep, notify_store.as_ref());
    drop(notify_store);
    let stop_applier = || {
        applier_stop.store(true, Ordering::Relaxed);
        if let Some(t) = applier {
            let _ = t.join();
        }
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            stop_applier();
            return Err(e);
        }
    };
    let store = state.as_ref().map(|s| s.settings.store.clone());
    let system = System::new();
    let started = Instant::now();
    let result = system.block_on(async move {
        let (runtime, done) = start_with_state(pipeline.clone(), plan, sources.len(), options.runtime.clone(), state);
        let shards = runtime.shards.len();
        let mut threads = Vec::new();
        for (index, (name, mut source)) in sources.into_iter().enumerate() {
            let feeder = runtime.feeder(index, &name);
            if let SourcePlan::Kafka(k) = &mut source {
                k.checkpointer = runtime.checkpointer.clone();
                k.shards = runtime.shards.clone();
            }
            let stop = stop.clone();
            let decoder = pipeline.decoder.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("source {name}"))
                    .spawn(move || match source {
                        SourcePlan::Lines(s) => crate::sources::lines::run(s, feeder, decoder, stop),
                        SourcePlan::Simulator(s) => crate::sources::simulator::run(s, feeder, stop),
                        SourcePlan::Mqtt(s) => crate::sources::mqtt::run(s, feeder, stop),
                        SourcePlan::Kafka(s) => crate::sources::kafka::run(*s, feeder, stop),
                    })
                    .expect("spawning a source thread"),
            );
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
        if let Some(c) = &runtime.checkpointer {
            let _ = c.send(crate::actors::checkpointer::StopCheckpointer).await;
        }
        runtime.shut_down();
        let outcome = outcome.map_err(|_| EngineError::Aborted)?;
        outcome.sink_positions?;
        if let Some(Err(e)) = outcome.final_checkpoint {
            return Err(EngineError::Checkpoint(e));
        }
        if let Some(e) = source_error {
            return Err(EngineError::Source(e));
        }
        Ok::<_, EngineError>((outcome.totals, shards, restarts, passivations))
    });
    System::current().stop();
    drop(system);
    stop_applier();
    if let Some(store) = store {
        StateStore::close(store);
    }
    let (totals, shards, restarts, passivations) = result?;
    Ok(RunReport {
        totals,
        elapsed: started.elapsed(),
        shards,
        restarts,
        passivations,
    })
}
