//! Pipeline files end to end: every file under `pipelines/` is valid; every file under
//! `tests/bad_pipelines/` gives exactly the diagnostics in its sibling `.expected` file
//! (`line:col: message`, one per line); the real `plume validate` binary prints them and exits
//! with 1 (0 for valid files); the README's key reference is the one generated from the types;
//! `plume schema` prints the JSON Schema generated from the types, which an independent
//! validator (boon) accepts every shipped pipeline with and refuses bad files with.
//!
//! `PLUME_UPDATE_EXPECTED=1` rewrites the `.expected` files and `PLUME_UPDATE_README=1` the
//! README's reference block; review the diff before committing either.

use std::path::{Path, PathBuf};
use std::process::Command;

use plume::pipeline::CompiledPipeline;
use plume::spec::{self, parse_pipeline, reference, schema, yaml};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The environment the bad files are checked with: fixed, whatever the machine has.
fn test_env(name: &str) -> Option<String> {
    match name {
        "PLUME_TEST_SET" => Some("set".to_string()),
        _ => None,
    }
}

#[test]
fn every_shipped_pipeline_is_valid_and_compiles() {
    let files = yaml_files(&root().join("pipelines"));
    assert!(files.len() >= 2, "expected the shipped pipelines, found {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // variables a shipped pipeline requires without a default get an example value
        let example = |name: &str| (name == "PLUME_WEBHOOK_URL").then(|| "https://hooks.example.com/air".to_string());
        let spec = parse_pipeline(&file.display().to_string(), &text, &example)
            .unwrap_or_else(|d| panic!("{} is not valid:\n{d}", file.display()));
        CompiledPipeline::compile(spec).unwrap_or_else(|e| panic!("{} does not compile: {e}", file.display()));
    }
}

