//! The sinks of a run and their stable names (sink factory), and the routes to them.

use std::path::PathBuf;

use crate::connectors::file::sink::FileSink;
use crate::connectors::stdout::StdoutSink;
use crate::pipeline::CompiledPipeline;
use crate::runtime::ports::Sink;
use crate::runtime::routes::{RouteTable, distinct_sinks};
use crate::spec::SinkSpec;

use super::*;

/// Sinks and the routes to them.
pub struct OutputPlan {
    pub sinks: Vec<Box<dyn Sink>>,
    pub routes: RouteTable,
    /// The notifiers' dead letters, routed like every other dead letter once the hub runs.
    pub dead_letters: crate::notify::DeadLetterOutlet,
}

impl OutputPlan {
    /// The pipeline's own `outputs`, or everything to one file with `--output`. File sinks
    /// are cut back to `keep(name)` bytes (the length the resumed checkpoint recorded), and
    /// synced at each flush only when the run has a `store` (takes checkpoints); notifiers keep
    /// their outboxes in `store` when the run has one.
    pub fn for_pipeline(
        pipeline: &CompiledPipeline,
        output: Option<&PathBuf>,
        keep: &dyn Fn(&str) -> u64,
        store: Option<&crate::notify::NotifyStore>,
    ) -> Result<Self, EngineError> {
        // files are synced at each flush when the run takes checkpoints (it has a store)
        let sync = store.is_some();
        let file_sink = |path: &std::path::Path| FileSink::open(path, keep(&FileSink::name_of(path)), sync);
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
                SinkSpec::Mqtt(m) => Box::new(crate::connectors::mqtt::sink::MqttSink::connect(
                    &m,
                    &format!("plume-{}-out-{}", pipeline.name, sinks.len()),
                    (0..pipeline.operators.len())
                        .map(|i| pipeline.operator_name(i as _).to_string())
                        .collect(),
                )?),
                SinkSpec::Kafka(k) => Box::new(crate::connectors::kafka::sink::KafkaSink::connect(
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
    use crate::model::{NotifierKind, SinkId};
    let mut counts: std::collections::HashMap<NotifierKind, usize> = Default::default();
    specs
        .iter()
        .map(|spec| {
            let kind = match spec {
                SinkSpec::File(f) => return FileSink::name_of(std::path::Path::new(&f.path)),
                SinkSpec::Webhook(_) => NotifierKind::Webhook,
                SinkSpec::Push(crate::spec::PushSinkSpec::Fcm(_)) => NotifierKind::Fcm,
                SinkSpec::Push(crate::spec::PushSinkSpec::Apns(_)) => NotifierKind::Apns,
                SinkSpec::Push(crate::spec::PushSinkSpec::Ntfy(_)) => NotifierKind::Ntfy,
                // (checkpoints have always recorded these sinks by their kind alone)
                other => return sink_kind(other).to_string(),
            };
            let n = counts.entry(kind).or_default();
            *n += 1;
            SinkId::Notifier(kind, *n - 1).to_string()
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
