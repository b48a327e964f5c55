//! `plume run` as a process: it ends with a clear error, and does not hang, when a source cannot
//! start; its memory is backed without transparent huge pages unless `MIMALLOC_ALLOW_THP` asks
//! for them.

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

/// A resumed run whose output file was emptied outside plume is refused, and the error says
/// why once (it used to print its cause twice: in its own text and again as its source).
#[test]
fn a_resume_refused_for_an_emptied_output_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..200)
        .map(|i| {
            format!(
                "{{\"device\":\"d{}\",\"ts\":{},\"pm25\":1.5,\"co2\":450.0}}\n",
                i % 7,
                1_700_000_000_000u64 + i * 60_000
            )
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let output = dir.path().join("out.jsonl");
    let run = || {
        plume()
            .args(["run", "pipelines/aq1.yaml", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(
        std::fs::metadata(&output).unwrap().len() > 0,
        "the first run wrote records"
    );
    std::fs::write(&output, "").unwrap();
    let second = run();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "refused with an error: {err}");
    assert!(
        err.contains("out.jsonl") && err.contains("resuming") && err.contains("it was changed outside plume"),
        "names the file, the step and the reason: {err}"
    );
    assert_eq!(err.matches("shorter than").count(), 1, "the reason once: {err}");
}

/// `THP_enabled` of a running `plume run` reading its standard input, once its runtime threads
/// exist (so `main` has run past its first lines): `0` when the process turned huge pages off.
fn thp_enabled_of_a_run(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = plume();
    command
        .args([
            "run",
            "pipelines/aq1.yaml",
            "--no-checkpoints",
            "--input",
            "-",
            "--output",
        ])
        .arg(dir.path().join("out.jsonl"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    let seen = loop {
        let threads = proc_status_field(child.id(), "Threads:");
        if threads.as_deref().and_then(|t| t.parse::<u32>().ok()).unwrap_or(0) > 2 {
            break proc_status_field(child.id(), "THP_enabled:").unwrap_or_default();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "plume run did not start its threads within 30 s (Threads: {threads:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[test]
#[cfg(target_os = "linux")]
fn a_run_turns_transparent_huge_pages_off_unless_mimalloc_allow_thp_is_set() {
    assert_eq!(
        thp_enabled_of_a_run(&[]),
        "0",
        "plume turns huge pages off for its process"
    );
    // (a kernel built without huge pages reports 0 for every process)
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        return;
    }
    assert_eq!(
        thp_enabled_of_a_run(&[("MIMALLOC_ALLOW_THP", "1")]),
        "1",
        "MIMALLOC_ALLOW_THP leaves them to mimalloc"
    );
}
