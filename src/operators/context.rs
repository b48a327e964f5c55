//! What an operator's own steps see of the pipeline around it: its semantic check
//! ([`SpecChecker`], implemented by `spec::validate`) and its compilation ([`CompileContext`],
//! driven by `pipeline`). Both are here so that an operator's folder holds all of the operator
//! while `operators` still imports nothing but `model`.

use rustc_hash::FxHashMap;

use crate::model::DurationSpec;
use crate::model::location::Path;

use super::{FieldSlot, OpIndex, OperatorSpec};

/// Reports problems of a pipeline file, each at its path; the number checks every part shares.
pub trait Report {
    /// Reports a problem at `path`.
    fn report(&mut self, path: Path, message: impl Into<String>);

    /// Reports `value` unless it is a finite number; says whether it is.
    fn finite(&mut self, path: Path, key: &str, value: f64) -> bool {
        if value.is_finite() {
            true
        } else {
            self.report(path, format!("`{key}` must be a finite number, found {value}"));
            false
        }
    }

    /// Reports `value` unless it is in (0, 1].
    fn fraction(&mut self, path: Path, key: &str, value: f64) {
        if !(value > 0.0 && value <= 1.0) {
            self.report(path, format!("`{key}` must be above 0 and at most 1, found {value}"));
        }
    }

    /// Reports a duration of zero.
    fn duration_positive(&mut self, path: Path, key: &str, value: DurationSpec) {
        if !positive(value) {
            self.report(path, format!("`{key}` must be longer than 0s"));
        }
    }
}

/// Whether a duration is longer than zero.
pub fn positive(d: DurationSpec) -> bool {
    d.as_millis() > 0
}

/// The semantic check of one operator's spec: its own settings, and what it needs from the rest
/// of the chain. Every problem is reported; none stops the check.
pub trait SpecChecker: Report {
    /// Where the operator is in the file: `operators[i].<kind>`.
    fn path(&self) -> Path;
    /// Reports `field` (written at `path`) unless it is declared in `decode.fields` or produced
    /// by an earlier operator.
    fn read_field(&mut self, path: Path, field: &str);
    /// Reports `name` (written at `path`, under `key`) unless it names an earlier operator of
    /// kind `kind`.
    fn earlier_operator(&mut self, path: Path, key: &str, name: &str, kind: &'static str);
}

/// A field of the readings: declared in `decode.fields` or derived by an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldInfo {
    pub name: String,
    /// Declared in `decode` (otherwise produced by an operator).
    pub declared: bool,
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

/// The field slots while a chain compiles, and where the operator being compiled stands in it.
pub struct CompileContext<'a> {
    /// The operator's place in the chain.
    pub index: OpIndex,
    /// The operator's name.
    pub name: String,
    /// The operators before it.
    pub earlier: &'a [OperatorSpec],
    /// Slots of the declared fields that have a `min` or `max`.
    pub ranged: &'a [FieldSlot],
    fields: &'a mut Vec<FieldInfo>,
    slots: &'a mut FxHashMap<String, FieldSlot>,
}

impl<'a> CompileContext<'a> {
    pub fn new(
        index: OpIndex,
        name: String,
        earlier: &'a [OperatorSpec],
        ranged: &'a [FieldSlot],
        fields: &'a mut Vec<FieldInfo>,
        slots: &'a mut FxHashMap<String, FieldSlot>,
    ) -> Self {
        CompileContext {
            index,
            name,
            earlier,
            ranged,
            fields,
            slots,
        }
    }

    /// The slot of a field available here.
    pub fn slot(&self, field: &str) -> Result<FieldSlot, CompileError> {
        self.slots
            .get(field)
            .copied()
            .ok_or_else(|| CompileError::UnknownField {
                operator: self.name.clone(),
                field: field.to_string(),
            })
    }

    /// Registers the operator's derived field in the next slot.
    pub fn add_derived(&mut self, field: &str) -> Result<FieldSlot, CompileError> {
        if self.slots.contains_key(field) {
            return Err(self.invalid(format!("its derived field `{field}` has the name of an existing field")));
        }
        let slot = self.fields.len();
        self.fields.push(FieldInfo {
            name: field.to_string(),
            declared: false,
        });
        self.slots.insert(field.to_string(), slot);
        Ok(slot)
    }

    /// Whether an operator before this one is a `kind` named `name`.
    pub fn earlier_is(&self, name: &str, kind: &str) -> bool {
        self.earlier.iter().any(|o| o.kind() == kind && o.name() == name)
    }

    /// A compile error of this operator.
    pub fn invalid(&self, message: impl Into<String>) -> CompileError {
        CompileError::Invalid {
            operator: self.name.clone(),
            message: message.into(),
        }
    }
}

/// The name serde gives a value (`rolling_min`), for summaries.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}
