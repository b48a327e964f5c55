//! The import direction of `src/` (ARCHITECTURE.md, "Layers"): reads every `crate::…` path of
//! every source file and fails when a module imports one that its layer may not see, or when
//! two top-level modules import each other (directly or through others).
//!
//! `LAYERS` is the rule: each top-level module of the library with the modules it may import.
//! A module not listed there is an error too (a new module takes its place in the table).
//! `runtime::ports` is the one part of the runtime that connectors may use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and what it may import (`runtime::ports` names that submodule only).
const LAYERS: &[(&str, &[&str])] = &[
    // the vocabulary: readings, records, positions, ids, durations
    ("model", &[]),
    ("clock", &[]),
    // spans with explicit times and ids (OpenTelemetry's API; the exporter is set up by `app`)
    ("trace", &[]),
    ("workload", &[]),
    // pure state machines
    ("operators", &["model"]),
    // the pipeline file: one schema, its loader and validation
    ("spec", &["model", "operators"]),
    ("decode", &["model", "spec", "operators"]),
    ("pipeline", &["model", "spec", "operators", "decode"]),
    ("output", &["model", "spec", "operators", "pipeline"]),
    (
        "plain",
        &["model", "spec", "operators", "decode", "pipeline", "output", "clock"],
    ),
    ("store", &["model", "spec", "clock"]),
    // the actor runtime: routers, shards, hub, checkpoints; `runtime::ports` is its face
    (
        "runtime",
        &[
            "model",
            "spec",
            "operators",
            "decode",
            "pipeline",
            "output",
            "store",
            "clock",
            "trace",
        ],
    ),
    // sources, sinks and notifiers: they see the runtime through its ports only
    (
        "connectors",
        &[
            "model",
            "spec",
            "decode",
            "pipeline",
            "output",
            "store",
            "clock",
            "trace",
            "runtime::ports",
        ],
    ),
    (
        "notify",
        &[
            "model",
            "spec",
            "pipeline",
            "output",
            "store",
            "clock",
            "trace",
            "runtime::ports",
        ],
    ),
    // assembly of a run
    (
        "app",
        &[
            "model",
            "spec",
            "operators",
            "decode",
            "pipeline",
            "output",
            "plain",
            "store",
            "clock",
            "trace",
            "runtime",
            "connectors",
            "notify",
        ],
    ),
];

/// `src/` of this repository, or of another checkout named by `PLUME_LAYERS_SRC` (to show what an
/// older tree breaks: `PLUME_LAYERS_SRC=../old/src cargo test --test layers`).
fn src() -> PathBuf {
    match std::env::var_os("PLUME_LAYERS_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to; `None` for the crate root and the binary
/// (`main.rs` and the files it includes), which may use everything.
fn module_of(file: &Path, src: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().to_string();
    if rel.components().count() == 1 {
        let stem = first.trim_end_matches(".rs");
        if stem == "lib" || stem == "main" || stem.starts_with("cli") {
            return None;
        }
        return Some(stem.to_string());
    }
    if first == "bin" || first == "cli" {
        return None;
    }
    Some(first)
}

/// The code of a file without comments (line and block) and string literals, so that
/// documentation naming a module is not an import.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if rest.starts_with("r#\"") {
            i += 3 + rest[3..].find("\"#").map_or(rest.len() - 3, |e| e + 2);
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if rest.starts_with("'\"'") {
            i += 3;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The modules a piece of code names through `crate::`: `crate::a::b`, `crate::{a, b::{c}}`.
/// `runtime::ports` is reported as such; any other path into `runtime` as `runtime`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::`, `mycrate::`
        }
        let rest_trimmed = rest.trim_start();
        if let Some(group) = rest_trimmed.strip_prefix('{') {
            // a use group: the names at brace depth 0 of the group
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphabetic() || c == '_') => {
                        start = false;
                        add(&mut found, &group[i..]);
                    }
                    _ => {}
                }
            }
        } else {
            add(&mut found, rest_trimmed);
        }
    }
    found
}

