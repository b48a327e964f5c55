//! The labelled fleet end to end: `plume generate fleet` writes readings and a ground truth that
//! agree with each other; `plume run` runs the candidate (`pipelines/score/fleet.yaml`) and the
//! plain threshold baseline on them; `plume score --json` measures both. What is asserted is
//! what holds today (see BENCHMARKS.md and scripts/score-fleet for the numbers at full size).

use std::path::{Path, PathBuf};
use std::process::Command;

use plume::workload::fleet::{TruthKind, TruthRecord};

const PLUME: &str = env!("CARGO_BIN_EXE_plume");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn generate(dir: &Path) -> (PathBuf, PathBuf) {
    let (readings, truth) = (dir.join("readings.jsonl"), dir.join("truth.jsonl"));
    run_ok(
        Command::new(PLUME)
            .args(["generate", "fleet", "--devices", "20", "--days", "1", "--seed", "1"])
            .args([
                "--out".as_ref(),
                readings.as_os_str(),
                "--truth".as_ref(),
                truth.as_os_str(),
            ]),
    );
    (readings, truth)
}

/// Runs `pipelines/score/<name>.yaml` and scores it: the `--json` score.
fn run_and_score(dir: &Path, name: &str, readings: &Path, truth: &Path) -> serde_json::Value {
    let (records, pages) = (
        dir.join(format!("records-{name}.jsonl")),
        dir.join(format!("pages-{name}.jsonl")),
    );
    run_ok(
        Command::new(PLUME)
            .current_dir(root())
            .args(["run", &format!("pipelines/score/{name}.yaml"), "--no-checkpoints"])
            .env("PLUME_INPUT", readings)
            .env("PLUME_OUTPUT", &records)
            .env("PLUME_PAGES", &pages),
    );
    if !pages.exists() {
        std::fs::write(&pages, "").unwrap();
    }
    let score = run_ok(Command::new(PLUME).args(["score", "--json"]).args([
        "--truth".as_ref(),
        truth.as_os_str(),
        "--records".as_ref(),
        records.as_os_str(),
        "--pages".as_ref(),
        pages.as_os_str(),
    ]));
    serde_json::from_str(&score).unwrap()
}

#[test]
fn the_truth_matches_the_readings_and_the_scorer_ranks_the_candidate_above_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let (readings, truth_path) = generate(dir.path());

    // the ground truth describes the readings written
    let truth: Vec<TruthRecord> = json_lines(&truth_path);
    let values: Vec<serde_json::Value> = json_lines(&readings);
    let of = |kind: TruthKind| truth.iter().filter(move |t| t.kind == kind);
    for kind in [TruthKind::Episode, TruthKind::Offline, TruthKind::Duplicate] {
        assert!(of(kind).count() > 0, "no {kind:?} in a day of 20 devices");
    }
    let mut backfilled = 0;
    for v in &values {
        let device = v["device"].as_str().unwrap();
        let (ts, received) = (v["ts"].as_i64().unwrap(), v["received"].as_i64().unwrap());
        for o in of(TruthKind::Offline).filter(|o| o.device == device) {
            assert!(ts < o.start || ts > o.end, "{device} sent {ts} while offline {o:?}");
        }
        for b in of(TruthKind::Backfill).filter(|b| b.device == device && (b.start..=b.end).contains(&ts)) {
            backfilled += 1;
            assert!(received >= b.received.unwrap(), "{v} arrived before the upload {b:?}");
            assert!(
                received - ts >= b.received.unwrap() - b.end,
                "{v}: not held back for the outage"
            );
        }
    }
    let expected_backfilled: i64 = of(TruthKind::Backfill).map(|b| (b.end - b.start) / 60_000 + 1).sum();
    assert!(
        backfilled as i64 >= expected_backfilled,
        "{backfilled} of {expected_backfilled}"
    );
    let malformed = std::fs::read_to_string(&readings)
        .unwrap()
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
        .count();
    assert_eq!(malformed, of(TruthKind::Malformed).count());

    let fleet = run_and_score(dir.path(), "fleet", &readings, &truth_path);
    let threshold = run_and_score(dir.path(), "threshold", &readings, &truth_path);
    let number = |score: &serde_json::Value, key: &str| score[key].as_f64().unwrap_or(f64::NAN);
    eprintln!("fleet: {fleet}\nthreshold: {threshold}");

    // both find the true episodes; the threshold flaps at their edges and pages history
    assert!(number(&fleet, "episodes_scored") > 10.0);
    assert!(number(&fleet, "recall") >= 0.95 && number(&threshold, "recall") >= 0.95);
    assert!(number(&threshold, "flaps") > number(&fleet, "flaps"));
    assert!(number(&fleet, "precision") >= number(&threshold, "precision"));
    assert!(number(&threshold, "pages_from_backfill") > number(&fleet, "pages_from_backfill"));
    // a stuck PM2.5 sensor never opens an event of the candidate (its flatline flag, suppressed)
    assert_eq!(number(&fleet, "alerts_on_stuck"), 0.0);
    // every malformed line, and nothing else, is a dead letter of both runs
    assert_eq!(fleet["records"]["dead_letter"].as_u64().unwrap_or(0), malformed as u64);
    assert_eq!(
        threshold["records"]["dead_letter"].as_u64().unwrap_or(0),
        malformed as u64
    );
}

