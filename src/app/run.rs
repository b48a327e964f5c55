//! `plume run`: plan, prepare state, start the runtime and the source threads, wait for the
//! end (or Ctrl-C), report. The live progress line of `plume demo` lives here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::pipeline::CompiledPipeline;
use crate::runtime::RuntimeMetrics;
use crate::store::StateStore;

use super::sources::{SourcePlan, plan_sources};
use super::state::prepare_state;
use super::*;

/// Runs a pipeline to the end of its input, or until `shutdown` is requested (Ctrl-C, the end of
/// a demo): then the sources stop and everything in flight is processed and flushed. Blocks the
/// calling thread.
pub fn run(pipeline: Arc<CompiledPipeline>, options: RunOptions, shutdown: Shutdown) -> Result<RunReport, EngineError> {
    let stop = shutdown;
    let listen = options
        .metrics_listen
        .clone()
        .or_else(|| pipeline.spec.metrics.as_ref().map(|m| m.listen.clone()));
    let admin_listener = match listen.map(|address| super::admin::bind(&address)) {
        None => None,
        Some(Ok(listener)) => Some(listener),
        Some(Err(e)) if options.metrics_optional => {
            tracing::warn!(error = %e, "no admin endpoint for this run");
            None
        }
        Some(Err(e)) => return Err(e.into()),
    };
    // (a bad OTEL_* setting is refused before anything starts)
    let otlp = super::otlp::OtlpConfig::from_env()?;
    let mut sources = plan_sources(&pipeline, &options)?;
    let inputs: Vec<std::path::PathBuf> = sources
        .iter()
        .filter_map(|(_, s)| match s {
            SourcePlan::Lines(l) => match &l.input {
                crate::connectors::file::source::LineInput::File(p) => Some(p.clone()),
                crate::connectors::file::source::LineInput::Stdin => None,
            },
            _ => None,
        })
        .collect();
    let outputs: Vec<std::path::PathBuf> = match &options.output {
        Some(path) => vec![path.clone()],
        None => pipeline
            .spec
            .outputs
            .iter()
            .flat_map(|route| route.to.iter())
            .filter_map(|sink| match sink {
                crate::spec::SinkSpec::File(f) => Some(std::path::PathBuf::from(&f.path)),
                _ => None,
            })
            .collect(),
    };
    refuse_output_over_input(&inputs, &outputs)?;
    warn_insecure_connections(&pipeline.spec);
    // the sources the embedded broker serves read it through in-process links
    let in_process: Vec<String> = sources
        .iter()
        .filter_map(|(_, s)| match s {
            SourcePlan::Mqtt(m) if m.broker_in_process => Some(m.client_id()),
            _ => None,
        })
        .collect();
    let mut broker = crate::connectors::mqtt::broker::start_for(&pipeline.spec, &in_process)?;
    if let Some(broker) = broker.as_mut() {
        for (_, plan) in sources.iter_mut() {
            if let SourcePlan::Mqtt(m) = plan
                && m.broker_in_process
            {
                // (two sources with one client id: the second connects over TCP)
                m.link = broker.links.remove(&m.client_id());
            }
        }
    }
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
    // (a cluster shares them through Kafka: see `shared_subscriptions`)
    let shared_subscriptions = notify_store
        .as_ref()
        .and_then(|n| super::shared_subscriptions::start(&pipeline, n.subscribers.clone()));
    let applier = notify_store.as_ref().map(|n| {
        let shared = shared_subscriptions.clone();
        crate::notify::subscribers::spawn_request_applier(
            n.subscribers.clone(),
            n.store.dir().to_path_buf(),
            applier_stop.clone(),
            Box::new(move |request| {
                if let Some(topic) = &shared {
                    super::shared_subscriptions::publish(topic, request);
                }
            }),
        )
    });
    let plan = OutputPlan::for_pipeline(&pipeline, options.output.as_ref(), &keep, notify_store.as_ref());
    // (a Kafka source with a changelog moves pending notifications with its partitions)
    let notifier_handles = notify_store.as_ref().map(|n| n.handles.clone());
    drop(notify_store);
    let stop_applier = || {
        applier_stop.store(true, Ordering::Relaxed);
        if let Some(t) = applier {
            // (it waits parked between polls: without this, every run's end waited up to 250 ms)
            t.thread().unpark();
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
    let checkpoint_interval = state.as_ref().and_then(|s| s.settings.interval);
    let system = System::new();
    let started = Instant::now();
    let result = system.block_on(async move {
        let (runtime, done) = start_with_state(pipeline.clone(), plan, sources.len(), options.runtime.clone(), state);
        let shards = runtime.shards.len();
        let mut threads = Vec::new();
        for (index, (name, mut source)) in sources.into_iter().enumerate() {
            let feeder = runtime.feeder(index, &name);
            if matches!(source, SourcePlan::Mqtt(_)) {
                // (the source says when it is connected)
                feeder.health().not_ready("starting");
            }
            if let SourcePlan::Kafka(k) = &mut source {
                k.ownership = Some(Arc::new(crate::runtime::ownership::RuntimeOwnership {
                    checkpointer: runtime.checkpointer.clone(),
                    shards: runtime.shards.clone(),
                }));
                if let Some(h) = notifier_handles.as_ref().filter(|h| !h.is_empty()) {
                    k.notifications = Some(Arc::new(h.clone()));
                }
            }
            let stop = stop.clone();
            let decoder = pipeline.decoder.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("source {name}"))
                    .spawn(move || match source {
                        SourcePlan::Lines(s) => crate::connectors::file::source::run(s, feeder, decoder, stop),
                        SourcePlan::Simulator(s) => crate::connectors::simulator::run(s, feeder, stop),
                        SourcePlan::Mqtt(s) => crate::connectors::mqtt::source::run(s, feeder, stop),
                        SourcePlan::Kafka(s) => crate::connectors::kafka::source::run(*s, feeder, stop),
                    })
                    .expect("spawning a source thread"),
            );
        }
        {
            // a sink or the store that can make nothing durable any more stops the run
            let (metrics, stop) = (runtime.metrics.clone(), stop.clone());
            actix_rt::spawn(async move {
                while !stop.is_requested() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if metrics.stopped_by.get().is_some() {
                        stop.request();
                    }
                }
            });
        }
        let view = super::admin::AdminView {
            metrics: runtime.metrics.clone(),
            sinks: runtime.sinks.clone(),
            checkpoint_interval,
            started,
            operators: (0..pipeline.operators.len())
                .map(|i| pipeline.operator_name(i as crate::model::OpIndex).to_string())
                .collect(),
        };
        let _otlp_metrics = otlp
            .metrics
            .clone()
            .map(|endpoint| super::otlp::MetricsExporter::start(endpoint, otlp.metric_interval, view.clone()));
        let _admin = admin_listener.map(|listener| super::admin::serve(listener, view));
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
        let limits = runtime.metrics.limits();
        if let Some(c) = &runtime.checkpointer {
            let _ = c.send(crate::runtime::checkpointer::StopCheckpointer).await;
        }
        let stopped_by = runtime.metrics.stopped_by.get().cloned();
        runtime.shut_down();
        if let Some(reason) = stopped_by {
            return Err(EngineError::Unrecoverable(reason));
        }
        let outcome = outcome.map_err(|_| EngineError::Aborted)?;
        outcome.sink_positions?;
        if let Some(Err(e)) = outcome.final_checkpoint {
            return Err(EngineError::Checkpoint(e));
        }
        if let Some(e) = source_error {
            return Err(EngineError::Source(e));
        }
        Ok::<_, EngineError>((outcome.totals, shards, restarts, passivations, limits))
    });
    System::current().stop();
    drop(system);
    stop_applier();
    if let Some(store) = store {
        StateStore::close(store);
    }
    let (totals, shards, restarts, passivations, limits) = result?;
    Ok(RunReport {
        totals,
        elapsed: started.elapsed(),
        shards,
        restarts,
        passivations,
        limits,
    })
}

/// Says at start which connections were allowed to carry credentials without TLS.
fn warn_insecure_connections(spec: &crate::spec::PipelineSpec) {
    use crate::model::redact;
    use crate::spec::{SinkSpec, SourceSpec};
    let warn = |what: &str, target: String| {
        tracing::warn!(
            connection = %target,
            "{what} has `allow_insecure: true`: its credentials may cross the network without TLS"
        )
    };
    for source in &spec.sources {
        match source {
            SourceSpec::Mqtt(m) if m.client.allow_insecure => warn("an mqtt source", redact::url(&m.url)),
            SourceSpec::Kafka(k) if k.client.allow_insecure => warn("a kafka source", k.brokers.clone()),
            _ => {}
        }
    }
    for sink in spec.outputs.iter().flat_map(|r| r.to.iter()) {
        match sink {
            SinkSpec::Mqtt(m) if m.client.allow_insecure => warn("an mqtt sink", redact::url(&m.url)),
            SinkSpec::Kafka(k) if k.client.allow_insecure => warn("a kafka sink", k.brokers.clone()),
            _ => {}
        }
    }
}
