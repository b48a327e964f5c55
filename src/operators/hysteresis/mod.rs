//! Pollution events with hysteresis: an event opens when the value reaches `enter` and closes
//! when it comes back to `exit`; values between the two never change the state, so a reading
//! hovering around one threshold does not make the event flap.
//!
//! Direction `above` (PM2.5, CO2): opens at `value >= enter`, closes at `value <= exit`
//! (`exit < enter`). Direction `below` (humidity too low): opens at `value <= enter`, closes at
//! `value >= exit` (`exit > enter`).
//!
//! Debounce: with `min_duration`, the enter condition must hold on consecutive readings spanning
//! at least that much event time before the event opens (its start is the first of them); with
//! `min_clear`, likewise before it closes (its end is the first clear reading). The detector
//! follows arrival order, not event time.

mod spec;
pub use spec::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operators::settings::Direction;
use crate::operators::{CompileContext, CompileError, Operator, RestoreError, SpecChecker};
use crate::operators::{Emit, FieldSlot, Flow, OpIndex, Reading, present};

#[derive(Debug, Clone, PartialEq)]
pub struct HysteresisConfig {
    pub index: OpIndex,
    pub name: String,
    pub slot: FieldSlot,
    pub field: String,
    pub enter: f64,
    pub exit: f64,
    pub direction: Direction,
    pub min_duration_ms: i64,
    pub min_clear_ms: i64,
    /// Severity bands, ascending by threshold (for `below`, descending values are worse and the
    /// bands are compared the other way round).
    pub severity: Vec<(String, f64)>,
    /// Events decided on readings older than this when processed are marked as backfill.
    pub backfill_after_ms: Option<i64>,
}

impl HysteresisConfig {
    fn entered(&self, x: f64) -> bool {
        match self.direction {
            Direction::Above => x >= self.enter,
            Direction::Below => x <= self.enter,
        }
    }

    fn exited(&self, x: f64) -> bool {
        match self.direction {
            Direction::Above => x <= self.exit,
            Direction::Below => x >= self.exit,
        }
    }

    /// `a` is worse than `b`.
    fn worse(&self, a: f64, b: f64) -> bool {
        match self.direction {
            Direction::Above => a > b,
            Direction::Below => a < b,
        }
    }

    /// Index of the worst severity band that `peak` reaches.
    pub fn severity_of(&self, peak: f64) -> Option<u8> {
        let mut found = None;
        for (i, (_, limit)) in self.severity.iter().enumerate() {
            let reached = match self.direction {
                Direction::Above => peak >= *limit,
                Direction::Below => peak <= *limit,
            };
            if reached {
                found = Some(i as u8);
            }
        }
        found
    }
}

/// Running statistics of an event (or of a run that may become one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EventStats {
    pub start_ts: i64,
    pub first_value: f64,
    pub peak: f64,
    pub sum: f64,
    pub n: u64,
}

impl EventStats {
    fn new(ts: i64, x: f64) -> Self {
        EventStats {
            start_ts: ts,
            first_value: x,
            peak: x,
            sum: x,
            n: 1,
        }
    }
}

/// The stored state of a hysteresis detector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HysteresisState {
    /// The open event, if any.
    pub open: Option<EventStats>,
    /// Debounce: a run of readings meeting the enter condition, not yet long enough.
    /// (Boxed: it is only used with `min_duration`, and inline it would make every operator of
    /// every device larger; serde writes a box as its content, so snapshots do not change.)
    pub entering: Option<Box<EventStats>>,
    /// Debounce: event time of the first reading of a run meeting the exit condition.
    pub clearing_since: Option<i64>,
    /// Number of events opened so far (part of each event's id).
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct HysteresisOp {
    config: Arc<HysteresisConfig>,
    state: HysteresisState,
}

impl HysteresisOp {
    pub fn new(config: Arc<HysteresisConfig>) -> Self {
        HysteresisOp {
            config,
            state: HysteresisState::default(),
        }
    }

    pub fn state(&self) -> &HysteresisState {
        &self.state
    }

