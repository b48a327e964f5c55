//! Learned per-device baselines. Each exposes its current value as a derived field (named after
//! the operator, `output_slot`) so later operators can compare against it or calibrate with it.
//!
//! Only readings where the baseline's field is present update it. After every reading (present
//! value or not) the current baseline, once there is one, is written into the derived field slot;
//! before the first value the slot stays absent.
//!
//! Methods:
//! - `ewma`: `b = b + alpha * (x - b)` evaluated exactly as written (no fused multiply-add),
//!   starting at the first value: every implementation gets the same bits (aq1 §3.3).
//! - `welford`: running mean and population variance (Welford's algorithm) over every value. A
//!   value is first compared with the distribution learned from the values *before* it: once at
//!   least `warmup` values have been learned and the standard deviation is not zero, a value
//!   with `|z| > zscore`, `z = (x - mean) / stddev`, emits [`Emit::Deviation`]. Then the value is
//!   learned (deviating values included). The baseline is the mean.
//! - `rolling_min`: the minimum of each UTC day (`floor(ts / 86 400 000)`, event time) is kept
//!   for the last `days` days, counted back from the newest day seen (that day included); the
//!   baseline is the minimum of those daily minima: the automatic baseline correction of CO2
//!   sensors (the lowest reading over a few days is taken as the outdoor level). A value for a day
//!   that has already left the window is ignored.
//! - `hourly_profile`: 24 learned values, one per hour of the local day (event time shifted by
//!   `utc_offset_hours`), each an EWMA with `alpha` as above, starting at the first value of its
//!   hour. The exposed value is the profile value of the reading's hour (absent while that hour
//!   has not been learned yet).
//!
//! Reports ([`Emit::Baseline`]): with `emit: every`, after each value that updated the baseline;
//! with `every` or `end`, the current baseline at the end of input (for `hourly_profile`, the
//! value of the hour of the last update); `never` only feeds the derived field.

mod spec;
pub use spec::*;

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operators::settings::{BaselineEmit, BaselineMethod};
use crate::operators::{CompileContext, CompileError, DerivedField, Operator, SpecChecker};
use crate::operators::{Emit, FieldSlot, Flow, OpIndex, Reading, RestoreError, present};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq)]
pub struct BaselineConfig {
    pub index: OpIndex,
    pub name: String,
    pub slot: FieldSlot,
    pub field: String,
    pub method: BaselineMethod,
    /// EWMA and hourly-profile weight.
    pub alpha: f64,
    /// Welford: a value with `|z|` above this is a deviation.
    pub zscore: f64,
    /// Welford: values learned before deviations are reported.
    pub warmup: u32,
    /// Rolling minimum: days looked back (the newest day included).
    pub days: u32,
    /// Hourly profile: local time = UTC + this many hours.
    pub utc_offset_hours: i32,
    pub emit: BaselineEmit,
    /// Slot of the derived field that carries the current baseline to later operators.
    pub output_slot: Option<FieldSlot>,
}

impl BaselineConfig {
    /// A configuration with the pipeline-file defaults for everything but the method.
    pub fn new(
        index: OpIndex,
        name: impl Into<String>,
        slot: FieldSlot,
        field: impl Into<String>,
        method: BaselineMethod,
    ) -> Self {
        BaselineConfig {
            index,
            name: name.into(),
            slot,
            field: field.into(),
            method,
            alpha: super::settings::defaults::alpha(),
            zscore: super::settings::defaults::zscore(),
            warmup: super::settings::defaults::warmup(),
            days: super::settings::defaults::days(),
            utc_offset_hours: 0,
            emit: BaselineEmit::End,
            output_slot: None,
        }
    }

    /// Hour of the local day (0..24) of an event time.
    #[inline]
    pub fn local_hour(&self, ts: i64) -> usize {
        let local = ts.saturating_add(i64::from(self.utc_offset_hours) * HOUR_MS);
        local.div_euclid(HOUR_MS).rem_euclid(24) as usize
    }
}

