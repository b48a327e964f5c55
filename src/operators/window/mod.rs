//! Event-time windows per device: tumbling (`slide == size`) or sliding (hopping).
//!
//! Semantics (the aq1 reference workload, generalised to sliding windows):
//! - windows are aligned to the epoch: starts are multiples of `slide`, each `size` long;
//! - the device watermark is `max_ts - lateness`, over accepted readings only, and never goes
//!   backwards; before the first accepted reading there is none (the first reading is accepted);
//! - a reading is late when the last window that would hold it has `end <= watermark`: it goes to
//!   the late output, is counted, and the rest of the chain does not see it;
//! - an accepted reading is added to each of its windows that is still open, then (once the whole
//!   chain has seen it) the watermark advances and every window with `end <= watermark` closes,
//!   in ascending start order;
//! - a processing-time idle flush closes every open window of a device that has been silent for
//!   `idle_flush`; the watermark moves past them, so a closed window is never reopened.

mod spec;
pub use spec::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::model::DurationSpec;
use crate::operators::settings::Aggregate;
use crate::operators::{CompileContext, CompileError, Operator, RestoreError, SpecChecker};
use crate::operators::{Emit, FieldSlot, Flow, OpIndex, Reading, present};

/// Aggregates of one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldAggregates {
    pub slot: FieldSlot,
    /// Requested aggregates, in output order (never `Count`: the window count is always there).
    pub aggregates: Vec<Aggregate>,
}

/// Compiled window configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    pub index: OpIndex,
    pub name: String,
    pub size_ms: i64,
    pub slide_ms: i64,
    pub lateness_ms: i64,
    pub idle_flush_ms: Option<i64>,
    pub fields: Vec<FieldAggregates>,
    /// `<field>_<aggregate>` for every value of [`Emit::Window::values`], in order.
    pub value_names: Vec<String>,
    needs_moments: bool,
}

impl WindowConfig {
    /// `fields` pairs a slot and its field name with the aggregates wanted for it.
    pub fn new(
        index: OpIndex,
        name: impl Into<String>,
        size_ms: i64,
        slide_ms: i64,
        lateness_ms: i64,
        idle_flush_ms: Option<i64>,
        fields: Vec<(FieldSlot, String, Vec<Aggregate>)>,
    ) -> Self {
        assert!(
            size_ms > 0 && slide_ms > 0 && slide_ms <= size_ms,
            "validated before compiling"
        );
        let mut value_names = Vec::new();
        let mut compiled = Vec::new();
        let mut needs_moments = false;
        for (slot, field, aggs) in fields {
            let aggs: Vec<Aggregate> = aggs.into_iter().filter(|a| *a != Aggregate::Count).collect();
            for a in &aggs {
                value_names.push(format!("{field}_{}", a.as_str()));
                needs_moments |= *a == Aggregate::Stddev;
            }
            compiled.push(FieldAggregates { slot, aggregates: aggs });
        }
        WindowConfig {
            index,
            name: name.into(),
            size_ms,
            slide_ms,
            lateness_ms,
            idle_flush_ms,
            fields: compiled,
            value_names,
            needs_moments,
        }
    }
}

/// Running aggregates of one field in one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldAccumulator {
    pub n: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    /// Welford running mean and sum of squared deviations (only kept when `stddev` is asked for).
    pub mean: f64,
    pub m2: f64,
}

impl Default for FieldAccumulator {
    fn default() -> Self {
        FieldAccumulator {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: f64::NAN,
            mean: 0.0,
            m2: 0.0,
        }
    }
}

impl FieldAccumulator {
    #[inline]
    fn add(&mut self, x: f64, moments: bool) {
        self.n += 1;
        self.sum += x;
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
        self.last = x;
        if moments {
            let delta = x - self.mean;
            self.mean += delta / self.n as f64;
            self.m2 += delta * (x - self.mean);
        }
    }

    fn value(&self, aggregate: Aggregate) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        match aggregate {
            Aggregate::Count => self.n as f64,
            Aggregate::Sum => self.sum,
            Aggregate::Avg => self.sum / self.n as f64,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Last => self.last,
            // population standard deviation
            Aggregate::Stddev => (self.m2 / self.n as f64).sqrt(),
        }
    }
}

/// One open window.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenWindow {
    pub start: i64,
    pub count: u64,
    pub fields: SmallVec<[FieldAccumulator; 2]>,
}

impl Clone for OpenWindow {
    fn clone(&self) -> Self {
        OpenWindow {
            start: self.start,
            count: self.count,
            fields: self.fields.clone(),
        }
    }

