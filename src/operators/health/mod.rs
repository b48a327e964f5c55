//! Device health: offline/online, flatlines (a stuck sensor) and out-of-range counts.
//!
//! The operator sees the readings that reach its place in the chain: put it first to see every
//! reading, late ones included (a window stops late readings).
//!
//! - Offline: in `on_time(now)`, a device whose last reading arrived at least `offline_after`
//!   (processing time) before `now` goes offline: [`HealthEvent::Offline`] once, with the
//!   processing time of that last reading and the event time of that reading as `ts`. The next
//!   reading emits [`HealthEvent::Online`] (at its event time) before anything else.
//! - Flatline, per configured field: a run is the number of consecutive present values equal
//!   (`==`) to the previous one; absent values neither extend nor break it. When a run reaches
//!   `readings`, [`HealthEvent::Flatline`] is emitted once; the first different value then emits
//!   [`HealthEvent::FlatlineCleared`] and starts a new run.
//! - Out of range: every declared field with a range (`min` or `max` in `decode.fields`) has a
//!   counter of readings whose [`Reading::out_of_range`] bit is set (whatever `out_of_range` did
//!   with the value: flagged as absent or kept). The counts since the start are reported
//!   ([`HealthEvent::Report`]) after every `report_every`-th reading and at the end of input (when
//!   there are such fields), so junk readings are never thrown away silently.
//!
//! A restored state whose lists do not match the configuration (the pipeline changed) is resized:
//! new flatline runs and counters start from zero.

mod spec;
pub use spec::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::DurationSpec;
use crate::operators::{CompileContext, CompileError, Operator, RestoreError, SpecChecker};
use crate::operators::{Emit, FieldSlot, Flow, HealthEvent, OpIndex, Reading, present};

/// One watched field for flatlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatlineConfig {
    pub slot: FieldSlot,
    /// Length of a run of equal values that is a flatline (at least 2).
    pub readings: u32,
    /// While flatlined, the field is absent for the operators after this one.
    pub suppress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub index: OpIndex,
    pub name: String,
    pub offline_after_ms: Option<i64>,
    pub flatline: Vec<FlatlineConfig>,
    pub report_every: Option<u32>,
    /// Declared fields with a range, in slot order: the out-of-range counters.
    pub range_fields: Vec<FieldSlot>,
}

/// The current run of equal values of one watched field.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FlatlineRun {
    /// The value repeated (none before the first value).
    pub value: Option<f64>,
    /// How many times in a row.
    pub run: u32,
    /// The flatline has been reported and not yet cleared.
    pub reported: bool,
}

/// The stored state of a health operator.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HealthState {
    /// Processing time of the last reading.
    pub last_seen: Option<i64>,
    /// Event time of the last reading.
    pub last_ts: i64,
    pub offline: bool,
    /// By `flatline` entry.
    pub flatlines: Vec<FlatlineRun>,
    /// By `range_fields` entry.
    pub out_of_range: Vec<u64>,
    /// Readings seen.
    pub readings: u64,
}

#[derive(Debug)]
pub struct HealthOp {
    config: Arc<HealthConfig>,
    state: HealthState,
}

super::operator_clone!(HealthOp { state });

impl HealthOp {
    pub fn new(config: Arc<HealthConfig>) -> Self {
        let mut op = HealthOp {
            config,
            state: HealthState::default(),
        };
        op.fit_state();
        op
    }

    pub fn state(&self) -> &HealthState {
        &self.state
    }

    fn fit_state(&mut self) {
        self.state
            .flatlines
            .resize(self.config.flatline.len(), FlatlineRun::default());
        self.state.out_of_range.resize(self.config.range_fields.len(), 0);
    }

    fn report(&self) -> HealthEvent {
        HealthEvent::Report {
            out_of_range: self
                .config
                .range_fields
                .iter()
                .copied()
                .zip(self.state.out_of_range.iter().copied())
                .collect(),
        }
    }
}

impl Operator for HealthOp {
    const KIND: &'static str = "health";
    type Spec = HealthSpec;
    type Config = HealthConfig;
    type State = HealthState;

