//! A validated [`PipelineSpec`] compiled into what the runtime uses: field slots, the operator
//! configurations shared by every device, the decoder and the output routes.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::decode::Decoder;
use crate::operators::calibrate::LearnedCorrection;
use crate::operators::health::FlatlineConfig;
use crate::operators::{
    BaselineConfig, CalibrateConfig, DeviceChain, FieldSlot, HealthConfig, HysteresisConfig, OpIndex, OperatorConfig,
    SmoothConfig, ThresholdConfig, WindowConfig,
};
use crate::spec::{AggregatesSpec, BaselineEmit, OperatorSpec, PipelineSpec};

/// A field of the readings: declared in `decode.fields` or derived by an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldInfo {
    pub name: String,
    /// Declared in `decode` (otherwise produced by an operator).
    pub declared: bool,
}

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

/// What prevents a (validated) spec from compiling. Validation reports these with positions;
/// this is the last line of defence for specs built in code.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    #[error(
        "operator `{operator}` reads field `{field}`, which is neither declared in decode.fields nor produced by an earlier operator"
    )]
    UnknownField { operator: String, field: String },
    #[error("operator `{operator}`: {message}")]
    Invalid { operator: String, message: String },
    #[error("a pipeline can have at most 64 fields (declared and derived); this one has {0}")]
    TooManyFields(usize),
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

        for (i, op) in spec.operators.iter().enumerate() {
            let index = i as OpIndex;
            let name = op.name().to_string();
            let lookup = |field: &str, slots: &FxHashMap<String, FieldSlot>| {
                slots.get(field).copied().ok_or_else(|| CompileError::UnknownField {
                    operator: name.clone(),
                    field: field.to_string(),
                })
            };
            let config = match op {
                OperatorSpec::Window(w) => {
                    let mut wanted = Vec::new();
                    match &w.aggregates {
                        AggregatesSpec::All(aggs) => {
                            for f in &w.fields {
                                wanted.push((lookup(f, &slots)?, f.clone(), aggs.clone()));
                            }
                        }
                        AggregatesSpec::PerField(map) => {
                            for (f, aggs) in map {
                                wanted.push((lookup(f, &slots)?, f.clone(), aggs.clone()));
                            }
                        }
                    }
                    let size = w.every.as_millis();
                    let slide = w.slide.map_or(size, |s| s.as_millis());
                    if size <= 0 || slide <= 0 || slide > size {
                        return Err(CompileError::Invalid {
                            operator: name,
                            message: "window `every` and `slide` must be positive and `slide` at most `every`".into(),
                        });
                    }
                    OperatorConfig::Window(Arc::new(WindowConfig::new(
                        index,
                        name.clone(),
                        size,
                        slide,
                        w.lateness.as_millis(),
                        w.idle_flush.map(|d| d.as_millis()),
                        wanted,
                    )))
                }
                OperatorSpec::Hysteresis(h) => {
                    let slot = lookup(&h.field, &slots)?;
                    let mut severity: Vec<(String, f64)> = h.severity.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    severity.sort_by(|a, b| a.1.total_cmp(&b.1));
                    if h.direction == crate::spec::Direction::Below {
                        severity.reverse();
                    }
                    OperatorConfig::Hysteresis(Arc::new(HysteresisConfig {
                        index,
                        name: name.clone(),
                        slot,
                        field: h.field.clone(),
                        enter: h.enter,
                        exit: h.exit,
                        direction: h.direction,
                        min_duration_ms: h.min_duration.map_or(0, |d| d.as_millis()),
                        min_clear_ms: h.min_clear.map_or(0, |d| d.as_millis()),
                        severity,
                    }))
                }
                OperatorSpec::Baseline(b) => {
                    let slot = lookup(&b.field, &slots)?;
                    if b.method == crate::spec::BaselineMethod::RollingMin && b.days == 0 {
                        return Err(invalid(&name, "a rolling minimum needs `days` of at least 1"));
                    }
                    let output = op.derived_field().expect("a baseline produces a field");
                    let output_slot = add_derived(&mut fields, &mut slots, &name, &output)?;
                    OperatorConfig::Baseline(Arc::new(BaselineConfig {
                        index,
                        name: name.clone(),
                        slot,
                        field: b.field.clone(),
                        method: b.method,
                        alpha: b.alpha,
                        zscore: b.zscore,
                        warmup: b.warmup,
                        days: b.days,
                        utc_offset_hours: b.utc_offset_hours,
                        emit: b.emit,
                        output_slot: Some(output_slot),
                    }))
                }
                OperatorSpec::Smooth(sm) => {
                    let slot = lookup(&sm.field, &slots)?;
                    if sm.method == crate::spec::SmoothMethod::Sma && sm.n == 0 {
                        return Err(invalid(&name, "a moving average needs `n` of at least 1"));
                    }
                    let output = op.derived_field().expect("a smooth produces a field");
                    let output_slot = add_derived(&mut fields, &mut slots, &name, &output)?;
                    OperatorConfig::Smooth(Arc::new(SmoothConfig {
                        index,
                        name: name.clone(),
                        slot,
                        field: sm.field.clone(),
                        method: sm.method,
                        n: sm.n,
                        alpha: sm.alpha,
                        beta: sm.beta,
                        emit: sm.emit,
                        output_slot: Some(output_slot),
                    }))
                }
                OperatorSpec::Threshold(t) => {
                    let slot = lookup(&t.field, &slots)?;
                    let relative_slot = t.relative_to.as_deref().map(|f| lookup(f, &slots)).transpose()?;
                    let (above, below) = t.limits().map_err(|e| invalid(&name, e))?;
                    OperatorConfig::Threshold(Arc::new(ThresholdConfig {
                        index,
                        name: name.clone(),
                        slot,
                        field: t.field.clone(),
                        above,
                        below,
                        relative_slot,
                        factor: t.factor,
                        changes_only: t.changes_only,
                    }))
                }
                OperatorSpec::Calibrate(c) => {
                    let slot = lookup(&c.field, &slots)?;
                    let learned = match (&c.baseline, c.reference) {
                        (None, None) => None,
                        (Some(baseline), Some(reference)) => {
                            let earlier_baseline = spec.operators[..i]
                                .iter()
                                .any(|o| matches!(o, OperatorSpec::Baseline(_)) && o.name() == baseline);
                            if !earlier_baseline {
                                return Err(invalid(
                                    &name,
                                    &format!(
                                        "`baseline: {baseline}` must name a baseline operator earlier in the chain"
                                    ),
                                ));
                            }
                            Some(LearnedCorrection {
                                baseline_slot: lookup(baseline, &slots)?,
                                reference,
                            })
                        }
                        (Some(_), None) => {
                            return Err(invalid(&name, "`baseline` needs the `reference` it should read"));
                        }
                        (None, Some(_)) => return Err(invalid(&name, "`reference` is only used with `baseline`")),
                    };
                    OperatorConfig::Calibrate(Arc::new(CalibrateConfig {
                        index,
                        name: name.clone(),
                        slot,
                        field: c.field.clone(),
                        table: c.table.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                        default: c.default,
                        learned,
                    }))
                }
                OperatorSpec::Health(h) => {
                    let mut flatline = Vec::with_capacity(h.flatline.len());
                    for f in &h.flatline {
                        if f.readings < 2 {
                            return Err(invalid(&name, "a flatline needs `readings` of at least 2"));
                        }
                        flatline.push(FlatlineConfig {
                            slot: lookup(&f.field, &slots)?,
                            readings: f.readings,
                        });
                    }
                    if h.report_every == Some(0) {
                        return Err(invalid(&name, "`report_every` must be at least 1"));
                    }
                    let range_fields = spec
                        .decode
                        .fields
                        .values()
                        .enumerate()
                        .filter(|(_, f)| f.min.is_some() || f.max.is_some())
                        .map(|(slot, _)| slot)
                        .collect();
                    OperatorConfig::Health(Arc::new(HealthConfig {
                        index,
                        name: name.clone(),
                        offline_after_ms: h.offline_after.map(|d| d.as_millis()),
                        flatline,
                        report_every: h.report_every,
                        range_fields,
                    }))
                }
            };
            operators.push(config);
        }
        if fields.len() > 64 {
            return Err(CompileError::TooManyFields(fields.len()));
        }
        let _ = BaselineEmit::End;
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
            let timeout = match op {
                OperatorSpec::Window(w) => w.idle_flush.map(|d| d.as_millis()),
                OperatorSpec::Health(h) => h.offline_after.map(|d| d.as_millis()),
                _ => None,
            };
            if let Some(t) = timeout {
                shortest = Some(shortest.map_or(t, |s: i64| s.min(t)));
            }
        }
        shortest.map(|t| (t / 4).clamp(50, 5000))
    }

    /// A fresh operator chain for one device.
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

fn invalid(operator: &str, message: &str) -> CompileError {
    CompileError::Invalid {
        operator: operator.to_string(),
        message: message.to_string(),
    }
}

/// Registers the derived field `field` of `operator` in the next slot.
fn add_derived(
    fields: &mut Vec<FieldInfo>,
    slots: &mut FxHashMap<String, FieldSlot>,
    operator: &str,
    field: &str,
) -> Result<FieldSlot, CompileError> {
    if slots.contains_key(field) {
        return Err(invalid(
            operator,
            &format!("its derived field `{field}` has the name of an existing field"),
        ));
    }
    let slot = fields.len();
    fields.push(FieldInfo {
        name: field.to_string(),
        declared: false,
    });
    slots.insert(field.to_string(), slot);
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert_eq!(c.flatline, vec![FlatlineConfig { slot: 0, readings: 3 }]);
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
