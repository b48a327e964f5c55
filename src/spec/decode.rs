//! `decode`: how a raw message becomes a reading.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeSpec {
    /// `json`: one JSON object per message or line; `influx`: InfluxDB line protocol.
    #[serde(default)]
    pub format: DecodeFormat,
    /// Where the device id comes from: exactly one of `field`, `tag`, `topic: true`.
    #[serde(default)]
    pub device: DeviceIdSpec,
    /// Where the event time comes from; absent: the arrival time (JSON) or the line's timestamp in
    /// ns (influx).
    #[serde(default)]
    pub time: Option<TimeSpec>,
    /// The measured fields, by name (at most 64 with those operators produce).
    pub fields: BTreeMap<String, FieldSpec>,
    /// Largest part of a raw payload copied into a dead letter.
    #[serde(default = "defaults::dead_letter_bytes")]
    pub dead_letter_max_bytes: usize,
    /// Longest payload (a line, an MQTT or Kafka message) decoded: a longer one is a dead letter
    /// with its position, its length and its first `dead_letter_max_bytes`, and reading goes on
    /// after it. At most 64 MiB.
    #[serde(
        default = "defaults::max_payload_bytes",
        skip_serializing_if = "defaults::is_max_payload_bytes"
    )]
    pub max_payload_bytes: usize,
    /// Longest device id accepted, in bytes; a reading with a longer one is a dead letter. Ids
    /// with control characters are refused too.
    #[serde(
        default = "defaults::max_device_id_bytes",
        skip_serializing_if = "defaults::is_max_device_id_bytes"
    )]
    pub max_device_id_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecodeFormat {
    /// One JSON object per message / line.
    #[default]
    Json,
    /// InfluxDB line protocol: `measurement,tag=v field=1.0 1700000000000000000`.
    Influx,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdSpec {
    /// The payload key (JSON) or line field (influx) that holds the device id.
    #[serde(default)]
    pub field: Option<String>,
    /// The influx tag that holds the device id.
    #[serde(default)]
    pub tag: Option<String>,
    /// Take the device id from the MQTT topic's `{device}`.
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// JSON: the payload key that holds the event time (required). Influx: leave it out, the line's
    /// timestamp is used.
    #[serde(default)]
    pub field: Option<String>,
    /// Unit of the event time: `s`, `ms`, `us`, `ns` (numbers) or `rfc3339` (text). Default: `ms`
    /// for JSON, `ns` for influx.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    S,
    #[default]
    Ms,
    Us,
    Ns,
    Rfc3339,
}

/// One measured field: `pm25: { min: 0, max: 1000 }`, or `pm25: {}` for the defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// `float`, `int` or `bool`.
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
    /// `flag`: treated as absent and counted; `dead_letter`: the whole reading goes to dead
    /// letters; `keep`: kept and counted. A value that is not a finite number (`1e999`, `inf`)
    /// is out of every range: with `flag` and `keep` it is dropped (absent, counted), never kept.
    #[serde(default)]
    pub out_of_range: OutOfRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    #[default]
    Float,
    Int,
    Bool,
}

/// An out-of-range value is never thrown away silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
