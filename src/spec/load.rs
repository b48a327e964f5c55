//! Loading a pipeline file: read, parse, interpolate, deserialize, validate — and report every
//! problem at once, each with file, line and column.
//!
//! # Layout
//! - [`Diagnostic`], [`Diagnostics`]: `file:line:col: message`.
//! - [`load_pipeline`], [`parse_pipeline`]: the whole way from a file (or text) to a checked
//!   [`PipelineSpec`]; [`LoadedPipeline`] adds the spec's [`pipeline_hash`].
//! - [`resolve`]: the position of a semantic problem's path.
//!
//! Nothing here knows a key of the format: the structural checks come from the schema generated
//! from the types, the values from their `Deserialize`, the rest from `validate`.

use std::collections::HashSet;
use std::path::Path as FilePath;

use super::PipelineSpec;
use super::check::{self, Repair};
use super::de::from_node;
use super::validate::{self, Gaps, Path, Segment};
use super::yaml::{self, Node, Position};

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
///
/// The admin endpoint (`metrics`) and the keyed ingress (`ingress`, run by `plume ingest`) are
/// left out: where a run is watched from, or how readings reach its Kafka topic, does not change
/// what it computes, and its checkpoints stay usable.
pub fn pipeline_hash(spec: &PipelineSpec) -> String {
    let json = if spec.metrics.is_some() || spec.ingress.is_some() {
        let mut without = spec.clone();
        without.metrics = None;
        without.ingress = None;
        serde_json::to_vec(&without)
    } else {
        serde_json::to_vec(spec)
    }
    .expect("a pipeline spec serializes to JSON");
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&json))
}

/// Reads and checks a pipeline file, with `${VAR}` taken from the process environment.
pub fn load_pipeline(path: &FilePath) -> Result<PipelineSpec, Diagnostics> {
    let file = path.display().to_string();
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() > super::yaml::MAX_FILE_BYTES
    {
        return Err(Diagnostics(vec![Diagnostic {
            file: file.clone(),
            line: 1,
            column: 1,
            message: format!(
                "the file is {} bytes, more than a pipeline file may be ({} bytes)",
                meta.len(),
                super::yaml::MAX_FILE_BYTES
            ),
        }]));
    }
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
///
/// The way: parse the YAML (positions kept), interpolate `${VAR}`s, check the tree against the
/// schema generated from the types (`check`: unknown and missing keys, types, values), then
/// deserialize the typed spec through the positioned deserializer (`de`) from a copy of the tree
/// whose broken parts are repaired (`check::Repair`; a problem only the deserializer sees, such as
/// a duration's grammar, is reported and repaired the same way), and run the semantic checks
/// (`validate`) on the spec, leaving out the parts that were broken.
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
    // a value whose interpolation failed is still as written: it is not judged again
    let unread: HashSet<Position> = interpolation.iter().map(|e| e.position).collect();
    problems.extend(interpolation.into_iter().map(|e| (e.position, e.message)));
    problems.extend(yaml::duplicate_keys(&root).into_iter().map(|e| (e.position, e.message)));
    if root.as_mapping().is_none() {
        problems.push((
            root.position,
            format!(
                "a pipeline file is a map of keys (`version`, `pipeline`, `decode`, …), found {}",
                root.describe()
            ),
        ));
        return Err(finish(problems, diagnostic));
    }

    let mut repair = Repair::new(&root);
    let mut broken: Vec<Path> = Vec::new();
    for problem in check::check(&root) {
        if !unread.contains(&problem.position) {
            problems.push((problem.position, problem.message));
        }
        repair.fix(&problem.path);
        broken.push(problem.path);
    }
    let spec = loop {
        match from_node::<PipelineSpec>(&repair.tree, None) {
            Ok(spec) => break Some(spec),
            Err(e) => {
                let position = e.position().unwrap_or(root.position);
                if !unread.contains(&position) {
                    problems.push((position, e.message()));
                }
                let path = check::path_at(&repair.tree, position);
                match path {
                    Some(path) if broken.len() < MAX_REPAIRS && !broken.contains(&path) && repair.fix(&path) => {
                        broken.push(path)
                    }
                    _ => break None,
                }
            }
        }
    };
    if let Some(spec) = &spec {
        let units: Vec<Path> = broken.iter().map(|p| repair.unit(p)).collect();
        for problem in validate::validate(spec, &Gaps::new(broken)) {
            if units.iter().any(|unit| problem.path.starts_with(unit)) {
                continue;
            }
            let position = resolve(&root, &problem.path);
            if !unread.contains(&position) {
                problems.push((position, problem.message));
            }
        }
    }
    match spec {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => Err(finish(problems, diagnostic)),
    }
}

