//! Pipeline files: the typed configuration that a `pipelines/*.yaml` file deserializes into.
//!
//! # Layout
//! - [`mod@self`]: the config types, one place, `deny_unknown_fields`, named defaults.
//! - `duration`: the strict duration type (`500ms`, `60s`, `5m`, `1h`, `7d`, `1m30s`).
//! - `yaml`: a YAML document as a tree of nodes that remember their line and column,
//!   with `${VAR}` / `${VAR:-default}` interpolated inside scalars (positions stay exact).
//! - `de`: a serde deserializer over that tree, so errors point at file:line:col.
//! - `validate`: semantic checks on the typed config (no IO), every error at once.
//! - `load`: the whole way from a file to a checked spec, part by part, with
//!   [`Diagnostic`]s (file, line, column and a sentence a person understands).
//! - `probe`: every key path of the types (walked through serde), for the loader and the docs.
//! - `reference`: the README's key reference, generated and checked against `probe`.
//!
//! The format carries a `version` key; [`CURRENT_VERSION`] is the one this plume writes and reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod de;
pub mod duration;
pub mod load;
pub mod probe;
pub mod reference;
pub mod validate;
pub mod yaml;

pub use crate::operators::settings::{Aggregate, BaselineEmit, BaselineMethod, Correction, Direction, SmoothMethod};
pub use duration::DurationSpec;
pub use load::{Diagnostic, Diagnostics, LoadedPipeline, load_pipeline, parse_pipeline, pipeline_hash};

/// The pipeline file format version this build understands.
pub const CURRENT_VERSION: u32 = 1;

/// A whole pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Format version of the file; must be [`CURRENT_VERSION`].
    pub version: u32,
    /// Name of the pipeline: letters, digits, `-` and `_`. Names the data directory.
    pub pipeline: String,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Where readings come from. `plume run --input FILE` replaces them with one file source.
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
    /// Start an MQTT broker inside plume (zero-setup default).
    #[serde(default)]
    pub embedded_broker: Option<EmbeddedBrokerSpec>,
}

// ---------------------------------------------------------------------------------------------
// sources

/// One input. Externally tagged: `- file: { path: … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceSpec {
    File(FileSourceSpec),
    Stdin(StdinSourceSpec),
    Simulator(SimulatorSourceSpec),
    Mqtt(MqttSourceSpec),
    Kafka(KafkaSourceSpec),
}

/// A JSON-lines (or influx line protocol) file, read to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    pub path: String,
    /// `none`: as fast as possible; `event_time`: paced by the readings' event time.
    #[serde(default)]
    pub pace: Pace,
    /// With `pace: event_time`, how many times faster than real time.
    #[serde(default = "defaults::speed")]
    pub speed: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    #[default]
    None,
    EventTime,
}

/// Lines from standard input.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceSpec {}

/// A built-in fleet of simulated air-quality monitors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSourceSpec {
    /// Number of devices.
    #[serde(default = "defaults::sim_devices")]
    pub devices: u32,
    /// Readings per second per device, in simulated time.
    #[serde(default = "defaults::sim_interval")]
    pub interval: DurationSpec,
    /// Simulated seconds per wall-clock second (1 = real time).
    #[serde(default = "defaults::speed")]
    pub speed: f64,
    /// Chance per reading that a pollution episode starts.
    #[serde(default = "defaults::sim_episodes")]
    pub episodes: f64,
    /// Chance per reading of a sensor fault (stuck value, out-of-range spike, dropout).
    #[serde(default = "defaults::sim_faults")]
    pub faults: f64,
    /// Stop after this much simulated time (runs until Ctrl-C if absent).
    #[serde(default)]
    pub duration: Option<DurationSpec>,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
}

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Qos {
    #[serde(rename = "0")]
    AtMostOnce,
    #[serde(rename = "1")]
    AtLeastOnce,
    #[serde(rename = "2")]
    ExactlyOnce,
}

impl Qos {
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// Subscribe to an MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceSpec {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Topic template; `{device}` captures the device id (`sensors/{device}/air`);
    /// `+` and `#` are MQTT wildcards.
    pub topic: String,
    #[serde(default = "defaults::qos")]
    pub qos: Qos,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file with the CA that signed the broker's certificate (`mqtts://`).
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub version: MqttVersion,
    /// Keep the session on the broker while plume is down (clean session off).
    #[serde(default = "defaults::yes")]
    pub persistent_session: bool,
    /// MQTT 5 shared subscription group (`$share/<group>/<topic>`).
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Acknowledge a message only once it is synced to the ingest log in the data directory
    /// (replayed after a crash); `false`: once handed to the pipeline. Needs checkpoints on.
    #[serde(default = "defaults::yes")]
    pub durable: bool,
    #[serde(default = "defaults::keep_alive")]
    pub keep_alive: DurationSpec,
}

