//! The one list of operators. Each line names an operator's variant, its spec type and its state
//! machine (a type implementing [`Operator`]); the enums the rest of plume sees are generated
//! from it:
//! - [`OperatorSpec`]: one operator of the chain in a pipeline file (`- window: { … }`);
//! - [`OperatorConfig`]: its compiled settings, shared by every device;
//! - [`DeviceOperator`]: one device's running instance;
//! - [`OperatorState`]: what a checkpoint stores of that instance.
//!
//! Dispatch is a `match` over an enum, not a trait object: the compiler inlines each operator's
//! hooks into the device loop. Add new operators at the end: a stored [`OperatorState`] names
//! its variant by position.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::context::{CompileContext, CompileError, SpecChecker};
use super::{DerivedField, Emit, Flow, Operator, Reading, RestoreError};
use crate::model::DurationSpec;

use super::baseline::{BaselineOp, BaselineSpec};
use super::calibrate::{CalibrateOp, CalibrateSpec};
use super::dedup::{DedupOp, DedupSpec};
use super::health::{HealthOp, HealthSpec};
use super::hysteresis::{HysteresisOp, HysteresisSpec};
use super::smooth::{SmoothOp, SmoothSpec};
use super::threshold::{ThresholdOp, ThresholdSpec};
use super::window::{WindowOp, WindowSpec};

