//! The operator library: pure, per-device state machines, each in a folder of its own with its
//! pipeline-file spec, its checks, its compile step and its tests.
//!
//! # Layout
//! - [`mod@self`]: the shared vocabulary ([`Reading`], [`Emit`], [`Flow`]) and the [`Operator`]
//!   trait every operator implements: its spec (name, derived field, checks, compile step,
//!   summary) and its state machine (reading, watermark step, time, end, snapshot/restore), with
//!   no-op defaults for the hooks it does not need.
//! - `registry`: the one list of operators, and the enums generated from it ([`OperatorSpec`],
//!   [`OperatorConfig`], [`DeviceOperator`], [`OperatorState`]).
//! - `chain`: [`DeviceChain`], the compiled chain of one device, and its stored format
//!   ([`DeviceSnapshot`]).
//! - `context`: what an operator's check and compile step see of the pipeline around it.
//! - `device_slots`: [`device_slots::DeviceSlots`], an index of devices by their id's hash, for
//!   the loops that find a reading's chain once per reading (the plain loop, the shards).
//! - `window`: event-time tumbling and sliding windows, per-device watermark, late output,
//!   processing-time idle flush.
//! - `hysteresis`: pollution events with enter/exit thresholds and debounce.
//! - `baseline`: learned baselines (EWMA, Welford z-score, rolling minimum, hourly profile).
//! - `smooth`: moving average, exponential and Holt smoothing into a derived field.
//! - `threshold`: instant threshold crossings, against a constant or another field.
//! - `calibrate`: per-device offset and gain, or a shift learned from a baseline.
//! - `health`: offline/online, flatlines, out-of-range counts.
//! - `settings`: setting types several operators share.
//!
//! Operators that derive a value (baselines, smoothing) write it into a derived field slot of the
//! reading, and calibration rewrites its field in place, so every later operator of the chain
//! reads the new value.
//!
//! No IO, no async, no actors: time is passed in.
//!
//! Adding an operator: a folder with its spec, state machine and tests, an `impl Operator`, and
//! one line in `registry` (ARCHITECTURE.md, "How to add an operator").

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

pub mod baseline;
pub mod calibrate;
mod chain;
pub mod context;
pub mod dedup;
pub mod device_slots;
pub mod health;
pub mod hysteresis;
mod registry;
pub mod settings;
pub mod smooth;
pub mod threshold;
pub mod window;

pub use baseline::{BaselineConfig, BaselineOp, BaselineSpec, BaselineState};
pub use calibrate::{CalibrateConfig, CalibrateOp, CalibrateSpec, CalibrateState};
pub use chain::{DeviceChain, DeviceCounters, DeviceSnapshot, NamedState, SNAPSHOT_VERSION};
pub use context::{CompileContext, CompileError, FieldInfo, Report, SpecChecker};
pub use health::{FlatlineSpec, HealthConfig, HealthOp, HealthSpec, HealthState};
pub use hysteresis::{HysteresisConfig, HysteresisOp, HysteresisSpec, HysteresisState};
pub use registry::{DeviceOperator, KINDS, OperatorConfig, OperatorSpec, OperatorState};
pub use smooth::{SmoothConfig, SmoothOp, SmoothSpec, SmoothState};
pub use threshold::{ThresholdConfig, ThresholdOp, ThresholdSpec, ThresholdState};
pub use window::{AggregatesSpec, WindowConfig, WindowOp, WindowSpec, WindowState};

/// Index of a field in a reading's value vector (declared fields first, then derived ones).
pub type FieldSlot = usize;
pub use crate::model::{OpIndex, RecordKind};

/// Values of a reading, by field slot. `f64::NAN` means absent.
pub type Values = SmallVec<[f64; 8]>;

/// Marker for an absent value.
pub const ABSENT: f64 = f64::NAN;

/// Asks the CPU to start loading the cache lines of `bytes` bytes from `at` (a hint: it never
/// faults and changes nothing; a no-op on other architectures).
#[inline(always)]
pub fn prefetch<T: ?Sized>(at: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // every 64-byte line from the one holding the first byte to the one holding the last
        let first = (at as *const u8 as usize) & !63;
        let end = (at as *const u8 as usize).wrapping_add(bytes.max(1));
        let mut line = first;
        while line < end {
            // SAFETY: a prefetch is only a hint to the cache: it never faults, whatever the
            // address, and reads nothing the program sees.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (at, bytes);
    }
}

/// An operator's settings in a copy of its state (`clone_from`): the same `Arc` the copy holds
/// already, most of the time, so it is left alone (each clone and drop of an `Arc` is an atomic
/// add: two per operator per device per chunk in the shards' copies for panic recovery).
#[inline]
pub fn settings_from<T: ?Sized>(to: &mut Arc<T>, from: &Arc<T>) {
    if !Arc::ptr_eq(to, from) {
        *to = from.clone();
    }
}