    fn step(&mut self, ts: i64, x: f64, now: i64, out: &mut Vec<Emit>) {
        let cfg = &*self.config;
        let backfill_lag_ms = cfg
            .backfill_after_ms
            .map(|after| (now.saturating_sub(ts), after))
            .filter(|(lag, after)| lag > after)
            .map(|(lag, _)| lag);
        let st = &mut self.state;
        match st.open.as_mut() {
            None => {
                if !cfg.entered(x) {
                    st.entering = None;
                    return;
                }
                let run = match st.entering.as_mut() {
                    Some(run) => {
                        if cfg.worse(x, run.peak) {
                            run.peak = x;
                        }
                        run.sum += x;
                        run.n += 1;
                        **run
                    }
                    None => EventStats::new(ts, x),
                };
                if ts.saturating_sub(run.start_ts) >= cfg.min_duration_ms {
                    st.entering = None;
                    st.clearing_since = None;
                    st.open = Some(run);
                    st.seq += 1;
                    out.push(Emit::EventStart {
                        op: cfg.index,
                        seq: st.seq,
                        start_ts: run.start_ts,
                        value: run.first_value,
                        peak: run.peak,
                        severity: cfg.severity_of(run.peak),
                        decided_ts: ts,
                        backfill_lag_ms,
                    });
                } else {
                    st.entering = Some(Box::new(run));
                }
            }
            Some(event) => {
                if cfg.exited(x) {
                    let since = *st.clearing_since.get_or_insert(ts);
                    if ts.saturating_sub(since) >= cfg.min_clear_ms {
                        let event = *event;
                        st.open = None;
                        st.clearing_since = None;
                        out.push(Emit::EventEnd {
                            op: cfg.index,
                            seq: st.seq,
                            start_ts: event.start_ts,
                            end_ts: since,
                            peak: event.peak,
                            mean: event.sum / event.n as f64,
                            severity: cfg.severity_of(event.peak),
                            decided_ts: ts,
                            backfill_lag_ms,
                        });
                    }
                } else {
                    st.clearing_since = None;
                    if cfg.worse(x, event.peak) {
                        let previous = cfg.severity_of(event.peak);
                        event.peak = x;
                        let severity = cfg.severity_of(x);
                        // escalation: the peak entered a higher band (bands only rise with it)
                        if severity > previous {
                            out.push(Emit::EventUpdate {
                                op: cfg.index,
                                seq: st.seq,
                                start_ts: event.start_ts,
                                decided_ts: ts,
                                peak: x,
                                previous,
                                severity,
                                backfill_lag_ms,
                            });
                        }
                    }
                    event.sum += x;
                    event.n += 1;
                }
            }
        }
    }
}

impl Operator for HysteresisOp {
    const KIND: &'static str = "hysteresis";
    type Spec = HysteresisSpec;
    type Config = HysteresisConfig;
    type State = HysteresisState;

    fn explicit_name(spec: &HysteresisSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn check<C: SpecChecker>(spec: &HysteresisSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &HysteresisSpec, context: &mut CompileContext<'_>) -> Result<HysteresisConfig, CompileError> {
        spec.compile(context)
    }

    fn describe(spec: &HysteresisSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &HysteresisConfig) -> &str {
        &config.name
    }

    fn watched_field(config: &HysteresisConfig) -> Option<&str> {
        Some(&config.field)
    }

    fn instantiate(config: &Arc<HysteresisConfig>, _device: &str) -> Self {
        HysteresisOp::new(config.clone())
    }

    fn config(&self) -> &HysteresisConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
        let x = reading.get(self.config.slot);
        if present(x) {
            self.step(reading.ts, x, now, out);
        }
        Flow::Continue
    }

    fn snapshot(&self) -> HysteresisState {
        self.state.clone()
    }

