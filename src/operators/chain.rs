//! The operator chain of one device and its stored format.

use serde::{Deserialize, Serialize};

use super::{DeviceOperator, Emit, Flow, OperatorConfig, OperatorState, Reading, RestoreError};

/// The stored format version of [`DeviceSnapshot`]. Bump it (and add a migration in
/// [`DeviceSnapshot::decode`]) whenever a state struct changes.
///
/// - 2: a hysteresis state ends with its `ladder` (announced band, hold-down, reminders,
///   silence). Format 1 is read by [`v1`]: its events get their ladder at their next reading.
pub const SNAPSHOT_VERSION: u32 = 2;

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
        fn whole<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RestoreError> {
            let (value, used) =
                crate::model::codec::bincode_decode(body).map_err(|e| RestoreError::Decode(e.to_string()))?;
            if used != body.len() {
                return Err(RestoreError::Decode(format!(
                    "{} trailing bytes after the snapshot",
                    body.len() - used
                )));
            }
            Ok(value)
        }
        match version {
            SNAPSHOT_VERSION => whole(&bytes[4..]),
            1 => whole::<v1::DeviceSnapshotV1>(&bytes[4..]).map(v1::DeviceSnapshotV1::migrate),
            found => Err(RestoreError::UnsupportedVersion {
                found,
                supported: SNAPSHOT_VERSION,
            }),
        }
    }
}

/// The operator chain of one device: every operator in pipeline order, and its counters.
#[derive(Debug)]
pub struct DeviceChain {
    /// (A boxed slice: one word smaller than a `Vec` in every device actor.)
    operators: Box<[DeviceOperator]>,
    counters: DeviceCounters,
}

impl Clone for DeviceChain {
    fn clone(&self) -> Self {
        DeviceChain {
            operators: self.operators.clone(),
            counters: self.counters,
        }
    }

    /// Into `self`'s own allocations where the operators can (see `DeviceOperator::clone_from`).
    fn clone_from(&mut self, source: &Self) {
        self.operators.clone_from(&source.operators);
        self.counters = source.counters;
    }
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
        self.on_reading_in_place(&mut reading, now, out)
    }

    /// [`DeviceChain::on_reading`] on a reading the caller keeps (operators may change its
    /// values, as they change the reading they pass on).
    #[inline]
    pub fn on_reading_in_place(&mut self, reading: &mut Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
        self.counters.readings += 1;
        let mut seen = self.operators.len();
        let mut flow = Flow::Continue;
        for (i, op) in self.operators.iter_mut().enumerate() {
            match op.on_reading(reading, now, out) {
                Flow::Continue => {}
                Flow::Late => {
                    self.counters.late += 1;
                    seen = i;
                    flow = Flow::Late;
                    break;
                }
                Flow::Duplicate => {
                    seen = i;
                    flow = Flow::Duplicate;
                    break;
                }
            }
        }
        for op in &mut self.operators[..seen] {
            op.after_reading(now, out);
        }
        flow
    }

    /// A hint that a reading for this device is coming: starts loading its operator list
    /// (a separate allocation) into the cache. Then [`DeviceChain::prefetch_state`], once that
    /// has arrived, for the operators' own outside state.
    #[inline]
    pub fn prefetch(&self) {
        super::prefetch(
            self.operators.as_ptr(),
            std::mem::size_of_val::<[DeviceOperator]>(&self.operators),
        );
    }

    /// A hint that a reading for this device is coming: starts loading the state its operators
    /// keep outside themselves (reads the operator list: call [`DeviceChain::prefetch`] earlier).
    #[inline]
    pub fn prefetch_state(&self) {
        for op in self.operators.iter() {
            op.prefetch_state();
        }
    }

    /// Processing-time work (idle flush, offline detection).
    pub fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
        for op in &mut self.operators {
            op.on_time(now, out);
        }
    }

    /// Event clock: every deadline up to `until`, each at its own time (an offline report at
    /// last seen + `offline_after`, whenever the fleet's clock passed it), so what is emitted
    /// does not depend on when the runtime got round to it. Returns whether anything was due.
    pub fn catch_up(&mut self, until: i64, out: &mut Vec<Emit>) -> bool {
        let mut fired = false;
        while let Some(at) = self.next_deadline() {
            if at > until {
                break;
            }
            self.on_time(at, out);
            fired = true;
            if self.next_deadline().is_some_and(|next| next <= at) {
                // an operator that does not move its deadline past `at` would loop forever
                break;
            }
        }
        fired
    }

    /// The earliest processing time at which [`DeviceChain::on_time`] would emit something.
    pub fn next_deadline(&self) -> Option<i64> {
        self.operators.iter().filter_map(|op| op.next_deadline()).min()
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
        self.operators.iter().map(DeviceOperator::name)
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
                    match DeviceOperator::restore(config, device, named.state) {
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

/// Stored format 1 and its migration to the current one.
pub mod v1 {
    use serde::Deserialize;

    use super::{DeviceCounters, DeviceSnapshot, NamedState};
    use crate::operators::hysteresis::EventStats;
    use crate::operators::{
        BaselineState, CalibrateState, HealthState, HysteresisState, OperatorState, SmoothState, ThresholdState,
        WindowState, dedup::DedupState,
    };

    #[derive(Deserialize)]
    pub struct DeviceSnapshotV1 {
        counters: DeviceCounters,
        operators: Vec<NamedStateV1>,
    }

    #[derive(Deserialize)]
    struct NamedStateV1 {
        name: String,
        state: OperatorStateV1,
    }

    /// [`OperatorState`] as format 1 wrote it (variants by position).
    #[derive(Deserialize)]
    enum OperatorStateV1 {
        Window(WindowState),
        Hysteresis(HysteresisStateV1),
        Baseline(BaselineState),
        Smooth(SmoothState),
        Threshold(ThresholdState),
        Calibrate(CalibrateState),
        Health(HealthState),
        Dedup(DedupState),
    }

    #[derive(Deserialize)]
    struct HysteresisStateV1 {
        open: Option<EventStats>,
        entering: Option<Box<EventStats>>,
        clearing_since: Option<i64>,
        seq: u64,
    }

    impl DeviceSnapshotV1 {
        pub fn migrate(self) -> DeviceSnapshot {
            DeviceSnapshot {
                counters: self.counters,
                operators: self
                    .operators
                    .into_iter()
                    .map(|n| NamedState {
                        name: n.name,
                        state: match n.state {
                            OperatorStateV1::Window(s) => OperatorState::Window(s),
                            OperatorStateV1::Hysteresis(h) => OperatorState::Hysteresis(HysteresisState {
                                open: h.open,
                                entering: h.entering,
                                clearing_since: h.clearing_since,
                                seq: h.seq,
                                ladder: None,
                            }),
                            OperatorStateV1::Baseline(s) => OperatorState::Baseline(s),
                            OperatorStateV1::Smooth(s) => OperatorState::Smooth(s),
                            OperatorStateV1::Threshold(s) => OperatorState::Threshold(s),
                            OperatorStateV1::Calibrate(s) => OperatorState::Calibrate(s),
                            OperatorStateV1::Health(s) => OperatorState::Health(s),
                            OperatorStateV1::Dedup(s) => OperatorState::Dedup(s),
                        },
                    })
                    .collect(),
            }
        }
    }
}
