//! A notifier's policy across a crash, through `plume run` with a data directory and a local
//! webhook receiver that checks Standard Webhooks signatures: the run is SIGKILLed inside a
//! cooldown and with notifications held by quiet hours, and restarted on the same data directory
//! with more input. The cooldown begun before the crash still holds after it, and the held
//! notifications go out in one digest when the quiet hours end (in event time), not at the
//! restart.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::io::Write;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use receiver::{Receiver, Reply, verify_standard_webhook, wait_for};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// PM2.5 events to a signed webhook with a 2 h cooldown and quiet hours 00:00–06:00 UTC.
const PIPELINE: &str = r#"
version: 1
pipeline: policy_restart
sources:
  - file: { path: "-" }
decode:
  format: json
  device: { field: device }
  time: { field: ts, unit: ms }
  fields:
    pm25: { type: float, required: true }
operators:
  - hysteresis:
      name: pm25_event
      field: pm25
      enter: 35
      exit: 25
outputs:
  - when: all
    to:
      - file: { path: "${PLUME_OUTPUT}" }
  - when: pm25_event
    events: [start, end]
    to:
      - webhook:
          url: "${PLUME_WEBHOOK_URL}"
          secret_env: PLUME_WEBHOOK_SECRET
          backoff: 50ms
          policy:
            cooldown: 2h
            quiet_hours: { from: "00:00", to: "06:00", timezone: UTC }
"#;

/// 2024-01-15 00:00 UTC (ms); `at(h, m)` is that day's time, `at(24 + h, m)` the next day's.
const DAY: i64 = 1_705_276_800_000;

fn at(hours: i64, minutes: i64) -> i64 {
    DAY + (hours * 60 + minutes) * 60_000
}

fn reading(device: &str, ts: i64, pm25: f64) -> String {
    format!("{{\"device\":\"{device}\",\"ts\":{ts},\"pm25\":{pm25}}}\n")
}

/// An event of `device`: a high reading at `ts`, a normal one 5 minutes later.
fn event(device: &str, ts: i64) -> String {
    reading(device, ts, 50.0) + &reading(device, ts + 300_000, 10.0)
}

fn run(pipeline: &std::path::Path, state: &std::path::Path, out: &std::path::Path, url: &str) -> Child {
    common::plume()
        .args(["run"])
        .arg(pipeline)
        .args(["--input", "-", "--checkpoint-interval", "100ms", "--data-dir"])
        .arg(state)
        .env("PLUME_OUTPUT", out)
        .env("PLUME_WEBHOOK_URL", url)
        .env("PLUME_WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The id and input position (bytes of standard input) of the newest retained checkpoint of
/// `state`.
fn newest_checkpoint(state: &std::path::Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(state.join("retained")) else {
        return (0, 0);
    };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("plume-manifest.json")).ok())
        .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter_map(|m| Some((m["id"].as_u64()?, m["sources"][0]["offset"].as_u64()?)))
        .max()
        .unwrap_or((0, 0))
}

/// Writes `lines` to a run that started after checkpoint `after`, then a harmless reading now
/// and then (a silent standard input takes no checkpoint: its barrier goes with its next chunk)
/// until a checkpoint of this run covers `lines`.
fn write_until_checkpointed(stdin: &mut ChildStdin, state: &std::path::Path, after: u64, lines: &str) {
    stdin.write_all(lines.as_bytes()).unwrap();
    let covered = lines.len() as u64;
    let tick = reading("tick", at(0, 30), 5.0);
    assert!(
        wait_for(Duration::from_secs(60), || {
            stdin.write_all(tick.as_bytes()).unwrap();
            let (id, offset) = newest_checkpoint(state);
            id > after && offset >= covered
        }),
        "no checkpoint covered the input: {:?}, {covered} bytes",
        newest_checkpoint(state)
    );
}

