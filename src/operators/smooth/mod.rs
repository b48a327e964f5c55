//! Smoothing of one field. The smoothed value is written into a derived field (`output`, by
//! default `<field>_smooth`) so later operators can use it instead of the raw value.
//!
//! Only readings where the field is present update the smoother; after every reading the
//! current smoothed value, once there is one, is written into the derived field slot (before the
//! first value the slot stays absent). Arrival order, not event time, and no weighting by the
//! time between readings.
//!
//! Methods, with `x` the new value:
//! - `sma`: the mean of the last `n` values (fewer until `n` have arrived), summed oldest first;
//! - `ewma`: `s = x` for the first value, then `s = s + alpha * (x - s)`;
//! - `holt` (double exponential smoothing, level `l` and trend `t`): `l = x`, `t = 0` for the
//!   first value, then `l' = alpha * x + (1 - alpha) * (l + t)`, `t' = beta * (l' - l) + (1 - beta) * t`;
//!   the smoothed value is the level.
//!
//! With `emit: true`, every value that updated the smoother emits [`Emit::Smoothed`] (with the
//! trend for `holt`).

mod spec;
pub use spec::*;

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operators::settings::SmoothMethod;
use crate::operators::{CompileContext, CompileError, DerivedField, Operator, SpecChecker};
use crate::operators::{Emit, FieldSlot, Flow, OpIndex, Reading, RestoreError, present};

#[derive(Debug, Clone, PartialEq)]
pub struct SmoothConfig {
    pub index: OpIndex,
    pub name: String,
    pub slot: FieldSlot,
    pub field: String,
    pub method: SmoothMethod,
    /// `sma`: number of values averaged (at least 1).
    pub n: u32,
    /// `ewma` weight and `holt` level weight.
    pub alpha: f64,
    /// `holt` trend weight.
    pub beta: f64,
    pub emit: bool,
    /// Slot of the derived field that carries the smoothed value.
    pub output_slot: Option<FieldSlot>,
}

/// What each method keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SmoothState {
    /// The last `n` values, oldest first.
    Sma(VecDeque<f64>),
    Ewma(Option<f64>),
    Holt(Option<HoltLevel>),
}

/// Holt's level and trend.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HoltLevel {
    pub level: f64,
    pub trend: f64,
}

impl SmoothState {
    fn fresh(method: SmoothMethod) -> Self {
        match method {
            SmoothMethod::Sma => SmoothState::Sma(VecDeque::new()),
            SmoothMethod::Ewma => SmoothState::Ewma(None),
            SmoothMethod::Holt => SmoothState::Holt(None),
        }
    }

    /// The method, as named in errors.
    pub fn kind(&self) -> &'static str {
        match self {
            SmoothState::Sma(_) => "sma smoother",
            SmoothState::Ewma(_) => "ewma smoother",
            SmoothState::Holt(_) => "holt smoother",
        }
    }

    /// The current smoothed value, if any.
    pub fn value(&self) -> Option<f64> {
        match self {
            SmoothState::Sma(recent) if recent.is_empty() => None,
            SmoothState::Sma(recent) => Some(recent.iter().sum::<f64>() / recent.len() as f64),
            SmoothState::Ewma(s) => *s,
            SmoothState::Holt(h) => h.map(|h| h.level),
        }
    }
}

#[derive(Debug)]
pub struct SmoothOp {
    config: Arc<SmoothConfig>,
    state: SmoothState,
    /// The current value of `state` (recomputed on restore), so absent readings cost nothing.
    value: Option<f64>,
}

super::operator_clone!(SmoothOp { state, value });

impl SmoothOp {
    pub fn new(config: Arc<SmoothConfig>) -> Self {
        let state = SmoothState::fresh(config.method);
        SmoothOp {
            config,
            state,
            value: None,
        }
    }

    /// The current smoothed value, if any.
    pub fn current(&self) -> Option<f64> {
        self.value
    }
}

impl Operator for SmoothOp {
    const KIND: &'static str = "smooth";
    type Spec = SmoothSpec;
    type Config = SmoothConfig;
    type State = SmoothState;

    fn explicit_name(spec: &SmoothSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn derived_field(spec: &SmoothSpec) -> Option<DerivedField> {
        Some(spec.derived_field())
    }

    fn check<C: SpecChecker>(spec: &SmoothSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &SmoothSpec, context: &mut CompileContext<'_>) -> Result<SmoothConfig, CompileError> {
        spec.compile(context)
    }

    fn describe(spec: &SmoothSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &SmoothConfig) -> &str {
        &config.name
    }

    fn watched_field(config: &SmoothConfig) -> Option<&str> {
        Some(&config.field)
    }

    fn instantiate(config: &Arc<SmoothConfig>, _device: &str) -> Self {
        SmoothOp::new(config.clone())
    }

    fn config(&self) -> &SmoothConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, _now: i64, out: &mut Vec<Emit>) -> Flow {
        let cfg = &*self.config;
        let x = reading.get(cfg.slot);
        if present(x) {
            let mut trend = None;
            match &mut self.state {
                SmoothState::Sma(recent) => {
                    if recent.len() >= cfg.n.max(1) as usize {
                        recent.pop_front();
                    }
                    recent.push_back(x);
                }
                SmoothState::Ewma(s) => {
                    *s = Some(match *s {
                        None => x,
                        Some(s) => s + cfg.alpha * (x - s),
                    })
                }
                SmoothState::Holt(h) => {
                    let next = match *h {
                        None => HoltLevel { level: x, trend: 0.0 },
                        Some(HoltLevel { level, trend }) => {
                            let new_level = cfg.alpha * x + (1.0 - cfg.alpha) * (level + trend);
                            HoltLevel {
                                level: new_level,
                                trend: cfg.beta * (new_level - level) + (1.0 - cfg.beta) * trend,
                            }
                        }
                    };
                    trend = Some(next.trend);
                    *h = Some(next);
                }
            }
            self.value = self.state.value();
            if cfg.emit
                && let Some(value) = self.value
            {
                out.push(Emit::Smoothed {
                    op: cfg.index,
                    ts: reading.ts,
                    value,
                    trend,
                });
            }
        }
        if let (Some(slot), Some(s)) = (cfg.output_slot, self.value)
            && let Some(v) = reading.values.get_mut(slot)
        {
            *v = s;
            // smoothing a doubted (or hidden) value gives a doubted value
            if reading.suspect & (1u64 << cfg.slot) != 0 {
                reading.suspect |= 1u64 << slot;
            }
        }
        Flow::Continue
    }

