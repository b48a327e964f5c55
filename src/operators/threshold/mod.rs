//! Instant threshold crossings on one field (no hysteresis, no debounce: see `hysteresis` for
//! that).
//!
//! Limits: `above: A` makes a value *beyond* when `x > A`, `below: B` when `x < B` (strict
//! comparisons); with both, a value outside the band `[B, A]` is beyond. With
//! `relative_to: F`, both limits move with the value `r` of field `F` in the same reading (a
//! declared field or one derived by an earlier operator, such as a baseline):
//! `x > A + factor * r` and `x < B + factor * r`, where a missing `above` and `below` mean
//! `above: 0` (so `relative_to: co2_baseline, factor: 1.5` is "above 1.5 × the baseline").
//!
//! The detector is in one of three states: within, above, below (initially within). A reading
//! without the field, or without `F`, leaves it unchanged and emits nothing. Every change emits
//! [`Emit::Threshold`]: `beyond: true` with the limit crossed when it goes beyond (also when it
//! jumps from above to below), `beyond: false` with the limit it had crossed when it comes back.
//! With `changes_only: false`, every reading beyond the limit emits as well, not only the first.

mod spec;
pub use spec::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operators::{CompileContext, CompileError, Operator, RestoreError, SpecChecker};
use crate::operators::{Emit, FieldSlot, Flow, OpIndex, Reading, present};

#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdConfig {
    pub index: OpIndex,
    pub name: String,
    pub slot: FieldSlot,
    pub field: String,
    /// Upper limit (or margin over `factor × relative_to`).
    pub above: Option<f64>,
    /// Lower limit (or margin over `factor × relative_to`).
    pub below: Option<f64>,
    /// Slot of the `relative_to` field.
    pub relative_slot: Option<FieldSlot>,
    pub factor: f64,
    pub changes_only: bool,
}

/// Where the last value was, relative to the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Side {
    #[default]
    Within,
    Above,
    Below,
}

/// The stored state of a threshold detector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThresholdState {
    pub side: Side,
}

#[derive(Debug)]
pub struct ThresholdOp {
    config: Arc<ThresholdConfig>,
    state: ThresholdState,
}

super::operator_clone!(ThresholdOp { state });

impl ThresholdOp {
    pub fn new(config: Arc<ThresholdConfig>) -> Self {
        ThresholdOp {
            config,
            state: ThresholdState::default(),
        }
    }

    pub fn state(&self) -> &ThresholdState {
        &self.state
    }
}

impl Operator for ThresholdOp {
    const KIND: &'static str = "threshold";
    type Spec = ThresholdSpec;
    type Config = ThresholdConfig;
    type State = ThresholdState;

    fn explicit_name(spec: &ThresholdSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn check<C: SpecChecker>(spec: &ThresholdSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &ThresholdSpec, context: &mut CompileContext<'_>) -> Result<ThresholdConfig, CompileError> {
        spec.compile(context)
    }

    fn describe(spec: &ThresholdSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &ThresholdConfig) -> &str {
        &config.name
    }

    fn watched_field(config: &ThresholdConfig) -> Option<&str> {
        Some(&config.field)
    }

    fn instantiate(config: &Arc<ThresholdConfig>, _device: &str) -> Self {
        ThresholdOp::new(config.clone())
    }

    fn config(&self) -> &ThresholdConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, _now: i64, out: &mut Vec<Emit>) -> Flow {
        let cfg = &*self.config;
        let x = reading.get(cfg.slot);
        if !present(x) {
            return Flow::Continue;
        }
        let shift = match cfg.relative_slot {
            None => None,
            Some(slot) => match reading.get(slot) {
                r if present(r) => Some(cfg.factor * r),
                _ => return Flow::Continue,
            },
        };
        let limit = |margin: f64| shift.map_or(margin, |s| margin + s);
        let above = cfg.above.map(limit);
        let below = cfg.below.map(limit);
        let side = if above.is_some_and(|a| x > a) {
            Side::Above
        } else if below.is_some_and(|b| x < b) {
            Side::Below
        } else {
            Side::Within
        };
        let previous = std::mem::replace(&mut self.state.side, side);
        let limit_of = |side: Side| match side {
            Side::Above => above,
            Side::Below => below,
            Side::Within => None,
        };
        let emit = |limit: Option<f64>, beyond: bool| Emit::Threshold {
            op: cfg.index,
            ts: reading.ts,
            value: x,
            limit: limit.unwrap_or(f64::NAN),
            beyond,
        };
        if side == Side::Within {
            if previous != Side::Within {
                out.push(emit(limit_of(previous), false));
            }
        } else if side != previous || !cfg.changes_only {
            out.push(emit(limit_of(side), true));
        }
        Flow::Continue
    }