/// Where a Kafka record's device id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaDeviceFrom {
    /// The record key.
    #[default]
    Key,
    /// The payload field named in `decode.device`.
    Payload,
}

/// Where a Kafka record's event time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaTimeFrom {
    /// The payload field named in `decode.time`.
    #[default]
    Payload,
    /// The record's timestamp.
    Record,
}

/// Consume Kafka topics in a consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topics: Vec<String>,
    #[serde(default = "defaults::kafka_group")]
    pub group: String,
    #[serde(default)]
    pub device_from: KafkaDeviceFrom,
    #[serde(default)]
    pub time_from: KafkaTimeFrom,
    /// librdkafka properties passed through (`security.protocol`, `sasl.mechanism`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables
    /// (`sasl.password: KAFKA_PASSWORD`).
    #[serde(default)]
    pub secret_properties_env: BTreeMap<String, String>,
    /// A directory shared by the group's members (the same disk, or a network mount) where a
    /// member leaves the device state and offset of each partition it gives up, for the next
    /// owner. Default: `kafka-handoff/<group>` beside the data directory.
    #[serde(default)]
    pub handoff_dir: Option<String>,
    /// How often a member refreshes the hand-off of each partition it reads, so that its
    /// partitions move with their state even when it dies without giving them up: at the first
    /// durable checkpoint this long after the previous refresh (`0s`: every checkpoint), for a
    /// partition read since. `null`: hand-offs only when a partition is given up.
    #[serde(default = "defaults::handoff_refresh")]
    pub handoff_refresh: Option<DurationSpec>,
}

// ---------------------------------------------------------------------------------------------
// decode

/// How a raw message becomes a reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSpec {
    #[serde(default)]
    pub format: DecodeFormat,
    /// Where the device id comes from.
    #[serde(default)]
    pub device: DeviceIdSpec,
    /// Where the event time comes from; without it, the arrival time is used.
    #[serde(default)]
    pub time: Option<TimeSpec>,
    /// The measured fields, by name, with type and valid range.
    pub fields: BTreeMap<String, FieldSpec>,
    /// Largest raw payload copied into a dead letter.
    #[serde(default = "defaults::dead_letter_bytes")]
    pub dead_letter_max_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeFormat {
    /// One JSON object per message / line.
    #[default]
    Json,
    /// InfluxDB line protocol: `measurement,tag=v field=1.0 1700000000000000000`.
    Influx,
}

/// Where the device id comes from: a payload field (JSON), a tag (influx), or the
/// `{device}` capture of the MQTT topic template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdSpec {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    /// Take the device id from the topic's `{device}` capture.
    #[serde(default)]
    pub topic: bool,
}

impl Default for DeviceIdSpec {
    fn default() -> Self {
        DeviceIdSpec {
            field: Some("device".to_string()),
            tag: None,
            topic: false,
        }
    }
}

/// The event time and its unit. JSON: `field` names the payload key (required). Influx line
/// protocol: the line's own timestamp (no `field`), in `unit` (default `ns`, as influx writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    #[serde(default)]
    pub field: Option<String>,
    /// Default: `ms` for JSON, `ns` for influx line protocol ([`TimeSpec::unit_for`]).
    #[serde(default)]
    pub unit: Option<TimeUnit>,
}

impl TimeSpec {
    /// The unit, or the format's default when none is written.
    pub fn unit_for(&self, format: DecodeFormat) -> TimeUnit {
        self.unit.unwrap_or(Self::default_unit(format))
    }

