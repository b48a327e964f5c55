//! Helpers shared by the integration tests: aq1 inputs, the plume binary, output comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The aq1 fixtures kept in the repository: the hand-written boundary-case input and the
/// expected results (`tests/fixtures/aq1/README.md` says where each comes from).
pub fn workloads() -> PathBuf {
    repo().join("tests/fixtures/aq1")
}

/// A random seed from the variable `name` (to repeat a run), or else from the clock.
pub fn seed_from_env(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A field of `/proc/<pid>/status` (`"Threads:"`, `"SigCgt:"`, …), trimmed; `None` once the
/// process or the field is not there.
pub fn proc_status_field(pid: u32, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

pub fn plume() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plume"));
    c.current_dir(repo());
    c
}

/// Generates (once per directory and arguments) an aq1 input with plume's own generator
/// (`plume generate aq1`, [`plume::workload`]).
pub fn aq1_input(dir: &Path, devices: u32, events: u64, seed: u64) -> PathBuf {
    let path = dir.join(format!("aq1-{devices}-{events}-{seed}.jsonl"));
    if !path.exists() {
        let partial = path.with_extension("partial");
        let file = std::fs::File::create(&partial).expect("creating the aq1 input");
        let spec = plume::workload::Aq1Spec {
            devices,
            readings: events,
            seed,
        };
        plume::workload::generate_aq1(spec, &mut std::io::BufWriter::with_capacity(1 << 20, file))
            .expect("generating the aq1 input");
        std::fs::rename(&partial, &path).expect("renaming the aq1 input");
    }
    path
}

/// `scripts/aq1-summary OUT` -> the summary line.
pub fn aq1_summary(output: &Path) -> String {
    let out = Command::new(repo().join("scripts/aq1-summary"))
        .arg(output)
        .output()
        .expect("aq1-summary runs");
    assert!(
        out.status.success(),
        "aq1-summary failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The expected summary line of an expected-results file in [`workloads`].
pub fn expected_summary(name: &str) -> String {
    let text = std::fs::read_to_string(workloads().join(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["summary_line"].as_str().unwrap().to_string()
}

/// Runs `plume run PIPELINE --input IN --output OUT [extra…]` and checks it succeeded.
/// Unless `extra` names a data directory, the run keeps its state next to `output`
/// (`OUT.state/`, emptied first), so every run checkpoints and none shares state.
pub fn plume_run(pipeline: &str, input: &Path, output: &Path, extra: &[&str]) {
    let mut cmd = plume();
    cmd.args(["run", pipeline, "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra);
    if !extra.iter().any(|a| *a == "--data-dir" || *a == "--no-checkpoints") {
        let state = output.with_extension("state");
        let _ = std::fs::remove_dir_all(&state);
        cmd.arg("--data-dir").arg(state);
    }
    let out = cmd.output().expect("plume runs");
    assert!(
        out.status.success(),
        "plume run {pipeline} {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output lines grouped by device (records without a device under ""), each device's lines in
/// file order. Two runs are equivalent when these are equal: the order across devices may
/// differ, each device's own order may not.
pub fn lines_by_device(output: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(output).unwrap();
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let device = v.get("device").and_then(|d| d.as_str()).unwrap_or("").to_string();
        map.entry(device).or_default().push(line.to_string());
    }
    for lines in map.values_mut() {
        // dead letters and the summary have no device: their order is not defined
        let _ = lines;
    }
    if let Some(v) = map.get_mut("") {
        v.sort();
    }
    map
}

/// Output records by device (as [`lines_by_device`] groups them) without their ids and pipeline
/// names (ids hash the pipeline name, so runs of differently named pipelines compare equal).
pub fn records_without_ids(lines: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<serde_json::Value>> {
    lines
        .into_iter()
        .map(|(device, lines)| {
            let records = lines
                .iter()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let o = v.as_object_mut().unwrap();
                    o.remove("id");
                    o.remove("pipeline");
                    v
                })
                .collect();
            (device, records)
        })
        .collect()
}

pub fn assert_same_output(a: &Path, b: &Path) {
    let (x, y) = (lines_by_device(a), lines_by_device(b));
    assert_eq!(x.len(), y.len(), "different device sets");
    for (device, lines) in &x {
        let other = y
            .get(device)
            .unwrap_or_else(|| panic!("device {device} missing from {}", b.display()));
        if lines != other {
            let first = lines
                .iter()
                .zip(other)
                .position(|(p, q)| p != q)
                .unwrap_or(lines.len().min(other.len()));
            panic!(
                "device {device:?} differs at its record {first}:\n  {}: {:?}\n  {}: {:?}\n({} vs {} records)",
                a.display(),
                lines.get(first),
                b.display(),
                other.get(first),
                lines.len(),
                other.len()
            );
        }
    }
}

/// The aq1 lines of `input` as `(device, line)` records, in file order (Kafka records; MQTT
/// messages with the device in the topic).
pub fn aq1_records(input: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_to_string(input)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["device"].as_str().unwrap().to_string(), line.as_bytes().to_vec())
        })
        .collect()
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, read to the end): (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((status, body))
}
