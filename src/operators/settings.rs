//! The settings an operator's spec in the pipeline file shares with its state machine (how a
//! baseline learns, which side of a threshold is bad, …): defined here so that the operators
//! depend on nothing but `model`, and re-exported by `spec`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Last,
    Stddev,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Last => "last",
            Aggregate::Stddev => "stddev",
        }
    }
}

/// Which side of the thresholds is "bad".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// An event opens at `value >= enter` and closes at `value <= exit` (PM2.5, CO2).
    #[default]
    Above,
    /// An event opens at `value <= enter` and closes at `value >= exit` (humidity too low).
    Below,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaselineMethod {
    /// `b = b + alpha * (x - b)`, starting at the first value.
    #[default]
    Ewma,
    /// Running mean and variance (Welford); a deviation event when |z| > `zscore`.
    Welford,
    /// The lowest value over the last `days` days (automatic baseline correction).
    RollingMin,
    /// One learned value per hour of day.
    HourlyProfile,
}

/// When a baseline reports its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaselineEmit {
    /// Once, at the end of the input (or graceful shutdown).
    #[default]
    End,
    /// After every reading.
    Every,
    /// Never (only exposed to later operators).
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmoothMethod {
    /// Simple moving average over the last `n` readings.
    #[default]
    Sma,
    /// Exponential smoothing with `alpha`.
    Ewma,
    /// Holt double exponential smoothing with `alpha` (level) and `beta` (trend).
    Holt,
}

/// A per-device correction: `value * gain + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    /// Added after the gain.
    #[serde(default)]
    pub offset: f64,
    /// Multiplies the value.
    #[serde(default = "defaults::one")]
    pub gain: f64,
}

impl Default for Correction {
    fn default() -> Self {
        Correction { offset: 0.0, gain: 1.0 }
    }
}

/// Defaults of the operators' settings (the pipeline file's defaults).
pub mod defaults {
    pub fn one() -> f64 {
        1.0
    }
    pub fn alpha() -> f64 {
        0.01
    }
    pub fn zscore() -> f64 {
        3.0
    }
    pub fn warmup() -> u32 {
        30
    }
    pub fn days() -> u32 {
        7
    }
}