/// The warnings of a valid pipeline file ([`validate::warnings`]: valid, but probably not what
/// was meant), each with its position in the file (read again; `env` as for the load).
pub fn warnings(file: &FilePath, spec: &PipelineSpec, env: &dyn Fn(&str) -> Option<String>) -> Vec<Diagnostic> {
    let problems = validate::warnings(spec);
    if problems.is_empty() {
        return Vec::new();
    }
    let root = std::fs::read_to_string(file).ok().and_then(|text| {
        let mut root = yaml::parse(&text).ok()?;
        yaml::interpolate(&mut root, env);
        Some(root)
    });
    problems
        .into_iter()
        .map(|p| {
            let position = root.as_ref().map(|r| resolve(r, &p.path));
            Diagnostic {
                file: file.display().to_string(),
                line: position.map_or(1, |p| p.line),
                column: position.map_or(1, |p| p.column),
                message: p.message,
            }
        })
        .collect()
}

/// At most this many parts of one file are repaired (then the rest is not judged).
const MAX_REPAIRS: usize = 256;

/// The problems sorted by position, each once.
fn finish(mut problems: Vec<(Position, String)>, diagnostic: impl Fn(Position, String) -> Diagnostic) -> Diagnostics {
    problems.sort_by_key(|(position, _)| *position);
    problems.dedup();
    Diagnostics(problems.into_iter().map(|(p, m)| diagnostic(p, m)).collect())
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

    /// The MQTT and Kafka client settings and the notifiers' retry settings are shared structs
    /// flattened into each spec: the canonical JSON, and so the hash recorded in checkpoints,
    /// is the one of the separate keys before (value from plume before the change).
    #[test]
    fn the_hash_is_unchanged_by_the_shared_connection_settings() {
        const TEXT: &str = r#"version: 1
pipeline: hash-all
sources:
  - mqtt: { url: "mqtts://b:8883", topic: "s/{device}/air", client_id: c1, username: u, password_env: P, ca_file: ca.pem, qos: 2 }
  - kafka: { brokers: "k:9092", topics: [t], properties: { a.b: x }, secret_properties_env: { sasl.password: KP } }
decode:
  device: { topic: true }
  fields: { pm25: {} }
operators:
  - hysteresis: { name: pm, field: pm25, enter: 35, exit: 25 }
outputs:
  - when: pm
    to:
      - mqtt: { url: "mqtt://b:1883", topic: "p/{device}", retain: true, client_id: o, username: u, password_env: P2 }
      - kafka: { brokers: "k:9092", topic: out, properties: { x.y: z }, secret_properties_env: { sasl.password: KP } }
      - webhook: { url: "https://h.example.com/x", secret_env: S, timeout: 5s, max_age: 1h, concurrency: 2, backoff: 2s, breaker_open: 1m, policy: { cooldown: 5m } }
      - push: { ntfy: { topic: air, token_env: T, backoff: 3s } }
      - push: { fcm: { service_account_env: F, concurrency: 8 } }
      - push: { apns: { team_id: T, key_id: K, key_env: A, topic: org.x, max_age: 2h } }
"#;
        // (deserialized without the semantic checks: the MQTT sink's password over `mqtt://` to
        // another host is refused since issue 16, and this file must stay as it was hashed)
        let node = super::super::yaml::parse(TEXT).unwrap();
        let spec: PipelineSpec = super::super::de::from_node(&node, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            pipeline_hash(&spec).starts_with("9a336b3301a9238a"),
            "{}",
            pipeline_hash(&spec)
        );
    }

    #[test]
    fn a_structural_problem_leaves_the_rest_of_its_operator_unjudged_but_not_the_others() {
        let text = GOOD.replace("exit: 25", "exit: 45, direction: up");
        let got = problems(&format!("{text}  - when: [pm, nothing]\n    to: [stdout]\n"));
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got[0].starts_with("9:74: unknown value `up` for `direction`"),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("13:16: `when` names `nothing`, which is no operator"),
            "{got:#?}"
        );
    }
}