    fn explicit_name(spec: &HealthSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn check<C: SpecChecker>(spec: &HealthSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &HealthSpec, context: &mut CompileContext<'_>) -> Result<HealthConfig, CompileError> {
        spec.compile(context)
    }

    fn processing_timeout(spec: &HealthSpec) -> Option<DurationSpec> {
        spec.offline_after
    }

    fn describe(spec: &HealthSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &HealthConfig) -> &str {
        &config.name
    }

    fn instantiate(config: &Arc<HealthConfig>, _device: &str) -> Self {
        HealthOp::new(config.clone())
    }

    fn config(&self) -> &HealthConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
        let cfg = &*self.config;
        let st = &mut self.state;
        let ts = reading.ts;
        let emit = |event| Emit::Health {
            op: cfg.index,
            ts,
            event,
        };
        st.readings += 1;
        st.last_seen = Some(now);
        st.last_ts = ts;
        if st.offline {
            st.offline = false;
            out.push(emit(HealthEvent::Online));
        }
        for (watch, run) in cfg.flatline.iter().zip(st.flatlines.iter_mut()) {
            let x = reading.get(watch.slot);
            if !present(x) {
                continue;
            }
            if run.value == Some(x) {
                run.run = run.run.saturating_add(1);
            } else {
                if run.reported {
                    run.reported = false;
                    out.push(emit(HealthEvent::FlatlineCleared { field: watch.slot }));
                }
                run.value = Some(x);
                run.run = 1;
            }
            if !run.reported && run.run >= watch.readings {
                run.reported = true;
                out.push(emit(HealthEvent::Flatline {
                    field: watch.slot,
                    value: x,
                    readings: run.run,
                }));
            }
            if run.reported {
                // flagged for the later operators (a hysteresis decides with `suspect`; a field
                // derived from this one inherits it)
                reading.suspect |= 1u64 << watch.slot;
                if watch.suppress {
                    // a stuck sensor's value is not the air's: the later operators do not see it
                    reading.values[watch.slot] = crate::operators::ABSENT;
                }
            }
        }
        if reading.out_of_range != 0 {
            for (slot, count) in cfg.range_fields.iter().zip(st.out_of_range.iter_mut()) {
                if reading.out_of_range & (1u64 << slot) != 0 {
                    *count += 1;
                }
            }
        }
        if let Some(every) = cfg.report_every
            && st.readings.is_multiple_of(u64::from(every))
        {
            out.push(emit(self.report()));
        }
        Flow::Continue
    }

