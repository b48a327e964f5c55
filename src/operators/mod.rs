//! The operator library: pure, per-device state machines.
//!
//! # Layout
//! - [`mod@self`]: the shared vocabulary: [`Reading`], [`Emit`], [`Flow`], the [`Operator`] enum
//!   that dispatches to each kind, its serializable [`OperatorState`], and [`DeviceChain`], the
//!   compiled chain of one device with its snapshot format ([`DeviceSnapshot`]).
//! - `window`: event-time tumbling and sliding windows, per-device watermark, late output,
//!   processing-time idle flush.
//! - `hysteresis`: pollution events with enter/exit thresholds and debounce.
//! - `baseline`: learned baselines (EWMA, Welford z-score, rolling minimum, hourly profile).
//! - `smooth`: moving average, exponential and Holt smoothing into a derived field.
//! - `threshold`: instant threshold crossings, against a constant or another field.
//! - `calibrate`: per-device offset and gain, or a shift learned from a baseline.
//! - `health`: offline/online, flatlines, out-of-range counts.
//! - `settings`: the setting types an operator's spec shares with its state machine.
//!
//! Operators that derive a value (baselines, smoothing) write it into a derived field slot of the
//! reading, and calibration rewrites its field in place, so every later operator of the chain
//! reads the new value.
//!
//! Every operator is a plain struct: `on_reading(&mut self, reading, now, out)`, `after_reading`
//! (the watermark step that runs once every operator has seen the reading), `on_time(now, out)`
//! (processing-time work: idle flush, offline detection), `on_end(out)` (end of input or graceful
//! shutdown), `snapshot()` / `restore()`. No IO, no async, no actors: time is passed in.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

pub mod baseline;
pub mod calibrate;
pub mod health;
pub mod hysteresis;
pub mod settings;
pub mod smooth;
pub mod threshold;
pub mod window;

pub use baseline::{BaselineConfig, BaselineOp, BaselineState};
pub use calibrate::{CalibrateConfig, CalibrateOp, CalibrateState};
pub use health::{HealthConfig, HealthOp, HealthState};
pub use hysteresis::{HysteresisConfig, HysteresisOp, HysteresisState};
pub use smooth::{SmoothConfig, SmoothOp, SmoothState};
pub use threshold::{ThresholdConfig, ThresholdOp, ThresholdState};
pub use window::{WindowConfig, WindowOp, WindowState};

/// Index of a field in a reading's value vector (declared fields first, then derived ones).
pub type FieldSlot = usize;
pub use crate::model::{OpIndex, RecordKind};

/// Values of a reading, by field slot. `f64::NAN` means absent.
pub type Values = SmallVec<[f64; 8]>;

/// Marker for an absent value.
pub const ABSENT: f64 = f64::NAN;

/// Whether a value is present.
#[inline]
pub fn present(value: f64) -> bool {
    !value.is_nan()
}

/// One decoded reading of one device. The device id travels beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// Values by field slot; absent values are `NaN`.
    pub values: Values,
    /// Bit `i` set: field slot `i` was out of its declared range.
    pub out_of_range: u64,
}

impl Reading {
    pub fn new(ts: i64, slots: usize) -> Self {
        Reading {
            ts,
            values: SmallVec::from_elem(ABSENT, slots),
            out_of_range: 0,
        }
    }

    #[inline]
    pub fn get(&self, slot: FieldSlot) -> f64 {
        self.values.get(slot).copied().unwrap_or(ABSENT)
    }
}

/// What the operator returns for a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Pass the reading on to the next operator.
    Continue,
    /// The reading is late: it went to the late output and the chain stops here.
    Late,
}

