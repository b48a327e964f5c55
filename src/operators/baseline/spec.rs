//! The baseline operator in the pipeline file: its spec, checks, compile step and summary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BaselineConfig;
use crate::operators::context::wire_name;
use crate::operators::settings::{BaselineEmit, BaselineMethod, defaults};
use crate::operators::{CompileContext, CompileError, DerivedField, SpecChecker};

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

impl BaselineSpec {
    /// A baseline's value is a field named after the operator.
    pub(super) fn derived_field(&self) -> DerivedField {
        DerivedField {
            field: self.name.clone().unwrap_or_else(|| "baseline".to_string()),
            key: "name",
        }
    }

    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let b = self;
        let path = checker.path();
        checker.read_field(path.key("field"), &b.field);
        checker.fraction(path.key("alpha"), "alpha", b.alpha);
        if b.days < 1 {
            checker.report(path.key("days"), "`days` must be at least 1");
        }
        if !(b.zscore.is_finite() && b.zscore > 0.0) {
            checker.report(
                path.key("zscore"),
                format!("`zscore` must be a number above 0, found {}", b.zscore),
            );
        }
        if !(-12..=14).contains(&b.utc_offset_hours) {
            checker.report(
                path.key("utc_offset_hours"),
                format!(
                    "`utc_offset_hours` must be from -12 to 14, found {}",
                    b.utc_offset_hours
                ),
            );
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<BaselineConfig, CompileError> {
        let b = self;
        let slot = context.slot(&b.field)?;
        if b.method == BaselineMethod::RollingMin && b.days == 0 {
            return Err(context.invalid("a rolling minimum needs `days` of at least 1"));
        }
        let output_slot = context.add_derived(&self.derived_field().field)?;
        Ok(BaselineConfig {
            index: context.index,
            name: context.name.clone(),
            slot,
            field: b.field.clone(),
            method: b.method,
            alpha: b.alpha,
            zscore: b.zscore,
            warmup: b.warmup,
            days: b.days,
            utc_offset_hours: b.utc_offset_hours,
            emit: b.emit,
            output_slot: Some(output_slot),
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        format!(
            "baseline `{name}`: {} of {}, alpha {}",
            wire_name(&self.method),
            self.field,
            self.alpha
        )
    }
}
