//! Kafka end to end, on loopback only: a real Kafka-protocol broker (tansu, in memory, started
//! by each test on a free port), plume as a subprocess running `pipelines/kafka-aq1.yaml`, and
//! the output compared with the file run of the same readings.

#[path = "common/child.rs"]
mod child;
mod common;
#[path = "common/kafka.rs"]
mod kafka_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use child::LoggedChild;
use common::*;
use kafka_support::Tansu;

/// plume running the Kafka pipeline, its log collected.
struct Plume(LoggedChild);

impl Plume {
    fn start(pipeline: &Path, broker: &Tansu, topic: &str, group: &str, output: &Path, extra: &[&str]) -> Self {
        Plume(LoggedChild::spawn(
            plume()
                .arg("run")
                .arg(pipeline)
                .arg("--data-dir")
                .arg(output.with_extension("state"))
                .args(extra)
                .env("PLUME_KAFKA_BROKERS", broker.brokers())
                .env("PLUME_KAFKA_TOPIC", topic)
                .env("PLUME_KAFKA_GROUP", group)
                .env("PLUME_KAFKA_SESSION_TIMEOUT_MS", "6000")
                .env("PLUME_OUTPUT", output)
                .env(
                    "PLUME_LOG",
                    std::env::var("PLUME_TEST_LOG").unwrap_or("warn,plume::connectors::kafka::source=info".into()),
                )
                .env("NO_COLOR", "1"),
        ))
    }

    /// Log lines saying it has read every partition of the topic to its end.
    fn caught_up_on_all(&self) -> usize {
        self.0
            .count(&["kafka source caught up", &format!("partitions={PARTITIONS}")])
    }

    fn wait_caught_up_on_all(&self, timeout: Duration) {
        self.0.wait_logged(
            &["kafka source caught up", &format!("partitions={PARTITIONS}")],
            1,
            timeout,
        );
    }

