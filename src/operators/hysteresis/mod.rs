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
use crate::operators::{Emit, FieldSlot, Flow, OpIndex, Reading, UpdateReason, present};

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
    /// A higher band must hold this long (event time) before it is announced (0: at once).
    pub escalate_after_ms: i64,
    /// A lower band must hold this long before it is announced (`None`: never de-escalate).
    pub de_escalate_after_ms: Option<i64>,
    /// An `event_update` reminder after this much event time without a record of the event.
    pub remind_every_ms: Option<i64>,
    /// An open event ends (by silence) when its device sends nothing for this long.
    pub timeout_ms: Option<i64>,
    /// What a flagged value (a stuck sensor, an uncalibrated one) does.
    pub suspect: Suspect,
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
    /// While an event is open: its announced severity, band changes, reminders and silence.
    pub ladder: Option<Box<Ladder>>,
}

#[derive(Debug)]
pub struct HysteresisOp {
    config: Arc<HysteresisConfig>,
    state: HysteresisState,
}

super::operator_clone!(HysteresisOp { state });

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

    /// One present value. `now` is the time the reading is decided at (processing time, or its
    /// arrival on the fleet's clock), `arrival` when it arrived ([`Reading::arrival`]), `suspect`
    /// whether an earlier operator flagged its value (`suspect: mark`).
    fn step(&mut self, ts: i64, x: f64, now: i64, arrival: i64, suspect: bool, out: &mut Vec<Emit>) {
        let cfg = &*self.config;
        let backfill_lag_ms = cfg
            .backfill_after_ms
            .map(|after| (arrival.saturating_sub(ts), after))
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
                    let severity = cfg.severity_of(run.peak);
                    st.ladder = Some(Box::new(Ladder {
                        announced: severity,
                        change: None,
                        last_notice_ts: ts,
                        last_seen: now,
                        last_ts: ts,
                    }));
                    out.push(Emit::EventStart {
                        op: cfg.index,
                        seq: st.seq,
                        start_ts: run.start_ts,
                        value: run.first_value,
                        peak: run.peak,
                        severity,
                        decided_ts: ts,
                        backfill_lag_ms,
                        suspect,
                    });
                } else {
                    st.entering = Some(Box::new(run));
                }
            }
            Some(event) => {
                // (an event restored from a snapshot of format 1 has no ladder yet)
                let ladder = st.ladder.get_or_insert_with(|| {
                    Box::new(Ladder {
                        announced: cfg.severity_of(event.peak),
                        change: None,
                        last_notice_ts: ts,
                        last_seen: now,
                        last_ts: ts,
                    })
                });
                ladder.last_seen = now;
                ladder.last_ts = ts;
                if cfg.exited(x) {
                    ladder.change = None;
                    let since = *st.clearing_since.get_or_insert(ts);
                    if ts.saturating_sub(since) >= cfg.min_clear_ms {
                        let event = *event;
                        st.open = None;
                        st.clearing_since = None;
                        st.ladder = None;
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
                            silence: false,
                        });
                    }
                    return;
                }
                st.clearing_since = None;
                if cfg.worse(x, event.peak) {
                    event.peak = x;
                }
                event.sum += x;
                event.n += 1;
                let peak = event.peak;
                let start_ts = event.start_ts;
                let update = |reason, previous, severity| Emit::EventUpdate {
                    op: cfg.index,
                    seq: st.seq,
                    start_ts,
                    decided_ts: ts,
                    peak,
                    previous,
                    severity,
                    reason,
                    backfill_lag_ms,
                    suspect,
                };
                if let Some((reason, band)) = ladder.step(cfg, ts, x) {
                    out.push(update(reason, ladder.announced, band));
                    ladder.announced = band;
                    ladder.last_notice_ts = ts;
                } else if let Some(every) = cfg.remind_every_ms
                    && ts.saturating_sub(ladder.last_notice_ts) >= every
                {
                    out.push(update(UpdateReason::Reminder, ladder.announced, ladder.announced));
                    ladder.last_notice_ts = ts;
                }
            }
        }
    }
}

/// The severity an open event has announced, and a change of band on its way (a hold-down).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ladder {
    /// The band last announced (at the start, or by an update).
    pub announced: Option<u8>,
    /// Readings in another band than the announced one, in a row: since when, the band that
    /// would be announced (the least severe of them going up, the most severe going down), and
    /// which way.
    pub change: Option<BandChange>,
    /// Event time of the last record of the event (start or update): reminders count from it.
    pub last_notice_ts: i64,
    /// When the last reading arrived (processing time or the fleet's clock): `timeout` counts
    /// from it.
    pub last_seen: i64,
    /// Event time of the last reading (the end of an event closed by silence).
    pub last_ts: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BandChange {
    pub since: i64,
    pub band: Option<u8>,
    pub up: bool,
}

