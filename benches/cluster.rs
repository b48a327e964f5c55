//! Members that share nothing but Kafka (`cargo bench --bench cluster`; tansu must be
//! installed: `scripts/setup`). One tansu broker on a free loopback port, a 12-partition topic of
//! aq1 readings (key = device id), `pipelines/kafka-aq1.yaml` with a changelog.
//!
//! 1. *Throughput*: the same readings read by one process without a changelog, then by 1, 2 and
//!    3 members with a changelog (each its own process and data directory, a fresh group and
//!    changelog topic each time), timed from the start of the processes until the group's
//!    committed offsets reach every partition's end (everything read is in a durable
//!    checkpoint, and with a changelog in a published marker; checkpoints every second). Also
//!    the changelog's bytes per published device record.
//! 2. *Restore*: a new member with an empty data directory joins the group of the 1-member run
//!    after it stopped, and restores every partition from the changelog: devices per second.
//! 3. *Failover*: two members read a live stream; one is SIGKILLed and started again at once on
//!    its data directory (as a supervisor restarts a container). Timed from the kill: until a
//!    member has restored partitions from the changelog, and until the first output record (in
//!    either member's output) of a device only the killed member had written before. Without and
//!    with `standby_replicas`. (tansu gives a dead member's partitions to nobody until a member
//!    joins, `tests/tansu_quirks.rs`: the restarted member's join is what moves them; with Kafka
//!    the group would also move them after `session.timeout.ms`.)
//!
//! Size: `PLUME_BENCH_CLUSTER_DEVICES` (default 10 000), `PLUME_BENCH_CLUSTER_N` (default
//! 300 000 readings).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/kafka.rs"]
mod kafka_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_support::Tansu;

const PARTITIONS: i32 = 12;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A member process, its log lines with the time each arrived.
struct Member {
    child: Child,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    output: PathBuf,
}