macro_rules! registry {
    ($($variant:ident($spec:ty) => $op:ty,)*) => {
        /// The kinds of operator, as written in pipeline files, in registry order.
        pub const KINDS: &[&str] = &[$(<$op as Operator>::KIND,)*];

        /// One operator of the per-device chain, as written in a pipeline file. Externally tagged:
        /// `- window: { … }`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum OperatorSpec {
            $($variant($spec),)*
        }

        impl OperatorSpec {
            /// The operator's kind, as written in the file.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(OperatorSpec::$variant(_) => <$op as Operator>::KIND,)*
                }
            }

            /// The `name` written in the file, if any.
            pub fn explicit_name(&self) -> Option<&str> {
                match self {
                    $(OperatorSpec::$variant(s) => <$op as Operator>::explicit_name(s),)*
                }
            }

            /// The operator's name as outputs refer to it (its `name`, or its kind).
            pub fn name(&self) -> &str {
                self.explicit_name().unwrap_or(self.kind())
            }

            /// The field this operator adds to the readings for the operators after it, and the
            /// key that names it. Validation and compilation both ask here.
            pub fn derived(&self) -> Option<DerivedField> {
                match self {
                    $(OperatorSpec::$variant(s) => <$op as Operator>::derived_field(s),)*
                }
            }

            /// The name of the field this operator adds, if any.
            pub fn derived_field(&self) -> Option<String> {
                self.derived().map(|d| d.field)
            }

            /// The key that names the [`derived_field`](Self::derived_field), for messages.
            pub fn derived_field_key(&self) -> Option<&'static str> {
                self.derived().map(|d| d.key)
            }

            /// The operator's own semantic checks.
            pub fn check<C: SpecChecker>(&self, checker: &mut C) {
                match self {
                    $(OperatorSpec::$variant(s) => <$op as Operator>::check(s, checker),)*
                }
            }

            /// Compiles the operator at its place in the chain.
            pub fn compile(&self, context: &mut CompileContext<'_>) -> Result<OperatorConfig, CompileError> {
                match self {
                    $(OperatorSpec::$variant(s) => {
                        <$op as Operator>::compile(s, context).map(|c| OperatorConfig::$variant(Arc::new(c)))
                    })*
                }
            }

            /// The processing time after which the operator acts on a silent device.
            pub fn processing_timeout(&self) -> Option<DurationSpec> {
                match self {
                    $(OperatorSpec::$variant(s) => <$op as Operator>::processing_timeout(s),)*
                }
            }

            /// One line for `plume validate`'s summary.
            pub fn describe(&self) -> String {
                match self {
                    $(OperatorSpec::$variant(s) => <$op as Operator>::describe(s, self.name()),)*
                }
            }
        }

        /// The compiled settings of one operator, shared by every device.
        #[derive(Debug, Clone)]
        pub enum OperatorConfig {
            $($variant(Arc<<$op as Operator>::Config>),)*
        }

        impl OperatorConfig {
            /// The same settings in an allocation of their own. Every device's operator holds
            /// its settings through an `Arc`, and a device actor's chain is cloned before each
            /// batch (to go back to if an operator panics): with one `Arc` for all shard
            /// threads, each clone and drop was an atomic on a cache line the threads took from
            /// each other (5–8 % of a run). Each shard takes its own copy.
            pub fn own_copy(&self) -> OperatorConfig {
                match self {
                    $(OperatorConfig::$variant(c) => OperatorConfig::$variant(Arc::new((**c).clone())),)*
                }
            }

            pub fn name(&self) -> &str {
                match self {
                    $(OperatorConfig::$variant(c) => <$op as Operator>::config_name(c),)*
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(OperatorConfig::$variant(_) => <$op as Operator>::KIND,)*
                }
            }

            /// The field the operator watches, for output records (empty if none).
            pub fn watched_field(&self) -> &str {
                match self {
                    $(OperatorConfig::$variant(c) => <$op as Operator>::watched_field(c).unwrap_or(""),)*
                }
            }

            /// A fresh operator for one device.
            pub fn instantiate(&self, device: &str) -> DeviceOperator {
                match self {
                    $(OperatorConfig::$variant(c) => DeviceOperator::$variant(<$op as Operator>::instantiate(c, device)),)*
                }
            }
        }

        /// One device's running operator.
        #[derive(Debug)]
        pub enum DeviceOperator {
            $($variant($op),)*
        }

        impl Clone for DeviceOperator {
            fn clone(&self) -> Self {
                match self {
                    $(DeviceOperator::$variant(o) => DeviceOperator::$variant(o.clone()),)*
                }
            }

            /// Into the operator's own allocations where it can (a shard copies every device's
            /// state once per chunk, into the same copies each time).
            fn clone_from(&mut self, source: &Self) {
                match (self, source) {
                    $((DeviceOperator::$variant(to), DeviceOperator::$variant(from)) => to.clone_from(from),)*
                    #[allow(unreachable_patterns)]
                    (to, from) => *to = from.clone(),
                }
            }
        }

        /// The stored state of one operator (versioned with the
        /// [`DeviceSnapshot`](super::DeviceSnapshot)).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum OperatorState {
            $($variant(<$op as Operator>::State),)*
        }

        impl OperatorState {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(OperatorState::$variant(_) => <$op as Operator>::KIND,)*
                }
            }
        }

        impl DeviceOperator {
            /// The operator's name (the key of its stored state).
            pub fn name(&self) -> &str {
                match self {
                    $(DeviceOperator::$variant(o) => <$op as Operator>::config_name(Operator::config(o)),)*
                }
            }

            #[inline]
            pub fn on_reading(&mut self, reading: &mut Reading, now: i64, out: &mut Vec<Emit>) -> Flow {
                match self {
                    $(DeviceOperator::$variant(o) => Operator::on_reading(o, reading, now, out),)*
                }
            }

            #[inline]
            pub fn after_reading(&mut self, now: i64, out: &mut Vec<Emit>) {
                match self {
                    $(DeviceOperator::$variant(o) => Operator::after_reading(o, now, out),)*
                }
            }

            pub fn on_time(&mut self, now: i64, out: &mut Vec<Emit>) {
                match self {
                    $(DeviceOperator::$variant(o) => Operator::on_time(o, now, out),)*
                }
            }

            pub fn next_deadline(&self) -> Option<i64> {
                match self {
                    $(DeviceOperator::$variant(o) => Operator::next_deadline(o),)*
                }
            }

            #[inline]
            pub fn prefetch_state(&self) {
                match self {
                    $(DeviceOperator::$variant(o) => Operator::prefetch_state(o),)*
                }
            }

            pub fn on_end(&mut self, out: &mut Vec<Emit>) {
                match self {
                    $(DeviceOperator::$variant(o) => Operator::on_end(o, out),)*
                }
            }

            pub fn snapshot(&self) -> OperatorState {
                match self {
                    $(DeviceOperator::$variant(o) => OperatorState::$variant(Operator::snapshot(o)),)*
                }
            }

            /// Rebuilds an operator of `config` from a stored state.
            pub fn restore(config: &OperatorConfig, device: &str, state: OperatorState) -> Result<Self, RestoreError> {
                match (config, state) {
                    $((OperatorConfig::$variant(c), OperatorState::$variant(s)) => {
                        let mut op = <$op as Operator>::instantiate(c, device);
                        Operator::restore(&mut op, s)?;
                        Ok(DeviceOperator::$variant(op))
                    })*
                    #[allow(unreachable_patterns)]
                    (config, s) => Err(RestoreError::KindMismatch {
                        operator: config.name().to_string(),
                        expected: config.kind(),
                        found: s.kind(),
                    }),
                }
            }
        }
    };
}

registry! {
    Window(WindowSpec) => WindowOp,
    Hysteresis(HysteresisSpec) => HysteresisOp,
    Baseline(BaselineSpec) => BaselineOp,
    Smooth(SmoothSpec) => SmoothOp,
    Threshold(ThresholdSpec) => ThresholdOp,
    Calibrate(CalibrateSpec) => CalibrateOp,
    Health(HealthSpec) => HealthOp,
    Dedup(DedupSpec) => DedupOp,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind each operator declares is the key serde reads it under.
    #[test]
    fn each_kind_is_its_key_in_pipeline_files() {
        let schema = serde_json::to_value(schemars::schema_for!(OperatorSpec)).unwrap();
        let text = schema.to_string();
        for kind in KINDS {
            assert!(
                text.contains(&format!("\"{kind}\"")),
                "{kind} is not a key of OperatorSpec: {text}"
            );
        }
        let spec: OperatorSpec =
            serde_json::from_value(serde_json::json!({ "threshold": { "field": "x", "above": 1 } })).unwrap();
        assert_eq!(spec.kind(), "threshold");
        assert_eq!(spec.name(), "threshold");
    }
}