impl Ladder {
    /// A reading of the open event (not a clearing one): the band change it completes, if any.
    fn step(&mut self, cfg: &HysteresisConfig, ts: i64, x: f64) -> Option<(UpdateReason, Option<u8>)> {
        if cfg.severity.is_empty() {
            return None;
        }
        // between `exit` and the lowest band the event is still open: at its lowest band
        let band = cfg.severity_of(x).or(Some(0));
        let (up, hold) = if band > self.announced {
            (true, cfg.escalate_after_ms)
        } else if band < self.announced && cfg.de_escalate_after_ms.is_some() {
            (false, cfg.de_escalate_after_ms.unwrap_or_default())
        } else {
            self.change = None;
            return None;
        };
        let change = match &mut self.change {
            Some(c) if c.up == up => {
                // the band held all along is the one to announce
                c.band = if up { c.band.min(band) } else { c.band.max(band) };
                *c
            }
            _ => *self.change.insert(BandChange { since: ts, band, up }),
        };
        if ts.saturating_sub(change.since) < hold {
            return None;
        }
        self.change = None;
        let reason = if up {
            UpdateReason::Escalation
        } else {
            UpdateReason::DeEscalation
        };
        Some((reason, change.band))
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

    fn processing_timeout(spec: &HysteresisSpec) -> Option<crate::model::DurationSpec> {
        spec.timeout
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
        let slot = self.config.slot;
        let x = reading.get(slot);
        if present(x) {
            let suspect = reading.suspect & (1u64 << slot) != 0;
            match (suspect, self.config.suspect) {
                // a stuck or uncalibrated value is not the air's: as if absent
                (true, Suspect::Suppress) => {}
                (true, Suspect::Mark) => self.step(reading.ts, x, now, reading.arrival, true, out),
                _ => self.step(reading.ts, x, now, reading.arrival, false, out),
            }
        }
        Flow::Continue
    }

    /// `timeout`: an open event whose device has sent nothing for that long ends, marked as
    /// ended by silence (not by clean air).
    fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
        let cfg = &*self.config;
        let st = &mut self.state;
        if let (Some(timeout), Some(event), Some(ladder)) = (cfg.timeout_ms, st.open, st.ladder.as_deref())
            && now.saturating_sub(ladder.last_seen) >= timeout
        {
            out.push(Emit::EventEnd {
                op: cfg.index,
                seq: st.seq,
                start_ts: event.start_ts,
                end_ts: ladder.last_ts,
                peak: event.peak,
                mean: event.sum / event.n as f64,
                severity: cfg.severity_of(event.peak),
                decided_ts: now,
                backfill_lag_ms: None,
                silence: true,
            });
            st.open = None;
            st.clearing_since = None;
            st.ladder = None;
        }
    }

