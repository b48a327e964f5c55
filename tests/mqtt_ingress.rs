//! MQTT fleets through Kafka, on loopback only: mosquitto and tansu started by each test on
//! free ports; two `plume ingest` members (separate processes, one MQTT shared subscription)
//! producing the readings to a keyed Kafka topic; a stateful `plume run` member reading that
//! topic with the Kafka source (`pipelines/mqtt-kafka-aq1.yaml`). Its output is compared with
//! the file run of the same pipeline over the same readings.

mod common;
#[path = "common/kafka.rs"]
mod kafka_support;
#[path = "common/mqtt.rs"]
mod mqtt_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kafka_support::Tansu;
use mqtt_support::{LoggedChild, Mosquitto};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: u32 = 4;
const TOPIC: &str = "aq1-readings";
const DEAD: &str = "aq1-dead-letters";

/// The shipped pipeline, in the test's directory.
fn pipeline(dir: &Path) -> PathBuf {
    let path = dir.join("mqtt-kafka-aq1.yaml");
    std::fs::copy(repo().join("pipelines/mqtt-kafka-aq1.yaml"), &path).unwrap();
    path
}

struct Brokers {
    mosquitto: Mosquitto,
    tansu: Tansu,
}

impl Brokers {
    fn start(dir: &Path) -> Brokers {
        let mosquitto = Mosquitto::start(dir);
        let tansu = Tansu::start();
        tansu.create_topic(TOPIC, PARTITIONS);
        tansu.create_topic(DEAD, 1);
        Brokers { mosquitto, tansu }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PLUME_MQTT_URL", self.mosquitto.url()),
            ("PLUME_KAFKA_BROKERS", self.tansu.brokers()),
            ("PLUME_KAFKA_SESSION_TIMEOUT_MS", "6000".to_string()),
            ("NO_COLOR", "1".to_string()),
        ]
    }
}

/// `plume ingest PIPELINE --client-id ID`, subscribed.
fn ingress(pipeline: &Path, brokers: &Brokers, client_id: &str) -> LoggedChild {
    let member = LoggedChild::spawn(
        plume()
            .arg("ingest")
            .arg(pipeline)
            .args(["--client-id", client_id])
            .envs(brokers.env())
            .env("PLUME_LOG", "warn,plume::connectors::mqtt::bridge=info"),
    );
    member.wait_logged(&["ingress subscribed"], 1, Duration::from_secs(30));
    member
}

/// `plume run PIPELINE` (the stateful member), its partitions assigned.
fn stateful(pipeline: &Path, brokers: &Brokers, output: &Path) -> LoggedChild {
    let member = LoggedChild::spawn(
        plume()
            .arg("run")
            .arg(pipeline)
            .arg("--data-dir")
            .arg(output.with_extension("state"))
            .env("PLUME_OUTPUT", output)
            .envs(brokers.env())
            .env("PLUME_LOG", "warn,plume::connectors::kafka::source=info"),
    );
    member.wait_logged(
        &["kafka partition assigned"],
        PARTITIONS as usize,
        Duration::from_secs(60),
    );
    member
}