    /// Once every record is in the topic: waits until it has read them all (the next time it
    /// is at the end of every partition).
    fn wait_read_everything(&self) {
        let before = self.caught_up_on_all();
        let started = Instant::now();
        while self.caught_up_on_all() == before {
            let quiet = self
                .0
                .newest(|l| l.contains("kafka").then(|| l.contains("caught up")))
                .unwrap_or(false);
            if started.elapsed() > Duration::from_secs(20) && quiet {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "it did not catch up:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        self.0.log_text()
    }

    fn wait_logged(&self, text: &str, n: usize, timeout: Duration) {
        self.0.wait_logged(&[text], n, timeout);
    }

    fn interrupt(self) -> String {
        self.0.interrupt()
    }

    fn kill(self) {
        self.0.kill();
    }
}

const PARTITIONS: u32 = 4;

fn pipeline() -> PathBuf {
    repo().join("pipelines/kafka-aq1.yaml")
}

fn file_run(dir: &Path, input: &Path) -> PathBuf {
    let out = dir.join("out-file.jsonl");
    plume_run("pipelines/aq1.yaml", input, &out, &[]);
    out
}

type BTreeMapLines = std::collections::BTreeMap<String, Vec<String>>;

fn assert_same_records(a: BTreeMapLines, b: BTreeMapLines) {
    let (a, b) = (records_without_ids(a), records_without_ids(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (device, records) in &a {
        assert_eq!(records, &b[device], "device {device}");
    }
}

fn assert_same_as_file_run(kafka_out: &Path, file_out: &Path) {
    assert_eq!(aq1_summary(kafka_out), aq1_summary(file_out));
    assert_same_records(lines_by_device(kafka_out), lines_by_device(file_out));
}

// ---------------------------------------------------------------------------------------------

#[test]
fn kafka_aq1_gives_the_file_runs_summary() {
    let dir = tempfile::tempdir().unwrap();
    let events: u64 = std::env::var("PLUME_KAFKA_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let input = aq1_input(dir.path(), 60, events, 41);
    let broker = Tansu::start();
    broker.create_topic("aq1", 4);
    broker.produce("aq1", &aq1_records(&input));
    let out = dir.path().join("out-kafka.jsonl");
    let port = kafka_support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let plume = Plume::start(&pipeline(), &broker, "aq1", "plume-aq1", &out, &["--metrics", &metrics]);
    plume.wait_caught_up_on_all(Duration::from_secs(120));
    // once everything is read, every partition's lag is 0 (from librdkafka's statistics)
    let started = Instant::now();
    loop {
        let text = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        let lags: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("plume_kafka_consumer_lag{"))
            .collect();
        if lags.len() == PARTITIONS as usize && lags.iter().all(|l| l.ends_with(" 0")) {
            for p in 0..PARTITIONS {
                assert!(
                    lags.iter()
                        .any(|l| l.contains(&format!("topic=\"aq1\",partition=\"{p}\""))),
                    "{lags:?}"
                );
            }
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "lags: {lags:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = plume.interrupt();
    assert!(log.contains("kafka partition assigned"), "{log}");
    assert_same_as_file_run(&out, &file_run(dir.path(), &input));
}

#[test]
fn undecodable_records_become_dead_letters_with_partition_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_topic("aq1", 1);
    let good = |ts: i64| format!(r#"{{"device":"d1","ts":{ts},"pm25":10.0,"co2":400.0}}"#).into_bytes();
    broker.produce(
        "aq1",
        &[
            ("d1".to_string(), good(1_700_000_000_000)),
            ("d1".to_string(), b"{not json".to_vec()),
            ("d1".to_string(), good(1_700_000_001_000)),
        ],
    );
    let out = dir.path().join("out.jsonl");
    let plume = Plume::start(&pipeline(), &broker, "aq1", "plume-dl", &out, &[]);
    plume.wait_logged("kafka source caught up", 1, Duration::from_secs(60));
    plume.interrupt();
    let text = std::fs::read_to_string(&out).unwrap();
    let dead: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "dead_letter")
        .collect();
    assert_eq!(dead.len(), 1, "{text}");
    let d = dead[0].to_string();
    assert!(d.contains("partition 0 offset 1"), "{d}");
    assert!(d.contains("{not json"), "{d}");
    // the offset advanced past it: a restart does not see it again
    let plume = Plume::start(&pipeline(), &broker, "aq1", "plume-dl", &out, &[]);
    plume.wait_logged("kafka source caught up", 1, Duration::from_secs(60));
    plume.interrupt();
    let again = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        again.lines().filter(|l| l.contains("\"dead_letter\"")).count(),
        1,
        "{again}"
    );
}

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 200, 300_000, 43);
    let broker = Tansu::start();
    broker.create_topic("aq1", 4);
    broker.produce("aq1", &aq1_records(&input));
    let out = dir.path().join("out-kafka.jsonl");
    // a deterministic spread of kill moments (xorshift), from early to late
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    let rounds: u32 = std::env::var("PLUME_KAFKA_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let plume = Plume::start(
            &pipeline(),
            &broker,
            "aq1",
            "plume-crash",
            &out,
            &["--checkpoint-interval", "200ms"],
        );
        // wait until it reads, then kill it somewhere in the next second and a half
        plume.wait_logged("kafka partition assigned", 1, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100 + x % 1500));
        if let Ok(d) = std::env::var("PLUME_KAFKA_TEST_LOGS") {
            std::fs::write(Path::new(&d).join(format!("log-{kills}.txt")), plume.log_text()).unwrap();
        }
        plume.kill();
        kills += 1;
    }
    assert!(kills >= 10 || rounds < 10, "only {kills} kills");
    let plume = Plume::start(&pipeline(), &broker, "aq1", "plume-crash", &out, &[]);
    // (the group may give some partitions to a killed member until its session times out)
    plume.wait_caught_up_on_all(Duration::from_secs(180));
    let log = plume.interrupt();
    let file_out = file_run(dir.path(), &input);
    if let Ok(d) = std::env::var("PLUME_KAFKA_TEST_LOGS") {
        std::fs::write(Path::new(&d).join("log-final.txt"), log).unwrap();
        std::fs::copy(&out, Path::new(&d).join("out-kafka.jsonl")).unwrap();
        std::fs::copy(&file_out, Path::new(&d).join("out-file.jsonl")).unwrap();
        std::fs::copy(&input, Path::new(&d).join("input.jsonl")).unwrap();
    }
    assert_same_as_file_run(&out, &file_out);
}

