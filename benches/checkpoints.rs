//! Checkpoint costs, through the release `plume` binary (`cargo bench --bench checkpoints`):
//!
//! 1. 100,000 and 1,000,000 dirty devices in one checkpoint: total time, write time, the
//!    longest shard pause, and stored bytes per device (from the `checkpoint durable` log line
//!    and the size of `live/`).
//! 2. Start-up with 1,000,000 devices in the store: time from process start to the first
//!    readings reaching the devices (devices load lazily, so it must not grow with the store).
//! 3. aq1 throughput with checkpoints (every 10 s, and every 1 s) beside the same run without
//!    checkpoints, alternating, medians.
//!
//! `PLUME_BENCH_QUICK=1` runs smaller sizes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;

use common::plume;

/// One reading per device, `devices` devices.
fn one_reading_each(path: &Path, devices: u64, prefix: &str) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..devices {
        writeln!(
            w,
            r#"{{"device":"{prefix}{i:07}","ts":{},"pm25":12.5,"co2":450.0}}"#,
            1_700_000_000_000u64 + i
        )
        .unwrap();
    }
}

fn log_field(log: &str, line_has: &str, field: &str) -> Option<f64> {
    let line = log.lines().filter(|l| l.contains(line_has)).last()?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() { dir_size(&e.path()) } else { m.len() }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn run(pipeline: &str, input: &Path, output: &Path, extra: &[&str]) -> (f64, String) {
    let started = Instant::now();
    let out = plume()
        .env("PLUME_LOG", "plume=info")
        .args(["run", pipeline, "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "plume failed: {log}");
    (secs, log)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let quick = std::env::var_os("PLUME_BENCH_QUICK").is_some();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    println!("== checkpoint of many dirty devices ==");
    let sizes: &[u64] = if quick {
        &[10_000, 100_000]
    } else {
        &[100_000, 1_000_000]
    };
    let mut big_state: Option<(PathBuf, u64)> = None;
    for &n in sizes {
        let input = dir.join(format!("devices-{n}.jsonl"));
        one_reading_each(&input, n, "d");
        let state = dir.join(format!("state-{n}"));
        let (secs, log) = run(
            "pipelines/aq1.yaml",
            &input,
            &dir.join("o.jsonl"),
            &["--data-dir", state.to_str().unwrap(), "--checkpoint-interval", "1h"],
        );
        let total = log_field(&log, "checkpoint durable", "total_ms").unwrap_or(f64::NAN);
        let write = log_field(&log, "checkpoint durable", "write_ms").unwrap_or(f64::NAN);
        let pause = log_field(&log, "checkpoint durable", "pause_ms").unwrap_or(f64::NAN);
        let bytes = dir_size(&state.join("live"));
        println!(
            "{n:>9} dirty devices: checkpoint {total:.0} ms (write {write:.0} ms, longest shard pause {pause:.0} ms); live store {:.1} MiB = {:.0} bytes/device; whole run {secs:.1} s",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / n as f64
        );
        big_state = Some((state, n));
    }
    if let Some((state, n)) = big_state {
        println!("== start-up with {n} devices in the store ==");
        let mut firsts = Vec::new();
        for round in 0..3 {
            // a new file each time: a file the store has read to its end gives no readings
            let input = dir.join(format!("one-{round}.jsonl"));
            one_reading_each(&input, 1, &format!("new-{round}-"));
            let (_, log) = run(
                "pipelines/aq1.yaml",
                &input,
                &dir.join("o2.jsonl"),
                &["--data-dir", state.to_str().unwrap(), "--allow-pipeline-change"],
            );
            firsts.push(log_field(&log, "first readings reached the devices", "since_start_ms").unwrap_or(f64::NAN));
        }
        let input = dir.join("one-fresh.jsonl");
        one_reading_each(&input, 1, "new-");
        let empty = dir.join("empty-state");
        let mut fresh = Vec::new();
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(&empty);
            let (_, log) = run(
                "pipelines/aq1.yaml",
                &input,
                &dir.join("o3.jsonl"),
                &["--data-dir", empty.to_str().unwrap()],
            );
            fresh.push(log_field(&log, "first readings reached the devices", "since_start_ms").unwrap_or(f64::NAN));
        }
        println!(
            "start to first reading processed: {:.1} ms with {n} devices stored, {:.1} ms with an empty store (medians of 3)",
            median(firsts),
            median(fresh)
        );
    }
    println!("== aq1 throughput with and without checkpoints ==");
    let (devices, events) = if quick { (1_000, 500_000) } else { (10_000, 5_000_000) };
    let input = common::aq1_input(dir, devices, events, 1);
    let mut none = Vec::new();
    let mut every10 = Vec::new();
    let mut every1 = Vec::new();
    for round in 0..3 {
        let (s, _) = run(
            "pipelines/aq1.yaml",
            &input,
            &dir.join("a.jsonl"),
            &["--no-checkpoints"],
        );
        none.push(events as f64 / s);
        let st = dir.join(format!("aq1-state-10-{round}"));
        let (s, _) = run(
            "pipelines/aq1.yaml",
            &input,
            &dir.join("b.jsonl"),
            &["--data-dir", st.to_str().unwrap(), "--checkpoint-interval", "10s"],
        );
        every10.push(events as f64 / s);
        let st = dir.join(format!("aq1-state-1-{round}"));
        let (s, _) = run(
            "pipelines/aq1.yaml",
            &input,
            &dir.join("c.jsonl"),
            &["--data-dir", st.to_str().unwrap(), "--checkpoint-interval", "1s"],
        );
        every1.push(events as f64 / s);
    }
    let (n, a, b) = (median(none), median(every10), median(every1));
    println!(
        "aq1 {devices} devices, {events} readings, whole process: no checkpoints {n:.0}/s; every 10 s {a:.0}/s ({:+.1}%); every 1 s {b:.0}/s ({:+.1}%) (medians of 3, alternating)",
        (a / n - 1.0) * 100.0,
        (b / n - 1.0) * 100.0
    );
}