impl Member {
    fn start(pipeline: &Path, broker: &Tansu, topic: &str, group: &str, data_dir: &Path, output: &Path) -> Self {
        let mut child = common::plume()
            .arg("run")
            .arg(pipeline)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--checkpoint-interval", "1s"])
            .env("PLUME_KAFKA_BROKERS", broker.brokers())
            .env("PLUME_KAFKA_TOPIC", topic)
            .env("PLUME_KAFKA_GROUP", group)
            .env("PLUME_KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("PLUME_OUTPUT", output)
            .env("PLUME_LOG", "warn,plume::connectors::kafka=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Default::default();
        let stderr = child.stderr.take().unwrap();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push((Instant::now(), line));
                }
            })
        };
        Member {
            child,
            log,
            reader: Some(reader),
            output: output.to_path_buf(),
        }
    }

    fn first_logged(&self, text: &str, after: Instant) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|(t, l)| *t >= after && l.contains(text))
            .map(|(t, _)| *t)
    }

    fn lines(&self, text: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(text))
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn stop(mut self) -> Vec<String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let log: Vec<String> = self.log.lock().unwrap().iter().map(|(_, l)| l.clone()).collect();
        assert!(status.success(), "a member failed:\n{}", log.join("\n"));
        log
    }

    fn kill(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `name=value` of a log line, as a number.
fn field(line: &str, name: &str) -> Option<f64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

fn pipeline(dir: &Path, name: &str, changelog: Option<(&str, u32)>) -> PathBuf {
    let text = std::fs::read_to_string(common::repo().join("pipelines/kafka-aq1.yaml")).unwrap();
    let text = match changelog {
        Some((topic, standby)) => text.replace(
            "      device_from: key\n",
            &format!(
                "      device_from: key\n      changelog:\n        topic: {topic}\n        standby_replicas: {standby}\n"
            ),
        ),
        None => text,
    };
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let devices = env_or("PLUME_BENCH_CLUSTER_DEVICES", 10_000) as u32;
    let n = env_or("PLUME_BENCH_CLUSTER_N", 300_000);
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), devices, n, 11);
    let records = common::aq1_records(&input);
    let broker = Tansu::start();
    broker.create_topic("aq1", PARTITIONS as u32);
    let t = Instant::now();
    kafka_support::produce_to(&broker.brokers(), "aq1", &records, true);
    println!(
        "cluster bench: {n} readings of {devices} devices produced to {PARTITIONS} partitions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let ends = kafka_support::partition_ends(&broker.brokers(), "aq1", PARTITIONS, records.len());

    // 1. throughput
    println!("\n| run | members | seconds | readings/s | ratio to one process | changelog bytes per device record |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut one_process = 0.0;
    let mut restore_group = String::new();
    let mut restore_pipeline = PathBuf::new();
    for (run, members, changelog) in [
        ("one process, no changelog", 1, false),
        ("changelog", 1, true),
        ("changelog", 2, true),
        ("changelog", 3, true),
    ] {
        let name = format!("t{members}{}", if changelog { "c" } else { "" });
        let group = format!("group-{name}");
        let topic = format!("changelog-{name}");
        let p = pipeline(dir.path(), &name, changelog.then_some((topic.as_str(), 0)));
        let t = Instant::now();
        let started: Vec<Member> = (0..members)
            .map(|m| {
                Member::start(
                    &p,
                    &broker,
                    "aq1",
                    &group,
                    &dir.path().join(format!("{name}-{m}.state")),
                    &dir.path().join(format!("{name}-{m}.jsonl")),
                )
            })
            .collect();
        while !kafka_support::group_reached(&broker.brokers(), &group, "aq1", &ends) {
            assert!(t.elapsed() < Duration::from_secs(900), "{name} did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
        let seconds = t.elapsed().as_secs_f64();
        let (mut bytes, mut device_records) = (0.0, 0.0);
        for m in started {
            for line in m.stop() {
                if line.contains("kafka source stopped") {
                    bytes += field(&line, "changelog_bytes").unwrap_or(0.0);
                    device_records += field(&line, "changelog_devices").unwrap_or(0.0);
                }
            }
        }
        let rate = n as f64 / seconds;
        if !changelog {
            one_process = rate;
        }
        if changelog && members == 1 {
            restore_group = group.clone();
            restore_pipeline = p.clone();
        }
        println!(
            "| {run} | {members} | {seconds:.1} | {rate:.0} | {:.2} | {} |",
            rate / one_process,
            if device_records > 0.0 {
                format!("{:.0}", bytes / device_records)
            } else {
                "-".into()
            }
        );
    }

    // 2. restore: a new member, empty data directory, takes every partition from the changelog
    let t = Instant::now();
    let m = Member::start(
        &restore_pipeline,
        &broker,
        "aq1",
        &restore_group,
        &dir.path().join("restore.state"),
        &dir.path().join("restore.jsonl"),
    );
    while m.lines("kafka partition restored from the changelog").len() < PARTITIONS as usize {
        assert!(t.elapsed() < Duration::from_secs(300), "the new member did not restore");
        std::thread::sleep(Duration::from_millis(20));
    }
    let read_ms: f64 = m
        .lines("kafka changelog read")
        .iter()
        .filter_map(|l| field(l, "ms"))
        .sum();
    let read_records: f64 = m
        .lines("kafka changelog read")
        .iter()
        .filter_map(|l| field(l, "records"))
        .sum();
    let restored = m.lines("kafka partition restored from the changelog");
    let import_ms: f64 = restored.iter().filter_map(|l| field(l, "ms")).sum();
    let restored_devices: f64 = restored.iter().filter_map(|l| field(l, "devices")).sum();
    m.stop();
    println!(
        "\nrestore: {restored_devices:.0} devices ({read_records:.0} changelog records) read in {read_ms:.0} ms and imported in {import_ms:.0} ms: {:.0} devices/s",
        restored_devices / ((read_ms + import_ms) / 1000.0)
    );

    // 3. failover: a live stream, one of two members killed
    println!(
        "\n| standby_replicas | kill → partitions restored (s) | kill → first record of a moved device (s) | changelog read + import at the takeover (ms) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for standby in [0u32, 1] {
        let name = format!("failover{standby}");
        let topic = format!("changelog-{name}");
        let group = format!("group-{name}");
        let live = format!("live{standby}");
        broker.create_topic(&live, PARTITIONS as u32);
        let text = std::fs::read_to_string(pipeline(dir.path(), &name, Some((topic.as_str(), standby)))).unwrap();
        let p = dir.path().join(format!("{name}-live.yaml"));
        std::fs::write(&p, text).unwrap();
        // the stream: the readings again, about 5 000 a second for up to a minute
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer = {
            let (brokers, stop, live) = (broker.brokers(), stop.clone(), live.clone());
            let records: Vec<(String, Vec<u8>)> = records.iter().take(300_000).cloned().collect();
            std::thread::spawn(move || {
                for chunk in records.chunks(500) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    kafka_support::produce_to(&brokers, &live, chunk, true);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let start_member = |m: &str| {
            Member::start(
                &p,
                &broker,
                &live,
                &group,
                &dir.path().join(format!("{name}-{m}.state")),
                &dir.path().join(format!("{name}-{m}.jsonl")),
            )
        };
        let a = start_member("a");
        let b = start_member("b");
        let t = Instant::now();
        // both members read their share for a while
        while b.lines("kafka partition assigned").is_empty() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(10));
        let b_devices: BTreeSet<String> = devices_in(&b.output);
        let a_devices: BTreeSet<String> = devices_in(&a.output);
        let moved: BTreeSet<String> = b_devices.difference(&a_devices).cloned().collect();
        assert!(!moved.is_empty(), "b wrote no device of its own");
        let a_len = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
        let killed = Instant::now();
        b.kill();
        // started again at once on its own data directory, with a new output file
        let b2 = Member::start(
            &p,
            &broker,
            &live,
            &group,
            &dir.path().join(format!("{name}-b.state")),
            &dir.path().join(format!("{name}-b2.jsonl")),
        );
        let new_records = |path: &Path, from: u64| -> bool {
            let text = std::fs::read(path).unwrap_or_default();
            let new = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
            new.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["device"].as_str().map(|d| moved.contains(d)))
                    .unwrap_or(false)
            })
        };
        let mut first_record = None;
        while first_record.is_none() {
            assert!(killed.elapsed() < Duration::from_secs(120), "no moved device's record");
            if new_records(&a.output, a_len) || new_records(&b2.output, 0) {
                first_record = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let restored = [
            a.first_logged("kafka partition restored from the changelog", killed),
            b2.first_logged("kafka partition restored from the changelog", killed),
        ]
        .into_iter()
        .flatten()
        .min();
        let takeover: Vec<String> = [&a, &b2]
            .iter()
            .flat_map(|m| {
                m.log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(t, l)| {
                        *t >= killed
                            && (l.contains("kafka changelog read") || l.contains("restored from the changelog"))
                    })
                    .map(|(_, l)| l.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let takeover_ms: f64 = takeover.iter().filter_map(|l| field(l, "ms")).sum();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        producer.join().unwrap();
        b2.stop();
        a.stop();
        println!(
            "| {standby} | {:.2} | {:.2} | {takeover_ms:.0} |",
            restored.map_or(f64::NAN, |r| r.duration_since(killed).as_secs_f64()),
            first_record.unwrap().duration_since(killed).as_secs_f64()
        );
    }
}

fn devices_in(output: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["device"].as_str().map(str::to_string))
        .collect()
}
