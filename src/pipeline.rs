//! A validated [`PipelineSpec`] compiled into what the runtime uses: field slots, the operator
//! configurations shared by every device, the decoder and the output routes.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::decode::Decoder;
use crate::operators::{CompileContext, DeviceChain, FieldSlot, OpIndex, OperatorConfig};
pub use crate::operators::{CompileError, FieldInfo};
use crate::spec::PipelineSpec;

/// A pipeline ready to run.
#[derive(Debug, Clone)]
pub struct CompiledPipeline {
    pub spec: PipelineSpec,
    pub name: String,
    /// Fields by slot: declared ones first (in `decode.fields` order), then derived ones.
    pub fields: Vec<FieldInfo>,
    pub operators: Vec<OperatorConfig>,
    pub decoder: Arc<Decoder>,
}

impl CompiledPipeline {
    pub fn compile(spec: PipelineSpec) -> Result<Self, CompileError> {
        let mut fields: Vec<FieldInfo> = spec
            .decode
            .fields
            .keys()
            .map(|name| FieldInfo {
                name: name.clone(),
                declared: true,
            })
            .collect();
        let mut slots: FxHashMap<String, FieldSlot> =
            fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
        let mut operators = Vec::with_capacity(spec.operators.len());

        let ranged: Vec<FieldSlot> = spec
            .decode
            .fields
            .values()
            .enumerate()
            .filter(|(_, f)| f.min.is_some() || f.max.is_some())
            .map(|(slot, _)| slot)
            .collect();
        for (i, op) in spec.operators.iter().enumerate() {
            let mut context = CompileContext::new(
                i as OpIndex,
                op.name().to_string(),
                &spec.operators[..i],
                &ranged,
                &mut fields,
                &mut slots,
            );
            operators.push(op.compile(&mut context)?);
        }
        if fields.len() > 64 {
            return Err(CompileError::TooManyFields(fields.len()));
        }
        let mut decoder = Decoder::new(&spec.decode, fields.len());
        if spec.sources.iter().any(
            |s| matches!(s, crate::spec::SourceSpec::Kafka(k) if k.device_from == crate::spec::KafkaDeviceFrom::Key),
        ) {
            decoder = decoder.with_device_from_source();
        }
        let decoder = Arc::new(decoder);
        Ok(CompiledPipeline {
            name: spec.pipeline.clone(),
            spec,
            fields,
            operators,
            decoder,
        })
    }

    /// How often device actors need processing-time ticks (idle flush, offline detection):
    /// a quarter of the shortest such timeout, between 50 ms and 5 s; `None` if nothing needs them.
    pub fn tick_interval_ms(&self) -> Option<i64> {
        let mut shortest: Option<i64> = None;
        for op in &self.spec.operators {
            if let Some(t) = op.processing_timeout().map(|d| d.as_millis()) {
                shortest = Some(shortest.map_or(t, |s: i64| s.min(t)));
            }
        }
        shortest.map(|t| (t / 4).clamp(50, 5000))
    }

    /// With `runtime.clock: event`, how far the fleet's clock moves between two checks of every
    /// device's deadlines: a quarter of the shortest timeout (at least 50 ms). Unlike processing
    /// time it has no upper bound: what a check emits is the same whenever it runs (each
    /// deadline acts at its own time), so checking more often would only cost.
    pub fn event_tick_interval_ms(&self) -> i64 {
        let shortest = self
            .spec
            .operators
            .iter()
            .filter_map(|op| op.processing_timeout().map(|d| d.as_millis()))
            .min();
        shortest.map_or(1000, |t| (t / 4).max(50))
    }

    /// A fresh operator chain for one device.
    /// This pipeline with operator settings of its own ([`OperatorConfig::own_copy`]), for one
    /// shard thread.
    pub fn for_one_thread(&self) -> CompiledPipeline {
        let mut own = self.clone();
        own.operators = self.operators.iter().map(|c| c.own_copy()).collect();
        own
    }

    pub fn new_chain(&self, device: &str) -> DeviceChain {
        DeviceChain::new(&self.operators, device)
    }

    /// A device's chain from its encoded snapshot ([`DeviceSnapshot::encode`]). With
    /// `allow_change`, an operator the snapshot does not hold (or holds as another kind) starts
    /// fresh.
    pub fn restore_chain(
        &self,
        device: &str,
        bytes: &[u8],
        allow_change: bool,
    ) -> Result<DeviceChain, crate::operators::RestoreError> {
        let snapshot = crate::operators::DeviceSnapshot::decode(bytes)?;
        DeviceChain::restore(&self.operators, device, snapshot, allow_change)
    }

    /// The name of the operator at `index`.
    pub fn operator_name(&self, index: OpIndex) -> &str {
        self.operators[index as usize].name()
    }