/// Kinds of device health results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthEvent {
    /// No reading for `offline_after`; `last_seen` is the processing time of the last one.
    Offline { last_seen: i64 },
    /// Data again after being offline.
    Online,
    /// `readings` readings in a row with the same value.
    Flatline {
        field: FieldSlot,
        value: f64,
        readings: u32,
    },
    /// The field changes again after a flatline.
    FlatlineCleared { field: FieldSlot },
    /// Out-of-range counts per declared field since the start, every `report_every` readings.
    Report { out_of_range: Vec<(FieldSlot, u64)> },
}

/// A result of an operator for one device. The device actor adds the device id, the operator
/// name and a deterministic id when it turns this into an output record.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    /// A window closed (watermark, idle flush or end of input).
    Window {
        op: OpIndex,
        start: i64,
        end: i64,
        count: u64,
        values: SmallVec<[f64; 6]>,
    },
    /// A hysteresis event opened.
    EventStart {
        op: OpIndex,
        seq: u64,
        start_ts: i64,
        /// The value that began the event (first reading beyond `enter`).
        value: f64,
        /// The worst value while the event was being confirmed (`min_duration`).
        peak: f64,
        severity: Option<u8>,
    },
    /// A hysteresis event closed.
    EventEnd {
        op: OpIndex,
        seq: u64,
        start_ts: i64,
        end_ts: i64,
        peak: f64,
        mean: f64,
        severity: Option<u8>,
    },
    /// A baseline's current value.
    Baseline { op: OpIndex, ts: i64, value: f64 },
    /// Welford: a reading far from the learned mean.
    Deviation {
        op: OpIndex,
        ts: i64,
        value: f64,
        mean: f64,
        stddev: f64,
        zscore: f64,
    },
    /// A smoothed value (`smooth` with `emit: true`).
    Smoothed {
        op: OpIndex,
        ts: i64,
        value: f64,
        trend: Option<f64>,
    },
    /// A threshold crossing (`beyond`: now past the threshold).
    Threshold {
        op: OpIndex,
        ts: i64,
        value: f64,
        limit: f64,
        beyond: bool,
    },
    /// A device health result.
    Health { op: OpIndex, ts: i64, event: HealthEvent },
    /// A late reading (side output).
    Late { op: OpIndex, ts: i64 },
}

impl Emit {
    pub fn op(&self) -> OpIndex {
        match self {
            Emit::Window { op, .. }
            | Emit::EventStart { op, .. }
            | Emit::EventEnd { op, .. }
            | Emit::Baseline { op, .. }
            | Emit::Deviation { op, .. }
            | Emit::Smoothed { op, .. }
            | Emit::Threshold { op, .. }
            | Emit::Health { op, .. }
            | Emit::Late { op, .. } => *op,
        }
    }

    /// The record type as written in outputs (`window`, `event_start`, …).
    pub fn kind(&self) -> RecordKind {
        match self {
            Emit::Window { .. } => RecordKind::Window,
            Emit::EventStart { .. } => RecordKind::EventStart,
            Emit::EventEnd { .. } => RecordKind::EventEnd,
            Emit::Baseline { .. } => RecordKind::Baseline,
            Emit::Deviation { .. } => RecordKind::Deviation,
            Emit::Smoothed { .. } => RecordKind::Smoothed,
            Emit::Threshold { .. } => RecordKind::Threshold,
            Emit::Health { .. } => RecordKind::Health,
            Emit::Late { .. } => RecordKind::Late,
        }
    }
}

/// The compiled configuration of one operator (shared by all devices).
#[derive(Debug, Clone)]
pub enum OperatorConfig {
    Window(Arc<WindowConfig>),
    Hysteresis(Arc<HysteresisConfig>),
    Baseline(Arc<BaselineConfig>),
    Smooth(Arc<SmoothConfig>),
    Threshold(Arc<ThresholdConfig>),
    Calibrate(Arc<CalibrateConfig>),
    Health(Arc<HealthConfig>),
}