    /// `ms` for JSON, `ns` for influx line protocol.
    pub fn default_unit(format: DecodeFormat) -> TimeUnit {
        match format {
            DecodeFormat::Json => TimeUnit::Ms,
            DecodeFormat::Influx => TimeUnit::Ns,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    S,
    #[default]
    Ms,
    Us,
    Ns,
    Rfc3339,
}

/// One measured field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(default, rename = "type")]
    pub kind: FieldType,
    /// Values below this are out of range.
    #[serde(default)]
    pub min: Option<f64>,
    /// Values above this are out of range.
    #[serde(default)]
    pub max: Option<f64>,
    /// A reading without this field is a dead letter (otherwise the field is just absent).
    #[serde(default)]
    pub required: bool,
    /// What an out-of-range value does.
    #[serde(default)]
    pub out_of_range: OutOfRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    #[default]
    Float,
    Int,
    Bool,
}

/// An out-of-range value is never thrown away silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRange {
    /// The field is treated as absent for the operators and counted by `health`.
    #[default]
    Flag,
    /// The whole reading goes to dead letters.
    DeadLetter,
    /// The value is kept as it is (and still counted).
    Keep,
}

// ---------------------------------------------------------------------------------------------
// operators

/// One operator of the per-device chain. Externally tagged: `- window: { … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorSpec {
    Window(WindowSpec),
    Hysteresis(HysteresisSpec),
    Baseline(BaselineSpec),
    Smooth(SmoothSpec),
    Threshold(ThresholdSpec),
    Calibrate(CalibrateSpec),
    Health(HealthSpec),
}

impl OperatorSpec {
    /// The operator's name as outputs refer to it (its `name`, or its kind).
    pub fn name(&self) -> &str {
        match self {
            OperatorSpec::Window(s) => s.name.as_deref().unwrap_or("window"),
            OperatorSpec::Hysteresis(s) => s.name.as_deref().unwrap_or("hysteresis"),
            OperatorSpec::Baseline(s) => s.name.as_deref().unwrap_or("baseline"),
            OperatorSpec::Smooth(s) => s.name.as_deref().unwrap_or("smooth"),
            OperatorSpec::Threshold(s) => s.name.as_deref().unwrap_or("threshold"),
            OperatorSpec::Calibrate(s) => s.name.as_deref().unwrap_or("calibrate"),
            OperatorSpec::Health(s) => s.name.as_deref().unwrap_or("health"),
        }
    }

    /// The operator's kind, as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorSpec::Window(_) => "window",
            OperatorSpec::Hysteresis(_) => "hysteresis",
            OperatorSpec::Baseline(_) => "baseline",
            OperatorSpec::Smooth(_) => "smooth",
            OperatorSpec::Threshold(_) => "threshold",
            OperatorSpec::Calibrate(_) => "calibrate",
            OperatorSpec::Health(_) => "health",
        }
    }
}

/// Event-time windows: tumbling (`every` only) or sliding (`every` and `slide`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Window length.
    pub every: DurationSpec,
    /// Hop between window starts (sliding windows); absent = tumbling.
    #[serde(default)]
    pub slide: Option<DurationSpec>,
    /// Allowed lateness: the device watermark is the largest event time seen minus this.
    #[serde(default = "defaults::zero")]
    pub lateness: DurationSpec,
    /// The fields that the list form of `aggregates` applies to.
    #[serde(default)]
    pub fields: Vec<String>,
    /// `[count, avg, max]` (applied to every field of `fields`) or
    /// `{ pm25: [avg, max], co2: [avg] }` (per field). `count` is always reported.
    pub aggregates: AggregatesSpec,
    /// Close a silent device's windows after this much processing time without readings.
    #[serde(default)]
    pub idle_flush: Option<DurationSpec>,
}

/// Aggregates of a window, for all fields or per field. Deserialized by hand (a list or a map)
/// so that an error inside either form keeps its position and says what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AggregatesSpec {
    All(Vec<Aggregate>),
    PerField(BTreeMap<String, Vec<Aggregate>>),
}

impl<'de> Deserialize<'de> for AggregatesSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListOrMap;
        impl<'de> serde::de::Visitor<'de> for ListOrMap {
            type Value = AggregatesSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of aggregates such as `[avg, max]`, or a map of field to aggregates such as `{ pm25: [avg, max] }`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(AggregatesSpec::All)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                BTreeMap::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(AggregatesSpec::PerField)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the string `{v}`",
                    Expecting(&self)
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Err(E::custom(format!("expected {}, found `{v}`", Expecting(&self))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found nothing (null)",
                    Expecting(&self)
                )))
            }
        }
        deserializer.deserialize_any(ListOrMap)
    }
}

/// A visitor's `expecting` text, for hand-written messages.
struct Expecting<'v, V>(&'v V);

impl<'de, V: serde::de::Visitor<'de>> std::fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
}

