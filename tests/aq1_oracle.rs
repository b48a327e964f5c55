//! aq1 through the plain loop and through the full actor path (file source -> routers ->
//! shard supervisors -> device actors -> output hub -> file sink) gives the summary line of the
//! expected results kept in `tests/fixtures/aq1/`, and the actor path gives exactly the oracle's
//! records, for several seeds and sizes, with 1, 2 and 4 shards. plume's own generator writes
//! the reference generator's bytes (checked against the reference input's recorded SHA-256).

mod common;

use common::*;

/// The expected-results file of a case in `tests/fixtures/aq1/`.
fn expected(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(workloads().join(name)).unwrap()).unwrap()
}

#[test]
fn the_generator_writes_the_reference_generators_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 50, 20_000, 1);
    let bytes = std::fs::read(&input).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let want = expected("small.expected.json");
    assert_eq!(hex, want["input"]["sha256"].as_str().unwrap(), "generated small input");
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 20_000);
}

#[test]
fn small_case_matches_the_expected_summary_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 50, 20_000, 1);
    let expected = expected_summary("small.expected.json");
    for (engine, extra) in [("plain", vec!["--engine", "plain"]), ("actors", vec!["--shards", "2"])] {
        let out = dir.path().join(format!("out-{engine}.jsonl"));
        plume_run("pipelines/aq1.yaml", &input, &out, &extra);
        assert_eq!(aq1_summary(&out), expected, "{engine}");
    }
}

#[test]
fn edge_cases_match_the_expected_summary_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let input = workloads().join("edge.jsonl");
    let expected = expected_summary("edge.expected.json");
    for (engine, extra) in [
        ("plain", vec!["--engine", "plain"]),
        ("actors1", vec!["--shards", "1"]),
        ("actors4", vec!["--shards", "4"]),
    ] {
        let out = dir.path().join(format!("out-{engine}.jsonl"));
        plume_run("pipelines/aq1.yaml", &input, &out, &extra);
        assert_eq!(aq1_summary(&out), expected, "{engine}");
    }
}

#[test]
fn edge_case_records_are_the_expected_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    plume_run(
        "pipelines/aq1.yaml",
        &workloads().join("edge.jsonl"),
        &out,
        &["--shards", "2"],
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workloads().join("edge.expected.json")).unwrap()).unwrap();
    // per device, the expected records in order, in plume's schema
    let mut want: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for r in expected["records"].as_array().unwrap() {
        want.entry(r["device"].as_str().unwrap().to_string())
            .or_default()
            .push(r.clone());
    }
    let got = lines_by_device(&out);
    for (device, records) in want {
        let lines = &got[&device];
        let mut i = 0;
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let kind = v["type"].as_str().unwrap();
            if kind == "late" {
                continue;
            }
            let r = &records[i];
            assert_eq!(kind, r["type"].as_str().unwrap(), "{device} record {i}: {line}");
            match kind {
                "window" => {
                    for k in ["window_start", "count", "pm25_avg", "pm25_max", "co2_avg"] {
                        assert_eq!(v[k].as_f64(), r[k].as_f64(), "{device} {k}: {line}");
                    }
                }
                "event_start" => assert_eq!(v["start_ts"], r["ts"], "{line}"),
                "event_end" => {
                    assert_eq!(v["start_ts"], r["start_ts"]);
                    assert_eq!(v["end_ts"], r["end_ts"]);
                    assert_eq!(v["peak"].as_f64(), r["peak_pm25"].as_f64());
                }
                "baseline" => assert_eq!(v["baseline"].as_f64(), r["baseline"].as_f64(), "{line}"),
                other => panic!("unexpected record type {other}"),
            }
            i += 1;
        }
        assert_eq!(i, records.len(), "{device}: all expected records present");
    }
}

#[test]
fn actor_path_equals_the_plain_oracle_for_seeds_sizes_and_shard_counts() {
    let dir = tempfile::tempdir().unwrap();
    for (devices, events, seed) in [(7, 5_000, 3), (200, 60_000, 11), (1_000, 150_000, 42)] {
        let input = aq1_input(dir.path(), devices, events, seed);
        let oracle = dir.path().join(format!("oracle-{seed}.jsonl"));
        plume_run("pipelines/aq1.yaml", &input, &oracle, &["--engine", "plain"]);
        let oracle_summary = aq1_summary(&oracle);
        for shards in ["1", "2", "4"] {
            let out = dir.path().join(format!("actors-{seed}-{shards}.jsonl"));
            plume_run("pipelines/aq1.yaml", &input, &out, &["--shards", shards]);
            assert_eq!(aq1_summary(&out), oracle_summary, "seed {seed}, {shards} shards");
            assert_same_output(&oracle, &out);
        }
    }
}