/// Welford's running moments.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct WelfordMoments {
    /// Values learned.
    pub n: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl WelfordMoments {
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Population standard deviation (0 before the second value).
    pub fn stddev(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

/// The minimum of one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DayMinimum {
    /// `floor(ts / 86 400 000)`.
    pub day: i64,
    pub min: f64,
}

/// What each method learns, besides the current value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Learner {
    /// The EWMA is the current value itself.
    Ewma,
    Welford(WelfordMoments),
    /// Daily minima, ascending by day, at most `days` of them.
    RollingMin(VecDeque<DayMinimum>),
    /// One EWMA per hour of the local day (boxed: it would make every operator of every device
    /// as large as itself).
    HourlyProfile(Box<[Option<f64>; 24]>),
}

impl Learner {
    fn fresh(method: BaselineMethod) -> Self {
        match method {
            BaselineMethod::Ewma => Learner::Ewma,
            BaselineMethod::Welford => Learner::Welford(WelfordMoments::default()),
            BaselineMethod::RollingMin => Learner::RollingMin(VecDeque::new()),
            BaselineMethod::HourlyProfile => Learner::HourlyProfile(Box::new([None; 24])),
        }
    }

    /// The method, as named in errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Learner::Ewma => "ewma baseline",
            Learner::Welford(_) => "welford baseline",
            Learner::RollingMin(_) => "rolling_min baseline",
            Learner::HourlyProfile(_) => "hourly_profile baseline",
        }
    }
}

/// The stored state of a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineState {
    /// Current baseline (none before the first value).
    pub value: Option<f64>,
    /// Event time of the last value that updated the baseline.
    pub last_ts: i64,
    pub learner: Learner,
}

#[derive(Debug)]
pub struct BaselineOp {
    config: Arc<BaselineConfig>,
    state: BaselineState,
}

super::operator_clone!(BaselineOp { state });

impl BaselineOp {
    pub fn new(config: Arc<BaselineConfig>) -> Self {
        let learner = Learner::fresh(config.method);
        BaselineOp {
            config,
            state: BaselineState {
                value: None,
                last_ts: 0,
                learner,
            },
        }
    }

    pub fn state(&self) -> &BaselineState {
        &self.state
    }

    /// The current baseline, if learned.
    pub fn current(&self) -> Option<f64> {
        self.state.value
    }
}

/// Adds `x` to the minimum of `day`, keeping the last `days` days; returns the minimum over them,
/// or `None` when `day` is older than the days kept (the value is ignored).
fn add_daily_minimum(minima: &mut VecDeque<DayMinimum>, day: i64, x: f64, days: u32) -> Option<f64> {
    let keep = i64::from(days.max(1));
    match minima.back().map(|d| d.day) {
        Some(newest) if day <= newest.saturating_sub(keep) => return None,
        Some(newest) if day > newest => {
            minima.push_back(DayMinimum { day, min: x });
            while minima.front().is_some_and(|d| d.day <= day.saturating_sub(keep)) {
                minima.pop_front();
            }
        }
        None => minima.push_back(DayMinimum { day, min: x }),
        Some(_) => match minima.iter().position(|d| d.day >= day) {
            Some(p) if minima[p].day == day => {
                if x < minima[p].min {
                    minima[p].min = x;
                }
            }
            Some(p) => minima.insert(p, DayMinimum { day, min: x }),
            None => minima.push_back(DayMinimum { day, min: x }),
        },
    }
    minima.iter().map(|d| d.min).reduce(f64::min)
}

impl Operator for BaselineOp {
    const KIND: &'static str = "baseline";
    type Spec = BaselineSpec;
    type Config = BaselineConfig;
    type State = BaselineState;