#[test]
fn the_kafka_sink_carries_every_window_and_event() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 40, 20_000, 44);
    let broker = Tansu::start();
    broker.create_topic("aq1-out", 4);
    // the aq1 pipeline from a file, to a file and to the topic
    let text = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let text = text.replace(
        "      - file: { path: \"${PLUME_OUTPUT:-out.jsonl}\" }",
        "      - file: { path: \"${PLUME_OUTPUT:-out.jsonl}\" }\n      - kafka: { brokers: \"${PLUME_KAFKA_BROKERS}\", topic: aq1-out }",
    );
    assert!(text.contains("aq1-out"));
    let pipeline = dir.path().join("aq1-to-kafka.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let status = plume()
        .arg("run")
        .arg(&pipeline)
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .env("PLUME_INPUT", &input)
        .env("PLUME_OUTPUT", &out)
        .env("PLUME_KAFKA_BROKERS", broker.brokers())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let file_lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<&String> = file_lines.iter().filter(|l| !l.contains("\"summary\"")).collect();
    assert!(expected.len() > 1000, "{} records", expected.len());
    let read = broker.read("aq1-out", file_lines.len(), Duration::from_secs(60));
    let mut got: Vec<String> = Vec::new();
    for (key, value, id) in &read {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(
            id.as_deref(),
            v["id"].as_str(),
            "the plume-id header is the record's id"
        );
        if let Some(device) = v["device"].as_str() {
            assert_eq!(key, device, "the key is the device");
        }
        got.push(value.clone());
    }
    let mut want: Vec<String> = file_lines.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the topic holds exactly the file's records");
}

