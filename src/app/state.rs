//! Where a run keeps its state, and the resume policy: which checkpoint a run continues from
//! and what each source resumes at (a changed input file is refused).

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::connectors::file::source::{LineInput, LineSource};
use crate::pipeline::CompiledPipeline;
use crate::runtime::checkpointer::{CheckpointSettings, SourceIdentity};
use crate::store::{PipelineIdentity, StateStore};

use super::sources::SourcePlan;
use super::*;

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

/// Opens the store (if any), matches the sources with the checkpoint they resume from (a
/// file source continues at its stored offset), and returns the state for [`start_with_state`].
pub(crate) fn prepare_state(
    pipeline: &CompiledPipeline,
    options: &RunOptions,
    sources: &mut [(String, SourcePlan)],
    sink_names: Vec<String>,
) -> Result<Option<RunState>, EngineError> {
    let Some(dir) = data_dir_of(pipeline, &options.state) else {
        return Ok(None);
    };
    let identity = PipelineIdentity::of(&pipeline.spec);
    let restore = crate::trace::start(
        "restore",
        crate::trace::Kind::Internal,
        vec![
            crate::trace::Attribute::new("plume.data_dir", dir.display().to_string()),
            crate::trace::Attribute::new("plume.pipeline", identity.name.clone()),
        ],
        Some(&crate::trace::root()),
    );
    let opened = {
        let _current = restore.enter();
        let opening = std::time::Instant::now();
        let opened = StateStore::open(&dir, &identity, options.state.allow_pipeline_change);
        tracing::debug!(dir = %dir.display(), ms = opening.elapsed().as_secs_f64() * 1000.0, "store opened");
        if let Err(e) = &opened {
            restore.fail(e.to_string());
        }
        opened?
    };
    match &opened.resume {
        Some(r) => {
            restore.set(crate::trace::Attribute::new("plume.checkpoint.id", r.id as i64));
            restore.set(crate::trace::Attribute::new(
                "plume.checkpoint.devices",
                r.devices as i64,
            ));
        }
        None => restore.set(crate::trace::Attribute::new("plume.checkpoint.id", 0i64)),
    }
    for note in &opened.notes {
        let _current = restore.enter();
        warn!(dir = %dir.display(), "{note}");
        restore.event("note", vec![crate::trace::Attribute::new("note", note.clone())]);
    }
    restore.end();
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
            source.ingest = Some(crate::connectors::mqtt::source::IngestPlan {
                dir: crate::connectors::mqtt::ingest::dir_for(&dir, name),
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
            // with a changelog, partition state moves through Kafka, not a shared directory
            k.handoff_dir = match (&k.spec.changelog, &k.spec.handoff_dir) {
                (Some(_), _) => None,
                (None, Some(d)) => Some(PathBuf::from(d)),
                (None, None) => Some(
                    dir.parent()
                        .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf())
                        .join("kafka-handoff")
                        .join(&k.spec.group),
                ),
            };
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