    fn explicit_name(spec: &BaselineSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn derived_field(spec: &BaselineSpec) -> Option<DerivedField> {
        Some(spec.derived_field())
    }

    fn check<C: SpecChecker>(spec: &BaselineSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &BaselineSpec, context: &mut CompileContext<'_>) -> Result<BaselineConfig, CompileError> {
        spec.compile(context)
    }

    fn describe(spec: &BaselineSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &BaselineConfig) -> &str {
        &config.name
    }

    fn watched_field(config: &BaselineConfig) -> Option<&str> {
        Some(&config.field)
    }

    fn instantiate(config: &Arc<BaselineConfig>, _device: &str) -> Self {
        BaselineOp::new(config.clone())
    }

    fn config(&self) -> &BaselineConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, _now: i64, out: &mut Vec<Emit>) -> Flow {
        let cfg = &*self.config;
        let st = &mut self.state;
        let ts = reading.ts;
        let x = reading.get(cfg.slot);
        if present(x) {
            let updated = match &mut st.learner {
                Learner::Ewma => Some(match st.value {
                    None => x,
                    Some(b) => b + cfg.alpha * (x - b),
                }),
                Learner::Welford(moments) => {
                    let stddev = moments.stddev();
                    if moments.n >= u64::from(cfg.warmup) && stddev > 0.0 {
                        let zscore = (x - moments.mean) / stddev;
                        if zscore.abs() > cfg.zscore {
                            out.push(Emit::Deviation {
                                op: cfg.index,
                                ts,
                                value: x,
                                mean: moments.mean,
                                stddev,
                                zscore,
                            });
                        }
                    }
                    moments.add(x);
                    Some(moments.mean)
                }
                Learner::RollingMin(minima) => add_daily_minimum(minima, ts.div_euclid(DAY_MS), x, cfg.days),
                Learner::HourlyProfile(hours) => {
                    let hour = &mut hours[cfg.local_hour(ts)];
                    let b = match *hour {
                        None => x,
                        Some(b) => b + cfg.alpha * (x - b),
                    };
                    *hour = Some(b);
                    Some(b)
                }
            };
            if let Some(b) = updated {
                st.value = Some(b);
                st.last_ts = ts;
                if cfg.emit == BaselineEmit::Every {
                    out.push(Emit::Baseline {
                        op: cfg.index,
                        ts,
                        value: b,
                    });
                }
            }
        }
        if let Some(slot) = cfg.output_slot {
            let exposed = match &st.learner {
                Learner::HourlyProfile(hours) => hours[cfg.local_hour(ts)],
                _ => st.value,
            };
            if let (Some(b), Some(v)) = (exposed, reading.values.get_mut(slot)) {
                *v = b;
            }
        }
        Flow::Continue
    }

    /// End of input: the current baseline is reported (unless `emit: never`).
    fn on_end(&mut self, out: &mut Vec<Emit>) {
        if self.config.emit != BaselineEmit::Never
            && let Some(b) = self.state.value
        {
            out.push(Emit::Baseline {
                op: self.config.index,
                ts: self.state.last_ts,
                value: b,
            });
        }
    }

    fn snapshot(&self) -> BaselineState {
        self.state.clone()
    }