impl OperatorConfig {
    pub fn name(&self) -> &str {
        match self {
            OperatorConfig::Window(c) => &c.name,
            OperatorConfig::Hysteresis(c) => &c.name,
            OperatorConfig::Baseline(c) => &c.name,
            OperatorConfig::Smooth(c) => &c.name,
            OperatorConfig::Threshold(c) => &c.name,
            OperatorConfig::Calibrate(c) => &c.name,
            OperatorConfig::Health(c) => &c.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            OperatorConfig::Window(_) => "window",
            OperatorConfig::Hysteresis(_) => "hysteresis",
            OperatorConfig::Baseline(_) => "baseline",
            OperatorConfig::Smooth(_) => "smooth",
            OperatorConfig::Threshold(_) => "threshold",
            OperatorConfig::Calibrate(_) => "calibrate",
            OperatorConfig::Health(_) => "health",
        }
    }

    /// A fresh operator for one device (calibration picks the device's correction).
    pub fn instantiate(&self, device: &str) -> Operator {
        match self {
            OperatorConfig::Window(c) => Operator::Window(WindowOp::new(c.clone())),
            OperatorConfig::Hysteresis(c) => Operator::Hysteresis(HysteresisOp::new(c.clone())),
            OperatorConfig::Baseline(c) => Operator::Baseline(BaselineOp::new(c.clone())),
            OperatorConfig::Smooth(c) => Operator::Smooth(SmoothOp::new(c.clone())),
            OperatorConfig::Threshold(c) => Operator::Threshold(ThresholdOp::new(c.clone())),
            OperatorConfig::Calibrate(c) => Operator::Calibrate(CalibrateOp::new(c.clone(), device)),
            OperatorConfig::Health(c) => Operator::Health(HealthOp::new(c.clone())),
        }
    }
}

/// A running operator of one device.
#[derive(Debug, Clone)]
pub enum Operator {
    Window(WindowOp),
    Hysteresis(HysteresisOp),
    Baseline(BaselineOp),
    Smooth(SmoothOp),
    Threshold(ThresholdOp),
    Calibrate(CalibrateOp),
    Health(HealthOp),
}

/// The stored state of one operator (versioned with the [`DeviceSnapshot`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorState {
    Window(WindowState),
    Hysteresis(HysteresisState),
    Baseline(BaselineState),
    Smooth(SmoothState),
    Threshold(ThresholdState),
    Calibrate(CalibrateState),
    Health(HealthState),
}

/// A state that does not fit the operator it is restored into.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestoreError {
    #[error("operator `{operator}` is a {expected} but the stored state is for a {found}")]
    KindMismatch {
        operator: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("device snapshot has format version {found}; this plume reads versions up to {supported}")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("device snapshot does not decode: {0}")]
    Decode(String),
    #[error("operator `{0}` has no stored state and --allow-pipeline-change was not given")]
    MissingOperator(String),
}

impl OperatorState {
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorState::Window(_) => "window",
            OperatorState::Hysteresis(_) => "hysteresis",
            OperatorState::Baseline(_) => "baseline",
            OperatorState::Smooth(_) => "smooth",
            OperatorState::Threshold(_) => "threshold",
            OperatorState::Calibrate(_) => "calibrate",
            OperatorState::Health(_) => "health",
        }
    }
}

impl Operator {
    /// The operator's name (the key of its stored state).
    pub fn name(&self) -> &str {
        match self {
            Operator::Window(o) => &o.config().name,
            Operator::Hysteresis(o) => &o.config().name,
            Operator::Baseline(o) => &o.config().name,
            Operator::Smooth(o) => &o.config().name,
            Operator::Threshold(o) => &o.config().name,
            Operator::Calibrate(o) => &o.config().name,
            Operator::Health(o) => &o.config().name,
        }
    }

    #[inline]
    pub fn on_reading(&mut self, reading: &mut Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
        match self {
            Operator::Window(op) => op.on_reading(reading, now, out),
            Operator::Hysteresis(op) => op.on_reading(reading, now, out),
            Operator::Baseline(op) => op.on_reading(reading, now, out),
            Operator::Smooth(op) => op.on_reading(reading, now, out),
            Operator::Threshold(op) => op.on_reading(reading, now, out),
            Operator::Calibrate(op) => op.on_reading(reading, now, out),
            Operator::Health(op) => op.on_reading(reading, now, out),
        }
    }