    /// Into `self`'s accumulators (a derived `clone_from` built a new list and dropped the old
    /// one, for every open window of every device, per chunk, in the shards' copies).
    fn clone_from(&mut self, source: &Self) {
        self.start = source.start;
        self.count = source.count;
        self.fields.clear();
        self.fields.extend_from_slice(&source.fields);
    }
}

/// The stored state of a window operator.
#[derive(Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct WindowState {
    /// Largest event time among accepted readings.
    pub max_ts: Option<i64>,
    /// Windows ending at or before this are closed (idle flush moves it past the watermark).
    pub closed_until: Option<i64>,
    /// Open windows, ascending by start.
    pub windows: Vec<OpenWindow>,
    /// Processing time of the last reading (for the idle flush).
    pub last_seen: i64,
}

impl Clone for WindowState {
    fn clone(&self) -> Self {
        WindowState {
            max_ts: self.max_ts,
            closed_until: self.closed_until,
            windows: self.windows.clone(),
            last_seen: self.last_seen,
        }
    }

    /// Into `self`'s list of windows (no allocation when it has room).
    fn clone_from(&mut self, source: &Self) {
        self.max_ts = source.max_ts;
        self.closed_until = source.closed_until;
        self.windows.clone_from(&source.windows);
        self.last_seen = source.last_seen;
    }
}

/// A window operator of one device.
#[derive(Debug)]
pub struct WindowOp {
    config: Arc<WindowConfig>,
    state: WindowState,
    /// Event time of the reading accepted by `on_reading`, waiting for `after_reading`.
    pending: Option<i64>,
}

impl Clone for WindowOp {
    fn clone(&self) -> Self {
        WindowOp {
            config: self.config.clone(),
            state: self.state.clone(),
            pending: self.pending,
        }
    }

    /// Into `self`'s own allocations (see `WindowState::clone_from`).
    fn clone_from(&mut self, source: &Self) {
        super::settings_from(&mut self.config, &source.config);
        self.state.clone_from(&source.state);
        self.pending = source.pending;
    }
}

impl WindowOp {
    pub fn new(config: Arc<WindowConfig>) -> Self {
        WindowOp {
            config,
            state: WindowState::default(),
            pending: None,
        }
    }

    pub fn state(&self) -> &WindowState {
        &self.state
    }