    fn next_deadline(&self) -> Option<i64> {
        let st = &self.state;
        match (self.config.timeout_ms, st.open, st.ladder.as_deref()) {
            (Some(timeout), Some(_), Some(ladder)) => Some(ladder.last_seen.saturating_add(timeout)),
            _ => None,
        }
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
            escalate_after_ms: 0,
            de_escalate_after_ms: None,
            remind_every_ms: None,
            timeout_ms: None,
            suspect: Suspect::Use,
        }))
    }

    fn run(op: &mut HysteresisOp, readings: &[(i64, f64)]) -> Vec<Emit> {
        let mut out = Vec::new();
        for &(ts, x) in readings {
            let mut r = Reading {
                ts,
                values: smallvec::smallvec![x],
                out_of_range: 0,
                arrival: 0,
                suspect: 0,
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
        let out = run(
            &mut op,
            &[(0, 36.0), (1, 50.0), (2, 56.0), (3, 40.0), (4, 70.0), (5, 20.0)],
        );
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

    fn with(change: impl FnOnce(&mut HysteresisConfig)) -> HysteresisOp {
        let mut config = (*detector(Direction::Above, 35.0, 25.0, 0, 0).config).clone();
        change(&mut config);
        HysteresisOp::new(Arc::new(config))
    }

    /// (reason, previous band, band, decided_ts) of every update.
    fn updates(out: &[Emit]) -> Vec<(UpdateReason, Option<u8>, Option<u8>, i64)> {
        out.iter()
            .filter_map(|e| match e {
                Emit::EventUpdate {
                    reason,
                    previous,
                    severity,
                    decided_ts,
                    ..
                } => Some((*reason, *previous, *severity, *decided_ts)),
                _ => None,
            })
            .collect()
    }

    /// One reading a minute from `from`, with these values.
    fn minutes(from: i64, values: &[f64]) -> Vec<(i64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| (from + i as i64 * 60_000, x))
            .collect()
    }

    #[test]
    fn a_band_change_waits_for_its_hold_down_so_a_value_on_a_boundary_does_not_flap() {
        let mut op = with(|c| {
            c.escalate_after_ms = 120_000;
            c.de_escalate_after_ms = Some(300_000);
        });
        // opens moderate; touches high for one minute (no escalation); then stays high
        let mut out = run(&mut op, &minutes(0, &[40.0, 60.0, 40.0, 60.0, 58.0, 61.0, 59.0]));
        assert_eq!(
            updates(&out),
            vec![(UpdateReason::Escalation, Some(0), Some(1), 300_000)]
        );
        // back to moderate, hovering over the high boundary now and then (a minute each time):
        // each return to high resets the hold-down, so one de-escalation only once it held
        out.clear();
        let later = minutes(420_000, &[40.0, 41.0, 56.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0]);
        out.extend(run(&mut op, &later));
        assert_eq!(
            updates(&out),
            vec![(UpdateReason::DeEscalation, Some(1), Some(0), 900_000)]
        );
        // without a de-escalation setting an event keeps its worst band
        let mut op = with(|_| {});
        let out = run(
            &mut op,
            &minutes(0, &[40.0, 60.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0]),
        );
        assert_eq!(
            updates(&out),
            vec![(UpdateReason::Escalation, Some(0), Some(1), 60_000)]
        );
    }

    #[test]
    fn an_open_event_is_recalled_every_remind_every_and_its_ids_differ() {
        let mut op = with(|c| c.remind_every_ms = Some(600_000));
        let out = run(&mut op, &minutes(0, &[40.0; 26]));
        let reminders = updates(&out);
        assert_eq!(
            reminders,
            vec![
                (UpdateReason::Reminder, Some(0), Some(0), 600_000),
                (UpdateReason::Reminder, Some(0), Some(0), 1_200_000)
            ]
        );
        // an escalation counts as a record of the event: the next reminder is 10 min after it
        let mut op = with(|c| c.remind_every_ms = Some(600_000));
        let mut values = vec![40.0; 5];
        values.extend([60.0; 12]);
        let got = updates(&run(&mut op, &minutes(0, &values)));
        assert_eq!(
            got,
            vec![
                (UpdateReason::Escalation, Some(0), Some(1), 300_000),
                (UpdateReason::Reminder, Some(1), Some(1), 900_000)
            ]
        );
    }

    #[test]
    fn a_device_silent_for_timeout_ends_its_event_by_silence_at_its_last_reading() {
        let mut op = with(|c| c.timeout_ms = Some(900_000));
        assert_eq!(op.next_deadline(), None, "nothing open, nothing due");
        let mut out = Vec::new();
        for (ts, x) in minutes(0, &[40.0, 45.0]) {
            let mut r = Reading::new(ts, 1);
            r.values[0] = x;
            // (`now`: when it arrived)
            op.on_reading(&mut r, ts + 1_000, &mut out);
        }
        assert_eq!(op.next_deadline(), Some(61_000 + 900_000));
        op.on_time(960_999, &mut out);
        assert_eq!(out.len(), 1, "not yet");
        op.on_time(961_000, &mut out);
        assert!(matches!(
            out[1],
            Emit::EventEnd {
                start_ts: 0,
                end_ts: 60_000,
                decided_ts: 961_000,
                silence: true,
                ..
            }
        ));
        assert_eq!((op.state().open, op.next_deadline()), (None, None));
    }

    #[test]
    fn a_doubted_value_is_used_marked_or_suppressed_as_configured() {
        let stuck = |op: &mut HysteresisOp| {
            let mut out = Vec::new();
            for (ts, x) in minutes(0, &[80.0, 80.0, 80.0]) {
                let mut r = Reading::new(ts, 1);
                r.values[0] = x;
                r.suspect = 1;
                op.on_reading(&mut r, ts, &mut out);
            }
            out
        };
        let used = stuck(&mut with(|_| {}));
        assert!(matches!(used[0], Emit::EventStart { suspect: false, .. }));
        let marked = stuck(&mut with(|c| c.suspect = Suspect::Mark));
        assert!(matches!(marked[0], Emit::EventStart { suspect: true, .. }));
        let suppressed = stuck(&mut with(|c| c.suspect = Suspect::Suppress));
        assert!(suppressed.is_empty(), "{suppressed:?}");
    }

    #[test]
    fn an_event_restored_from_format_1_gets_its_ladder_at_its_next_reading() {
        let mut op = with(|c| c.remind_every_ms = Some(600_000));
        op.restore(HysteresisState {
            open: Some(EventStats::new(0, 60.0)),
            seq: 3,
            ..Default::default()
        })
        .unwrap();
        let out = run(&mut op, &minutes(60_000, &[60.0; 11]));
        // announced: the band of its peak; reminded 10 min after the first reading seen
        assert_eq!(updates(&out), vec![(UpdateReason::Reminder, Some(1), Some(1), 660_000)]);
    }
}
