//! Learned per-device baselines. Each exposes its current value as a derived field (the
//! operator's name) so later operators can compare against it.
//!
//! - `ewma`: `b = b + alpha * (x - b)` evaluated exactly as written (no fused multiply-add),
//!   starting at the first value: every implementation gets the same bits.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Emit, FieldSlot, Flow, OpIndex, Reading, present};
use crate::config::{BaselineEmit, BaselineMethod};

#[derive(Debug, Clone, PartialEq)]
pub struct BaselineConfig {
    pub index: OpIndex,
    pub name: String,
    pub slot: FieldSlot,
    pub field: String,
    pub method: BaselineMethod,
    pub alpha: f64,
    pub emit: BaselineEmit,
    /// Slot of the derived field that carries the current baseline to later operators.
    pub output_slot: Option<FieldSlot>,
}

/// The stored state of a baseline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BaselineState {
    /// Current EWMA value (none before the first value).
    pub value: Option<f64>,
    /// Event time of the last value that updated the baseline.
    pub last_ts: i64,
}

#[derive(Debug, Clone)]
pub struct BaselineOp {
    config: Arc<BaselineConfig>,
    state: BaselineState,
}

impl BaselineOp {
    pub fn new(config: Arc<BaselineConfig>) -> Self {
        BaselineOp { config, state: BaselineState::default() }
    }

    pub fn config(&self) -> &BaselineConfig {
        &self.config
    }

    /// The current baseline, if learned.
    pub fn current(&self) -> Option<f64> {
        self.state.value
    }

    #[inline]
    pub fn on_reading(&mut self, reading: &mut Reading, _now: i64, out: &mut Vec<Emit>) -> Flow {
        let cfg = &*self.config;
        let x = reading.get(cfg.slot);
        if present(x) {
            let b = match self.state.value {
                None => x,
                Some(b) => b + cfg.alpha * (x - b),
            };
            self.state.value = Some(b);
            self.state.last_ts = reading.ts;
            if cfg.emit == BaselineEmit::Every {
                out.push(Emit::Baseline { op: cfg.index, ts: reading.ts, value: b });
            }
        }
        if let (Some(slot), Some(b)) = (cfg.output_slot, self.state.value)
            && let Some(v) = reading.values.get_mut(slot)
        {
            *v = b;
        }
        Flow::Continue
    }

    /// End of input: the final baseline is reported.
    pub fn on_end(&mut self, out: &mut Vec<Emit>) {
        if self.config.emit != BaselineEmit::Never
            && let Some(b) = self.state.value
        {
            out.push(Emit::Baseline { op: self.config.index, ts: self.state.last_ts, value: b });
        }
    }

    pub fn snapshot(&self) -> BaselineState {
        self.state.clone()
    }

    pub fn restore(&mut self, state: BaselineState) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_at_the_first_value_and_is_evaluated_as_written() {
        let cfg = BaselineConfig {
            index: 0,
            name: "b".into(),
            slot: 0,
            field: "co2".into(),
            method: BaselineMethod::Ewma,
            alpha: 0.01,
            emit: BaselineEmit::End,
            output_slot: None,
        };
        let mut op = BaselineOp::new(Arc::new(cfg));
        let mut out = Vec::new();
        let mut expected: f64 = 612.0;
        for (i, x) in [612.0, 0.1, 1000.0, 401.1].into_iter().enumerate() {
            let mut r = Reading { ts: i as i64, values: smallvec::smallvec![x], out_of_range: 0 };
            op.on_reading(&mut r, 0, &mut out);
            if i > 0 {
                expected = expected + 0.01 * (x - expected);
            }
        }
        op.on_end(&mut out);
        assert_eq!(out, vec![Emit::Baseline { op: 0, ts: 3, value: expected }]);
        // b\"q of the aq1 edge case: 612 then 0.1
        let b: f64 = 612.0;
        assert_eq!(b + 0.01 * (0.1 - b), 605.881);
    }
}
