//! `decode`: how a raw message becomes a reading.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationSpec, defaults};

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
    /// Where the arrival time comes from (JSON: a payload key such as a gateway's receive time):
    /// when the reading reached the fleet's ingest, as opposed to when it was taken. It is the
    /// reading's `arrival` for backfill marking and, with `runtime.clock: event`, what advances
    /// the fleet's clock (a device with a wrong clock cannot move it). Absent: the source's time
    /// (processing clock) or the event time (event clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<TimeSpec>,
    /// The measured fields, by name (at most 64 with those operators produce).
    pub fields: BTreeMap<String, FieldSpec>,
    /// Largest part of a raw payload copied into a dead letter.
    #[serde(default = "defaults::dead_letter_bytes")]
    pub dead_letter_max_bytes: usize,
    /// Longest payload (a line, an MQTT or Kafka message) decoded: a longer one is a dead letter
    /// with its position, its length and its first `dead_letter_max_bytes`, and reading goes on
    /// after it. Default 1 MiB, at most 64 MiB.
    #[serde(
        default = "defaults::max_payload_bytes",
        skip_serializing_if = "defaults::is_max_payload_bytes"
    )]
    pub max_payload_bytes: usize,
    /// Longest device id accepted, in bytes; a reading with a longer one is a dead letter. Ids
    /// with control characters are refused too. Default 256.
    #[serde(
        default = "defaults::max_device_id_bytes",
        skip_serializing_if = "defaults::is_max_device_id_bytes"
    )]
    pub max_device_id_bytes: usize,
    /// Most entries one payload may hold (a JSON object's top-level keys; an influx line's tags
    /// and fields together): a payload with more is a dead letter, not decoded further. Default
    /// 1000, at most 100000.
    #[serde(default = "defaults::max_fields", skip_serializing_if = "defaults::is_max_fields")]
    pub max_fields: usize,
    /// How far an event time may be from the source's own time (when an MQTT message arrived, the
    /// Kafka record's timestamp, when a file line was read, the simulator's clock). A reading
    /// outside is a dead letter (or clamped, as `outside` says): one device with a wrong clock
    /// cannot make all its later readings late.
    #[serde(default, skip_serializing_if = "PlausibleTimeSpec::is_default")]
    pub plausible_time: PlausibleTimeSpec,
}

/// The window around the source's time where an event time is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlausibleTimeSpec {
    /// Largest lead of an event time over the source's time (clocks drift; a reading from the
    /// future is a broken clock).
    #[serde(default = "defaults::plausible_ahead")]
    pub ahead: DurationSpec,
    /// Largest lag of an event time behind the source's time; absent: any age (replays of old
    /// files and topics are allowed). Set it to refuse readings of clocks that reset to 1970.
    #[serde(default)]
    pub behind: Option<DurationSpec>,
    /// `dead_letter`: the reading goes to dead letters; `clamp`: its time is moved to the edge of
    /// the window (and counted).
    #[serde(default)]
    pub outside: OutsideTime,
}

impl Default for PlausibleTimeSpec {
    fn default() -> Self {
        PlausibleTimeSpec {
            ahead: defaults::plausible_ahead(),
            behind: None,
            outside: OutsideTime::default(),
        }
    }
}

impl PlausibleTimeSpec {
    /// (Left out of the canonical JSON at its default, so the pipeline hash of files written
    /// before the setting existed does not change.)
    pub fn is_default(&self) -> bool {
        *self == PlausibleTimeSpec::default()
    }
}

/// What happens to a reading whose event time is outside `plausible_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutsideTime {
    /// The reading goes to dead letters with both times in the reason.
    #[default]
    DeadLetter,
    /// The event time becomes the window's edge (source time + `ahead`, or − `behind`).
    Clamp,
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
    /// letters; `keep`: kept and counted; `field_dead_letter`: treated as absent and counted,
    /// and a dead letter records the field and its value (the rest of the reading is used). A
    /// value that is not a finite number (`1e999`, `inf`) is out of every range: with `flag`
    /// and `keep` it is dropped (absent, counted), never kept.
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
    /// The field is left out of this reading (the other fields are used, and it is counted as
    /// with `flag`), and a dead letter records it: the field, the value, its range and the raw
    /// payload. A bad CO2 value then costs neither the PM2.5 of the same reading nor the record
    /// of what the sensor sent.
    FieldDeadLetter,
}
