//! Operators: the per-device chain.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::operators::settings::{Aggregate, BaselineEmit, BaselineMethod, Correction, Direction, SmoothMethod};

use super::{DurationSpec, Expecting, defaults};

/// One operator of the per-device chain. Externally tagged: `- window: { … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

    /// The `name` written in the file, if any.
    pub fn explicit_name(&self) -> Option<&str> {
        match self {
            OperatorSpec::Window(s) => s.name.as_deref(),
            OperatorSpec::Hysteresis(s) => s.name.as_deref(),
            OperatorSpec::Baseline(s) => s.name.as_deref(),
            OperatorSpec::Smooth(s) => s.name.as_deref(),
            OperatorSpec::Threshold(s) => s.name.as_deref(),
            OperatorSpec::Calibrate(s) => s.name.as_deref(),
            OperatorSpec::Health(s) => s.name.as_deref(),
        }
    }

    /// The field this operator adds to the readings, for the operators after it: a baseline's
    /// value under the baseline's name, a smooth's value under `output` (default
    /// `<field>_smooth`). The one place this rule is written: validation and compilation ask here.
    pub fn derived_field(&self) -> Option<String> {
        match self {
            OperatorSpec::Baseline(_) => Some(self.name().to_string()),
            OperatorSpec::Smooth(s) => Some(s.output.clone().unwrap_or_else(|| format!("{}_smooth", s.field))),
            _ => None,
        }
    }

    /// The key of this operator that names its [`derived_field`](Self::derived_field) (`name` or
    /// `output`), for messages.
    pub fn derived_field_key(&self) -> Option<&'static str> {
        match self {
            OperatorSpec::Baseline(_) => Some("name"),
            OperatorSpec::Smooth(_) => Some("output"),
            _ => None,
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

/// Event-time windows per device: tumbling (`every`) or sliding (`every` and `slide`). Results:
/// `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Name for routes and output records; default: the kind (`window`).
    #[serde(default)]
    pub name: Option<String>,
    /// Window length.
    pub every: DurationSpec,
    /// Hop between window starts (sliding windows, at most `every`); absent: tumbling.
    #[serde(default)]
    pub slide: Option<DurationSpec>,
    /// Allowed lateness: the device's watermark is its largest event time minus this; later
    /// readings go to `late`.
    #[serde(default = "defaults::zero")]
    pub lateness: DurationSpec,
    /// The fields the list form of `aggregates` applies to.
    #[serde(default)]
    pub fields: Vec<String>,
    /// `[avg, max]` for every field in `fields`, or `{ pm25: [avg, max], co2: [avg] }` per field.
    /// `count` is always reported.
    pub aggregates: AggregatesSpec,
    /// Close a silent device's windows after this much processing time without readings.
    #[serde(default)]
    pub idle_flush: Option<DurationSpec>,
}

/// Aggregates of a window, for all fields or per field. Deserialized by hand (a list or a map)
/// so that an error inside either form keeps its position and says what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
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

/// Pollution events with enter/exit thresholds and debounce. Results: `event_start`, `event_end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HysteresisSpec {
    /// Name for routes and output records; default: `hysteresis`.
    #[serde(default)]
    pub name: Option<String>,
    /// The field watched.
    pub field: String,
    /// An event opens when the value reaches this (`>=` above, `<=` below).
    pub enter: f64,
    /// An open event closes when the value reaches this; not above `enter` (direction above), not
    /// below it (below).
    pub exit: f64,
    /// `above`: high values are bad (PM2.5, CO2); `below`: low values are bad (humidity too low).
    #[serde(default)]
    pub direction: Direction,
    /// The enter condition must hold this long (event time) before the event opens.
    #[serde(default)]
    pub min_duration: Option<DurationSpec>,
    /// The exit condition must hold this long (event time) before the event closes.
    #[serde(default)]
    pub min_clear: Option<DurationSpec>,
    /// Severity bands by peak value: `{ moderate: 35, high: 55, severe: 150 }`.
    #[serde(default)]
    pub severity: BTreeMap<String, f64>,
}

/// A learned per-device baseline; later operators can read it as a field named after the operator.
/// Results: `baseline`, `deviation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// Name for routes, output records and the produced field; default: `baseline`.
    #[serde(default)]
    pub name: Option<String>,
    /// The field learned.
    pub field: String,
    /// `ewma`: exponential average; `welford`: running mean and variance with deviation events;
    /// `rolling_min`: lowest value over `days`; `hourly_profile`: one value per hour of day.
    #[serde(default)]
    pub method: BaselineMethod,
    /// EWMA weight (and hourly profile weight).
    #[serde(default = "defaults::alpha")]
    pub alpha: f64,
    /// Welford: a deviation event when |z| exceeds this (after `warmup` readings).
    #[serde(default = "defaults::zscore")]
    pub zscore: f64,
    /// Welford: readings before deviation events start.
    #[serde(default = "defaults::warmup")]
    pub warmup: u32,
    /// Rolling minimum: how many days to look back (at least 1).
    #[serde(default = "defaults::days")]
    pub days: u32,
    /// Hourly profile: offset of local time from UTC, in hours.
    #[serde(default)]
    pub utc_offset_hours: i32,
    /// `end`: report the value once at the end of input or on shutdown; `every`: after every
    /// reading; `never`: only for later operators.
    #[serde(default)]
    pub emit: BaselineEmit,
}