/// `Clone` for an operator made of its settings (`config: Arc<…>`) and the fields named: its
/// `clone_from` copies each field into the copy's own allocations and keeps the settings' `Arc`
/// when it is the same ([`settings_from`]).
macro_rules! operator_clone {
    ($op:ident { $($field:ident),* $(,)? }) => {
        impl Clone for $op {
            fn clone(&self) -> Self {
                $op {
                    config: self.config.clone(),
                    $($field: self.$field.clone(),)*
                }
            }

            fn clone_from(&mut self, source: &Self) {
                crate::operators::settings_from(&mut self.config, &source.config);
                $(self.$field.clone_from(&source.$field);)*
            }
        }
    };
}
pub(crate) use operator_clone;

/// Whether a value is present.
#[inline]
pub fn present(value: f64) -> bool {
    !value.is_nan()
}

/// One decoded reading of one device. The device id travels beside it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// When the reading arrived (epoch ms); `arrival − ts` is how old it was then (backfill
    /// marking). With the processing clock: `decode.arrival`, or the source's time when it was
    /// read. With the event clock: the fleet's clock after this reading (the latest arrival, or
    /// event time, seen so far), which is also the time the device decides the reading at.
    #[serde(default)]
    pub arrival: i64,
    /// Values by field slot; absent values are `NaN`.
    pub values: Values,
    /// Bit `i` set: field slot `i` was out of its declared range.
    pub out_of_range: u64,
    /// Bit `i` set: an earlier operator doubts field slot `i` (a `health` flatline, a
    /// `calibrate` that has not learned its shift yet); derived fields inherit it. A hysteresis
    /// with `suspect: suppress` ignores such a value, with `mark` flags its events.
    #[serde(default)]
    pub suspect: u64,
}

impl Clone for Reading {
    /// Cloned twice per reading in a sharded run (into its device's batch, and into the chain):
    /// `SmallVec`'s own clone goes value by value through `extend` (1 % of a 2-shard profile);
    /// `from_slice` copies the values at once.
    #[inline]
    fn clone(&self) -> Self {
        Reading {
            ts: self.ts,
            arrival: self.arrival,
            values: Values::from_slice(&self.values),
            out_of_range: self.out_of_range,
            suspect: self.suspect,
        }
    }
}

impl Reading {
    pub fn new(ts: i64, slots: usize) -> Self {
        Reading {
            ts,
            arrival: ts,
            values: SmallVec::from_elem(ABSENT, slots),
            out_of_range: 0,
            suspect: 0,
        }
    }

    #[inline]
    pub fn get(&self, slot: FieldSlot) -> f64 {
        self.values.get(slot).copied().unwrap_or(ABSENT)
    }
}

/// Why an open event has an `event_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateReason {
    /// A more severe band held (for `escalate_after`).
    Escalation,
    /// A less severe band held for `de_escalate_after`.
    DeEscalation,
    /// Still open, `remind_every` after its last record.
    Reminder,
}

impl UpdateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateReason::Escalation => "escalation",
            UpdateReason::DeEscalation => "de_escalation",
            UpdateReason::Reminder => "reminder",
        }
    }
}

/// What the operator returns for a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Pass the reading on to the next operator.
    Continue,
    /// The reading is late: it went to the late output and the chain stops here.
    Late,
    /// The device sent this reading already (`dedup`): the chain stops here, nothing is written.
    Duplicate,
}

/// Kinds of device health results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthEvent {
    /// No reading for `offline_after`; `last_seen` is when the last one arrived (processing
    /// time, or the fleet's clock with `runtime.clock: event`), `decided` when this was decided
    /// (at least `offline_after` later).
    Offline { last_seen: i64, decided: i64 },
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
        /// The event time of the reading that decided it: `start_ts` is back-dated to the first
        /// reading of the debounce, this is when `min_duration` was reached.
        decided_ts: i64,
        /// Decided on a reading older than `backfill_after` when it was processed: how much
        /// older (history being uploaded or replayed, not the air now).
        backfill_lag_ms: Option<i64>,
        /// Decided on a value an earlier operator doubts (`suspect: mark`).
        suspect: bool,
    },
    /// An open hysteresis event changed band (`reason`), or is still open (a reminder).
    EventUpdate {
        op: OpIndex,
        seq: u64,
        start_ts: i64,
        /// The event time of the reading that raised the peak.
        decided_ts: i64,
        peak: f64,
        /// The band before and now.
        previous: Option<u8>,
        severity: Option<u8>,
        reason: UpdateReason,
        /// As for `EventStart`.
        backfill_lag_ms: Option<i64>,
        suspect: bool,
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
        /// The event time of the reading that decided the end (`end_ts` is the first reading
        /// of the clearing run; this one is `min_clear` later or more).
        decided_ts: i64,
        /// As for `EventStart`.
        backfill_lag_ms: Option<i64>,
        /// Ended because the device went silent for `timeout`, not because the air cleared.
        silence: bool,
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
            | Emit::EventUpdate { op, .. }
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
            Emit::EventUpdate { .. } => RecordKind::EventUpdate,
            Emit::Baseline { .. } => RecordKind::Baseline,
            Emit::Deviation { .. } => RecordKind::Deviation,
            Emit::Smoothed { .. } => RecordKind::Smoothed,
            Emit::Threshold { .. } => RecordKind::Threshold,
            Emit::Health { .. } => RecordKind::Health,
            Emit::Late { .. } => RecordKind::Late,
        }
    }
}