    fn snapshot(&self) -> ThresholdState {
        self.state.clone()
    }

    fn restore(&mut self, state: ThresholdState) -> Result<(), RestoreError> {
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::ABSENT;

    fn detector(
        above: Option<f64>,
        below: Option<f64>,
        relative: bool,
        factor: f64,
        changes_only: bool,
    ) -> ThresholdOp {
        ThresholdOp::new(Arc::new(ThresholdConfig {
            index: 1,
            name: "t".into(),
            slot: 0,
            field: "co2".into(),
            above,
            below,
            relative_slot: relative.then_some(1),
            factor,
            changes_only,
        }))
    }

    /// `(value, relative field)` readings; returns `(ts, limit, beyond)` of each emit.
    fn run(op: &mut ThresholdOp, readings: &[(f64, f64)]) -> Vec<(i64, f64, bool)> {
        let mut out = Vec::new();
        for (i, &(x, r)) in readings.iter().enumerate() {
            let mut reading = Reading {
                ts: i as i64,
                values: smallvec::smallvec![x, r],
                out_of_range: 0,
                arrival: 0,
                suspect: 0,
            };
            op.on_reading(&mut reading, 0, &mut out);
        }
        out.into_iter()
            .map(|e| match e {
                Emit::Threshold {
                    ts,
                    limit,
                    beyond,
                    value,
                    ..
                } => {
                    assert_eq!(value, readings[ts as usize].0);
                    (ts, limit, beyond)
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn changes_only_emits_the_crossings_and_the_limit_itself_is_not_beyond() {
        let mut op = detector(Some(1000.0), None, false, 1.0, true);
        let got = run(
            &mut op,
            &[
                (900.0, ABSENT),
                (1000.0, ABSENT),
                (1001.0, ABSENT),
                (1500.0, ABSENT),
                (ABSENT, ABSENT),
                (999.0, ABSENT),
            ],
        );
        assert_eq!(got, vec![(2, 1000.0, true), (5, 1000.0, false)]);
    }

    #[test]
    fn every_reading_beyond_without_changes_only() {
        let mut op = detector(Some(1000.0), None, false, 1.0, false);
        let got = run(
            &mut op,
            &[(1001.0, ABSENT), (1500.0, ABSENT), (800.0, ABSENT), (700.0, ABSENT)],
        );
        assert_eq!(got, vec![(0, 1000.0, true), (1, 1000.0, true), (2, 1000.0, false)]);
    }

    #[test]
    fn a_band_reports_which_side_was_crossed() {
        let mut op = detector(Some(60.0), Some(30.0), false, 1.0, true);
        let got = run(
            &mut op,
            &[
                (45.0, ABSENT),
                (29.0, ABSENT),
                (61.0, ABSENT),
                (60.0, ABSENT),
                (30.0, ABSENT),
            ],
        );
        assert_eq!(got, vec![(1, 30.0, true), (2, 60.0, true), (3, 60.0, false)]);
    }

    #[test]
    fn relative_to_another_field_with_a_factor() {
        // 1.5 x the baseline (above defaults to a margin of 0)
        let mut op = detector(Some(0.0), None, true, 1.5, true);
        let got = run(
            &mut op,
            &[(700.0, 500.0), (760.0, 500.0), (760.0, ABSENT), (760.0, 520.0)],
        );
        assert_eq!(got, vec![(1, 750.0, true), (3, 780.0, false)]);
        // below a margin under the other field
        let mut op = detector(None, Some(-50.0), true, 1.0, true);
        let got = run(&mut op, &[(449.0, 500.0), (455.0, 500.0)]);
        assert_eq!(got, vec![(0, 450.0, true), (1, 450.0, false)]);
    }

    #[test]
    fn the_state_survives_snapshot_and_restore() {
        let mut op = detector(Some(10.0), None, false, 1.0, true);
        run(&mut op, &[(11.0, ABSENT)]);
        let mut restored = detector(Some(10.0), None, false, 1.0, true);
        restored.restore(op.snapshot()).unwrap();
        assert_eq!(
            run(&mut restored, &[(12.0, ABSENT), (9.0, ABSENT)]),
            vec![(1, 10.0, false)]
        );
    }
}
