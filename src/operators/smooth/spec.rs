//! The smooth operator in the pipeline file: its spec, checks, compile step and summary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SmoothConfig;
use crate::operators::context::wire_name;
use crate::operators::settings::SmoothMethod;
use crate::operators::{CompileContext, CompileError, DerivedField, SpecChecker};

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
    #[serde(default = "default_n")]
    pub n: u32,
    /// EWMA and Holt: level weight.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Holt: trend weight.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Name of the produced field; default: `<field>_smooth`.
    #[serde(default)]
    pub output: Option<String>,
    /// Emit every smoothed value as a result.
    #[serde(default)]
    pub emit: bool,
}

/// Default number of readings of a moving average.
fn default_n() -> u32 {
    5
}
/// Default level weight of EWMA and Holt smoothing.
fn default_alpha() -> f64 {
    0.3
}
/// Default trend weight of Holt smoothing.
fn default_beta() -> f64 {
    0.1
}

impl SmoothSpec {
    /// The smoothed value is a field named `output` (default `<field>_smooth`).
    pub(super) fn derived_field(&self) -> DerivedField {
        DerivedField {
            field: self.output.clone().unwrap_or_else(|| format!("{}_smooth", self.field)),
            key: "output",
        }
    }

    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let s = self;
        let path = checker.path();
        checker.read_field(path.key("field"), &s.field);
        if s.n < 1 {
            checker.report(path.key("n"), "`n` must be at least 1");
        }
        if matches!(s.method, SmoothMethod::Ewma | SmoothMethod::Holt) {
            checker.fraction(path.key("alpha"), "alpha", s.alpha);
        }
        if s.method == SmoothMethod::Holt {
            checker.fraction(path.key("beta"), "beta", s.beta);
        }
        if let Some(output) = &s.output
            && !crate::model::location::is_name(output)
        {
            checker.report(
                path.key("output"),
                format!("field name `{output}` may contain only letters, digits, `-` and `_`"),
            );
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<SmoothConfig, CompileError> {
        let sm = self;
        let slot = context.slot(&sm.field)?;
        if sm.method == SmoothMethod::Sma && sm.n == 0 {
            return Err(context.invalid("a moving average needs `n` of at least 1"));
        }
        let output_slot = context.add_derived(&self.derived_field().field)?;
        Ok(SmoothConfig {
            index: context.index,
            name: context.name.clone(),
            slot,
            field: sm.field.clone(),
            method: sm.method,
            n: sm.n,
            alpha: sm.alpha,
            beta: sm.beta,
            emit: sm.emit,
            output_slot: Some(output_slot),
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        format!("smooth `{name}`: {} of {}", wire_name(&self.method), self.field)
    }
}
