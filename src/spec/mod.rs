//! Pipeline files: the typed configuration that a `pipelines/*.yaml` file deserializes into.
//!
//! # Layout
//! - [`mod@self`] and its topic modules `sources`, `decode`, `operators`, `outputs`,
//!   `connections` (what MQTT and Kafka sources and sinks share, and the notifiers' retry
//!   settings), `settings` (runtime, checkpoints, shutdown, embedded broker, named defaults): the
//!   config types. Each key is declared once, on its type, with its doc comment; everything else
//!   (the JSON Schema, the loader's structural checks, the README's key reference) is derived.
//! - `schema`: the JSON Schema of a pipeline file, generated from the types (`schemars`): doc
//!   comments become descriptions, defaults and allowed values come from the types.
//! - `yaml`: a YAML document as a tree of nodes that remember their line and column,
//!   with `${VAR}` / `${VAR:-default}` interpolated inside scalars (positions stay exact).
//! - `check`: the positioned YAML tree checked against the schema (unknown keys with
//!   suggestions, wrong types, missing keys, unknown values), and the repair that lets the rest
//!   of a file with such errors still be read.
//! - `de`: a serde deserializer over that tree, so errors point at file:line:col.
//! - `validate`: semantic checks on the typed config (no IO), every error at once.
//! - `load`: the whole way from a file to a checked spec, with [`Diagnostic`]s (file, line,
//!   column and a sentence a person understands).
//! - `reference`: the README's key reference, generated from the schema.
//!
//! The format carries a `version` key; [`CURRENT_VERSION`] is the one this plume writes and reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod check;
pub mod connections;
pub mod de;
pub mod decode;
pub mod ingress;
pub mod load;
pub mod operators;
pub mod outputs;
pub mod reference;
pub mod schema;
pub mod settings;
pub mod sources;
pub mod validate;
pub mod yaml;

pub use crate::model::DurationSpec;
pub use connections::*;
pub use decode::*;
pub use ingress::*;
pub use load::{Diagnostic, Diagnostics, LoadedPipeline, load_pipeline, parse_pipeline, pipeline_hash};
pub use operators::*;
pub use outputs::*;
pub use settings::*;
pub use sources::*;

/// The pipeline file format version this build understands.
pub const CURRENT_VERSION: u32 = 1;

/// A whole pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Format version of the file; this plume reads version 1.
    pub version: u32,
    /// Name of the pipeline: letters, digits, `-` and `_`. Names the data directory and the
    /// checkpoints.
    pub pipeline: String,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Where readings come from. `plume run --input FILE` replaces them with one file.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// How a raw message becomes a reading.
    pub decode: DecodeSpec,
    /// The per-device operator chain, applied in the order written.
    #[serde(default)]
    pub operators: Vec<OperatorSpec>,
    /// Which operator results go to which sinks.
    #[serde(default)]
    pub outputs: Vec<OutputRoute>,
    /// Shards, key groups, passivation.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Checkpoint interval, data directory, retention.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// What happens on graceful shutdown and at the end of a finite input.
    #[serde(default)]
    pub shutdown: ShutdownSpec,
    /// Start an MQTT broker inside plume (zero-setup default); absent: none.
    #[serde(default)]
    pub embedded_broker: Option<EmbeddedBrokerSpec>,
    /// The admin endpoint (`/metrics`, `/healthz`, `/readyz`); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// Keyed ingress for MQTT fleets (`plume ingest`): an MQTT subscription shared by the ingress
    /// members, each reading produced to the keyed Kafka topic a Kafka source of this pipeline
    /// reads; absent: none. `plume run` ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

impl PipelineSpec {
    /// Whether the end of a run flushes open windows and final baselines: `shutdown.flush`,
    /// except with a Kafka changelog, where a member's stop is leaving the group (its devices'
    /// windows go on at the partitions' next owner, so a flush would write records for devices
    /// it no longer owns).
    pub fn flush_at_end(&self) -> bool {
        self.shutdown.flush
            && !self
                .sources
                .iter()
                .any(|s| matches!(s, SourceSpec::Kafka(k) if k.changelog.is_some()))
    }
}

pub(crate) use crate::model::location::Expecting;
