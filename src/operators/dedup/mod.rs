//! Deduplication of readings: a reading a device already sent (the same event time, and with
//! `by: content` the same values) within `horizon` of its newest reading is dropped, so windows,
//! events and baselines see it once. At-least-once gateways resend after a lost
//! acknowledgement; brokers redeliver after a reconnect.
//!
//! Each device remembers its last `max_entries` readings (event time and a hash of the values)
//! that are within `horizon` of its newest; a reading older than that is not checked (it is
//! usually late anyway). A duplicate stops the chain ([`Flow::Duplicate`]): no later operator
//! sees it, and no record is written for it; the operator counts them.

mod spec;
pub use spec::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operators::{CompileContext, CompileError, Operator, RestoreError, SpecChecker};
use crate::operators::{Emit, Flow, OpIndex, Reading};

#[derive(Debug, Clone, PartialEq)]
pub struct DedupConfig {
    pub index: OpIndex,
    pub name: String,
    pub by_content: bool,
    pub horizon_ms: i64,
    pub max_entries: usize,
}

/// The stored state: the remembered readings, oldest first, and the duplicates dropped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DedupState {
    /// `(event time, hash of the values)` (the hash is 0 with `by: time`).
    pub recent: std::collections::VecDeque<(i64, u64)>,
    pub newest: Option<i64>,
    pub dropped: u64,
}

#[derive(Debug)]
pub struct DedupOp {
    config: Arc<DedupConfig>,
    state: DedupState,
}

super::operator_clone!(DedupOp { state });

impl DedupOp {
    pub fn new(config: Arc<DedupConfig>) -> Self {
        DedupOp {
            config,
            state: DedupState::default(),
        }
    }

    pub fn state(&self) -> &DedupState {
        &self.state
    }

    fn content_hash(reading: &Reading) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for v in &reading.values {
            // (absent values are one NaN: equal bits)
            h.update(&v.to_bits().to_le_bytes());
        }
        h.digest()
    }
}

impl Operator for DedupOp {
    const KIND: &'static str = "dedup";
    type Spec = DedupSpec;
    type Config = DedupConfig;
    type State = DedupState;

    fn explicit_name(spec: &DedupSpec) -> Option<&str> {
        spec.name.as_deref()
    }

    fn check<C: SpecChecker>(spec: &DedupSpec, checker: &mut C) {
        spec.check(checker)
    }

    fn compile(spec: &DedupSpec, context: &mut CompileContext<'_>) -> Result<DedupConfig, CompileError> {
        spec.compile(context)
    }

    fn describe(spec: &DedupSpec, name: &str) -> String {
        spec.describe(name)
    }

    fn config_name(config: &DedupConfig) -> &str {
        &config.name
    }

    fn instantiate(config: &Arc<DedupConfig>, _device: &str) -> Self {
        DedupOp::new(config.clone())
    }

    fn config(&self) -> &DedupConfig {
        &self.config
    }

    #[inline]
    fn on_reading(&mut self, reading: &mut Reading, _now: i64, _out: &mut Vec<Emit>) -> Flow {
        let cfg = &*self.config;
        let st = &mut self.state;
        let ts = reading.ts;
        let hash = if cfg.by_content { Self::content_hash(reading) } else { 0 };
        if st.recent.iter().any(|&(t, h)| t == ts && h == hash) {
            st.dropped += 1;
            return Flow::Duplicate;
        }
        let newest = st.newest.map_or(ts, |n| n.max(ts));
        st.newest = Some(newest);
        let oldest_kept = newest.saturating_sub(cfg.horizon_ms);
        if ts >= oldest_kept {
            st.recent.push_back((ts, hash));
        }
        while st.recent.len() > cfg.max_entries || st.recent.front().is_some_and(|&(t, _)| t < oldest_kept) {
            // (mostly in order: the front is the oldest; an out-of-order old entry stays until
            // it reaches the front or the count limit)
            st.recent.pop_front();
        }
        Flow::Continue
    }

    fn snapshot(&self) -> DedupState {
        self.state.clone()
    }

    fn restore(&mut self, state: DedupState) -> Result<(), RestoreError> {
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(by_content: bool, horizon_ms: i64, max_entries: usize) -> DedupOp {
        DedupOp::new(Arc::new(DedupConfig {
            index: 0,
            name: "d".into(),
            by_content,
            horizon_ms,
            max_entries,
        }))
    }

    fn reading(ts: i64, x: f64) -> Reading {
        Reading {
            ts,
            values: smallvec::smallvec![x],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        }
    }

    fn flows(op: &mut DedupOp, readings: &[(i64, f64)]) -> Vec<Flow> {
        let mut out = Vec::new();
        readings
            .iter()
            .map(|&(ts, x)| op.on_reading(&mut reading(ts, x), 0, &mut out))
            .collect()
    }

    use Flow::{Continue as C, Duplicate as D};

    #[test]
    fn a_repeated_reading_is_dropped_once_seen() {
        let mut d = op(true, 60_000, 16);
        assert_eq!(
            flows(
                &mut d,
                &[(1_000, 5.0), (2_000, 6.0), (1_000, 5.0), (2_000, 6.0), (3_000, 7.0)]
            ),
            [C, C, D, D, C]
        );
        assert_eq!(d.state().dropped, 2);
        // by content: the same time with other values is another reading
        assert_eq!(flows(&mut d, &[(3_000, 7.5)]), [C]);
        // by time: the same time is a duplicate whatever the values
        let mut t = op(false, 60_000, 16);
        assert_eq!(flows(&mut t, &[(1_000, 5.0), (1_000, 9.0)]), [C, D]);
    }

    #[test]
    fn memory_is_bounded_by_the_horizon_and_the_count() {
        let mut d = op(true, 10_000, 4);
        flows(&mut d, &(0..10).map(|i| (i * 1_000, i as f64)).collect::<Vec<_>>());
        assert_eq!(d.state().recent.len(), 4, "at most max_entries");
        // beyond the count: forgotten, so no longer recognised
        assert_eq!(flows(&mut d, &[(5_000, 5.0), (9_000, 9.0)]), [C, D]);
        let mut h = op(true, 10_000, 100);
        flows(&mut h, &[(0, 0.0), (5_000, 1.0), (20_000, 2.0)]);
        assert_eq!(
            h.state().recent.iter().map(|e| e.0).collect::<Vec<_>>(),
            [20_000],
            "beyond the horizon: forgotten"
        );
    }

    #[test]
    fn what_it_remembers_survives_snapshot_and_restore() {
        let mut d = op(true, 60_000, 16);
        flows(&mut d, &[(1_000, 5.0)]);
        let mut restored = op(true, 60_000, 16);
        restored.restore(d.snapshot()).unwrap();
        assert_eq!(flows(&mut restored, &[(1_000, 5.0)]), [D]);
    }
}