    pub fn slot_of(&self, field: &str) -> Option<FieldSlot> {
        self.fields.iter().position(|f| f.name == field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::calibrate::LearnedCorrection;
    use crate::operators::health::FlatlineConfig;

    const DECODE: &str =
        "version: 1\npipeline: t\ndecode:\n  fields:\n    pm25: { min: 0 }\n    co2: {}\n    temp: { max: 60 }\n";

    /// Compiles a pipeline file with `operators` (YAML list items).
    fn compile(operators: &str) -> Result<CompiledPipeline, CompileError> {
        let text = format!("{DECODE}operators:\n{operators}");
        CompiledPipeline::compile(crate::spec::parse_pipeline("t.yaml", &text, &|_| None).expect("parses"))
    }

    /// Compiles operators given as JSON (`[{"threshold": {...}}]`), bypassing the file checks, as a
    /// spec built in code would: the compiler is the last line of defence.
    fn compile_unchecked(operators: serde_json::Value) -> Result<CompiledPipeline, CompileError> {
        let mut spec = crate::spec::parse_pipeline("t.yaml", DECODE, &|_| None).expect("parses");
        spec.operators = serde_json::from_value(operators).expect("operator specs");
        CompiledPipeline::compile(spec)
    }

    fn message(operators: serde_json::Value) -> String {
        compile_unchecked(operators).expect_err("does not compile").to_string()
    }

    #[test]
    fn derived_fields_get_slots_in_operator_order_and_later_operators_read_them() {
        let p = compile(
            "  - baseline: { name: co2_base, field: co2, method: rolling_min }
  - smooth: { field: pm25 }
  - smooth: { name: s2, field: pm25_smooth, method: holt, output: pm25_holt }
  - calibrate: { field: co2, baseline: co2_base, reference: 420 }
  - threshold: { field: pm25_holt, above: 5, relative_to: co2_base, factor: 0.1 }
  - health: { flatline: [ { field: co2, readings: 3 } ] }
",
        )
        .unwrap();
        let names: Vec<&str> = p.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["co2", "pm25", "temp", "co2_base", "pm25_smooth", "pm25_holt"]);
        match &p.operators[2] {
            OperatorConfig::Smooth(c) => assert_eq!((c.slot, c.output_slot), (4, Some(5))),
            other => panic!("{other:?}"),
        }
        match &p.operators[3] {
            OperatorConfig::Calibrate(c) => {
                assert_eq!(c.slot, 0);
                assert_eq!(
                    c.learned,
                    Some(LearnedCorrection {
                        baseline_slot: 3,
                        reference: 420.0
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        match &p.operators[4] {
            OperatorConfig::Threshold(c) => {
                assert_eq!(
                    (c.slot, c.relative_slot, c.above, c.below, c.factor),
                    (5, Some(3), Some(5.0), None, 0.1)
                );
            }
            other => panic!("{other:?}"),
        }
        match &p.operators[5] {
            OperatorConfig::Health(c) => {
                assert_eq!(c.range_fields, vec![1, 2], "fields with a declared range");
                assert_eq!(
                    c.flatline,
                    vec![FlatlineConfig {
                        slot: 0,
                        readings: 3,
                        suppress: false
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_threshold_relative_to_a_field_without_a_limit_is_above_factor_times_it() {
        let p =
            compile_unchecked(serde_json::json!([{ "threshold": { "field": "pm25", "relative_to": "co2" } }])).unwrap();
        match &p.operators[0] {
            OperatorConfig::Threshold(c) => assert_eq!((c.above, c.below, c.relative_slot), (Some(0.0), None, Some(0))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operator_settings_that_cannot_run_are_refused() {
        use serde_json::json;
        let cases = [
            (
                json!([{ "threshold": { "field": "pm25" } }]),
                "needs `above`, `below` or `relative_to`",
            ),
            (
                json!([{ "calibrate": { "field": "co2", "baseline": "b", "reference": 420 } }, { "baseline": { "name": "b", "field": "co2" } }]),
                "must name a baseline operator earlier in the chain",
            ),
            (
                json!([{ "smooth": { "name": "b", "field": "co2" } }, { "calibrate": { "field": "co2", "baseline": "b", "reference": 420 } }]),
                "must name a baseline operator earlier in the chain",
            ),
            (
                json!([{ "calibrate": { "field": "co2", "reference": 420 } }]),
                "only used with `baseline`",
            ),
            (
                json!([{ "baseline": { "name": "b", "field": "co2" } }, { "calibrate": { "field": "co2", "baseline": "b" } }]),
                "needs the `reference`",
            ),
            (
                json!([{ "smooth": { "field": "co2", "output": "pm25" } }]),
                "derived field `pm25` has the name of an existing field",
            ),
            (json!([{ "smooth": { "field": "co2", "n": 0 } }]), "`n` of at least 1"),
            (
                json!([{ "baseline": { "field": "co2", "method": "rolling_min", "days": 0 } }]),
                "`days` of at least 1",
            ),
            (
                json!([{ "health": { "flatline": [{ "field": "co2", "readings": 1 }] } }]),
                "`readings` of at least 2",
            ),
            (
                json!([{ "health": { "report_every": 0 } }]),
                "`report_every` must be at least 1",
            ),
        ];
        for (operators, expected) in cases {
            let got = message(operators.clone());
            assert!(got.contains(expected), "{operators}: {got}");
        }
        assert_eq!(
            compile_unchecked(json!([{ "threshold": { "field": "voc", "above": 1 } }])).unwrap_err(),
            CompileError::UnknownField {
                operator: "threshold".into(),
                field: "voc".into()
            }
        );
    }
}