    fn restore(&mut self, state: HysteresisState) -> Result<(), RestoreError> {
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(direction: Direction, enter: f64, exit: f64, min_duration_ms: i64, min_clear_ms: i64) -> HysteresisOp {
        HysteresisOp::new(Arc::new(HysteresisConfig {
            index: 0,
            name: "ev".into(),
            slot: 0,
            field: "pm25".into(),
            enter,
            exit,
            direction,
            min_duration_ms,
            min_clear_ms,
            severity: vec![("moderate".into(), 35.0), ("high".into(), 55.0)],
            backfill_after_ms: None,
        }))
    }

    fn run(op: &mut HysteresisOp, readings: &[(i64, f64)]) -> Vec<Emit> {
        let mut out = Vec::new();
        for &(ts, x) in readings {
            let mut r = Reading {
                ts,
                values: smallvec::smallvec![x],
                out_of_range: 0,
            };
            op.on_reading(&mut r, 0, &mut out);
        }
        out
    }

    #[test]
    fn exact_thresholds_open_and_close_and_the_band_never_changes_state() {
        let mut op = detector(Direction::Above, 35.0, 25.0, 0, 0);
        let out = run(
            &mut op,
            &[
                (0, 34.9),
                (1, 35.0),
                (2, 30.0),
                (3, 60.0),
                (4, 25.0000001),
                (5, 25.0),
                (6, 30.0),
            ],
        );
        assert_eq!(out.len(), 3);
        assert!(matches!(
            out[0],
            Emit::EventStart {
                start_ts: 1,
                value: 35.0,
                seq: 1,
                severity: Some(0),
                ..
            }
        ));
        // 60 reaches the `high` band while the event is open: an update
        assert!(matches!(
            out[1],
            Emit::EventUpdate {
                start_ts: 1,
                decided_ts: 3,
                peak: 60.0,
                previous: Some(0),
                severity: Some(1),
                ..
            }
        ));
        match out[2] {
            Emit::EventEnd {
                start_ts,
                end_ts,
                peak,
                mean,
                severity,
                ..
            } => {
                assert_eq!((start_ts, end_ts, peak), (1, 5, 60.0));
                assert_eq!(mean, (35.0 + 30.0 + 60.0 + 25.0000001) / 4.0);
                assert_eq!(severity, Some(1));
            }
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_is_updated_once_per_band_it_reaches_and_never_for_a_lower_one() {
        let mut op = detector(Direction::Above, 35.0, 25.0, 0, 0);
        let out = run(&mut op, &[(0, 36.0), (1, 50.0), (2, 56.0), (3, 40.0), (4, 70.0), (5, 20.0)]);
        let kinds: Vec<&str> = out.iter().map(|e| e.kind().as_str()).collect();
        assert_eq!(kinds, ["event_start", "event_update", "event_end"], "{out:?}");
        // without bands there is nothing to escalate
        let mut plain = HysteresisOp::new(Arc::new(HysteresisConfig {
            severity: Vec::new(),
            ..(*op.config).clone()
        }));
        let out = run(&mut plain, &[(0, 36.0), (1, 500.0), (2, 20.0)]);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn below_direction_for_humidity_too_low() {
        let mut op = detector(Direction::Below, 20.0, 30.0, 0, 0);
        let out = run(&mut op, &[(0, 25.0), (1, 19.0), (2, 10.0), (3, 29.0), (4, 31.0)]);
        assert_eq!(out.len(), 2);
        assert!(matches!(
            out[1],
            Emit::EventEnd {
                start_ts: 1,
                end_ts: 4,
                peak: 10.0,
                ..
            }
        ));
    }

    #[test]
    fn debounce_needs_the_condition_to_hold_for_the_minimum_duration() {
        let mut op = detector(Direction::Above, 35.0, 25.0, 30_000, 20_000);
        // a short spike does not open an event
        let out = run(&mut op, &[(0, 50.0), (10_000, 40.0), (20_000, 30.0)]);
        assert!(out.is_empty());
        // a long one does, starting at its first reading
        let out = run(&mut op, &[(30_000, 40.0), (40_000, 45.0), (60_000, 41.0)]);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Emit::EventStart {
                start_ts: 30_000,
                value: 40.0,
                decided_ts: 60_000,
                ..
            }
        ));
        // a short dip does not close it, a long one does, ending at its first reading
        let out = run(
            &mut op,
            &[
                (70_000, 20.0),
                (80_000, 36.0),
                (90_000, 20.0),
                (100_000, 10.0),
                (110_000, 10.0),
            ],
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Emit::EventEnd {
                start_ts: 30_000,
                end_ts: 90_000,
                peak: 45.0,
                decided_ts: 110_000,
                ..
            }
        ));
    }

    #[test]
    fn an_open_event_survives_snapshot_and_restore() {
        let mut op = detector(Direction::Above, 35.0, 25.0, 0, 0);
        run(&mut op, &[(0, 40.0), (1, 80.0)]);
        let mut restored = detector(Direction::Above, 35.0, 25.0, 0, 0);
        restored.restore(op.snapshot()).unwrap();
        let out = run(&mut restored, &[(2, 20.0)]);
        assert!(matches!(
            out[0],
            Emit::EventEnd {
                start_ts: 0,
                end_ts: 2,
                peak: 80.0,
                seq: 1,
                ..
            }
        ));
    }
}
