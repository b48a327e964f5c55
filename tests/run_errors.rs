//! `plume run` ends with a clear error, and does not hang, when a source cannot start.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_missing_input_file_ends_the_run_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-input.jsonl");
    let mut child = plume()
        .args(["run", "pipelines/aq1.yaml", "--no-checkpoints", "--input"])
        .arg(&missing)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("plume run with a missing input did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the run failed: {stderr}");
    assert!(
        stderr.contains("no-such-input.jsonl") && stderr.contains("opening"),
        "the error names the file and what failed: {stderr}"
    );
}