/// The field an operator adds to the readings, and the key of its spec that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedField {
    pub field: String,
    /// `name` or `output`, for messages.
    pub key: &'static str,
}

/// One kind of operator: its settings in the pipeline file and its per-device state machine.
/// Every hook of the state machine has a no-op default. The implementing type is one device's
/// instance; the registry dispatches to it.
pub trait Operator: Clone + std::fmt::Debug + Sized {
    /// The operator's key in the pipeline file (`window`), its default name, and the kind of its
    /// stored state.
    const KIND: &'static str;
    /// Its settings in the pipeline file (`deny_unknown_fields`, doc comments for the schema).
    type Spec;
    /// Its compiled settings, shared by every device (of a thread: see
    /// [`OperatorConfig::own_copy`]).
    type Config: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// What a checkpoint stores of one device's instance.
    type State: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned;

    // --- the pipeline file ---

    /// The `name` written in the file, if any.
    fn explicit_name(spec: &Self::Spec) -> Option<&str>;

    /// The field it adds for later operators, if it adds one.
    fn derived_field(_spec: &Self::Spec) -> Option<DerivedField> {
        None
    }

    /// Its semantic checks (no IO; every problem reported).
    fn check<C: SpecChecker>(_spec: &Self::Spec, _checker: &mut C) {}

    /// Compiles the spec at its place in the chain.
    fn compile(spec: &Self::Spec, context: &mut CompileContext<'_>) -> Result<Self::Config, CompileError>;

    /// The processing time after which it acts on a silent device (idle flush, offline); the
    /// runtime ticks devices often enough for the shortest.
    fn processing_timeout(_spec: &Self::Spec) -> Option<crate::model::DurationSpec> {
        None
    }

    /// One line for `plume validate`'s summary; `name` is the operator's name.
    fn describe(spec: &Self::Spec, name: &str) -> String;

    // --- compiled ---

    /// The operator's name.
    fn config_name(config: &Self::Config) -> &str;

    /// The field it watches, named in its output records.
    fn watched_field(_config: &Self::Config) -> Option<&str> {
        None
    }

    /// A fresh instance for one device.
    fn instantiate(config: &Arc<Self::Config>, device: &str) -> Self;

    /// The compiled settings of this instance.
    fn config(&self) -> &Self::Config;

    // --- one device ---

    /// A reading, in chain order; an operator may change the reading for the operators after it.
    #[inline]
    fn on_reading(&mut self, _reading: &mut Reading, _now: i64, _out: &mut Vec<Emit>) -> Flow {
        Flow::Continue
    }

    /// The watermark step: runs once every operator has seen the reading.
    #[inline]
    fn after_reading(&mut self, _now: i64, _out: &mut Vec<Emit>) {}

    /// Processing time passes (`now`): idle flush, offline detection.
    #[inline]
    fn on_time(&mut self, _now: i64, _out: &mut Vec<Emit>) {}

    /// The earliest processing time at which [`Operator::on_time`] would do something (`None`:
    /// nothing until the next reading). The shard keeps passivated devices in an index by this
    /// time, so a device that went quiet is still flushed and reported offline.
    #[inline]
    fn next_deadline(&self) -> Option<i64> {
        None
    }

    /// End of input or graceful shutdown.
    #[inline]
    fn on_end(&mut self, _out: &mut Vec<Emit>) {}

    /// A hint that a reading is coming: start loading into the cache the state this operator
    /// keeps outside itself (a window's open windows). No effect on behaviour; loops that know
    /// their next devices ahead call it ([`DeviceChain::prefetch_state`]).
    #[inline]
    fn prefetch_state(&self) {}

    fn snapshot(&self) -> Self::State;

    /// Continues from a stored state (refused if it was stored by other settings).
    fn restore(&mut self, state: Self::State) -> Result<(), RestoreError>;
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

#[cfg(test)]
mod reading_tests {
    use super::*;

    /// A clone is the same reading bit for bit (absent values are NaN, so `==` cannot say),
    /// with its values inline and spilled to the heap.
    #[test]
    fn a_cloned_reading_is_the_same_bit_for_bit() {
        for slots in [0, 3, 8, 9, 20] {
            let mut reading = Reading::new(1_767_225_600_041, slots);
            for (i, v) in reading.values.iter_mut().enumerate() {
                if i % 3 != 1 {
                    *v = i as f64 * 1.5 - 2.0;
                }
            }
            reading.arrival = 1_767_225_600_100;
            reading.out_of_range = 0b101;
            reading.suspect = 1 << 40;
            let copy = reading.clone();
            assert_eq!(copy.ts, reading.ts);
            assert_eq!(copy.arrival, reading.arrival);
            assert_eq!(copy.out_of_range, reading.out_of_range);
            assert_eq!(copy.suspect, reading.suspect);
            let bits = |r: &Reading| r.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&copy), bits(&reading), "{slots} slots");
            assert_eq!(copy.values.spilled(), reading.values.spilled(), "{slots} slots");
        }
    }
}