    /// Fails when the stored state was learned by another method (the pipeline changed it).
    fn restore(&mut self, state: BaselineState) -> Result<(), RestoreError> {
        let expected = Learner::fresh(self.config.method).kind();
        if state.learner.kind() != expected {
            return Err(RestoreError::KindMismatch {
                operator: self.config.name.clone(),
                expected,
                found: state.learner.kind(),
            });
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::ABSENT;

    fn op(method: BaselineMethod, tweak: impl FnOnce(&mut BaselineConfig)) -> BaselineOp {
        let mut cfg = BaselineConfig::new(0, "b", 0, "co2", method);
        cfg.output_slot = Some(1);
        tweak(&mut cfg);
        BaselineOp::new(Arc::new(cfg))
    }

    /// Feeds `(ts, x)` readings; returns the emits and the derived value after each reading.
    fn feed(op: &mut BaselineOp, readings: &[(i64, f64)]) -> (Vec<Emit>, Vec<f64>) {
        let mut out = Vec::new();
        let mut exposed = Vec::new();
        for &(ts, x) in readings {
            let mut r = Reading {
                ts,
                values: smallvec::smallvec![x, ABSENT],
                out_of_range: 0,
                arrival: 0,
                suspect: 0,
            };
            op.on_reading(&mut r, 0, &mut out);
            exposed.push(r.values[1]);
        }
        (out, exposed)
    }

    #[test]
    fn ewma_starts_at_the_first_value_and_is_evaluated_as_written() {
        let mut op = op(BaselineMethod::Ewma, |c| c.output_slot = None);
        let mut out = Vec::new();
        let mut expected: f64 = 612.0;
        for (i, x) in [612.0, 0.1, 1000.0, 401.1].into_iter().enumerate() {
            let mut r = Reading {
                ts: i as i64,
                values: smallvec::smallvec![x],
                out_of_range: 0,
                arrival: 0,
                suspect: 0,
            };
            op.on_reading(&mut r, 0, &mut out);
            if i > 0 {
                expected = expected + 0.01 * (x - expected);
            }
        }
        op.on_end(&mut out);
        assert_eq!(
            out,
            vec![Emit::Baseline {
                op: 0,
                ts: 3,
                value: expected
            }]
        );
        // b\"q of the aq1 edge case: 612 then 0.1
        let b: f64 = 612.0;
        assert_eq!(b + 0.01 * (0.1 - b), 605.881);
    }

    #[test]
    fn the_derived_field_carries_the_baseline_and_absent_values_do_not_update_it() {
        let mut op = op(BaselineMethod::Ewma, |c| c.emit = BaselineEmit::Every);
        let (out, exposed) = feed(&mut op, &[(0, ABSENT), (1, 500.0), (2, ABSENT), (3, 600.0)]);
        assert!(exposed[0].is_nan(), "nothing learned yet");
        assert_eq!(exposed[1..], [500.0, 500.0, 501.0]);
        assert_eq!(
            out,
            vec![
                Emit::Baseline {
                    op: 0,
                    ts: 1,
                    value: 500.0
                },
                Emit::Baseline {
                    op: 0,
                    ts: 3,
                    value: 501.0
                }
            ]
        );
    }

    #[test]
    fn welford_reports_deviations_after_warmup_against_the_earlier_values() {
        let welford = || {
            op(BaselineMethod::Welford, |c| {
                c.warmup = 4;
                c.zscore = 2.0
            })
        };
        let mut first = welford();
        let (out, exposed) = feed(&mut first, &[(0, 10.0), (1, 30.0), (2, 10.0), (3, 12.0)]);
        assert!(out.is_empty(), "no deviation during the warmup, even for 30: {out:?}");
        for (got, want) in exposed.iter().zip([10.0, 20.0, 50.0 / 3.0, 15.5]) {
            assert!((got - want).abs() < 1e-12, "{exposed:?}");
        }
        // after 10, 12, 10, 12 (mean 11, stddev 1): 12.5 is within 2 sd, then 8 is not
        let mut second = welford();
        let (out, _) = feed(
            &mut second,
            &[(0, 10.0), (1, 12.0), (2, 10.0), (3, 12.0), (4, 12.5), (5, 8.0)],
        );
        assert_eq!(out.len(), 1, "{out:?}");
        match out[0] {
            Emit::Deviation {
                ts,
                value,
                mean,
                stddev,
                zscore,
                ..
            } => {
                assert_eq!((ts, value), (5, 8.0));
                assert!((mean - 11.3).abs() < 1e-12);
                let expected_sd = (5.8f64 / 5.0).sqrt();
                assert!((stddev - expected_sd).abs() < 1e-12, "{stddev} vs {expected_sd}");
                assert!((zscore - (8.0 - 11.3) / expected_sd).abs() < 1e-12);
                assert!(zscore < -3.0);
            }
            ref other => panic!("{other:?}"),
        }
        assert!(
            matches!(second.state().learner, Learner::Welford(WelfordMoments { n: 6, .. })),
            "8 is learned too"
        );
    }

    #[test]
    fn welford_with_zero_spread_reports_nothing() {
        let mut op = op(BaselineMethod::Welford, |c| c.warmup = 2);
        let (out, _) = feed(&mut op, &[(0, 5.0), (1, 5.0), (2, 5.0), (3, 900.0)]);
        assert!(out.is_empty());
    }

    #[test]
    fn rolling_min_keeps_the_minimum_of_the_last_days() {
        let mut op = op(BaselineMethod::RollingMin, |c| c.days = 2);
        let d = DAY_MS;
        let (_, exposed) = feed(
            &mut op,
            &[
                (0, 450.0),
                (d / 2, 430.0),     // day 0 minimum 430
                (d + 1, 480.0),     // day 1: min(430, 480)
                (2 * d, 470.0),     // day 2: day 0 leaves: min(480, 470)
                (d + 5, 420.0),     // late value for day 1, still kept
                (-1, 100.0),        // day -1: already left, ignored
                (3 * d + 1, 500.0), // day 3: days 2 and 3
            ],
        );
        assert_eq!(exposed, vec![450.0, 430.0, 430.0, 470.0, 420.0, 420.0, 470.0]);
        assert_eq!(op.state().last_ts, 3 * d + 1);
        match &op.state().learner {
            Learner::RollingMin(m) => assert_eq!(m.iter().map(|d| d.day).collect::<Vec<_>>(), vec![2, 3]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rolling_min_value_for_an_earlier_day_in_the_window_is_inserted_in_order() {
        let mut op = op(BaselineMethod::RollingMin, |c| c.days = 3);
        let (_, exposed) = feed(
            &mut op,
            &[(2 * DAY_MS, 500.0), (0, 410.0), (DAY_MS, 400.0), (3 * DAY_MS, 600.0)],
        );
        assert_eq!(exposed, vec![500.0, 410.0, 400.0, 400.0]);
        match &op.state().learner {
            Learner::RollingMin(m) => assert_eq!(m.iter().map(|d| d.day).collect::<Vec<_>>(), vec![1, 2, 3]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hourly_profile_learns_one_value_per_local_hour() {
        let mut op = op(BaselineMethod::HourlyProfile, |c| {
            c.alpha = 0.5;
            c.utc_offset_hours = 2
        });
        let h = HOUR_MS;
        // 22:30 UTC is 00:30 local; 23:59 UTC is 01:59 local
        let (_, exposed) = feed(
            &mut op,
            &[
                (22 * h + h / 2, 10.0),
                (23 * h + 1, 30.0),
                (DAY_MS + 22 * h, 20.0),
                (DAY_MS + 23 * h, ABSENT),
                (-3 * h, ABSENT),
            ],
        );
        assert_eq!(exposed[0..4], [10.0, 30.0, 15.0, 30.0]);
        assert!(
            exposed[4].is_nan(),
            "21:00 UTC is local hour 23, never learned: {exposed:?}"
        );
        match &op.state().learner {
            Learner::HourlyProfile(hours) => {
                assert_eq!(hours[0], Some(15.0));
                assert_eq!(hours[1], Some(30.0));
                assert_eq!(hours.iter().filter(|h| h.is_some()).count(), 2);
            }
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        op.on_end(&mut out);
        assert_eq!(
            out,
            vec![Emit::Baseline {
                op: 0,
                ts: DAY_MS + 22 * h,
                value: 15.0
            }]
        );
    }

    #[test]
    fn negative_offsets_and_times_map_to_the_right_local_hour() {
        let mut cfg = BaselineConfig::new(0, "b", 0, "x", BaselineMethod::HourlyProfile);
        cfg.utc_offset_hours = -5;
        assert_eq!(cfg.local_hour(0), 19);
        assert_eq!(cfg.local_hour(-1), 18);
        assert_eq!(cfg.local_hour(5 * HOUR_MS), 0);
        cfg.utc_offset_hours = 0;
        assert_eq!(cfg.local_hour(-1), 23);
    }

    #[test]
    fn a_state_learned_by_another_method_is_refused() {
        let mut ewma = op(BaselineMethod::Ewma, |_| {});
        feed(&mut ewma, &[(0, 1.0)]);
        let mut welford = op(BaselineMethod::Welford, |_| {});
        let err = welford.restore(ewma.snapshot()).unwrap_err();
        assert_eq!(
            err,
            RestoreError::KindMismatch {
                operator: "b".into(),
                expected: "welford baseline",
                found: "ewma baseline"
            }
        );
        let mut again = op(BaselineMethod::Ewma, |_| {});
        again.restore(ewma.snapshot()).unwrap();
        assert_eq!(again.current(), Some(1.0));
    }
}