#[test]
fn a_cooldown_and_held_notifications_survive_a_sigkill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("policy.yaml");
    std::fs::write(&pipeline, PIPELINE).unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("out.jsonl");
    let rx = Receiver::start(Arc::new(AtomicU64::new(0)), |_| Reply::ok());
    let url = rx.url("/hook");

    // first run: `a` at 23:00 is notified (start and end); `b` at 00:10 is held (quiet hours)
    let mut first = run(&pipeline, &state, &out, &url);
    let mut stdin = first.stdin.take().unwrap();
    write_until_checkpointed(
        &mut stdin,
        &state,
        0,
        &(event("a", at(23, 0)) + &event("b", at(24, 10))),
    );
    assert!(
        wait_for(Duration::from_secs(30), || rx.count() >= 2),
        "a's start and end were delivered: {} requests",
        rx.count()
    );
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap(); // SIGKILL: no end-of-input flush, no digest at the end
    assert!(!first.wait().unwrap().success(), "killed, not finished");
    drop(stdin);
    let before_restart = rx.count();
    let (last_of_first, _) = newest_checkpoint(&state);
    assert_eq!(before_restart, 2, "only a's start and end before the crash");

    // second run, more input: `a` again at 23:50 (inside a's cooldown), `c` at 01:00 (held),
    // then `d` at 06:30 (after the quiet hours: notified, and the digest goes out)
    let mut second = run(&pipeline, &state, &out, &url);
    let mut stdin = second.stdin.take().unwrap();
    let more = event("a", at(23, 50)) + &event("c", at(25, 0));
    write_until_checkpointed(&mut stdin, &state, last_of_first, &more);
    std::thread::sleep(Duration::from_millis(500));
    let during_quiet_hours = rx.count();
    stdin.write_all(event("d", at(30, 30)).as_bytes()).unwrap();
    drop(stdin);
    let done = second.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "the restarted run failed:\n{log}");

    let mut requests = rx.requests();
    requests.sort_by_key(|r| r.seq);
    let bodies: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}"));
            serde_json::from_str(&r.body).unwrap()
        })
        .collect();
    let of = |device: &str| -> Vec<String> {
        bodies
            .iter()
            .filter(|b| b["device"] == device)
            .map(|b| b["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        of("a"),
        ["event_start", "event_end"],
        "a's second event fell inside the cooldown begun before the crash:\n{log}"
    );
    assert_eq!(
        during_quiet_hours, before_restart,
        "nothing is sent at the restart while the event time is still inside the quiet hours:\n{log}"
    );
    assert_eq!(of("d"), ["event_start", "event_end"]);
    let digests: Vec<&serde_json::Value> = bodies.iter().filter(|b| b["type"] == "digest").collect();
    assert_eq!(digests.len(), 1, "one digest: {bodies:#?}");
    let items: Vec<(String, String)> = digests[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["device"].as_str().unwrap().to_string(),
                i["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("b".to_string(), "event_start".to_string()),
            ("b".to_string(), "event_end".to_string()),
            ("c".to_string(), "event_start".to_string()),
            ("c".to_string(), "event_end".to_string()),
        ],
        "the digest holds what was held before and after the crash"
    );
}

/// PM2.5 events of a paced file to a signed webhook with a 1 h cooldown.
const PACED_PIPELINE: &str = r#"
version: 1
pipeline: policy_replay
sources:
  - file: { path: "${PLUME_INPUT}", pace: event_time, speed: 3600 }
decode:
  format: json
  device: { field: device }
  time: { field: ts, unit: ms }
  fields:
    pm25: { type: float, required: true }
operators:
  - hysteresis:
      name: pm25_event
      field: pm25
      enter: 35
      exit: 25
outputs:
  - when: all
    to:
      - file: { path: "${PLUME_OUTPUT}" }
  - when: pm25_event
    events: [start, end]
    to:
      - webhook:
          url: "${PLUME_WEBHOOK_URL}"
          secret_env: PLUME_WEBHOOK_SECRET
          backoff: 50ms
          policy: { cooldown: 1h }
"#;

/// 20 devices, a reading every 30 s for 3 hours (3 s at the pipeline's speed), an event of each
/// every 20 minutes: two of every three starts fall inside the cooldown of the one before. (The
/// devices stay within seconds of each other in event time, well inside the policy's lag
/// allowance, so the decisions do not depend on how the shards' records interleave.)
fn paced_input(path: &std::path::Path) {
    let mut text = String::new();
    for i in 0..360i64 {
        for d in 0..20i64 {
            let pm25 = if (i + d * 7) % 40 < 4 { 50.0 } else { 10.0 };
            text += &reading(&format!("room-{d}"), DAY + i * 30_000 + d * 100, pm25);
        }
    }
    std::fs::write(path, text).unwrap();
}

/// The distinct valid webhook-ids a receiver got.
fn delivered(rx: &Receiver) -> std::collections::BTreeSet<String> {
    rx.requests()
        .iter()
        .map(|r| verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn paced_run(dir: &std::path::Path, name: &str, url: &str) -> std::process::Command {
    let mut c = common::plume();
    c.args(["run"])
        .arg(dir.join("paced.yaml"))
        .args(["--checkpoint-interval", "100ms", "--data-dir"])
        .arg(dir.join(format!("{name}.state")))
        .env("PLUME_INPUT", dir.join("in.jsonl"))
        .env("PLUME_OUTPUT", dir.join(format!("{name}.jsonl")))
        .env("PLUME_WEBHOOK_URL", url)
        .env("PLUME_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null());
    c
}

#[test]
fn a_run_killed_midway_and_restarted_sends_what_an_unbroken_run_sends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("paced.yaml"), PACED_PIPELINE).unwrap();
    let input = dir.path().join("in.jsonl");
    paced_input(&input);
    let size = std::fs::metadata(&input).unwrap().len();

    let unbroken_rx = Receiver::start(Arc::new(AtomicU64::new(0)), |_| Reply::ok());
    let unbroken = paced_run(dir.path(), "unbroken", &unbroken_rx.url("/"))
        .output()
        .unwrap();
    assert!(
        unbroken.status.success(),
        "{}",
        String::from_utf8_lossy(&unbroken.stderr)
    );
    let want = delivered(&unbroken_rx);
    // 20 devices × 9 events in 3 h, one start in three notified (with its end)
    assert!(
        (100..=140).contains(&want.len()),
        "{} notifications: the cooldown suppressed about two thirds of 360 records",
        want.len()
    );

    let rx = Receiver::start(Arc::new(AtomicU64::new(0)), |_| Reply::ok());
    let state = dir.path().join("killed.state");
    let log = std::fs::File::create(dir.path().join("killed.log")).unwrap();
    let mut first = paced_run(dir.path(), "killed", &rx.url("/"))
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || rx.count() >= 20
            && newest_checkpoint(&state).0 >= 3),
        "{} requests, checkpoint {:?}",
        rx.count(),
        newest_checkpoint(&state)
    );
    first.kill().unwrap(); // SIGKILL
    assert!(!first.wait().unwrap().success(), "killed, not finished");
    let (_, offset) = newest_checkpoint(&state);
    assert!(
        offset < size,
        "killed before the input's end (checkpoint at {offset} of {size})"
    );
    let second = paced_run(dir.path(), "killed", &rx.url("/")).output().unwrap();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{log}");
    let got = delivered(&rx);
    let extra: Vec<&String> = got.difference(&want).collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the restart replayed from checkpoint offset {offset} and decided differently: \
         {} sent that the unbroken run suppressed, {} missing\n{log}",
        extra.len(),
        missing.len()
    );
}

