//! The health operator in the pipeline file: its spec, checks, compile step and summary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FlatlineConfig, HealthConfig};
use crate::model::DurationSpec;
use crate::operators::{CompileContext, CompileError, SpecChecker};

/// A stuck sensor: the same value for `readings` readings in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlatlineSpec {
    /// The field watched.
    pub field: String,
    /// How many equal readings in a row make a flatline (at least 2).
    pub readings: u32,
    /// While the field is stuck (from the `readings`-th equal value until it changes), the
    /// operators after `health` do not see it: no event opens, grows or is kept open on a stuck
    /// value, and no window averages it. Put `health` before the operators it guards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppress: bool,
}

/// Device health: offline/online, flatline, out-of-range counts. Results: `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Name for routes and output records; default: `health`.
    #[serde(default)]
    pub name: Option<String>,
    /// A device without data for this long (processing time) goes offline: reported once, also
    /// when it is passivated or only in the store (after a restart).
    #[serde(default)]
    pub offline_after: Option<DurationSpec>,
    /// Stuck sensors: the same value for `readings` readings in a row.
    #[serde(default)]
    pub flatline: Vec<FlatlineSpec>,
    /// Emit a health report with out-of-range counts every this many readings.
    #[serde(default)]
    pub report_every: Option<u32>,
}

impl HealthSpec {
    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let h = self;
        let path = checker.path();
        if let Some(d) = h.offline_after {
            checker.duration_positive(path.key("offline_after"), "offline_after", d);
        }
        for (j, flatline) in h.flatline.iter().enumerate() {
            let p = path.key("flatline").index(j);
            checker.read_field(p.key("field"), &flatline.field);
            if flatline.readings < 2 {
                checker.report(
                    p.key("readings"),
                    format!("`readings` must be at least 2, found {}", flatline.readings),
                );
            }
        }
        if h.report_every == Some(0) {
            checker.report(path.key("report_every"), "`report_every` must be at least 1");
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<HealthConfig, CompileError> {
        let h = self;
        let mut flatline = Vec::with_capacity(h.flatline.len());
        for f in &h.flatline {
            if f.readings < 2 {
                return Err(context.invalid("a flatline needs `readings` of at least 2"));
            }
            flatline.push(FlatlineConfig {
                slot: context.slot(&f.field)?,
                readings: f.readings,
                suppress: f.suppress,
            });
        }
        if h.report_every == Some(0) {
            return Err(context.invalid("`report_every` must be at least 1"));
        }
        Ok(HealthConfig {
            index: context.index,
            name: context.name.clone(),
            offline_after_ms: h.offline_after.map(|d| d.as_millis()),
            flatline,
            report_every: h.report_every,
            range_fields: context.ranged.to_vec(),
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        format!("health `{name}`")
    }
}
