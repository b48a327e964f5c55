//! Loading a pipeline file: read, parse, interpolate, deserialize, validate — and report every
//! problem at once, each with file, line and column.
//!
//! # Layout
//! - [`Diagnostic`], [`Diagnostics`]: `file:line:col: message`.
//! - [`load_pipeline`], [`parse_pipeline`]: the whole way from a file (or text) to a checked
//!   [`PipelineSpec`]; [`LoadedPipeline`] adds the spec's [`pipeline_hash`].
//! - `Parts`: the file is deserialized part by part (each source, operator, route, sink, each
//!   declared field, `decode`'s settings, `runtime`, `checkpoint`, …), so that one bad part does not
//!   hide the problems of another; semantic validation then runs on the parts that deserialized.
//!   Only when nothing is wrong is the whole spec deserialized in one go (with serde's defaults).

use std::collections::HashSet;
use std::path::Path as FilePath;

use serde::de::DeserializeOwned;

use super::de::{from_node, unknown_key_message};
use super::validate::{self, DecodePart, OperatorPart, PartialPipeline, Path, RoutePart, Segment};
use super::yaml::{self, Node, Position};
use super::{
    CheckpointSpec, DecodeFormat, DeviceIdSpec, EmbeddedBrokerSpec, FieldSpec, OneOrMany, OperatorSpec, PipelineSpec,
    RuntimeSpec, ShutdownSpec, SinkSpec, SourceSpec, TimeSpec, probe,
};

/// One problem in a pipeline file, with its position (line and column count from 1).
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

/// Every problem found in a pipeline file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// A checked spec and its canonical hash (recorded in checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedPipeline {
    pub spec: PipelineSpec,
    /// [`pipeline_hash`] of `spec`.
    pub hash: String,
}

impl LoadedPipeline {
    /// Reads and checks a pipeline file, with `${VAR}` taken from the process environment.
    pub fn load(path: &FilePath) -> Result<Self, Diagnostics> {
        let spec = load_pipeline(path)?;
        Ok(LoadedPipeline {
            hash: pipeline_hash(&spec),
            spec,
        })
    }
}

/// A stable hex hash (xxh3-128, 32 hex digits) of the spec's canonical JSON serialization: the
/// same pipeline gives the same hash however its file is formatted (comments, key order, flow or
/// block style, defaults written out or not), and any change of meaning changes it.
pub fn pipeline_hash(spec: &PipelineSpec) -> String {
    let json = serde_json::to_vec(spec).expect("a pipeline spec serializes to JSON");
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&json))
}

/// Reads and checks a pipeline file, with `${VAR}` taken from the process environment.
pub fn load_pipeline(path: &FilePath) -> Result<PipelineSpec, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse_pipeline(&file, &text, &|name| std::env::var(name).ok())
}

/// Parses and checks pipeline text (no IO); `env` looks variables up. Every problem is reported.
pub fn parse_pipeline(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineSpec, Diagnostics> {
    let diagnostic = |position: Position, message: String| Diagnostic {
        file: file.to_string(),
        line: position.line,
        column: position.column,
        message,
    };
    let mut root = yaml::parse(text).map_err(|e| Diagnostics(vec![diagnostic(e.position, e.message)]))?;
    let mut problems: Vec<(Position, String)> = Vec::new();
    let interpolation = yaml::interpolate(&mut root, env);
    let broken: HashSet<Position> = interpolation.iter().map(|e| e.position).collect();
    problems.extend(interpolation.into_iter().map(|e| (e.position, e.message)));
    problems.extend(yaml::duplicate_keys(&root).into_iter().map(|e| (e.position, e.message)));

    let mut parts = Parts {
        problems: Vec::new(),
        broken: &broken,
    };
    let partial = parts.pipeline(&root);
    problems.extend(parts.problems);
    if let Some(partial) = partial {
        for problem in validate::validate(&partial) {
            let position = resolve(&root, &problem.path);
            // a value whose interpolation failed is still as written: do not judge it again
            if !broken.contains(&position) {
                problems.push((position, problem.message));
            }
        }
    }

    if problems.is_empty() {
        match from_node::<PipelineSpec>(&root, None) {
            Ok(spec) => return Ok(spec),
            Err(e) => problems.push((e.position().unwrap_or(root.position), e.message())),
        }
    }
    problems.sort_by_key(|(position, _)| *position);
    problems.dedup();
    Err(Diagnostics(
        problems.into_iter().map(|(p, m)| diagnostic(p, m)).collect(),
    ))
}

/// The position of the node a validation path names, or of the nearest node above it that exists.
pub fn resolve(root: &Node, path: &Path) -> Position {
    let mut node = root;
    let mut position = root.position;
    for segment in &path.0 {
        match segment {
            Segment::Key(key) => match node.entry(key) {
                Some(entry) => {
                    node = &entry.value;
                    position = if entry.value.position.line == 0 {
                        entry.key.position
                    } else {
                        entry.value.position
                    };
                }
                None => break,
            },
            Segment::KeyName(key) => {
                if let Some(entry) = node.entry(key) {
                    position = entry.key.position;
                }
                break;
            }
            Segment::Index(i) => match node.index(*i) {
                Some(item) => {
                    node = item;
                    position = item.position;
                }
                None => break,
            },
        }
    }
    position
}

/// The entries of a map, each key once: the first of a key given twice (the second is reported
/// by `yaml::duplicate_keys`, and the deserializer reads the first too).
fn unique_entries(node: &Node) -> impl Iterator<Item = &yaml::Entry> {
    let entries = node.as_mapping().unwrap_or_default();
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| !entries[..*i].iter().any(|f| f.key.as_text() == e.key.as_text()))
        .map(|(_, e)| e)
}