/// Publishes the messages with QoS 1 from one client at about `per_second`, counting in `sent`
/// what the broker acknowledged; returns when every one is acknowledged.
fn publish_paced(port: u16, messages: &[(String, Vec<u8>)], per_second: u32, sent: &AtomicUsize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut o = rumqttc::MqttOptions::new("aq1-fleet", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(o, 1000);
        let total = messages.len();
        let poller = async {
            let mut acks = 0;
            while acks < total {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acks += 1;
                        sent.store(acks, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
        };
        // in file order, at most `per_second`, and a device's readings at least DEVICE_GAP apart
        let mut at = Vec::with_capacity(messages.len());
        let mut last: std::collections::HashMap<&str, Duration> = std::collections::HashMap::new();
        let mut t = Duration::ZERO;
        for (topic, _) in messages {
            t = t.max(last.get(topic.as_str()).map_or(Duration::ZERO, |l| *l + DEVICE_GAP));
            at.push(t);
            last.insert(topic.as_str(), t);
            t += Duration::from_secs_f64(1.0 / per_second as f64);
        }
        let publisher = async {
            let started = tokio::time::Instant::now();
            for ((topic, payload), at) in messages.iter().zip(at) {
                tokio::time::sleep_until(started + at).await;
                client
                    .publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(300), futures::future::join(poller, publisher))
            .await
            .expect("the broker acknowledges every publish");
        let _ = client.disconnect().await;
    });
}

/// Every record of a topic, partition by partition in offset order, `(partition, key, value)`:
/// read until `done` holds for what was read and nothing more came for a second.
fn read_topic(
    brokers: &str,
    topic: &str,
    partitions: u32,
    done: impl Fn(&[(i32, String, String)]) -> bool,
) -> Vec<(i32, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", kafka_support::free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records: Vec<(i32, i64, String, String)> = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            records.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
            last = Instant::now();
            continue;
        }
        let so_far: Vec<(i32, String, String)> =
            records.iter().map(|(p, _, k, v)| (*p, k.clone(), v.clone())).collect();
        if done(&so_far) && last.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{topic}: {} records after 120 s",
            records.len()
        );
    }
    records.sort_by_key(|(p, o, _, _)| (*p, *o));
    records.into_iter().map(|(p, _, k, v)| (p, k, v)).collect()
}