fn add(found: &mut BTreeSet<String>, path: &str) {
    let first = ident_at(path);
    if first.is_empty() || first == "self" {
        return;
    }
    let after = &path[first.len()..];
    if first == "runtime" {
        if let Some(sub) = after.strip_prefix("::") {
            if ident_at(sub) == "ports" {
                found.insert("runtime::ports".to_string());
                return;
            }
        }
    }
    found.insert(first.to_string());
}

/// Every violation of `LAYERS` in the source tree under `src`, as `file: module imports X`.
fn violations(src: &Path) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    let rules: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(m, allowed)| (*m, allowed.iter().copied().collect()))
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file, src) else {
            continue;
        };
        let rel = file.strip_prefix(src).unwrap().display().to_string();
        let allowed = rules.get(module.as_str());
        if allowed.is_none() {
            problems.push(format!("src/{rel}: module `{module}` has no place in the layer table"));
        }
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for import in imports(&code) {
            let top = import.split("::").next().unwrap().to_string();
            if top == module {
                continue;
            }
            // an unknown module still takes part in the cycle check
            graph.entry(module.clone()).or_default().insert(top.clone());
            let Some(allowed) = allowed else { continue };
            let ok = allowed.contains(import.as_str()) || (import != top && allowed.contains(top.as_str()));
            if !ok {
                problems.push(format!("src/{rel}: `{module}` imports `{import}`"));
            }
        }
    }
    (problems, graph)
}

/// The groups of top-level modules that import each other (directly or through others), each as
/// `a -> b -> … ` in name order: the strongly connected components with more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            for next in graph.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (node, from_node) in &reachable {
        if done.contains(*node) || !from_node.contains(*node) {
            continue;
        }
        let group: Vec<&String> = reachable
            .iter()
            .filter(|(other, from_other)| from_node.contains(**other) && from_other.contains(*node))
            .map(|(other, _)| *other)
            .collect();
        done.extend(group.iter().map(|g| (*g).clone()));
        out.push(group.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(" <-> "));
    }
    out
}

#[test]
fn imports_follow_the_layers_and_top_level_modules_form_no_cycle() {
    let (mut problems, graph) = violations(&src());
    for c in cycles(&graph) {
        problems.push(format!("top-level modules that import each other: {c}"));
    }
    assert!(
        problems.is_empty(),
        "imports against the layers (tests/layers.rs LAYERS; ARCHITECTURE.md, \"Layers\"):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_reader_finds_imports_in_every_form() {
    let code = code_only(
        r#"
        use crate::model::Reading; // crate::notify in a comment
        use crate::{spec::{self, PipelineSpec}, store::Store};
        use crate::runtime::ports::ChunkSink;
        fn f() { let s = "crate::app"; crate::runtime::shard::go(); $crate::x(); }
        /* crate::connectors */
        "#,
    );
    let found: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(found, ["model", "runtime", "runtime::ports", "spec", "store"]);
}

#[test]
fn a_layer_violation_and_a_cycle_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("operators")).unwrap();
    std::fs::create_dir_all(src.join("runtime")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod operators; pub mod runtime;").unwrap();
    std::fs::write(src.join("operators/mod.rs"), "use crate::runtime::Shard;").unwrap();
    std::fs::write(src.join("runtime/mod.rs"), "use crate::operators::Chain;").unwrap();
    std::fs::write(src.join("model.rs"), "").unwrap();
    std::fs::write(src.join("gadget.rs"), "use crate::model::X;").unwrap();
    let (problems, graph) = violations(src);
    assert_eq!(
        problems,
        [
            "src/gadget.rs: module `gadget` has no place in the layer table",
            "src/operators/mod.rs: `operators` imports `runtime`",
        ]
    );
    assert_eq!(cycles(&graph), ["operators <-> runtime"]);
}