    #[inline]
    pub fn after_reading(&mut self, now: i64, out: &mut Vec<Emit>) {
        if let Operator::Window(op) = self {
            op.after_reading(now, out)
        }
    }

    pub fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
        match self {
            Operator::Window(op) => op.on_time(now, out),
            Operator::Health(op) => op.on_time(now, out),
            Operator::Hysteresis(_)
            | Operator::Baseline(_)
            | Operator::Smooth(_)
            | Operator::Threshold(_)
            | Operator::Calibrate(_) => {}
        }
    }

    pub fn on_end(&mut self, out: &mut Vec<Emit>) {
        match self {
            Operator::Window(op) => op.on_end(out),
            Operator::Baseline(op) => op.on_end(out),
            Operator::Health(op) => op.on_end(out),
            Operator::Hysteresis(_) | Operator::Smooth(_) | Operator::Threshold(_) | Operator::Calibrate(_) => {}
        }
    }

    pub fn snapshot(&self) -> OperatorState {
        match self {
            Operator::Window(op) => OperatorState::Window(op.snapshot()),
            Operator::Hysteresis(op) => OperatorState::Hysteresis(op.snapshot()),
            Operator::Baseline(op) => OperatorState::Baseline(op.snapshot()),
            Operator::Smooth(op) => OperatorState::Smooth(op.snapshot()),
            Operator::Threshold(op) => OperatorState::Threshold(op.snapshot()),
            Operator::Calibrate(op) => OperatorState::Calibrate(op.snapshot()),
            Operator::Health(op) => OperatorState::Health(op.snapshot()),
        }
    }

    /// Rebuilds an operator of `config` from a stored state.
    pub fn restore(config: &OperatorConfig, device: &str, state: OperatorState) -> Result<Operator, RestoreError> {
        let mismatch = |found: &'static str| RestoreError::KindMismatch {
            operator: config.name().to_string(),
            expected: config.kind(),
            found,
        };
        let mut op = config.instantiate(device);
        match (&mut op, state) {
            (Operator::Window(o), OperatorState::Window(s)) => o.restore(s),
            (Operator::Hysteresis(o), OperatorState::Hysteresis(s)) => o.restore(s),
            (Operator::Baseline(o), OperatorState::Baseline(s)) => o.restore(s)?,
            (Operator::Smooth(o), OperatorState::Smooth(s)) => o.restore(s)?,
            (Operator::Threshold(o), OperatorState::Threshold(s)) => o.restore(s),
            (Operator::Calibrate(o), OperatorState::Calibrate(s)) => o.restore(s),
            (Operator::Health(o), OperatorState::Health(s)) => o.restore(s),
            (_, s) => return Err(mismatch(s.kind())),
        }
        Ok(op)
    }
}

/// The stored format version of [`DeviceSnapshot`]. Bump it (and add a migration in
/// [`DeviceSnapshot::decode`]) whenever a state struct changes.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Per-device counters that travel with the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// Readings given to the chain (late ones included).
    pub readings: u64,
    /// Readings that a window operator found late.
    pub late: u64,
}

/// One operator's state, named so a changed pipeline can keep the operators that still exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedState {
    pub name: String,
    pub state: OperatorState,
}

/// Everything a device needs to continue exactly where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub counters: DeviceCounters,
    pub operators: Vec<NamedState>,
}