/// The records of `devices` devices' pm25 events (start, end), one every 10 minutes of event
/// time from 2023-11-14 22:13:20 UTC, with deterministic ids.
fn event_records(devices: usize, events: usize) -> Vec<plume::output::OutputRecord> {
    let mut out = Vec::new();
    for e in 0..events {
        for d in 0..devices {
            let device = format!("room-{d}");
            let start = 1_700_000_000_000i64 + e as i64 * 600_000;
            for (kind, n) in [("event_start", 0u128), ("event_end", 1)] {
                let id: u128 = ((d as u128) << 64) | ((e as u128) << 1) | n;
                let json = if kind == "event_start" {
                    format!(
                        r#"{{"v":1,"type":"event_start","operator":"pm25_event","device":"{device}","id":"{id:032x}","field":"pm25","start_ts":{start},"value":40.5,"peak":48.0}}"#
                    )
                } else {
                    format!(
                        r#"{{"v":1,"type":"event_end","operator":"pm25_event","device":"{device}","id":"{id:032x}","field":"pm25","start_ts":{start},"end_ts":{},"duration_ms":300000,"peak":48.0,"mean":41.5}}"#,
                        start + 300_000
                    )
                };
                out.push(plume::output::OutputRecord {
                    op: Some(1),
                    kind: plume::model::RecordKind::parse(kind).unwrap(),
                    id,
                    device: Some(device.clone().into()),
                    json: json.into(),
                    backfill: false,
                });
            }
        }
    }
    out
}