#[test]
fn a_graceful_stop_hands_partitions_with_their_state_to_the_other_member() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 80, 60_000, 45);
    let records = aq1_records(&input);
    let (first, second) = records.split_at(records.len() / 2);
    let broker = Tansu::start();
    broker.create_topic("aq1", 4);
    broker.produce("aq1", first);
    let (out_a, out_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let a = Plume::start(
        &pipeline(),
        &broker,
        "aq1",
        "plume-pair",
        &out_a,
        &["--checkpoint-interval", "500ms"],
    );
    a.wait_logged("kafka partition assigned", 4, Duration::from_secs(60));
    a.wait_logged("kafka source caught up", 1, Duration::from_secs(120));
    let b = Plume::start(
        &pipeline(),
        &broker,
        "aq1",
        "plume-pair",
        &out_b,
        &["--checkpoint-interval", "500ms"],
    );
    // the group splits the partitions between the two
    b.wait_logged("kafka partition assigned", 1, Duration::from_secs(60));
    a.wait_logged("kafka partitions revoked", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let a_log = a.interrupt();
    assert!(a_log.contains("kafka partition handed off"), "{a_log}");
    // a's last checkpoint records the offsets of the partitions it kept, not of those it handed
    // off (no reading came after the rebalance to carry a new position)
    let kept = last_assignment(&a_log);
    assert!(
        !kept.is_empty() && kept.len() < PARTITIONS as usize,
        "a kept {kept:?}:\n{a_log}"
    );
    let (positions, devices) = newest_positions(&out_a.with_extension("state"));
    assert_eq!(
        positions, kept,
        "a's last checkpoint: offsets of the partitions it kept"
    );
    // and counts the devices of those partitions (it took them back from its own hand-offs)
    let from = a_log.rfind("kafka partitions revoked").unwrap();
    let kept_devices: u64 = a_log[from..]
        .lines()
        .filter(|l| l.contains("taken over from a hand-off"))
        .map(|l| {
            let at = l.find(" devices=").unwrap() + " devices=".len();
            l[at..].split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert!(kept_devices > 0, "{a_log}");
    assert_eq!(devices, kept_devices, "a's last checkpoint: the devices it stores");
    // b takes a's partitions from their hand-offs, then reads the rest of the readings
    b.wait_logged("taken over from a hand-off", 1, Duration::from_secs(60));
    broker.produce("aq1", second);
    b.wait_read_everything();
    b.interrupt();
    // a's output up to its last checkpoint (what it flushed after that is its end-of-run flush,
    // which b continues instead), then b's
    let (_, &length) = sink_lengths(&out_a.with_extension("state")).last_key_value().unwrap();
    let a_text = std::fs::read(&out_a).unwrap();
    let mut combined = a_text[..length].to_vec();
    combined.extend(std::fs::read(&out_b).unwrap());
    let merged = dir.path().join("merged.jsonl");
    std::fs::write(&merged, &combined).unwrap();
    let mut merged_lines: BTreeMapLines = lines_by_device(&merged);
    let file_out = file_run(dir.path(), &input);
    let mut file_lines = lines_by_device(&file_out);
    // the summaries count each process's own readings
    merged_lines.remove("");
    file_lines.remove("");
    // b continued a's devices with their state: nothing repeated, nothing missing
    assert_same_records(merged_lines, file_lines);
}

/// The partitions a member was assigned after its last revoke, from its log.
fn last_assignment(log: &str) -> std::collections::BTreeSet<i32> {
    let from = log.rfind("kafka partitions revoked").unwrap_or(0);
    log[from..]
        .lines()
        .filter(|l| l.contains("kafka partition assigned"))
        .map(|l| {
            let at = l.find(" partition=").expect("a partition field") + " partition=".len();
            l[at..].split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// The manifests of a data directory's retained checkpoints, oldest first
/// (`plume checkpoints list --json`).
fn retained_manifests(state: &Path) -> Vec<serde_json::Value> {
    let list = plume()
        .args(["checkpoints", "--data-dir"])
        .arg(state)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    match serde_json::from_slice(&list.stdout).unwrap() {
        serde_json::Value::Array(manifests) => manifests,
        other => panic!("not a list of manifests: {other}"),
    }
}

/// The Kafka partitions whose offsets the newest retained checkpoint of a data directory
/// records, and the devices it says the store holds.
fn newest_positions(state: &Path) -> (std::collections::BTreeSet<i32>, u64) {
    let manifests = retained_manifests(state);
    let newest = manifests.last().expect("a retained checkpoint");
    let positions = newest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str()?.strip_prefix("kafka:aq1:")?.parse().ok())
        .collect();
    (positions, newest["devices"].as_u64().unwrap())
}

/// Sink lengths of every retained checkpoint of a data directory, by checkpoint id.
fn sink_lengths(state: &Path) -> std::collections::BTreeMap<u64, usize> {
    retained_manifests(state)
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["sinks"][0]["length"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[test]
fn a_killed_member_leaves_its_partitions_with_their_state_to_the_next_owner() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 80, 60_000, 46);
    let records = aq1_records(&input);
    let (first, second) = records.split_at(records.len() / 2);
    let broker = Tansu::start();
    broker.create_topic("aq1", PARTITIONS);
    broker.produce("aq1", first);
    // hand-offs refreshed at every checkpoint; every checkpoint kept (to cut a's output at the
    // one each hand-off stands for)
    let text = std::fs::read_to_string(pipeline()).unwrap();
    assert!(text.contains("      device_from: key\n") && !text.contains("\ncheckpoint:"));
    let pipeline = dir.path().join("kafka-crash.yaml");
    std::fs::write(
        &pipeline,
        text.replace(
            "      device_from: key\n",
            "      device_from: key\n      handoff_refresh: 0s\n",
        ) + "\ncheckpoint:\n  retain: 1000\n",
    )
    .unwrap();
    let (out_a, out_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let args = ["--checkpoint-interval", "300ms"];
    let a = Plume::start(&pipeline, &broker, "aq1", "plume-crash", &out_a, &args);
    a.wait_caught_up_on_all(Duration::from_secs(120));
    a.wait_logged(
        "kafka partition hand-off refreshed",
        PARTITIONS as usize,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(1));
    a.kill(); // SIGKILL: no revoke, no hand-off at the end

    // what a left: per partition, its devices' state as of one of its checkpoints
    let handoff_dir = dir.path().join("kafka-handoff").join("plume-crash");
    let lengths = sink_lengths(&out_a.with_extension("state"));
    let mut a_cut: std::collections::BTreeMap<String, usize> = Default::default();
    for partition in 0..PARTITIONS as i32 {
        let h = plume::store::partitions::PartitionHandoff::read(&handoff_dir, "aq1", partition)
            .unwrap()
            .unwrap_or_else(|| panic!("partition {partition} has a hand-off"));
        let length = lengths[&h.checkpoint];
        for (device, _) in &h.devices {
            a_cut.insert(device.clone(), length);
        }
    }
    assert!(a_cut.len() > 40, "devices in the hand-offs: {}", a_cut.len());

    // b joins the group; once a's membership expires it gets every partition
    let b = Plume::start(&pipeline, &broker, "aq1", "plume-crash", &out_b, &args);
    b.wait_logged(
        "taken over from a hand-off",
        PARTITIONS as usize,
        Duration::from_secs(90),
    );
    broker.produce("aq1", second);
    b.wait_read_everything();
    let b_log = b.interrupt();
    assert!(b_log.contains("handoffs_refreshed"), "{b_log}");

    // each device: a's records up to the checkpoint of its partition's hand-off (a device in
    // no hand-off had no state there: b has all of it), then b's
    let a_text = std::fs::read_to_string(&out_a).unwrap();
    let mut merged: BTreeMapLines = Default::default();
    let mut at = 0;
    for line in a_text.split_inclusive('\n') {
        let end = at + line.len();
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        let device = v["device"].as_str().unwrap_or("").to_string();
        if a_cut.get(&device).is_some_and(|cut| end <= *cut) {
            merged.entry(device).or_default().push(line.trim_end().to_string());
        }
        at = end;
    }
    for (device, lines) in lines_by_device(&out_b) {
        merged.entry(device).or_default().extend(lines);
    }
    let file_out = file_run(dir.path(), &input);
    let mut file_lines = lines_by_device(&file_out);
    // the summaries count each process's own readings
    merged.remove("");
    file_lines.remove("");
    // b continued a's devices with their state: nothing repeated, nothing missing
    assert_same_records(merged, file_lines);
}

/// The broker the tests use, tansu 0.6, answers a fetch that starts inside a record batch with
/// the next batch (a real Kafka broker returns the batch holding the offset, and the consumer
/// skips what comes before). So the tests produce one record per batch, and this checks that a
/// consumer that resumes anywhere then gets exactly the record it asked for.
#[test]
fn with_one_record_batches_a_fetch_from_any_offset_starts_there() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let broker = Tansu::start();
    broker.create_topic("p", 1);
    let records: Vec<(String, Vec<u8>)> = (0..5_000)
        .map(|i| (format!("k{i}"), format!("v{i}").into_bytes()))
        .collect();
    broker.produce("p", &records);
    for start in [1i64, 777, 2048, 4321] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.brokers())
            .set("group.id", "probe")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("p", 0, Offset::Offset(start)).unwrap();
        consumer.assign(&tpl).unwrap();
        let started = Instant::now();
        let first = loop {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                break (m.offset(), m.payload().map(|p| String::from_utf8_lossy(p).into_owned()));
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nothing fetched from {start}"
            );
        };
        assert_eq!(first, (start, Some(format!("v{start}"))), "fetch from {start}");
    }
}

#[test]
fn the_record_timestamp_can_be_the_event_time() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_topic("air", 1);
    // payloads without a time: the record timestamps are one minute apart, starting at 00:00
    let start: i64 = 1_767_225_600_000;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for i in 0..5i64 {
        let payload = format!(r#"{{"pm25":{}.0}}"#, 10 + i);
        producer
            .send(
                BaseRecord::to("air")
                    .key("room-1")
                    .payload(&payload)
                    .timestamp(start + i * 60_000 + 1_000),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let pipeline = dir.path().join("record-time.yaml");
    std::fs::write(
        &pipeline,
        r#"version: 1
pipeline: record-time
sources:
  - kafka: { brokers: "${PLUME_KAFKA_BROKERS}", topics: [air], group: t, time_from: record }
decode:
  device: { field: device }
  fields:
    pm25: { type: float, required: true }
operators:
  - window: { name: w, every: 60s, aggregates: { pm25: [max] } }
outputs:
  - when: all
    to:
      - file: { path: "${PLUME_OUTPUT}" }
"#,
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let plume = Plume::start(&pipeline, &broker, "air", "t", &out, &[]);
    plume.wait_logged("kafka source caught up", 1, Duration::from_secs(60));
    plume.interrupt();
    let windows: Vec<(i64, f64)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "window")
        .map(|v| (v["window_start"].as_i64().unwrap(), v["pm25_max"].as_f64().unwrap()))
        .collect();
    // one window per record, at the record's minute (the device id from the key)
    let expected: Vec<(i64, f64)> = (0..5).map(|i| (start + i * 60_000, (10 + i) as f64)).collect();
    assert_eq!(windows, expected);
}

/// tansu answers a fetch that starts inside a record batch with the next batch
/// (`tests/tansu_quirks.rs`), and a member takes partitions over at offsets anywhere in a batch
/// (the group's offset, a checkpoint's, a changelog marker's). The source seeks back until the
/// broker's answer holds the offset it wants, and drops what comes before it: every record from
/// that offset on is read, none twice.
#[test]
fn a_member_starting_inside_a_record_batch_reads_every_record_from_there() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 20, 4_000, 49);
    let records = aq1_records(&input);
    let broker = Tansu::start();
    broker.create_topic("aq1", PARTITIONS);
    // in batches of many records, as real producers write
    broker.produce_with("aq1", &records, true);
    let ends = kafka_support::partition_ends(&broker.brokers(), "aq1", PARTITIONS as i32, records.len());
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "plume-mid")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // the group's offsets: the middle of each partition, inside a batch
    let mut middle = TopicPartitionList::new();
    let mut expected = 0;
    for (p, end) in &ends {
        middle
            .add_partition_offset("aq1", *p, Offset::Offset(end / 2 + 1))
            .unwrap();
        expected += end - (end / 2 + 1);
    }
    reader.commit(&middle, CommitMode::Sync).unwrap();
    drop(reader);
    let out = dir.path().join("out.jsonl");
    let plume = Plume::start(
        &pipeline(),
        &broker,
        "aq1",
        "plume-mid",
        &out,
        &["--checkpoint-interval", "300ms"],
    );
    // until the group's offsets (committed after each durable checkpoint) reach every end: the
    // "caught up" log line needs the broker's end-of-partition answer, which tansu does not
    // give after a batch of several records
    let started = Instant::now();
    while !kafka_support::group_reached(&broker.brokers(), "plume-mid", "aq1", &ends) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not every record was read:\n{}",
            plume.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = plume.interrupt();
    let stopped = log
        .lines()
        .find(|l| l.contains("kafka source stopped"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        stopped.contains(&format!(" messages={expected} ")),
        "{expected} expected: {stopped}"
    );
    assert!(
        !stopped.contains(" gap_seeks=0 "),
        "no fetch started inside a batch: {stopped}"
    );
}