    fn snapshot(&self) -> SmoothState {
        self.state.clone()
    }

    /// Fails when the stored state belongs to another method (the pipeline changed it).
    fn restore(&mut self, state: SmoothState) -> Result<(), RestoreError> {
        let expected = SmoothState::fresh(self.config.method).kind();
        if state.kind() != expected {
            return Err(RestoreError::KindMismatch {
                operator: self.config.name.clone(),
                expected,
                found: state.kind(),
            });
        }
        self.state = state;
        self.value = self.state.value();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::ABSENT;

    fn smoother(method: SmoothMethod, n: u32, alpha: f64, beta: f64) -> SmoothOp {
        SmoothOp::new(Arc::new(SmoothConfig {
            index: 3,
            name: "s".into(),
            slot: 0,
            field: "pm25".into(),
            method,
            n,
            alpha,
            beta,
            emit: true,
            output_slot: Some(1),
        }))
    }

    fn feed(op: &mut SmoothOp, values: &[f64]) -> (Vec<Emit>, Vec<f64>) {
        let mut out = Vec::new();
        let mut derived = Vec::new();
        for (i, &x) in values.iter().enumerate() {
            let mut r = Reading {
                ts: i as i64,
                values: smallvec::smallvec![x, ABSENT],
                out_of_range: 0,
                arrival: 0,
                suspect: 0,
            };
            op.on_reading(&mut r, 0, &mut out);
            derived.push(r.values[1]);
        }
        (out, derived)
    }

    #[test]
    fn sma_averages_the_last_n_values() {
        let mut op = smoother(SmoothMethod::Sma, 3, 0.0, 0.0);
        let (out, derived) = feed(&mut op, &[ABSENT, 3.0, 6.0, ABSENT, 9.0, 30.0]);
        assert!(derived[0].is_nan());
        assert_eq!(derived[1..], [3.0, 4.5, 4.5, 6.0, 15.0]);
        assert_eq!(out.len(), 4, "absent values emit nothing");
        assert_eq!(
            out[3],
            Emit::Smoothed {
                op: 3,
                ts: 5,
                value: 15.0,
                trend: None
            }
        );
    }

    #[test]
    fn ewma_smoothing() {
        let mut op = smoother(SmoothMethod::Ewma, 5, 0.25, 0.0);
        let (_, derived) = feed(&mut op, &[8.0, 16.0, 0.0]);
        assert_eq!(derived, vec![8.0, 10.0, 7.5]);
    }

    #[test]
    fn holt_follows_a_linear_trend_and_reports_it() {
        let mut op = smoother(SmoothMethod::Holt, 5, 0.5, 0.5);
        let (out, derived) = feed(&mut op, &[10.0, 12.0]);
        // l = 0.5*12 + 0.5*(10+0) = 11, t = 0.5*(11-10) + 0.5*0 = 0.5
        assert_eq!(derived, vec![10.0, 11.0]);
        assert_eq!(
            out[1],
            Emit::Smoothed {
                op: 3,
                ts: 1,
                value: 11.0,
                trend: Some(0.5)
            }
        );
        // on a long ramp of slope 2 the trend converges to 2 and the level to the ramp itself
        let ramp: Vec<f64> = (2..400).map(|i| 10.0 + 2.0 * i as f64).collect();
        let (out, _) = feed(&mut op, &ramp);
        match out.last() {
            Some(Emit::Smoothed {
                value,
                trend: Some(trend),
                ..
            }) => {
                assert!((trend - 2.0).abs() < 1e-9, "{trend}");
                assert!((value - (10.0 + 2.0 * 399.0)).abs() < 1e-9, "{value}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restore_recomputes_the_current_value_and_refuses_another_method() {
        let mut op = smoother(SmoothMethod::Sma, 2, 0.0, 0.0);
        feed(&mut op, &[1.0, 2.0, 4.0]);
        let mut restored = smoother(SmoothMethod::Sma, 2, 0.0, 0.0);
        restored.restore(op.snapshot()).unwrap();
        assert_eq!(restored.current(), Some(3.0));
        let (_, derived) = feed(&mut restored, &[ABSENT, 8.0]);
        assert_eq!(derived, vec![3.0, 6.0]);
        let mut holt = smoother(SmoothMethod::Holt, 2, 0.5, 0.5);
        assert!(matches!(
            holt.restore(op.snapshot()),
            Err(RestoreError::KindMismatch {
                expected: "holt smoother",
                found: "sma smoother",
                ..
            })
        ));
    }
}
