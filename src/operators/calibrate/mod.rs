//! Calibration of one field: the value in the reading is replaced by its corrected value, so
//! every later operator sees the corrected one (earlier operators saw the raw one).
//!
//! - From the table: the device's `{ offset, gain }` (by device id, given when the operator is
//!   instantiated for a device), or `default` for devices not in the table:
//!   `x' = x * gain + offset`.
//! - Learned from a baseline (`baseline: NAME`, `reference: R`; NAME is an earlier `baseline`
//!   operator): shift the values so that the baseline reads `R`, e.g. the rolling minimum of a
//!   CO2 sensor taken as 420 ppm outdoor air (automatic baseline correction). With `b` the
//!   baseline's derived value in the same reading: `shift = R - b * gain` and
//!   `x' = x * gain + shift` (the learned shift replaces the table's offset; its gain applies).
//!   The last shift is kept in the state: a reading where the baseline is absent uses it, and
//!   before any shift was learned the table correction applies.
//!
//! A reading without the field is passed on unchanged.

mod spec;
pub use spec::*;

use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::operators::settings::Correction;
use crate::operators::{CompileContext, CompileError, Operator, RestoreError, SpecChecker};
use crate::operators::{FieldSlot, Flow, OpIndex, Reading, present};

#[derive(Debug, Clone, PartialEq)]
pub struct CalibrateConfig {
    pub index: OpIndex,
    pub name: String,
    pub slot: FieldSlot,
    pub field: String,
    /// Per-device corrections by device id.
    pub table: FxHashMap<String, Correction>,
    /// For devices not in the table.
    pub default: Correction,
    /// Slot of the derived field of the baseline to calibrate against, and the value it should read.
    pub learned: Option<LearnedCorrection>,
}

/// Calibration against a learned baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedCorrection {
    pub baseline_slot: FieldSlot,
    pub reference: f64,
}

impl CalibrateConfig {
    /// The table correction of `device`.
    pub fn correction_for(&self, device: &str) -> Correction {
        self.table.get(device).copied().unwrap_or(self.default)
    }
}

/// The stored state of a calibration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CalibrateState {
    /// The last shift learned from the baseline.
    pub shift: Option<f64>,
}

#[derive(Debug)]
pub struct CalibrateOp {
    config: Arc<CalibrateConfig>,
    /// This device's table correction.
    correction: Correction,
    state: CalibrateState,
}

super::operator_clone!(CalibrateOp { correction, state });

impl CalibrateOp {
    pub fn new(config: Arc<CalibrateConfig>, device: &str) -> Self {
        let correction = config.correction_for(device);
        CalibrateOp {
            config,
            correction,
            state: CalibrateState::default(),
        }
    }

    /// The table correction that applies to this device.
    pub fn correction(&self) -> Correction {
        self.correction
    }

    pub fn state(&self) -> &CalibrateState {
        &self.state
    }
}

impl Operator for CalibrateOp {
    const KIND: &'static str = "calibrate";
    type Spec = CalibrateSpec;
    type Config = CalibrateConfig;
    type State = CalibrateState;

    fn explicit_name(spec: &CalibrateSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn check<C: SpecChecker>(spec: &CalibrateSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &CalibrateSpec, context: &mut CompileContext<'_>) -> Result<CalibrateConfig, CompileError> {
        spec.compile(context)
    }

    fn describe(spec: &CalibrateSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &CalibrateConfig) -> &str {
        &config.name
    }

    fn watched_field(config: &CalibrateConfig) -> Option<&str> {
        Some(&config.field)
    }

    fn instantiate(config: &Arc<CalibrateConfig>, device: &str) -> Self {
        CalibrateOp::new(config.clone(), device)
    }

    fn config(&self) -> &CalibrateConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, _now: i64, _out: &mut Vec<super::Emit>) -> Flow {
        let cfg = &*self.config;
        let Correction { offset, gain } = self.correction;
        let x = reading.get(cfg.slot);
        let mut shift = offset;
        if let Some(learned) = cfg.learned {
            let b = reading.get(learned.baseline_slot);
            if present(b) {
                self.state.shift = Some(learned.reference - b * gain);
            }
            match self.state.shift {
                Some(s) => shift = s,
                // not calibrated yet: the later operators see the value flagged
                None => reading.suspect |= 1u64 << cfg.slot,
            }
        }
        if present(x)
            && let Some(v) = reading.values.get_mut(cfg.slot)
        {
            *v = x * gain + shift;
        }
        Flow::Continue
    }

    fn snapshot(&self) -> CalibrateState {
        self.state.clone()
    }

    fn restore(&mut self, state: CalibrateState) -> Result<(), RestoreError> {
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::ABSENT;

    fn config(learned: Option<LearnedCorrection>) -> Arc<CalibrateConfig> {
        let mut table = FxHashMap::default();
        table.insert(
            "dev-1".to_string(),
            Correction {
                offset: -2.0,
                gain: 1.1,
            },
        );
        Arc::new(CalibrateConfig {
            index: 0,
            name: "cal".into(),
            slot: 0,
            field: "co2".into(),
            table,
            default: Correction { offset: 5.0, gain: 1.0 },
            learned,
        })
    }

    fn apply(op: &mut CalibrateOp, x: f64, baseline: f64) -> f64 {
        let mut r = Reading {
            ts: 0,
            values: smallvec::smallvec![x, baseline],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        };
        assert_eq!(op.on_reading(&mut r, 0, &mut Vec::new()), Flow::Continue);
        assert_eq!(
            r.values[1].to_bits(),
            baseline.to_bits(),
            "the baseline field is left alone"
        );
        r.values[0]
    }

    #[test]
    fn table_correction_by_device_and_default_for_the_others() {
        let mut listed = CalibrateOp::new(config(None), "dev-1");
        assert_eq!(apply(&mut listed, 100.0, ABSENT), 100.0 * 1.1 - 2.0);
        let mut other = CalibrateOp::new(config(None), "dev-2");
        assert_eq!(apply(&mut other, 100.0, ABSENT), 105.0);
        assert!(apply(&mut other, ABSENT, ABSENT).is_nan(), "absent stays absent");
    }

    #[test]
    fn learned_shift_makes_the_baseline_read_the_reference() {
        let learned = Some(LearnedCorrection {
            baseline_slot: 1,
            reference: 420.0,
        });
        let mut op = CalibrateOp::new(config(learned), "dev-9");
        // before the baseline exists: the table (default) correction
        assert_eq!(apply(&mut op, 500.0, ABSENT), 505.0);
        assert_eq!(op.state().shift, None);
        // baseline 380 -> +40
        assert_eq!(apply(&mut op, 500.0, 380.0), 540.0);
        assert_eq!(apply(&mut op, 380.0, 380.0), 420.0);
        // baseline absent again: the last shift holds
        assert_eq!(apply(&mut op, 400.0, ABSENT), 440.0);
        let mut restored = CalibrateOp::new(config(learned), "dev-9");
        restored.restore(op.snapshot()).unwrap();
        assert_eq!(apply(&mut restored, 400.0, ABSENT), 440.0);
        // with a gain, the baseline still maps to the reference
        let mut with_gain = CalibrateOp::new(config(learned), "dev-1");
        assert_eq!(apply(&mut with_gain, 400.0, 400.0), 400.0 * 1.1 + (420.0 - 400.0 * 1.1));
        assert!((apply(&mut with_gain, 400.0, 400.0) - 420.0).abs() < 1e-9);
    }
}