    /// The current watermark: windows ending at or before it are closed.
    pub fn watermark(&self) -> Option<i64> {
        let wm = self.state.max_ts.map(|m| m.saturating_sub(self.config.lateness_ms));
        match (wm, self.state.closed_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    #[inline]
    fn add_to_window(&mut self, start: i64, reading: &Reading) {
        let cfg = &*self.config;
        let windows = &mut self.state.windows;
        // windows are few and ascending; most readings land in the newest one
        let pos = match windows.iter().rposition(|w| w.start <= start) {
            Some(p) if windows[p].start == start => p,
            found => {
                let p = found.map_or(0, |p| p + 1);
                // grow one at a time: a device keeps few windows open, and the spare capacity
                // of a doubling `Vec` would be most of an idle device's memory
                windows.reserve_exact(1);
                windows.insert(p, new_window(start, cfg.fields.len()));
                p
            }
        };
        let window = &mut windows[pos];
        window.count += 1;
        for (acc, field) in window.fields.iter_mut().zip(&cfg.fields) {
            let x = reading.get(field.slot);
            if present(x) {
                acc.add(x, cfg.needs_moments);
            }
        }
    }

    fn close_until(&mut self, watermark: i64, out: &mut Vec<Emit>) {
        let size = self.config.size_ms;
        let closing = self
            .state
            .windows
            .iter()
            .take_while(|w| w.start.saturating_add(size) <= watermark)
            .count();
        if closing > 0 {
            let closed: Vec<OpenWindow> = self.state.windows.drain(..closing).collect();
            for w in closed {
                out.push(self.emit(w));
            }
        }
    }

    fn emit(&self, w: OpenWindow) -> Emit {
        let cfg = &*self.config;
        let mut values = SmallVec::new();
        for (acc, field) in w.fields.iter().zip(&cfg.fields) {
            for a in &field.aggregates {
                values.push(acc.value(*a));
            }
        }
        Emit::Window {
            op: cfg.index,
            start: w.start,
            end: w.start.saturating_add(cfg.size_ms),
            count: w.count,
            values,
        }
    }

    fn flush_all(&mut self, out: &mut Vec<Emit>) {
        if let Some(last) = self.state.windows.last() {
            let end = last.start.saturating_add(self.config.size_ms);
            self.state.closed_until = Some(self.state.closed_until.map_or(end, |c| c.max(end)));
        }
        let closed: Vec<OpenWindow> = self.state.windows.drain(..).collect();
        for w in closed {
            out.push(self.emit(w));
        }
    }
}

fn new_window(start: i64, fields: usize) -> OpenWindow {
    OpenWindow {
        start,
        count: 0,
        fields: SmallVec::from_elem(FieldAccumulator::default(), fields),
    }
}

impl Operator for WindowOp {
    const KIND: &'static str = "window";
    type Spec = WindowSpec;
    type Config = WindowConfig;
    type State = WindowState;

    fn explicit_name(spec: &WindowSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn check<C: SpecChecker>(spec: &WindowSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &WindowSpec, context: &mut CompileContext<'_>) -> Result<WindowConfig, CompileError> {
        spec.compile(context)
    }

    fn processing_timeout(spec: &WindowSpec) -> Option<DurationSpec> {
        spec.idle_flush
    }

    fn describe(spec: &WindowSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &WindowConfig) -> &str {
        &config.name
    }

    fn instantiate(config: &Arc<WindowConfig>, _device: &str) -> Self {
        WindowOp::new(config.clone())
    }

    fn config(&self) -> &WindowConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
        let (index, size, slide) = (self.config.index, self.config.size_ms, self.config.slide_ms);
        let ts = reading.ts;
        let last_start = ts.div_euclid(slide).saturating_mul(slide);
        let last_end = last_start.saturating_add(size);
        let watermark = self.watermark();
        if let Some(wm) = watermark
            && last_end <= wm
        {
            out.push(Emit::Late { op: index, ts });
            return Flow::Late;
        }
        self.state.last_seen = now;
        // add to every window holding `ts` that is still open, newest start first
        let mut start = last_start;
        loop {
            let end = start.saturating_add(size);
            if end <= ts || watermark.is_some_and(|wm| end <= wm) {
                break;
            }
            self.add_to_window(start, reading);
            if slide == size {
                break;
            }
            match start.checked_sub(slide) {
                Some(s) => start = s,
                None => break,
            }
        }
        self.pending = Some(ts);
        Flow::Continue
    }

    /// The watermark step: runs after every later operator has seen the accepted reading.
    #[inline]
    fn after_reading(&mut self, _now: i64, out: &mut Vec<Emit>) {
        if let Some(ts) = self.pending.take() {
            self.state.max_ts = Some(self.state.max_ts.map_or(ts, |m| m.max(ts)));
            if let Some(wm) = self.watermark() {
                self.close_until(wm, out);
            }
        }
    }

    /// Idle flush: a device silent for `idle_flush` (processing time) closes its windows.
    fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
        if let Some(idle) = self.config.idle_flush_ms
            && !self.state.windows.is_empty()
            && now.saturating_sub(self.state.last_seen) >= idle
        {
            self.flush_all(out);
        }
    }

    fn next_deadline(&self) -> Option<i64> {
        match self.config.idle_flush_ms {
            Some(idle) if !self.state.windows.is_empty() => Some(self.state.last_seen.saturating_add(idle)),
            _ => None,
        }
    }

    #[inline]
    fn prefetch_state(&self) {
        // the newest window is the one most readings land in
        if let Some(newest) = self.state.windows.last() {
            crate::operators::prefetch(newest, std::mem::size_of::<OpenWindow>());
        }
    }

    /// End of input: every open window is emitted in ascending start order.
    fn on_end(&mut self, out: &mut Vec<Emit>) {
        self.flush_all(out);
    }

    fn snapshot(&self) -> WindowState {
        self.state.clone()
    }

    fn restore(&mut self, state: WindowState) -> Result<(), RestoreError> {
        self.state = state;
        self.pending = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::ABSENT;

    fn tumbling(lateness: i64) -> WindowOp {
        WindowOp::new(Arc::new(WindowConfig::new(
            0,
            "w",
            60_000,
            60_000,
            lateness,
            None,
            vec![
                (0, "pm25".into(), vec![Aggregate::Avg, Aggregate::Max]),
                (1, "co2".into(), vec![Aggregate::Avg]),
            ],
        )))
    }

    fn reading(ts: i64, pm25: f64, co2: f64) -> Reading {
        Reading {
            ts,
            values: smallvec::smallvec![pm25, co2],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        }
    }

    fn feed(op: &mut WindowOp, r: Reading, out: &mut Vec<Emit>) -> Flow {
        let mut r = r;
        let flow = op.on_reading(&mut r, 0, out);
        op.after_reading(0, out);
        flow
    }

    #[test]
    fn window_end_equal_to_watermark_closes_and_later_reading_is_late() {
        let mut op = tumbling(5000);
        let mut out = Vec::new();
        feed(&mut op, reading(0, 10.0, 400.0), &mut out);
        assert!(out.is_empty());
        feed(&mut op, reading(65_000, 35.0, 500.0), &mut out);
        assert_eq!(out.len(), 1, "watermark 60000 closes [0,60000)");
        match &out[0] {
            Emit::Window {
                start,
                end,
                count,
                values,
                ..
            } => {
                assert_eq!((*start, *end, *count), (0, 60_000, 1));
                assert_eq!(values.as_slice(), &[10.0, 10.0, 400.0]);
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        assert_eq!(feed(&mut op, reading(59_999, 99.0, 9999.0), &mut out), Flow::Late);
        assert!(matches!(out[0], Emit::Late { ts: 59_999, .. }));
        // out of order but its window is open: accepted
        out.clear();
        assert_eq!(feed(&mut op, reading(60_000, 25.0, 450.5), &mut out), Flow::Continue);
        assert!(out.is_empty());
        op.on_end(&mut out);
        match &out[0] {
            Emit::Window {
                start, count, values, ..
            } => {
                assert_eq!((*start, *count), (60_000, 2));
                assert_eq!(values[0], 30.0);
                assert_eq!(values[1], 35.0);
                assert_eq!(values[2], 475.25);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negative_event_time_uses_floor_division() {
        let mut op = tumbling(5000);
        let mut out = Vec::new();
        feed(&mut op, reading(-1, 100.0, 612.0), &mut out);
        feed(&mut op, reading(-60_000, 0.0, 0.1), &mut out);
        op.on_end(&mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Emit::Window {
                start: -60_000,
                count: 2,
                ..
            }
        ));
    }

    #[test]
    fn absent_values_are_counted_but_not_aggregated() {
        let mut op = tumbling(0);
        let mut out = Vec::new();
        feed(&mut op, reading(1, 10.0, ABSENT), &mut out);
        feed(&mut op, reading(2, 20.0, 500.0), &mut out);
        op.on_end(&mut out);
        match &out[0] {
            Emit::Window { count, values, .. } => {
                assert_eq!(*count, 2);
                assert_eq!(values[0], 15.0);
                assert_eq!(values[2], 500.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sliding_windows_hold_a_reading_in_each_overlapping_window() {
        let cfg = WindowConfig::new(
            0,
            "s",
            60_000,
            20_000,
            0,
            None,
            vec![(0, "pm25".into(), vec![Aggregate::Sum])],
        );
        let mut op = WindowOp::new(Arc::new(cfg));
        let mut out = Vec::new();
        feed(
            &mut op,
            Reading {
                ts: 50_000,
                values: smallvec::smallvec![1.0],
                out_of_range: 0,
                arrival: 0,
                suspect: 0,
            },
            &mut out,
        );
        op.on_end(&mut out);
        let starts: Vec<i64> = out
            .iter()
            .map(|e| match e {
                Emit::Window { start, .. } => *start,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(starts, vec![0, 20_000, 40_000]);
    }

    #[test]
    fn idle_flush_closes_windows_and_they_stay_closed() {
        let cfg = WindowConfig::new(
            0,
            "w",
            60_000,
            60_000,
            0,
            Some(30_000),
            vec![(0, "pm25".into(), vec![Aggregate::Max])],
        );
        let mut op = WindowOp::new(Arc::new(cfg));
        let mut out = Vec::new();
        let mut r = Reading {
            ts: 10_000,
            values: smallvec::smallvec![1.0],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        };
        assert_eq!(op.next_deadline(), None, "no open window");
        op.on_reading(&mut r, 1_000, &mut out);
        op.after_reading(1_000, &mut out);
        assert_eq!(op.next_deadline(), Some(31_000));
        op.on_time(20_000, &mut out);
        assert!(out.is_empty(), "not idle long enough");
        op.on_time(30_999, &mut out);
        assert!(out.is_empty(), "not idle long enough");
        op.on_time(31_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(op.next_deadline(), None, "flushed: nothing open");
        out.clear();
        let mut r = Reading {
            ts: 20_000,
            values: smallvec::smallvec![2.0],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        };
        assert_eq!(op.on_reading(&mut r, 32_000, &mut out), Flow::Late);
    }
}