/// Until the stateful member has read `n` records and is at the end of every partition.
fn wait_caught_up(member: &LoggedChild, n: u64) {
    let started = Instant::now();
    loop {
        let read = member
            .newest(|l| {
                let rest = l.split("kafka source caught up").nth(1)?;
                if !rest.contains("partitions=4") {
                    return None;
                }
                rest.split("messages=").nth(1)?.split(' ').next()?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        if read >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stateful member did not catch up ({read} of {n} read):\n{}",
            member.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Output records by device, each once (by id), without ids and pipeline names; the records
/// without a device (the summary, dead letters) left out.
fn records_by_device(output: &Path) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut seen = BTreeSet::new();
    let text = std::fs::read_to_string(output).unwrap();
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(device) = v.get("device").and_then(|d| d.as_str()) else {
            continue;
        };
        if let Some(id) = v.get("id").and_then(|i| i.as_str())
            && !seen.insert(id.to_string())
        {
            continue;
        }
        lines.entry(device.to_string()).or_default().push(line.to_string());
    }
    records_without_ids(lines)
}

fn assert_same_records(got: &Path, want: &Path) {
    let (got, want) = (records_by_device(got), records_by_device(want));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut count = 0;
    for (device, records) in &want {
        let mine = &got[device];
        if mine != records {
            let first = mine
                .iter()
                .zip(records)
                .position(|(a, b)| a != b)
                .unwrap_or(mine.len().min(records.len()));
            panic!(
                "device {device} differs at its record {first} ({} vs {} records):\n  got:  {:?}\n  want: {:?}",
                mine.len(),
                records.len(),
                mine.get(first),
                records.get(first)
            );
        }
        count += records.len();
    }
    assert!(count > 500, "only {count} records");
}

/// The aq1 lines as MQTT messages to `aq1/<device>`, in file order.
fn aq1_messages(input: &Path) -> Vec<(String, Vec<u8>)> {
    aq1_records(input)
        .into_iter()
        .map(|(device, line)| (format!("aq1/{device}"), line))
        .collect()
}

/// Readings of the same device at least this far apart (wall clock) when published: two members
/// deliver in parallel, so a device that sends faster than a member's delivery (milliseconds)
/// could see two of its readings swap (aq1 has a few readings of one device a line or two apart).
const DEVICE_GAP: Duration = Duration::from_millis(300);
const PER_SECOND: u32 = 300;
const DEVICES: u32 = 50;

#[test]
fn two_ingress_members_feed_a_stateful_member_that_equals_the_file_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), DEVICES, 6_000, 51);
    let pipeline = pipeline(dir.path());
    let brokers = Brokers::start(dir.path());
    let a = ingress(&pipeline, &brokers, "ingress-a");
    let b = ingress(&pipeline, &brokers, "ingress-b");
    assert!(a.logged("filter=$share/aq1-ingress/aq1/+"), "{}", a.log_text());
    let out = dir.path().join("out-stateful.jsonl");
    let member = stateful(&pipeline, &brokers, &out);
    // a payload without a device id: a dead letter, acknowledged all the same
    let mut messages = aq1_messages(&input);
    messages.insert(
        100,
        (
            "aq1/nobody".to_string(),
            br#"{"ts":1767225600000,"pm25":1.0,"co2":400.0}"#.to_vec(),
        ),
    );
    // and one reading sent twice, as a broker sends a message again whose ack a dead ingress
    // member never sent after Kafka had the record: dedup drops the second copy
    let twice = messages[300].clone();
    assert!(twice.0.starts_with("aq1/dev-"));
    messages.insert(301, twice);
    let sent = AtomicUsize::new(0);
    publish_paced(brokers.mosquitto.port, &messages, PER_SECOND, &sent);
    // every reading in the keyed topic, keyed by its device, once (the one sent twice twice)
    let expected: BTreeSet<String> = aq1_records(&input)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect();
    let count = aq1_records(&input).len() + 1;
    let records = read_topic(&brokers.tansu.brokers(), TOPIC, PARTITIONS, |r| r.len() >= count);
    assert_eq!(records.len(), count, "no reading lost or doubled");
    for (_, key, value) in &records {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["device"].as_str(), Some(key.as_str()), "the key is the device id");
    }
    assert_eq!(records.iter().map(|r| r.2.clone()).collect::<BTreeSet<_>>(), expected);
    // each device's readings in the order it published them
    let mut published: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (topic, line) in messages.iter().filter(|(t, _)| t != "aq1/nobody") {
        published
            .entry(topic.trim_start_matches("aq1/").to_string())
            .or_default()
            .push(String::from_utf8(line.clone()).unwrap());
    }
    let mut in_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, key, value) in &records {
        in_topic.entry(key.clone()).or_default().push(value.clone());
    }
    for (device, lines) in &published {
        let got = &in_topic[device];
        if let Some(i) = lines.iter().zip(got).position(|(a, b)| a != b) {
            panic!(
                "{device}: its reading {i} is out of order in the topic:\n  published: {:?}\n  in topic:  {:?}",
                &lines[i.saturating_sub(1)..(i + 2).min(lines.len())],
                &got[i.saturating_sub(1)..(i + 2).min(got.len())]
            );
        }
    }
    let dead = read_topic(&brokers.tansu.brokers(), DEAD, 1, |r| !r.is_empty());
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d: serde_json::Value = serde_json::from_str(&dead[0].2).unwrap();
    assert_eq!(d["type"], "dead_letter");
    assert_eq!(d["source"], "mqtt:aq1/{device}");
    assert!(
        d["position"].as_str().unwrap().starts_with("topic aq1/nobody message "),
        "{d}"
    );
    assert!(d["reason"].as_str().unwrap().contains("device"), "{d}");
    assert!(d["raw"].as_str().unwrap().contains("\"pm25\":1.0"), "{d}");
    // both members took part; every message was acknowledged
    let a_log = a.interrupt();
    let b_log = b.interrupt();
    for log in [&a_log, &b_log] {
        assert!(log.contains("done: "), "{log}");
        let received: u64 = log
            .lines()
            .rev()
            .find_map(|l| l.split("done: ").nth(1)?.split(' ').next()?.parse().ok())
            .unwrap();
        assert!(received > 100, "a member received only {received}:\n{log}");
    }
    wait_caught_up(&member, records.len() as u64);
    member.interrupt();
    let file_out = dir.path().join("out-file.jsonl");
    plume_run(pipeline.to_str().unwrap(), &input, &file_out, &[]);
    assert_same_records(&out, &file_out);
}