#[test]
fn bad_pipelines_give_exactly_the_expected_diagnostics() {
    let dir = root().join("tests/bad_pipelines");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 12,
        "expected at least 12 bad pipelines, found {}",
        files.len()
    );
    let update = std::env::var_os("PLUME_UPDATE_EXPECTED").is_some();
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let got = match parse_pipeline(&name, &text, &test_env) {
            Ok(_) => String::new(),
            Err(diagnostics) => diagnostics
                .0
                .iter()
                .map(|d| format!("{}:{}: {}\n", d.line, d.column, d.message))
                .collect(),
        };
        assert!(!got.is_empty(), "{name} should have problems but loads");
        let expected_path = file.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (PLUME_UPDATE_EXPECTED=1 writes it)", expected_path.display()));
        if got != expected {
            failures.push(format!("{name}\n--- expected\n{expected}--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn several_errors_are_reported_together_in_file_order() {
    let file = root().join("tests/bad_pipelines/several-errors.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let diagnostics = parse_pipeline("several-errors.yaml", &text, &test_env).unwrap_err().0;
    assert!(diagnostics.len() >= 15, "{diagnostics:#?}");
    let positions: Vec<(usize, usize)> = diagnostics.iter().map(|d| (d.line, d.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
}

#[test]
fn plume_validate_prints_every_error_and_sets_the_exit_status() {
    let plume = env!("CARGO_BIN_EXE_plume");
    let good = Command::new(plume)
        .current_dir(root())
        .args(["validate", "pipelines/aq1.yaml", "pipelines/indoor-air.yaml"])
        .env_remove("PLUME_OUTPUT")
        .env_remove("PLUME_INPUT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(stdout.contains("pipelines/aq1.yaml: ok: pipeline `aq1`"), "{stdout}");
    assert!(
        stdout.contains("pipelines/indoor-air.yaml: ok: pipeline `indoor-air`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hysteresis `co2_event`: co2 >= 1400 opens, <= 1000 closes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hysteresis `dry_air`: hum <= 30 opens, >= 35 closes"),
        "{stdout}"
    );
    assert!(stdout.contains("produced: co2_baseline"), "{stdout}");

    let bad = Command::new(plume)
        .current_dir(root())
        .args([
            "validate",
            "pipelines/aq1.yaml",
            "tests/bad_pipelines/unknown-key.yaml",
            "tests/bad_pipelines/bad-version.yaml",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("aq1.yaml: ok"),
        "the valid file is still summarized"
    );
    assert!(
        stderr.contains("tests/bad_pipelines/unknown-key.yaml:10:7: error: unknown key `latenes` in window; did you mean `lateness`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tests/bad_pipelines/bad-version.yaml:2:10: error: version 2 is not supported"),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors in 2 of 3 files"), "{stderr}");
}

#[test]
fn the_readme_reference_is_generated_from_the_types() {
    let generated = reference::reference_markdown();
    let undocumented: Vec<&str> = generated
        .lines()
        .filter(|l| l.starts_with("| `") && l.ends_with("|  |"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys without a doc comment:\n{}",
        undocumented.join("\n")
    );
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    if std::env::var_os("PLUME_UPDATE_README").is_some() {
        let updated = reference::replace_reference(&readme, &generated).expect("README has the reference markers");
        std::fs::write(&path, updated).unwrap();
        return;
    }
    let current = reference::current_reference(&readme).unwrap_or_else(|| {
        panic!(
            "README.md has no `{}` … `{}` block",
            reference::START_MARKER,
            reference::END_MARKER
        )
    });
    assert!(
        current == generated.trim(),
        "README.md's key reference is out of date: run `PLUME_UPDATE_README=1 cargo test --release --test pipeline_files`"
    );
}

/// The JSON Schema compiled by boon, an independent validator.
fn compiled_schema() -> (boon::Schemas, boon::SchemaIndex) {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("file:///plume.schema.json", schema::pipeline_schema().clone())
        .unwrap();
    let index = compiler
        .compile("file:///plume.schema.json", &mut schemas)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e:#}"));
    (schemas, index)
}

/// A file as the loader reads it (YAML, `${VAR:-default}` interpolated), as JSON.
fn as_json(file: &Path, env: &dyn Fn(&str) -> Option<String>) -> serde_json::Value {
    let text = std::fs::read_to_string(file).unwrap();
    let mut node = yaml::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let problems = yaml::interpolate(&mut node, env);
    assert!(problems.is_empty(), "{}: {problems:?}", file.display());
    yaml::to_json(&node)
}

#[test]
fn shipped_pipelines_are_valid_against_the_json_schema_and_bad_files_are_not() {
    let (schemas, index) = compiled_schema();
    let example = |name: &str| (name == "PLUME_WEBHOOK_URL").then(|| "https://hooks.example.com/air".to_string());
    for file in yaml_files(&root().join("pipelines")) {
        let json = as_json(&file, &example);
        if let Err(e) = schemas.validate(&json, index) {
            panic!("{} does not fit the schema:\n{e:#}", file.display());
        }
    }
    // the README's example too
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Writing a pipeline").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let json = yaml::to_json(&yaml::parse(&section[start..end]).unwrap());
    assert!(schemas.validate(&json, index).is_ok());

    // what the types say (unknown and missing keys, wrong types, unknown kinds and values, a
    // duration without a unit) the schema says too; what only `validate` knows it does not
    let refused = [
        "unknown-key",
        "unknown-operator",
        "wrong-type",
        "missing-required-key",
        "bare-number-duration",
        "duration-in-words",
        "several-errors",
    ];
    for name in refused {
        let file = root().join(format!("tests/bad_pipelines/{name}.yaml"));
        let json = as_json(&file, &test_env);
        assert!(schemas.validate(&json, index).is_err(), "{name} fits the schema");
    }
    let file = root().join("tests/bad_pipelines/exit-above-enter.yaml");
    assert!(schemas.validate(&as_json(&file, &test_env), index).is_ok());
}

#[test]
fn plume_schema_prints_the_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_plume"))
        .arg("schema")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(&printed, schema::pipeline_schema());
    assert_eq!(printed["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn validation_and_compilation_agree_on_thresholds() {
    let with = |threshold: &str| {
        let text = format!(
            "version: 1\npipeline: t\ndecode: {{ fields: {{ pm25: {{}}, co2: {{}} }} }}\noperators:\n  - {threshold}\n"
        );
        let spec = parse_pipeline("t.yaml", &text, &|_| None).map_err(|d| d.to_string())?;
        CompiledPipeline::compile(spec).map(|_| ()).map_err(|e| e.to_string())
    };
    // `relative_to` alone is "above `factor` × the other field": valid, and it compiles
    assert_eq!(
        with("threshold: { field: pm25, relative_to: co2, factor: 1.5 }"),
        Ok(())
    );
    assert_eq!(with("threshold: { field: pm25, below: 3 }"), Ok(()));
    let none = with("threshold: { field: pm25 }").unwrap_err();
    assert!(
        none.ends_with("a threshold needs `above`, `below` or `relative_to`"),
        "{none}"
    );
    let both = with("threshold: { field: pm25, above: 5, below: 3 }").unwrap_err();
    assert!(both.ends_with("give either `above` or `below`, not both"), "{both}");
}

#[test]
fn the_readme_example_pipeline_is_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Writing a pipeline").expect("README has the section")..];
    let start = section.find("```yaml\n").expect("the section has a YAML example") + "```yaml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let spec = parse_pipeline("README.md", &section[start..end], &|_| None).unwrap_or_else(|d| panic!("{d}"));
    assert!(!spec::pipeline_hash(&spec).is_empty());
}