/// Smoothing; the smoothed value is a field for later operators. Results: `smoothed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmoothSpec {
    /// Name for routes and output records; default: `smooth`.
    #[serde(default)]
    pub name: Option<String>,
    /// The field smoothed.
    pub field: String,
    /// `sma`: moving average of the last `n` readings; `ewma`: exponential, `alpha`; `holt`: level
    /// `alpha` and trend `beta`.
    #[serde(default)]
    pub method: SmoothMethod,
    /// SMA: number of readings.
    #[serde(default = "defaults::sma_n")]
    pub n: u32,
    /// EWMA and Holt: level weight.
    #[serde(default = "defaults::smooth_alpha")]
    pub alpha: f64,
    /// Holt: trend weight.
    #[serde(default = "defaults::smooth_beta")]
    pub beta: f64,
    /// Name of the produced field; default: `<field>_smooth`.
    #[serde(default)]
    pub output: Option<String>,
    /// Emit every smoothed value as a result.
    #[serde(default)]
    pub emit: bool,
}

/// Instant threshold crossings. Results: `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSpec {
    /// Name for routes and output records; default: `threshold`.
    #[serde(default)]
    pub name: Option<String>,
    /// The field compared.
    pub field: String,
    /// Beyond when the value is above this (give `above` or `below`).
    #[serde(default)]
    pub above: Option<f64>,
    /// Beyond when the value is below this (give `above` or `below`).
    #[serde(default)]
    pub below: Option<f64>,
    /// Move the limits with this field (such as a baseline): beyond when above `above` + `factor` ×
    /// it (or below `below` + `factor` × it); without `above`/`below`, above `factor` × it.
    #[serde(default)]
    pub relative_to: Option<String>,
    /// Multiplier of `relative_to` (default 1).
    #[serde(default = "defaults::one")]
    pub factor: f64,
    /// Emit only when the state changes (otherwise every reading beyond the threshold).
    #[serde(default = "defaults::yes")]
    pub changes_only: bool,
}

impl ThresholdSpec {
    /// The limits `(above, below)` the operator runs with, or why there are none: exactly one of
    /// `above` and `below`, or neither with `relative_to` (then `above: 0`, "above `factor` × the
    /// other field"). Validation and compilation both ask here.
    pub fn limits(&self) -> Result<(Option<f64>, Option<f64>), &'static str> {
        match (self.above, self.below) {
            (Some(_), Some(_)) => Err("give either `above` or `below`, not both"),
            (None, None) if self.relative_to.is_some() => Ok((Some(0.0), None)),
            (None, None) => Err("a threshold needs `above`, `below` or `relative_to`"),
            limits => Ok(limits),
        }
    }
}

/// Calibration `value * gain + offset`, from a table or a learned baseline; changes the field in
/// place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibrateSpec {
    /// Name for routes and output records; default: `calibrate`.
    #[serde(default)]
    pub name: Option<String>,
    /// The field corrected.
    pub field: String,
    /// Per-device corrections by device id.
    #[serde(default)]
    pub table: BTreeMap<String, Correction>,
    /// The correction for devices not in the table.
    #[serde(default)]
    pub default: Correction,
    /// Learned correction: shift so that this earlier `baseline` operator reads `reference`.
    #[serde(default)]
    pub baseline: Option<String>,
    /// With `baseline`: the value the baseline should read (such as 420 ppm for outdoor CO2).
    #[serde(default)]
    pub reference: Option<f64>,
}

/// A stuck sensor: the same value for `readings` readings in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlatlineSpec {
    /// The field watched.
    pub field: String,
    /// How many equal readings in a row make a flatline (at least 2).
    pub readings: u32,
}

/// Device health: offline/online, flatline, out-of-range counts. Results: `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Name for routes and output records; default: `health`.
    #[serde(default)]
    pub name: Option<String>,
    /// A device without data for this long (processing time) goes offline.
    #[serde(default)]
    pub offline_after: Option<DurationSpec>,
    /// Stuck sensors: the same value for `readings` readings in a row.
    #[serde(default)]
    pub flatline: Vec<FlatlineSpec>,
    /// Emit a health report with out-of-range counts every this many readings.
    #[serde(default)]
    pub report_every: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: serde_json::Value) -> OperatorSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_derived_field_rule() {
        use serde_json::json;
        let cases = [
            (
                json!({ "baseline": { "field": "co2" } }),
                Some("baseline"),
                Some("name"),
            ),
            (
                json!({ "baseline": { "name": "co2_base", "field": "co2" } }),
                Some("co2_base"),
                Some("name"),
            ),
            (
                json!({ "smooth": { "field": "pm25" } }),
                Some("pm25_smooth"),
                Some("output"),
            ),
            (
                json!({ "smooth": { "field": "pm25", "output": "pm" } }),
                Some("pm"),
                Some("output"),
            ),
            (json!({ "threshold": { "field": "pm25", "above": 5 } }), None, None),
        ];
        for (spec, field, key) in cases {
            let spec = op(spec);
            assert_eq!(spec.derived_field().as_deref(), field, "{spec:?}");
            assert_eq!(spec.derived_field_key(), key, "{spec:?}");
        }
    }

    #[test]
    fn threshold_limits() {
        use serde_json::json;
        let limits = |t: serde_json::Value| match op(json!({ "threshold": t })) {
            OperatorSpec::Threshold(t) => t.limits(),
            other => panic!("{other:?}"),
        };
        assert_eq!(limits(json!({ "field": "a", "above": 5 })), Ok((Some(5.0), None)));
        assert_eq!(limits(json!({ "field": "a", "below": 5 })), Ok((None, Some(5.0))));
        assert_eq!(
            limits(json!({ "field": "a", "relative_to": "b" })),
            Ok((Some(0.0), None))
        );
        assert!(limits(json!({ "field": "a" })).is_err());
        assert!(limits(json!({ "field": "a", "above": 5, "below": 1 })).is_err());
    }
}