impl DeviceSnapshot {
    /// `bincode` (2.0.1, standard config) of the snapshot, preceded by [`SNAPSHOT_VERSION`].
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = SNAPSHOT_VERSION.to_le_bytes().to_vec();
        bincode::serde::encode_into_std_write(self, &mut bytes, bincode::config::standard())
            .expect("writing to a Vec cannot fail");
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<DeviceSnapshot, RestoreError> {
        if bytes.len() < 4 {
            return Err(RestoreError::Decode(format!("{} bytes is too short", bytes.len())));
        }
        let version = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        match version {
            SNAPSHOT_VERSION => {
                let (snapshot, used) = bincode::serde::decode_from_slice(&bytes[4..], bincode::config::standard())
                    .map_err(|e| RestoreError::Decode(e.to_string()))?;
                if used != bytes.len() - 4 {
                    return Err(RestoreError::Decode(format!(
                        "{} trailing bytes after the snapshot",
                        bytes.len() - 4 - used
                    )));
                }
                Ok(snapshot)
            }
            found => Err(RestoreError::UnsupportedVersion {
                found,
                supported: SNAPSHOT_VERSION,
            }),
        }
    }
}

/// The operator chain of one device: every operator in pipeline order, and its counters.
#[derive(Debug, Clone)]
pub struct DeviceChain {
    /// (A boxed slice: one word smaller than a `Vec` in every device actor.)
    operators: Box<[Operator]>,
    counters: DeviceCounters,
}

impl DeviceChain {
    /// A fresh chain for `device`.
    pub fn new(configs: &[OperatorConfig], device: &str) -> Self {
        DeviceChain {
            operators: configs.iter().map(|c| c.instantiate(device)).collect(),
            counters: DeviceCounters::default(),
        }
    }

    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// Runs one reading through the chain, in operator order; then lets every operator that
    /// saw it advance its watermark (closing windows).
    #[inline]
    pub fn on_reading(&mut self, mut reading: Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
        self.counters.readings += 1;
        let mut seen = self.operators.len();
        let mut flow = Flow::Continue;
        for (i, op) in self.operators.iter_mut().enumerate() {
            if op.on_reading(&mut reading, now, out) == Flow::Late {
                self.counters.late += 1;
                seen = i;
                flow = Flow::Late;
                break;
            }
        }
        for op in &mut self.operators[..seen] {
            op.after_reading(now, out);
        }
        flow
    }

    /// Processing-time work (idle flush, offline detection).
    pub fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
        for op in &mut self.operators {
            op.on_time(now, out);
        }
    }

    /// End of input or graceful shutdown: emit open windows and final baselines.
    pub fn on_end(&mut self, out: &mut Vec<Emit>) {
        for op in &mut self.operators {
            op.on_end(out);
        }
    }

    pub fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            counters: self.counters,
            operators: self
                .operators
                .iter()
                .zip(self.names())
                .map(|(op, name)| NamedState {
                    name: name.to_string(),
                    state: op.snapshot(),
                })
                .collect(),
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.operators.iter().map(Operator::name)
    }

    /// Rebuilds a chain from a snapshot. Operators are matched by name; with
    /// `allow_missing`, an operator without stored state starts fresh (a changed pipeline),
    /// and stored states of operators that no longer exist are dropped.
    pub fn restore(
        configs: &[OperatorConfig],
        device: &str,
        snapshot: DeviceSnapshot,
        allow_missing: bool,
    ) -> Result<Self, RestoreError> {
        let mut states = snapshot.operators;
        let mut operators = Vec::with_capacity(configs.len());
        for config in configs {
            match states.iter().position(|s| s.name == config.name()) {
                Some(pos) => {
                    let named = states.swap_remove(pos);
                    match Operator::restore(config, device, named.state) {
                        Ok(op) => operators.push(op),
                        Err(e) if allow_missing => {
                            let _ = e;
                            operators.push(config.instantiate(device))
                        }
                        Err(e) => return Err(e),
                    }
                }
                None if allow_missing => operators.push(config.instantiate(device)),
                None => return Err(RestoreError::MissingOperator(config.name().to_string())),
            }
        }
        Ok(DeviceChain {
            operators: operators.into_boxed_slice(),
            counters: snapshot.counters,
        })
    }
}
