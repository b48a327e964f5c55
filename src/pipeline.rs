//! A validated [`PipelineSpec`] compiled into what the runtime uses: field slots, the operator
//! configurations shared by every device, the decoder and the output routes.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::{AggregatesSpec, BaselineEmit, OperatorSpec, PipelineSpec};
use crate::decode::Decoder;
use crate::operators::{
    BaselineConfig, DeviceChain, FieldSlot, HysteresisConfig, OpIndex, OperatorConfig, WindowConfig,
};

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
    #[error("operator `{operator}` reads field `{field}`, which is neither declared in decode.fields nor produced by an earlier operator")]
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
            .map(|name| FieldInfo { name: name.clone(), declared: true })
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
                    let mut severity: Vec<(String, f64)> =
                        h.severity.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    severity.sort_by(|a, b| a.1.total_cmp(&b.1));
                    if h.direction == crate::config::Direction::Below {
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
                    if b.method == crate::config::BaselineMethod::RollingMin && b.days == 0 {
                        return Err(invalid(&name, "a rolling minimum needs `days` of at least 1"));
                    }
                    let output_slot = add_derived(&mut fields, &mut slots, &name, &name)?;
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
                other => {
                    return Err(CompileError::Invalid {
                        operator: name,
                        message: format!("the `{}` operator is not built into this plume yet", other.kind()),
                    });
                }
            };
            operators.push(config);
        }
        if fields.len() > 64 {
            return Err(CompileError::TooManyFields(fields.len()));
        }
        let _ = BaselineEmit::End;
        let decoder = Arc::new(Decoder::new(&spec.decode, fields.len()));
        Ok(CompiledPipeline { name: spec.pipeline.clone(), spec, fields, operators, decoder })
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