/// Pollution events with hysteresis and optional debounce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HysteresisSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub field: String,
    pub enter: f64,
    pub exit: f64,
    #[serde(default)]
    pub direction: Direction,
    /// The enter condition must hold this long (event time) before the event opens.
    #[serde(default)]
    pub min_duration: Option<DurationSpec>,
    /// The exit condition must hold this long (event time) before the event closes.
    #[serde(default)]
    pub min_clear: Option<DurationSpec>,
    /// Peak bands for the event's severity: `{ moderate: 35, high: 55, severe: 150 }`.
    #[serde(default)]
    pub severity: BTreeMap<String, f64>,
}

/// Learned per-device baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub field: String,
    #[serde(default)]
    pub method: BaselineMethod,
    /// EWMA weight (and hourly profile weight).
    #[serde(default = "defaults::alpha")]
    pub alpha: f64,
    /// Welford: emit a deviation event when |z| exceeds this (after `warmup` readings).
    #[serde(default = "defaults::zscore")]
    pub zscore: f64,
    #[serde(default = "defaults::warmup")]
    pub warmup: u32,
    /// Rolling minimum: how many days to look back.
    #[serde(default = "defaults::days")]
    pub days: u32,
    /// Hourly profile: offset of local time from UTC, in hours.
    #[serde(default)]
    pub utc_offset_hours: i32,
    #[serde(default)]
    pub emit: BaselineEmit,
}

/// Smoothing; the smoothed value is available to later operators as field `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmoothSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub field: String,
    #[serde(default)]
    pub method: SmoothMethod,
    #[serde(default = "defaults::sma_n")]
    pub n: u32,
    #[serde(default = "defaults::smooth_alpha")]
    pub alpha: f64,
    #[serde(default = "defaults::smooth_beta")]
    pub beta: f64,
    /// Name of the derived field (default: `<field>_smooth`).
    #[serde(default)]
    pub output: Option<String>,
    /// Emit every smoothed value as a result.
    #[serde(default)]
    pub emit: bool,
}

/// Instant threshold crossings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub field: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    /// Move the limits with this field (e.g. a baseline): beyond when above `above + factor × it`.
    #[serde(default)]
    pub relative_to: Option<String>,
    #[serde(default = "defaults::one")]
    pub factor: f64,
    /// Emit only when the state changes (otherwise every reading beyond the threshold).
    #[serde(default = "defaults::yes")]
    pub changes_only: bool,
}

/// Calibration: `value * gain + offset`, from a table or from a learned baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrateSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub field: String,
    /// Per-device corrections by device id.
    #[serde(default)]
    pub table: BTreeMap<String, Correction>,
    /// For devices not in the table.
    #[serde(default)]
    pub default: Correction,
    /// Learned correction: shift so that this baseline (a `baseline` operator's name) reads `reference`.
    #[serde(default)]
    pub baseline: Option<String>,
    #[serde(default)]
    pub reference: Option<f64>,
}

/// A stuck sensor: the same value for `readings` readings in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatlineSpec {
    pub field: String,
    pub readings: u32,
}

/// Device health: offline/online, flatline, out-of-range counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// A device without data for this long (processing time) goes offline.
    #[serde(default)]
    pub offline_after: Option<DurationSpec>,
    #[serde(default)]
    pub flatline: Vec<FlatlineSpec>,
    /// Emit a health report with out-of-range counts every this many readings.
    #[serde(default)]
    pub report_every: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// outputs

/// A route: results of the named operators go to these sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRoute {
    /// Operator names, or `late`, `dead_letters`, `summary`, `all`.
    pub when: OneOrMany,
    /// Only these kinds of results (`start`, `end`, `window`, `baseline`, …); all if empty.
    #[serde(default)]
    pub events: Vec<String>,
    pub to: Vec<SinkSpec>,
}

