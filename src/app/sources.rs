//! The sources of a run, planned from the pipeline (or `--input`).

use std::path::PathBuf;

use crate::connectors::file::source::{LineInput, LineSource};
use crate::pipeline::CompiledPipeline;
use crate::spec::{Pace, SourceSpec};

use super::*;
use crate::model::SourceId;

pub(crate) enum SourcePlan {
    Lines(LineSource),
    Simulator(crate::spec::SimulatorSourceSpec),
    Mqtt(crate::connectors::mqtt::source::MqttSource),
    Kafka(Box<crate::connectors::kafka::source::KafkaSource>),
}

pub(crate) fn plan_sources(
    pipeline: &CompiledPipeline,
    options: &RunOptions,
) -> Result<Vec<(String, SourcePlan)>, EngineError> {
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
            InputOverride::File(p) => (
                SourceId::File(p.display().to_string()).to_string(),
                lines(LineInput::File(p.clone()), None),
            ),
            InputOverride::Stdin => (SourceId::Stdin.to_string(), lines(LineInput::Stdin, None)),
        }]);
    }
    let mut plans = Vec::new();
    for source in &pipeline.spec.sources {
        plans.push(match source {
            SourceSpec::File(f) => {
                let pace = (f.pace == Pace::EventTime).then_some(f.speed);
                (
                    SourceId::File(f.path.clone()).to_string(),
                    lines(LineInput::File(PathBuf::from(&f.path)), pace),
                )
            }
            SourceSpec::Stdin(_) => (SourceId::Stdin.to_string(), lines(LineInput::Stdin, None)),
            SourceSpec::Simulator(s) => (SourceId::Simulator.to_string(), SourcePlan::Simulator(s.clone())),
            SourceSpec::Mqtt(m) => (
                SourceId::Mqtt(m.topic.clone()).to_string(),
                SourcePlan::Mqtt(crate::connectors::mqtt::source::MqttSource {
                    spec: m.clone(),
                    default_client_id: format!("plume-{}-{}", pipeline.name, plans.len()),
                    stats: Default::default(),
                    ingest: None,
                    broker_in_process: pipeline
                        .spec
                        .embedded_broker
                        .as_ref()
                        .is_some_and(|broker| crate::connectors::mqtt::broker::serves(broker, &m.url)),
                    // (given when the embedded broker starts: `run`)
                    link: None,
                }),
            ),
            SourceSpec::Kafka(k) => (
                SourceId::Kafka(k.topics.clone()).to_string(),
                SourcePlan::Kafka(Box::new(crate::connectors::kafka::source::KafkaSource {
                    spec: k.clone(),
                    decoder: pipeline.decoder.clone(),
                    store: None,
                    pipeline: None,
                    key_groups: pipeline.spec.runtime.key_groups,
                    handoff_dir: None,
                    ownership: None,
                    notifications: None,
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