/// Deserializes the file part by part, collecting every problem.
struct Parts<'b> {
    problems: Vec<(Position, String)>,
    /// Scalars whose interpolation failed (already reported).
    broken: &'b HashSet<Position>,
}

impl Parts<'_> {
    fn part<T: DeserializeOwned>(&mut self, node: &Node, key: Option<&str>) -> Option<T> {
        match from_node::<T>(node, key) {
            Ok(value) => Some(value),
            Err(e) => {
                let position = e.position().unwrap_or(node.position);
                if !self.broken.contains(&position) {
                    self.problems.push((position, e.message()));
                }
                None
            }
        }
    }

    /// Reports unknown and missing keys of a map whose keys are those of the probe path `parent`.
    fn check_keys(&mut self, node: &Node, parent: &str, within: &str) {
        let known = probe::children(parent);
        for entry in unique_entries(node) {
            let key = entry.key.as_text().unwrap_or_default();
            if !known.contains(&key) {
                self.problems
                    .push((entry.key.position, unknown_key_message(key, within, &known)));
            }
        }
        for key in &known {
            let path = if parent.is_empty() {
                key.to_string()
            } else {
                format!("{parent}.{key}")
            };
            if probe::is_required(&path) && node.entry(key).is_none() {
                self.problems
                    .push((node.position, format!("missing required key `{key}`{within}")));
            }
        }
    }

    fn pipeline(&mut self, root: &Node) -> Option<PartialPipeline> {
        if root.as_mapping().is_none() {
            self.problems.push((
                root.position,
                format!(
                    "a pipeline file is a map of keys (`version`, `pipeline`, `decode`, …), found {}",
                    root.describe()
                ),
            ));
            return None;
        }
        self.check_keys(root, "", " at the top level");
        let mut partial = PartialPipeline {
            runtime: Some(RuntimeSpec::default()),
            checkpoint: Some(CheckpointSpec::default()),
            ..PartialPipeline::default()
        };
        for entry in unique_entries(root) {
            let value = &entry.value;
            let Some(key) = entry.key.as_text() else { continue };
            match key {
                "version" => partial.version = self.part::<u32>(value, Some(key)),
                "pipeline" => partial.pipeline = self.part::<String>(value, Some(key)),
                "description" => {
                    self.part::<Option<String>>(value, Some(key));
                }
                "sources" => {
                    partial.sources = self.list(value, key, |parts, item| parts.part::<SourceSpec>(item, Some(key)))
                }
                "decode" => partial.decode = self.decode(value),
                "operators" => partial.operators = self.list(value, key, |parts, item| parts.operator(item)),
                "outputs" => partial.outputs = self.list(value, key, |parts, item| parts.route(item)),
                "runtime" => {
                    partial.runtime = self
                        .part::<Option<RuntimeSpec>>(value, Some(key))
                        .map(Option::unwrap_or_default)
                }
                "checkpoint" => {
                    partial.checkpoint = self
                        .part::<Option<CheckpointSpec>>(value, Some(key))
                        .map(Option::unwrap_or_default)
                }
                "shutdown" => {
                    self.part::<Option<ShutdownSpec>>(value, Some(key));
                }
                "embedded_broker" => {
                    partial.embedded_broker = self.part::<Option<EmbeddedBrokerSpec>>(value, Some(key)).flatten()
                }
                _ => {}
            }
        }
        Some(partial)
    }

    /// Each item of a list on its own; a value that is no list is reported as such.
    fn list<T>(&mut self, node: &Node, key: &str, mut item: impl FnMut(&mut Self, &Node) -> T) -> Vec<T> {
        match node.as_sequence() {
            Some(items) => items.iter().map(|n| item(self, n)).collect(),
            None if node.is_null() => Vec::new(),
            None => {
                self.problems.push((
                    node.position,
                    format!(
                        "expected a list (`[a, b]`, or one `- item` per line), found {}",
                        node.describe()
                    ),
                ));
                let _ = key;
                Vec::new()
            }
        }
    }

    fn decode(&mut self, node: &Node) -> DecodePart {
        if node.as_mapping().is_none() {
            self.part::<super::DecodeSpec>(node, Some("decode"));
            return DecodePart::default();
        }
        self.check_keys(node, "decode", " in decode");
        let mut part = DecodePart {
            format: Some(DecodeFormat::default()),
            device: Some(DeviceIdSpec::default()),
            time: Some(None),
            fields: None,
        };
        for entry in unique_entries(node) {
            let value = &entry.value;
            let Some(key) = entry.key.as_text() else { continue };
            match key {
                "format" => part.format = self.part::<DecodeFormat>(value, Some(key)),
                "device" => part.device = self.part::<DeviceIdSpec>(value, Some(key)),
                "time" => part.time = self.part::<Option<TimeSpec>>(value, Some(key)),
                "fields" => match value.as_mapping() {
                    Some(entries) => {
                        let mut fields = Vec::new();
                        for field in entries {
                            let name = field.key.as_text().unwrap_or_default().to_string();
                            if fields.iter().any(|(n, _)| *n == name) {
                                continue;
                            }
                            let spec = self.part::<FieldSpec>(&field.value, Some(&name));
                            fields.push((name, spec));
                        }
                        part.fields = Some(fields);
                    }
                    None => {
                        self.part::<std::collections::BTreeMap<String, FieldSpec>>(value, Some(key));
                    }
                },
                "dead_letter_max_bytes" => {
                    self.part::<usize>(value, Some(key));
                }
                _ => {}
            }
        }
        part
    }

    fn operator(&mut self, node: &Node) -> OperatorPart {
        if let Some(spec) = self.part::<OperatorSpec>(node, Some("operators")) {
            return OperatorPart {
                spec: Some(spec),
                ..OperatorPart::default()
            };
        }
        // What can still be read, so that later checks do not report follow-on errors.
        let mut part = OperatorPart::default();
        if let Some([entry]) = node.as_mapping() {
            let kind = entry.key.as_text().unwrap_or_default();
            let content = &entry.value;
            let text = |key: &str| content.get(key).and_then(Node::as_text).map(str::to_string);
            part.kind = Some(kind.to_string());
            part.name = text("name");
            part.produces = match kind {
                "baseline" => Some(part.name.clone().unwrap_or_else(|| "baseline".to_string())),
                "smooth" => text("output").or_else(|| text("field").map(|f| format!("{f}_smooth"))),
                _ => None,
            };
        } else if let Some(kind) = node.as_text() {
            part.kind = Some(kind.to_string());
        }
        part
    }

    fn route(&mut self, node: &Node) -> RoutePart {
        if node.as_mapping().is_none() {
            self.part::<super::OutputRoute>(node, Some("outputs"));
            return RoutePart::default();
        }
        self.check_keys(node, "outputs[]", " in outputs");
        let mut part = RoutePart {
            events: Some(Vec::new()),
            ..RoutePart::default()
        };
        for entry in unique_entries(node) {
            let value = &entry.value;
            let Some(key) = entry.key.as_text() else { continue };
            match key {
                "when" => part.when = self.part::<OneOrMany>(value, Some(key)),
                "events" => part.events = self.part::<Vec<String>>(value, Some(key)),
                "to" => part.to = self.list(value, key, |parts, item| parts.part::<SinkSpec>(item, Some(key))),
                _ => {}
            }
        }
        part
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version: 1
pipeline: t
decode:
  time: { field: ts }
  fields: { pm25: {}, co2: {} }
operators:
  - window: { every: 60s, aggregates: { pm25: [avg] } }
  - hysteresis: { name: pm, field: pm25, enter: 35, exit: 25 }
outputs:
  - when: all
    to: [ stdout ]
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems(text: &str) -> Vec<String> {
        match parse_pipeline("p.yaml", text, &no_env) {
            Ok(_) => Vec::new(),
            Err(d) => {
                d.0.iter()
                    .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                    .collect()
            }
        }
    }

    #[test]
    fn a_good_file_loads() {
        let spec = parse_pipeline("p.yaml", GOOD, &no_env).unwrap();
        assert_eq!(spec.pipeline, "t");
        assert_eq!(spec.operators.len(), 2);
    }

    #[test]
    fn errors_in_independent_parts_are_all_reported_in_order() {
        let text = GOOD
            .replace("every: 60s", "every: 60 s")
            .replace("exit: 25", "exit: 45")
            .replace("to: [ stdout ]", "to: [ stdot ]");
        let got = problems(&text);
        assert_eq!(got.len(), 3, "{text}\n{got:#?}");
        assert!(got[0].starts_with("8:22: `60 s` is not a duration"), "{got:#?}");
        assert!(
            got[1].starts_with("9:59: `exit` (45) is above `enter` (35)"),
            "{got:#?}"
        );
        assert!(
            got[2].starts_with("12:11: unknown sink `stdot`; did you mean `stdout`?"),
            "{got:#?}"
        );
    }

    #[test]
    fn top_level_keys_are_checked_with_suggestions() {
        let got = problems(&GOOD.replace("pipeline: t", "pipline: t"));
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0], "2:1: missing required key `pipeline` at the top level");
        assert!(
            got[1].starts_with("3:1: unknown key `pipline` at the top level; did you mean `pipeline`?"),
            "{got:#?}"
        );
    }

    #[test]
    fn a_failed_operator_does_not_cause_follow_on_errors() {
        let text = GOOD.replace(
            "name: pm, field: pm25, enter: 35, exit: 25",
            "name: pm, field: pm25, enter: high, exit: 25",
        );
        let got = problems(&format!("{text}  - when: pm\n    to: [stdout]\n"));
        assert_eq!(got, ["9:49: expected a number, found the string `high`"]);
    }

    #[test]
    fn missing_variables_are_reported_once_at_the_scalar() {
        let got = problems(&GOOD.replace("pipeline: t", "pipeline: ${NAME}"));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].starts_with("3:11: environment variable `NAME` is not set"),
            "{got:#?}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any edit of a valid file loads or gives diagnostics inside the file; it never panics.
        #[test]
        fn edited_files_never_panic_and_point_inside_the_file(
            at in 0usize..GOOD.len(),
            cut in 0usize..12,
            insert in "[ a-z0-9:{}\\[\\],#&*!|>'\"$-]{0,6}",
        ) {
            let mut text = GOOD.to_string();
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + cut).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(at..end, &insert);
            let lines = text.lines().count().max(1) + 1;
            if let Err(diagnostics) = parse_pipeline("p.yaml", &text, &no_env) {
                proptest::prop_assert!(!diagnostics.0.is_empty());
                for d in &diagnostics.0 {
                    proptest::prop_assert!(d.line >= 1 && d.line <= lines && d.column >= 1, "{d} in\n{text}");
                }
            }
        }
    }

    #[test]
    fn the_hash_ignores_formatting_and_follows_meaning() {
        let a = parse_pipeline("a", GOOD, &no_env).unwrap();
        let reformatted = GOOD.replace(
            "{ every: 60s, aggregates: { pm25: [avg] } }",
            "\n      every: 1m\n      lateness: 0s\n      aggregates:\n        pm25: [avg]",
        );
        let b = parse_pipeline("b", &reformatted, &no_env).unwrap();
        assert_eq!(pipeline_hash(&a), pipeline_hash(&b));
        assert_eq!(pipeline_hash(&a).len(), 32);
        let c = parse_pipeline("c", &GOOD.replace("exit: 25", "exit: 24"), &no_env).unwrap();
        assert_ne!(pipeline_hash(&a), pipeline_hash(&c));
    }

    #[test]
    fn kafka_hand_off_refresh_defaults_to_30s_and_can_be_every_checkpoint_or_off() {
        let with = |extra: &str| {
            let text = GOOD.replace(
                "decode:",
                &format!("sources:\n  - kafka: {{ brokers: \"127.0.0.1:9092\", topics: [aq1]{extra} }}\ndecode:"),
            );
            let spec = parse_pipeline("k.yaml", &text, &no_env).unwrap_or_else(|e| panic!("{e:?}"));
            match &spec.sources[0] {
                crate::spec::SourceSpec::Kafka(k) => k.handoff_refresh.map(|d| d.as_millis()),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(with(""), Some(30_000));
        assert_eq!(with(", handoff_refresh: 0s"), Some(0));
        assert_eq!(with(", handoff_refresh: null"), None);
    }
}