/// A string or a list of strings. Deserialized by hand so that errors keep their position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrList;
        impl<'de> serde::de::Visitor<'de> for OneOrList {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
                Err(serde::de::Error::custom(format!(
                    "expected {}, found a map",
                    Expecting(&self)
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Err(E::custom(format!("expected {}, found `{v}`", Expecting(&self))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found nothing (null)",
                    Expecting(&self)
                )))
            }
        }
        deserializer.deserialize_any(OneOrList)
    }
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One output target. Externally tagged: `- file: { path: out.jsonl }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkSpec {
    Stdout(StdoutSinkSpec),
    File(FileSinkSpec),
    Webhook(WebhookSinkSpec),
    Push(PushSinkSpec),
    Mqtt(MqttSinkSpec),
    Kafka(KafkaSinkSpec),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkSpec {
    #[serde(default)]
    pub format: StdoutFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    #[default]
    Json,
    Text,
}

/// JSON lines appended to a file; exactly-once across crashes when checkpoints are on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSpec {
    pub path: String,
}

/// A signed webhook (Standard Webhooks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkSpec {
    pub url: String,
    /// Environment variable that holds the `whsec_…` secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default = "defaults::http_timeout")]
    pub timeout: DurationSpec,
    /// After this long without success an event goes to dead letters.
    #[serde(default = "defaults::max_age")]
    pub max_age: DurationSpec,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// First retry delay (doubled per attempt, with jitter).
    #[serde(default = "defaults::backoff")]
    pub backoff: DurationSpec,
    /// How long the circuit breaker stays open after repeated failures.
    #[serde(default = "defaults::breaker_open")]
    pub breaker_open: DurationSpec,
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

/// Mobile push: one of FCM, APNs, ntfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushSinkSpec {
    Fcm(FcmSpec),
    Apns(ApnsSpec),
    Ntfy(NtfySpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSpec {
    /// Environment variable holding the service-account JSON (or a path to it).
    pub service_account_env: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// JSON file of device tokens (`{"<device>": ["<token>"], "*": [...]}`), for runs without a
    /// data directory (with one, the store's subscriptions are used: `plume subscribers`).
    #[serde(default)]
    pub subscribers: Option<String>,
    #[serde(default = "defaults::http_timeout")]
    pub timeout: DurationSpec,
    /// After this long without success a notification goes to dead letters.
    #[serde(default = "defaults::max_age")]
    pub max_age: DurationSpec,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// First retry delay (doubled per attempt, with jitter).
    #[serde(default = "defaults::backoff")]
    pub backoff: DurationSpec,
    /// How long the circuit breaker stays open after repeated failures.
    #[serde(default = "defaults::breaker_open")]
    pub breaker_open: DurationSpec,
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSpec {
    pub team_id: String,
    pub key_id: String,
    /// Environment variable holding the `.p8` ES256 private key (PEM).
    pub key_env: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// JSON file of device tokens (`{"<device>": ["<token>"], "*": [...]}`), for runs without a
    /// data directory (with one, the store's subscriptions are used: `plume subscribers`).
    #[serde(default)]
    pub subscribers: Option<String>,
    #[serde(default = "defaults::http_timeout")]
    pub timeout: DurationSpec,
    /// After this long without success a notification goes to dead letters.
    #[serde(default = "defaults::max_age")]
    pub max_age: DurationSpec,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// First retry delay (doubled per attempt, with jitter).
    #[serde(default = "defaults::backoff")]
    pub backoff: DurationSpec,
    /// How long the circuit breaker stays open after repeated failures.
    #[serde(default = "defaults::breaker_open")]
    pub breaker_open: DurationSpec,
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtfySpec {
    #[serde(default = "defaults::ntfy_server")]
    pub server: String,
    pub topic: String,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default = "defaults::http_timeout")]
    pub timeout: DurationSpec,
    /// After this long without success a notification goes to dead letters.
    #[serde(default = "defaults::max_age")]
    pub max_age: DurationSpec,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// First retry delay (doubled per attempt, with jitter).
    #[serde(default = "defaults::backoff")]
    pub backoff: DurationSpec,
    /// How long the circuit breaker stays open after repeated failures.
    #[serde(default = "defaults::breaker_open")]
    pub breaker_open: DurationSpec,
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

/// Cooldown, quiet hours, message template.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyPolicySpec {
    #[serde(default)]
    pub cooldown: Option<DurationSpec>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSpec>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursSpec {
    /// `22:00`.
    pub from: String,
    /// `07:00`.
    pub to: String,
    /// IANA time zone (`Europe/Zurich`).
    pub timezone: String,
    /// Severities delivered even in quiet hours.
    #[serde(default)]
    pub critical: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkSpec {
    pub url: String,
    /// `{device}` and `{operator}` are filled in.
    pub topic: String,
    #[serde(default = "defaults::qos")]
    pub qos: Qos,
    #[serde(default)]
    pub retain: bool,
    /// MQTT client id; absent: `plume-<pipeline>-out-<sink index>`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file with the CA that signed the broker's certificate (`mqtts://`).
    #[serde(default)]
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_properties_env: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// runtime, checkpoints, shutdown, embedded broker

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Shard threads; 0 = one per core.
    #[serde(default)]
    pub shards: u32,
    /// Fixed number of key groups (device id → stable hash → key group → shard).
    #[serde(default = "defaults::key_groups")]
    pub key_groups: u32,
    /// Passivate a device actor after this much processing time without readings.
    #[serde(default = "defaults::passivate_after")]
    pub passivate_after: DurationSpec,
    /// Bound on the results waiting for one sink before the devices are slowed down.
    #[serde(default = "defaults::sink_queue")]
    pub sink_queue: usize,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            shards: 0,
            key_groups: defaults::key_groups(),
            passivate_after: defaults::passivate_after(),
            sink_queue: defaults::sink_queue(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Take a checkpoint this often; absent = only at graceful shutdown.
    #[serde(default = "defaults::checkpoint_interval")]
    pub interval: Option<DurationSpec>,
    /// Default: `checkpoints/<pipeline>`.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// How many complete checkpoints to keep.
    #[serde(default = "defaults::retain")]
    pub retain: u32,
    /// Turn state persistence off entirely (in-memory run).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval: defaults::checkpoint_interval(),
            data_dir: None,
            retain: defaults::retain(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSpec {
    /// Emit still-open windows and final baselines on graceful shutdown / end of input.
    #[serde(default = "defaults::yes")]
    pub flush: bool,
    /// Longest wait for in-flight readings and deliveries on graceful shutdown.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: DurationSpec,
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        ShutdownSpec {
            flush: true,
            drain_timeout: defaults::drain_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerSpec {
    #[serde(default = "defaults::mqtt_port")]
    pub port: u16,
    #[serde(default = "defaults::loopback")]
    pub bind: String,
}

/// Named defaults, one function each (serde's `default = "…"` needs functions).
pub mod defaults {
    use super::{DurationSpec, Qos};
    pub use crate::operators::settings::defaults::{alpha, days, warmup, zscore};

    pub fn yes() -> bool {
        true
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn zero() -> DurationSpec {
        DurationSpec::from_millis(0)
    }
    pub fn speed() -> f64 {
        1.0
    }
    pub fn seed() -> u64 {
        1
    }
    pub fn sim_devices() -> u32 {
        50
    }
    pub fn sim_interval() -> DurationSpec {
        DurationSpec::from_millis(10_000)
    }
    pub fn sim_episodes() -> f64 {
        0.002
    }
    pub fn sim_faults() -> f64 {
        0.0005
    }
    pub fn qos() -> Qos {
        Qos::AtLeastOnce
    }
    pub fn keep_alive() -> DurationSpec {
        DurationSpec::from_millis(30_000)
    }
    pub fn kafka_group() -> String {
        "plume".to_string()
    }
    pub fn dead_letter_bytes() -> usize {
        4096
    }
    pub fn sma_n() -> u32 {
        5
    }
    pub fn smooth_alpha() -> f64 {
        0.3
    }
    pub fn smooth_beta() -> f64 {
        0.1
    }
    pub fn http_timeout() -> DurationSpec {
        DurationSpec::from_millis(10_000)
    }
    pub fn max_age() -> DurationSpec {
        DurationSpec::from_millis(24 * 3600 * 1000)
    }
    pub fn concurrency() -> u32 {
        4
    }
    pub fn backoff() -> DurationSpec {
        DurationSpec::from_millis(1000)
    }
    pub fn breaker_open() -> DurationSpec {
        DurationSpec::from_millis(30_000)
    }
    pub fn ntfy_server() -> String {
        "https://ntfy.sh".to_string()
    }
    pub fn key_groups() -> u32 {
        256
    }
    pub fn passivate_after() -> DurationSpec {
        DurationSpec::from_millis(5 * 60 * 1000)
    }
    pub fn handoff_refresh() -> Option<DurationSpec> {
        Some(DurationSpec::from_millis(30_000))
    }
    pub fn sink_queue() -> usize {
        10_000
    }
    pub fn checkpoint_interval() -> Option<DurationSpec> {
        Some(DurationSpec::from_millis(10_000))
    }
    pub fn retain() -> u32 {
        3
    }
    pub fn drain_timeout() -> DurationSpec {
        DurationSpec::from_millis(30_000)
    }
    pub fn mqtt_port() -> u16 {
        1883
    }
    pub fn loopback() -> String {
        "127.0.0.1".to_string()
    }
}