/// Issue 15's targets, on a small fleet (BENCHMARKS.md has them at 200 devices × 7 days × 3
/// seeds): the candidate finds the true episodes without flapping, pages no history, reports
/// every silence within two report intervals of `offline_after`, never ends an event for lack
/// of readings; and a live run (paced by event time) writes exactly the records and pages of a
/// replay at full speed. Before `runtime.clock: event` and `decode.arrival`, offline was never
/// found in a replay and every replayed alert was marked as backfill.
#[test]
fn the_candidate_meets_the_alerting_targets_and_a_paced_run_gives_the_replays_records() {
    let dir = tempfile::tempdir().unwrap();
    let (readings, truth) = generate(dir.path());
    let score = run_and_score(dir.path(), "fleet", &readings, &truth);
    let number = |key: &str| score[key].as_f64().unwrap_or(f64::NAN);
    eprintln!("fleet: {score}");
    assert!(number("recall") >= 0.995, "{score}");
    assert!(number("precision") >= 0.99, "{score}");
    assert_eq!(number("flaps"), 0.0, "{score}");
    assert_eq!(number("pages_from_backfill"), 0.0, "{score}");
    assert!(number("offline_long") > 0.0, "{score}");
    assert_eq!(number("offline_detected"), number("offline_long"), "{score}");
    assert_eq!(
        number("offline_within_two_intervals"),
        number("offline_long"),
        "{score}"
    );
    assert_eq!(number("clean_air_ends"), 0.0, "{score}");

    // live: the same file paced by event time (a day in about 4 s)
    let text = std::fs::read_to_string(root().join("pipelines/score/fleet.yaml")).unwrap();
    let paced = text.replacen(
        r#"  - file: { path: "${PLUME_INPUT:-readings.jsonl}" }"#,
        r#"  - file: { path: "${PLUME_INPUT:-readings.jsonl}", pace: event_time, speed: 20000 }"#,
        1,
    );
    assert_ne!(paced, text, "the candidate's source line changed");
    let paced_pipeline = dir.path().join("fleet-paced.yaml");
    std::fs::write(&paced_pipeline, paced).unwrap();
    let (records, pages) = (
        dir.path().join("records-live.jsonl"),
        dir.path().join("pages-live.jsonl"),
    );
    let started = std::time::Instant::now();
    run_ok(
        Command::new(PLUME)
            .args(["run".as_ref(), paced_pipeline.as_os_str(), "--no-checkpoints".as_ref()])
            .env("PLUME_INPUT", &readings)
            .env("PLUME_OUTPUT", &records)
            .env("PLUME_PAGES", &pages),
    );
    assert!(
        started.elapsed() > std::time::Duration::from_secs(2),
        "the live run was paced"
    );
    let sorted = |path: &Path| {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains(r#""type":"summary""#))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let replayed = sorted(&dir.path().join("records-fleet.jsonl"));
    assert!(replayed.len() > 1000);
    assert!(
        sorted(&records) == replayed,
        "the live run's records differ from the replay's"
    );
    assert!(
        sorted(&pages) == sorted(&dir.path().join("pages-fleet.jsonl")),
        "pages differ"
    );
}

/// `tests/pipeline_files.rs` reads `pipelines/` only, not its folders: the scoring pipelines are
/// validated here.
#[test]
fn the_scoring_pipelines_are_valid() {
    let out = run_ok(Command::new(PLUME).current_dir(root()).args([
        "validate",
        "pipelines/score/threshold.yaml",
        "pipelines/score/hysteresis.yaml",
        "pipelines/score/fleet.yaml",
    ]));
    assert_eq!(out.matches(": ok: pipeline").count(), 3, "{out}");
}
