//! The calibrate operator in the pipeline file: its spec, checks, compile step and summary.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CalibrateConfig, LearnedCorrection};
use crate::model::location::Path;
use crate::operators::settings::Correction;
use crate::operators::{CompileContext, CompileError, SpecChecker};

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

impl CalibrateSpec {
    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let c = self;
        let path = checker.path();
        checker.read_field(path.key("field"), &c.field);
        for (device, correction) in &c.table {
            check_correction(checker, &path.key("table").key(device), correction);
        }
        check_correction(checker, &path.key("default"), &c.default);
        match (&c.baseline, c.reference) {
            (Some(baseline), reference) => {
                checker.earlier_operator(path.key("baseline"), "baseline", baseline, "baseline");
                match reference {
                    None => checker.report(
                        path.key("baseline"),
                        "with `baseline`, give `reference`: the value the baseline should read (such as 420 for \
                         outdoor CO2)",
                    ),
                    Some(r) => {
                        checker.finite(path.key("reference"), "reference", r);
                    }
                }
            }
            (None, Some(_)) => checker.report(path.key("reference"), "`reference` is used only with `baseline`"),
            (None, None) => {}
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<CalibrateConfig, CompileError> {
        let c = self;
        let slot = context.slot(&c.field)?;
        let learned = match (&c.baseline, c.reference) {
            (None, None) => None,
            (Some(baseline), Some(reference)) => {
                if !context.earlier_is(baseline, "baseline") {
                    return Err(context.invalid(format!(
                        "`baseline: {baseline}` must name a baseline operator earlier in the chain"
                    )));
                }
                Some(LearnedCorrection {
                    baseline_slot: context.slot(baseline)?,
                    reference,
                })
            }
            (Some(_), None) => return Err(context.invalid("`baseline` needs the `reference` it should read")),
            (None, Some(_)) => return Err(context.invalid("`reference` is only used with `baseline`")),
        };
        Ok(CalibrateConfig {
            index: context.index,
            name: context.name.clone(),
            slot,
            field: c.field.clone(),
            table: c.table.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            default: c.default,
            learned,
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        format!("calibrate `{name}` of {}", self.field)
    }
}

fn check_correction<C: SpecChecker>(checker: &mut C, path: &Path, c: &Correction) {
    checker.finite(path.key("offset"), "offset", c.offset);
    if checker.finite(path.key("gain"), "gain", c.gain) && c.gain == 0.0 {
        checker.report(path.key("gain"), "`gain` must not be 0");
    }
}
