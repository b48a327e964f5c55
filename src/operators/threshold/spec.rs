//! The threshold operator in the pipeline file: its spec, checks, compile step and summary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ThresholdConfig;
use crate::operators::{CompileContext, CompileError, SpecChecker};

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
    #[serde(default = "one")]
    pub factor: f64,
    /// Emit only when the state changes (otherwise every reading beyond the threshold).
    #[serde(default = "yes")]
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

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

impl ThresholdSpec {
    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let t = self;
        let path = checker.path();
        checker.read_field(path.key("field"), &t.field);
        match t.limits() {
            Err(e) if t.above.is_some() => checker.report(path.key("below"), e),
            Err(e) => checker.report(path.clone(), e),
            Ok(_) => {
                for (key, limit) in [("above", t.above), ("below", t.below)] {
                    if let Some(x) = limit {
                        checker.finite(path.key(key), key, x);
                    }
                }
            }
        }
        if let Some(other) = &t.relative_to {
            checker.read_field(path.key("relative_to"), other);
        }
        if checker.finite(path.key("factor"), "factor", t.factor) && t.relative_to.is_none() && t.factor != 1.0 {
            checker.report(path.key("factor"), "`factor` is used only with `relative_to`");
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<ThresholdConfig, CompileError> {
        let t = self;
        let slot = context.slot(&t.field)?;
        let relative_slot = t.relative_to.as_deref().map(|f| context.slot(f)).transpose()?;
        let (above, below) = t.limits().map_err(|e| context.invalid(e))?;
        Ok(ThresholdConfig {
            index: context.index,
            name: context.name.clone(),
            slot,
            field: t.field.clone(),
            above,
            below,
            relative_slot,
            factor: t.factor,
            changes_only: t.changes_only,
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        format!("threshold `{name}` on {}", self.field)
    }
}
