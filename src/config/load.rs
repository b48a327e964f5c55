//! Loading a pipeline file: read, interpolate, parse, deserialize, validate.
//!
//! STAND-IN: this first version deserializes with serde-saphyr and reports one error. It is
//! replaced by the positioned loader (yaml tree + deserializer + validation, every error at once).

use std::path::Path;

use super::PipelineSpec;

/// One problem in a pipeline file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// Reads and checks a pipeline file, with `${VAR}` taken from the process environment.
pub fn load_pipeline(path: &Path) -> Result<PipelineSpec, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic { file: file.clone(), line: 0, column: 0, message: format!("cannot read: {e}") }])
    })?;
    parse_pipeline(&file, &text, &|name| std::env::var(name).ok())
}

/// Parses and checks pipeline text (no IO); `env` looks variables up.
pub fn parse_pipeline(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineSpec, Diagnostics> {
    let _ = env;
    serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line() as usize, l.column() as usize));
        Diagnostics(vec![Diagnostic { file: file.to_string(), line, column, message: e.to_string() }])
    })
}