#[test]
fn an_ingress_member_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), DEVICES, 6_000, 52);
    let pipeline = pipeline(dir.path());
    let brokers = Brokers::start(dir.path());
    let a = ingress(&pipeline, &brokers, "ingress-a");
    let b = ingress(&pipeline, &brokers, "ingress-b");
    let out = dir.path().join("out-stateful.jsonl");
    let member = stateful(&pipeline, &brokers, &out);
    let messages = aq1_messages(&input);
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (messages, sent, port) = (messages.clone(), sent.clone(), brokers.mosquitto.port);
        std::thread::spawn(move || publish_paced(port, &messages, PER_SECOND, &sent))
    };
    // SIGKILL one member a third of the way through, while messages are in flight; it comes
    // back with the same client id a second later (as a supervisor restarts it): mosquitto
    // kept its session, with what it had not acknowledged and its share of what came meanwhile
    while sent.load(Ordering::Relaxed) < messages.len() / 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_log = a.kill();
    assert!(killed_log.contains("ingress subscribed"), "{killed_log}");
    std::thread::sleep(Duration::from_secs(1));
    let a = ingress(&pipeline, &brokers, "ingress-a");
    publisher.join().unwrap();
    // nothing lost: every reading is in the keyed topic (some perhaps twice: produced, not yet
    // acknowledged when the member died)
    let expected: BTreeSet<String> = aq1_records(&input)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect();
    let records = read_topic(&brokers.tansu.brokers(), TOPIC, PARTITIONS, |r| {
        r.iter().map(|x| &x.2).collect::<BTreeSet<_>>().len() >= expected.len()
    });
    let got: BTreeSet<String> = records.iter().map(|r| r.2.clone()).collect();
    assert_eq!(got, expected, "every reading reached the keyed topic");
    let count = aq1_records(&input).len();
    eprintln!(
        "ingress kill: {} records for {count} readings ({} doubled)",
        records.len(),
        records.len() - count
    );
    // what mosquitto did with the killed member's messages: it kept them for its client id
    let summary = |log: &str| {
        log.lines()
            .rev()
            .find(|l| l.starts_with("done: "))
            .unwrap_or("")
            .to_string()
    };
    let (a_log, b_log) = (a.interrupt(), b.interrupt());
    eprintln!(
        "ingress kill: restarted member: {}\n  other member: {}",
        summary(&a_log),
        summary(&b_log)
    );
    // mosquitto sends what the killed member had not acknowledged again to its client id when it
    // returns, never to the other member of the share group
    assert!(
        summary(&b_log).contains("(0 sent again by the broker)"),
        "{}",
        summary(&b_log)
    );
    wait_caught_up(&member, records.len() as u64);
    member.interrupt();
    // the stateful member's output is the file run of what the topic holds (a device's readings
    // in their partition's order; dedup drops the doubled ones in both)
    let topic_input = dir.path().join("topic.jsonl");
    let lines: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
    std::fs::write(&topic_input, lines.join("\n") + "\n").unwrap();
    let file_out = dir.path().join("out-file.jsonl");
    plume_run(pipeline.to_str().unwrap(), &topic_input, &file_out, &[]);
    assert_same_records(&out, &file_out);
    // and with nothing doubled
    let text = std::fs::read_to_string(&out).unwrap();
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("\"id\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "a record written twice"
    );
}

#[test]
fn a_stateful_pipeline_on_a_shared_subscription_is_warned_about_and_ingest_needs_an_ingress() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("pipelines/mqtt-aq1.yaml")).unwrap();
    assert!(text.contains("      qos: 1\n"));
    let shared = dir.path().join("shared.yaml");
    std::fs::write(
        &shared,
        text.replace(
            "      qos: 1\n",
            "      qos: 1\n      version: \"5\"\n      shared_group: nodes\n",
        ),
    )
    .unwrap();
    // valid, with a positioned warning
    let out = plume().arg("validate").arg(&shared).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = text.lines().position(|l| l == "      qos: 1").unwrap() + 3;
    assert!(
        stderr.contains(&format!(
            "shared.yaml:{line}:21: warning: a stateful pipeline reads the MQTT shared subscription `$share/nodes/"
        )),
        "{stderr}"
    );
    // the shipped ingress pipeline has no warning, and says what its ingress does
    let out = plume()
        .args(["validate", "pipelines/mqtt-kafka-aq1.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ingress:   (plume ingest) mqtt"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // `plume ingest` on a pipeline without `ingress:`
    let out = plume().arg("ingest").arg(&shared).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no `ingress:` section"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