/// A webhook notifier with a 25 min cooldown whose outbox and policy state are in `store`.
fn stored_notifier(store: &Arc<plume::store::StateStore>, url: &str) -> plume::notify::NotifierSink {
    // SAFETY: every test of this file that reads the variable sets the same value
    unsafe { std::env::set_var("PLUME_TEST_POLICY_SECRET", SECRET) };
    let mut spec = plume::spec::WebhookSinkSpec {
        url: url.to_string(),
        secret_env: Some("PLUME_TEST_POLICY_SECRET".into()),
        retry: plume::spec::RetrySpec {
            timeout: plume::spec::DurationSpec::from_millis(5_000),
            max_age: plume::spec::DurationSpec::from_millis(60_000),
            concurrency: 4,
            backoff: plume::spec::DurationSpec::from_millis(20),
            breaker_open: plume::spec::DurationSpec::from_millis(100),
            allow_insecure: false,
        },
        policy: Default::default(),
    };
    spec.policy.cooldown = Some(plume::spec::DurationSpec::from_millis(25 * 60_000));
    let parts = plume::notify::NotifierParts {
        pipeline: "test".into(),
        name: Some("webhook:0".into()),
        outbox: Arc::new(plume::notify::StoreOutbox::open(store.clone(), "webhook:0").unwrap()),
        subscribers: None,
        drain_timeout: Duration::from_secs(60),
        dead_letters: None,
        policy_state: Some(plume::notify::PolicyStateStore::new(store.clone(), "webhook:0")),
    };
    plume::notify::NotifierSink::build(&plume::spec::SinkSpec::Webhook(spec), parts)
        .unwrap()
        .unwrap()
}

fn commit_checkpoint(store: &plume::store::StateStore, id: u64) {
    store
        .commit(plume::store::CheckpointWrite {
            record: plume::store::CheckpointRecord {
                id,
                pipeline: "test".into(),
                pipeline_hash: "0".into(),
                created_ms: 0,
                sources: vec![],
                sinks: vec![],
                dead_letters: 0,
                devices: 0,
                key_groups: 1,
                devices_written: 0,
            },
            devices: vec![],
        })
        .unwrap();
}

#[test]
fn the_suppressed_count_is_kept_with_the_checkpoint_and_a_replay_does_not_add_to_it() {
    use plume::notify::DeliveryStats;
    use plume::runtime::ports::Sink;
    let rx = Receiver::start(Arc::new(AtomicU64::new(0)), |_| Reply::ok());
    let dir = tempfile::tempdir().unwrap();
    let store = plume::store::StateStore::open_tool(dir.path()).unwrap();
    // events at 0, 10, 20, 30, 40, 50 min: 0 and 30 are notified, the others suppressed
    let records = event_records(1, 6);
    {
        let mut first = stored_notifier(&store, &rx.url("/"));
        first.write(&records[..4]).unwrap(); // events 0 and 10
        first.flush_for_checkpoint(1).unwrap();
        commit_checkpoint(&store, 1);
        first.write(&records[4..8]).unwrap(); // events 20 and 30, after the checkpoint
        assert_eq!(DeliveryStats::get(&first.stats().suppressed), 4);
        assert!(wait_for(Duration::from_secs(10), || rx.count() == 4));
        // and acknowledged in the outbox (the receiver has a request before plume has its answer;
        // a crash in between would send it again, with the same id)
        assert!(wait_for(Duration::from_secs(10), || {
            DeliveryStats::get(&first.stats().delivered) == 4
        }));
        // dropped without finishing, as a crash would (the outbox keeps what it acknowledged)
    }
    // the restart replays from checkpoint 1: events 20 and 30 again, then 40 and 50
    let mut second = stored_notifier(&store, &rx.url("/"));
    assert_eq!(
        DeliveryStats::get(&second.stats().suppressed),
        2,
        "the count as of the checkpoint"
    );
    second.write(&records[4..]).unwrap();
    second.finish().unwrap();
    assert_eq!(
        DeliveryStats::get(&second.stats().suppressed),
        8,
        "events 10, 20, 40 and 50 with their ends, each counted once"
    );
    let mut sent: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    sent.sort();
    let want: Vec<String> = [0u128, 1, 6, 7].iter().map(|id| format!("{id:032x}")).collect();
    assert_eq!(sent, want, "events 0 and 30, start and end, each sent once");
}