    /// Offline detection.
    fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
        let st = &mut self.state;
        if let (Some(after), Some(last_seen)) = (self.config.offline_after_ms, st.last_seen)
            && !st.offline
            && now.saturating_sub(last_seen) >= after
        {
            st.offline = true;
            out.push(Emit::Health {
                op: self.config.index,
                ts: st.last_ts,
                event: HealthEvent::Offline {
                    last_seen,
                    decided: now,
                },
            });
        }
    }

    fn next_deadline(&self) -> Option<i64> {
        let st = &self.state;
        match (self.config.offline_after_ms, st.last_seen) {
            (Some(after), Some(last_seen)) if !st.offline => Some(last_seen.saturating_add(after)),
            _ => None,
        }
    }

    /// End of input: the out-of-range counts are reported.
    fn on_end(&mut self, out: &mut Vec<Emit>) {
        if !self.config.range_fields.is_empty() && self.state.last_seen.is_some() {
            out.push(Emit::Health {
                op: self.config.index,
                ts: self.state.last_ts,
                event: self.report(),
            });
        }
    }

    fn snapshot(&self) -> HealthState {
        self.state.clone()
    }

    fn restore(&mut self, state: HealthState) -> Result<(), RestoreError> {
        self.state = state;
        self.fit_state();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::ABSENT;

    fn health(offline_after_ms: Option<i64>, flatline: u32, report_every: Option<u32>) -> HealthOp {
        HealthOp::new(Arc::new(HealthConfig {
            index: 2,
            name: "h".into(),
            offline_after_ms,
            flatline: vec![FlatlineConfig {
                slot: 1,
                readings: flatline,
                suppress: false,
            }],
            report_every,
            range_fields: vec![0, 1],
        }))
    }

    fn reading(ts: i64, pm25: f64, co2: f64, out_of_range: u64) -> Reading {
        Reading {
            ts,
            values: smallvec::smallvec![pm25, co2, ABSENT],
            out_of_range,
            arrival: 0,
            suspect: 0,
        }
    }

    fn events(out: Vec<Emit>) -> Vec<(i64, HealthEvent)> {
        out.into_iter()
            .map(|e| match e {
                Emit::Health { ts, event, op: 2 } => (ts, event),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn offline_once_then_online_on_the_next_reading() {
        let mut op = health(Some(60_000), 100, None);
        let mut out = Vec::new();
        op.on_time(1_000_000, &mut out);
        assert!(out.is_empty(), "never seen: not offline");
        assert_eq!(op.next_deadline(), None);
        op.on_reading(&mut reading(5, 1.0, 400.0, 0), 1_000, &mut out);
        // the deadline is the first time at which on_time reports
        assert_eq!(op.next_deadline(), Some(61_000));
        op.on_time(60_999, &mut out);
        assert!(out.is_empty());
        op.on_time(61_000, &mut out);
        assert_eq!(op.next_deadline(), None, "reported: nothing more to do until a reading");
        op.on_time(500_000, &mut out);
        op.on_reading(&mut reading(7, 1.0, 401.0, 0), 600_000, &mut out);
        op.on_time(600_001, &mut out);
        assert_eq!(
            events(out),
            vec![
                (
                    5,
                    HealthEvent::Offline {
                        last_seen: 1_000,
                        decided: 61_000
                    }
                ),
                (7, HealthEvent::Online)
            ]
        );
    }

    #[test]
    fn a_suppressed_stuck_field_is_hidden_from_later_operators_until_it_moves() {
        let mut op = HealthOp::new(Arc::new(HealthConfig {
            flatline: vec![FlatlineConfig {
                slot: 1,
                readings: 3,
                suppress: true,
            }],
            ..(*health(None, 3, None).config).clone()
        }));
        let mut out = Vec::new();
        let seen: Vec<f64> = [410.0, 410.0, 410.0, 410.0, 412.0]
            .iter()
            .enumerate()
            .map(|(ts, &co2)| {
                let mut r = reading(ts as i64, 1.0, co2, 0);
                op.on_reading(&mut r, 0, &mut out);
                assert_eq!(r.values[0], 1.0, "the other fields pass");
                r.values[1]
            })
            .collect();
        // the first two equal values cannot be known to be stuck yet; from the third on, until
        // the value moves, later operators see nothing
        assert_eq!(seen[..2], [410.0, 410.0]);
        assert!(seen[2].is_nan() && seen[3].is_nan());
        assert_eq!(seen[4], 412.0);
    }

    #[test]
    fn flatline_after_n_equal_values_and_cleared_by_a_change() {
        let mut op = health(None, 3, None);
        let mut out = Vec::new();
        for (ts, co2) in [
            (0, 400.0),
            (1, 410.0),
            (2, 410.0),
            (3, ABSENT),
            (4, 410.0),
            (5, 410.0),
            (6, 411.0),
            (7, 411.0),
        ] {
            op.on_reading(&mut reading(ts, 1.0, co2, 0), 0, &mut out);
        }
        assert_eq!(
            events(out),
            vec![
                (
                    4,
                    HealthEvent::Flatline {
                        field: 1,
                        value: 410.0,
                        readings: 3
                    }
                ),
                (6, HealthEvent::FlatlineCleared { field: 1 }),
            ]
        );
    }

    #[test]
    fn out_of_range_readings_are_counted_and_reported_periodically_and_at_end() {
        let mut op = health(None, 100, Some(2));
        let mut out = Vec::new();
        op.on_reading(&mut reading(0, ABSENT, 400.0, 0b01), 0, &mut out);
        op.on_reading(&mut reading(1, ABSENT, 9999.0, 0b11), 0, &mut out);
        op.on_reading(&mut reading(2, 3.0, 400.0, 0b100), 0, &mut out);
        let mut restored = health(None, 100, Some(2));
        restored.restore(op.snapshot()).unwrap();
        restored.on_end(&mut out);
        assert_eq!(
            events(out),
            vec![
                (
                    1,
                    HealthEvent::Report {
                        out_of_range: vec![(0, 2), (1, 1)]
                    }
                ),
                (
                    2,
                    HealthEvent::Report {
                        out_of_range: vec![(0, 2), (1, 1)]
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_restored_state_is_fitted_to_a_changed_configuration() {
        let mut op = health(None, 3, None);
        op.on_reading(&mut reading(0, 1.0, 400.0, 0b10), 0, &mut Vec::new());
        let mut changed = HealthOp::new(Arc::new(HealthConfig {
            index: 2,
            name: "h".into(),
            offline_after_ms: None,
            flatline: vec![],
            report_every: None,
            range_fields: vec![0, 1, 2],
        }));
        changed.restore(op.snapshot()).unwrap();
        assert_eq!(changed.state().out_of_range, vec![0, 1, 0]);
        assert!(changed.state().flatlines.is_empty());
    }
}
