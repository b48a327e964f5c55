//! Chaos (issue 16): aq1 over MQTT (mosquitto) and over Kafka (tansu), each pipeline also
//! delivering its PM2.5 events to a signed webhook, for `PLUME_CHAOS_SECONDS` (default 90) of
//! faults one after the other at random moments (`PLUME_CHAOS_SEED` repeats a schedule):
//! - SIGKILL of either plume, restarted at once;
//! - mosquitto stopped and restarted (with its persistence) while plume is connected;
//! - the Kafka broker unresponsive for seconds (SIGSTOP/SIGCONT: tansu keeps its data in memory
//!   only, so a restart would lose the topic);
//! - the webhook receiver failing (503), stalling past plume's timeout, or closing connections
//!   without an answer, for seconds;
//! - the MQTT pipeline's data directory full (a small tmpfs filled to the last byte; where
//!   mounting is not allowed, this fault is left out and said so).
//!
//! Meanwhile the readings are published and produced in slices. Then every fault stops, plume
//! catches up and stops gracefully, and the test checks:
//! - no reading lost or double-counted in state: each output equals the file run of the same
//!   readings (every window count, event and baseline);
//! - every event of each output was acknowledged by the receiver at least once, under its
//!   record's id, with a valid signature and the record as data (stable ids), and nothing else
//!   was sent;
//! - no acknowledged delivery was sent again except in the documented case (ARCHITECTURE.md,
//!   Notifiers): plume ended (killed, or failed on the full disk) within 2 s after the
//!   receiver's 2xx, before it could record the acknowledgement; or a start rolled the state
//!   back to a retained checkpoint.

mod common;
#[path = "common/kafka.rs"]
mod kafka_support;
#[path = "common/mqtt.rs"]
mod mqtt_support;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kafka_support::Tansu;
use mqtt_support::{LoggedChild, Mosquitto, publish_all};
use receiver::{Receiver, Recorded, Reply, verify_standard_webhook};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PARTITIONS: u32 = 4;

// receiver modes
const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const STALLING: u8 = 2;
const RESETTING: u8 = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The route that sends PM2.5 events to the webhook, and a graceful stop that drains it.
fn with_webhook(pipeline: &str) -> String {
    let text = std::fs::read_to_string(repo().join(pipeline)).unwrap();
    let end = "\nshutdown:\n  flush: true\n";
    assert!(text.contains(end), "{pipeline} ends with its shutdown section");
    text.replace(
        end,
        "  - when: pm25_event\n    events: [start, end]\n    to:\n      - webhook:\n          \
         url: \"${PLUME_WEBHOOK_URL}\"\n          secret_env: PLUME_WEBHOOK_SECRET\n          timeout: 1s\n          \
         max_age: 1h\n          backoff: 50ms\n\nshutdown:\n  flush: true\n  drain_timeout: 2m\n",
    )
}

/// One plume process, restarted as often as the chaos needs.
struct Member {
    command: Box<dyn Fn() -> std::process::Command>,
    child: Option<LoggedChild>,
    /// When each process ended other than by the final graceful stop (SIGKILL or an exit).
    ends: Vec<Instant>,
    /// Starts whose log says they rolled back to a retained checkpoint.
    rollbacks: Vec<Instant>,
    logs: Vec<String>,
    kills: u32,
    failed_exits: u32,
    started: Instant,
    /// Set on the processes started from now on, over the command's own.
    env: Vec<(&'static str, String)>,
}

impl Member {
    fn new(command: Box<dyn Fn() -> std::process::Command>) -> Self {
        Member {
            command,
            child: None,
            ends: Vec::new(),
            rollbacks: Vec::new(),
            logs: Vec::new(),
            kills: 0,
            failed_exits: 0,
            started: Instant::now(),
            env: Vec::new(),
        }
    }

    fn start(&mut self) {
        self.started = Instant::now();
        let mut command = (self.command)();
        command.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        self.child = Some(LoggedChild::spawn(&mut command));
    }

    fn ended(&mut self, log: String) {
        self.ends.push(Instant::now());
        if log.contains("moved aside") || log.contains("retained checkpoint") {
            self.rollbacks.push(self.started);
        }
        self.logs.push(log);
    }

    fn kill(&mut self) {
        let log = self.child.take().unwrap().kill();
        self.kills += 1;
        self.ended(log);
        self.start();
    }

    /// SIGKILLs the process and starts the next one `pause` later, supervising `other`
    /// meanwhile.
    fn kill_and_replace_after(&mut self, pause: Duration, other: &mut Member) {
        let log = self.child.take().unwrap().kill();
        self.kills += 1;
        self.ended(log);
        let until = Instant::now() + pause;
        while Instant::now() < until {
            other.supervise();
            std::thread::sleep(Duration::from_millis(20));
        }
        self.start();
    }

    /// Restarts the process if it ended by itself (a full disk makes it fail).
    fn supervise(&mut self) {
        if let Some(child) = self.child.as_mut()
            && child.exited().is_some()
        {
            let log = self.child.take().unwrap().kill();
            self.failed_exits += 1;
            // the only fault that ends plume by itself is the full disk, and it says so
            assert!(
                log.contains("No space left on device"),
                "plume ended without a full disk to explain it:\n{log}"
            );
            self.ended(log);
            std::thread::sleep(Duration::from_millis(200));
            self.start();
        }
    }

    fn log(&self) -> String {
        self.child.as_ref().map(|c| c.log_text()).unwrap_or_default()
    }

    fn count(&self, texts: &[&str]) -> usize {
        self.child.as_ref().map_or(0, |c| c.count(texts))
    }

    fn earlier_logs(&self) -> String {
        self.logs.join("\n--- ended ---\n")
    }
}

/// Writes the Kafka member's logs, the earlier processes' and the running one's, to
/// `$PLUME_CHAOS_LOGS/kafka.log` when that is set.
fn kafka_logs_to(kafka: &Member) {
    if let Ok(d) = std::env::var("PLUME_CHAOS_LOGS") {
        std::fs::write(
            Path::new(&d).join("kafka.log"),
            format!("{}\n--- running ---\n{}", kafka.earlier_logs(), kafka.log()),
        )
        .unwrap();
    }
}

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk { dir: dir.to_path_buf() })
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        // the last partial block
        let mut small = vec![0u8; 4096];
        while !small.is_empty() {
            if f.write_all(&small).is_err() {
                small.truncate(small.len() / 2);
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The event records of an output, by id.
fn events_of(out: &Path) -> HashMap<String, serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| matches!(v["type"].as_str(), Some("event_start" | "event_end")))
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect()
}

fn assert_same_as_file_run(what: &str, out: &Path, file_out: &Path) {
    assert_eq!(aq1_summary(out), aq1_summary(file_out), "{what}: summary");
    let (a, b) = (
        records_without_ids(lines_by_device(out)),
        records_without_ids(lines_by_device(file_out)),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: devices"
    );
    for (device, records) in &a {
        assert_eq!(records, &b[device], "{what}: device {device}");
    }
}

/// Checks the deliveries of one pipeline (requests to `path`) against its output; returns the
/// number of events and of repeated acknowledged deliveries (each explained).
fn check_deliveries(
    member: &Member,
    path: &str,
    out: &Path,
    requests: &[Recorded],
    acked: &HashMap<(String, String), Vec<Instant>>,
) -> (usize, usize) {
    let events = events_of(out);
    assert!(events.len() >= 10, "{path}: the input should have pm25 events");
    let mut repeats = 0;
    for r in requests.iter().filter(|r| r.path == path) {
        let id = verify_standard_webhook(r, SECRET, 86_400).unwrap_or_else(|e| panic!("{path}: {e}"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let record = events
            .get(&id)
            .unwrap_or_else(|| panic!("{path}: {id} was sent but is no event of the output"));
        assert_eq!(&body["data"], record, "{path}: {id} carries its record");
        let Some(&acked_at) = acked.get(&(path.to_string(), id.clone())).and_then(|t| t.first()) else {
            continue;
        };
        if acked_at < r.at {
            // sent again after a 2xx: only if plume ended before it could record it, or a
            // start rolled the outbox back
            let explained = member.ends.iter().any(|&end| {
                end + Duration::from_millis(50) >= acked_at
                    && end <= r.at
                    && end.saturating_duration_since(acked_at) < Duration::from_secs(2)
            }) || member.rollbacks.iter().any(|&s| s >= acked_at && s <= r.at);
            assert!(
                explained,
                "{path}: {id} was acknowledged {:?} before it was sent again, and plume did not end in between",
                r.at - acked_at
            );
            repeats += 1;
        }
    }
    let missing: Vec<&String> = events
        .keys()
        .filter(|id| !acked.contains_key(&(path.to_string(), (*id).clone())))
        .collect();
    assert!(
        missing.is_empty(),
        "{path}: {} of {} events never acknowledged, such as {:?}",
        missing.len(),
        events.len(),
        &missing[..missing.len().min(3)]
    );
    (events.len(), repeats)
}

#[test]
fn aq1_over_mqtt_and_kafka_survives_kills_broker_restarts_receiver_faults_and_a_full_disk() {
    let seconds: u64 = std::env::var("PLUME_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let seed = seed_from_env("PLUME_CHAOS_SEED");
    eprintln!("chaos: {seconds} s, seed {seed} (PLUME_CHAOS_SEED)");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let (mqtt_dir, kafka_dir) = (dir.path().join("mqtt"), dir.path().join("kafka"));
    std::fs::create_dir_all(&mqtt_dir).unwrap();
    std::fs::create_dir_all(&kafka_dir).unwrap();
    let mqtt_input = aq1_input(&mqtt_dir, 30, 24_000, 61);
    let kafka_input = aq1_input(&kafka_dir, 30, 24_000, 62);

    // the receiver: its mode says how it answers; a prompt 2xx is an acknowledgement
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let acked: Arc<Mutex<HashMap<(String, String), Vec<Instant>>>> = Arc::default();
    let rx = {
        let (mode, acked) = (mode.clone(), acked.clone());
        Receiver::start(Arc::new(AtomicU64::new(0)), move |r| {
            match mode.load(Ordering::SeqCst) {
                HEALTHY => {
                    let id = r.header("webhook-id").unwrap_or("").to_string();
                    acked
                        .lock()
                        .unwrap()
                        .entry((r.path.clone(), id))
                        .or_default()
                        .push(Instant::now());
                    Reply::ok()
                }
                FAILING => Reply::status(503),
                STALLING => Reply::ok().delayed(Duration::from_millis(2500)),
                _ => Reply::reset(),
            }
        })
    };

    let mut mosquitto = Mosquitto::start(&mqtt_dir);
    let tansu = Tansu::start();
    tansu.create_topic("aq1", PARTITIONS);
    // the MQTT pipeline's data directory on a small disk of its own (the filler goes next to it)
    let disk = SmallDisk::mount(&mqtt_dir.join("disk"), "96m");
    let mqtt_state = if disk.is_some() {
        mqtt_dir.join("disk/state")
    } else {
        mqtt_dir.join("state")
    };
    if disk.is_none() {
        eprintln!("chaos: mounting a tmpfs is not allowed here: no full-disk fault");
    }

    let mqtt_pipeline = mqtt_dir.join("chaos-mqtt.yaml");
    std::fs::write(&mqtt_pipeline, with_webhook("pipelines/mqtt-aq1.yaml")).unwrap();
    let kafka_pipeline = kafka_dir.join("chaos-kafka.yaml");
    // the hand-offs in a directory of their own, not under the group's name: a member replaced
    // in another group (tansu's quirk 5, below) takes its partitions' state from there
    let kafka_text = with_webhook("pipelines/kafka-aq1.yaml");
    assert!(kafka_text.contains("      device_from: key\n"));
    let kafka_text = kafka_text.replace(
        "      device_from: key\n",
        &format!(
            "      device_from: key\n      handoff_dir: \"{}\"\n",
            kafka_dir.join("handoff").display()
        ),
    );
    std::fs::write(&kafka_pipeline, kafka_text).unwrap();
    let (mqtt_out, kafka_out) = (mqtt_dir.join("out.jsonl"), kafka_dir.join("out.jsonl"));
    let command = |pipeline: PathBuf, state: PathBuf, out: PathBuf, path: &str, env: Vec<(&'static str, String)>| {
        let url = rx.url(path);
        move || {
            let mut c = plume();
            c.arg("run")
                .arg(&pipeline)
                .arg("--data-dir")
                .arg(&state)
                .args(["--checkpoint-interval", "200ms"])
                .env("PLUME_OUTPUT", &out)
                .env("PLUME_WEBHOOK_URL", &url)
                .env("PLUME_WEBHOOK_SECRET", SECRET)
                .env(
                    "PLUME_LOG",
                    "warn,plume::connectors::mqtt::source=debug,plume::connectors::kafka::source=info,plume::store=info",
                )
                .env("NO_COLOR", "1")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            c
        }
    };
    let mut mqtt = Member::new(Box::new(command(
        mqtt_pipeline,
        mqtt_state,
        mqtt_out.clone(),
        "/mqtt",
        vec![("PLUME_MQTT_URL", mosquitto.url())],
    )));
    let mut kafka = Member::new(Box::new(command(
        kafka_pipeline,
        kafka_dir.join("state"),
        kafka_out.clone(),
        "/kafka",
        vec![
            ("PLUME_KAFKA_BROKERS", tansu.brokers()),
            ("PLUME_KAFKA_TOPIC", "aq1".into()),
            ("PLUME_KAFKA_GROUP", "plume-chaos".into()),
            ("PLUME_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
        ],
    )));
    mqtt.start();
    kafka.start();
    mqtt_support::wait_for("plume to subscribe", Duration::from_secs(60), || {
        mqtt.log().contains("mqtt subscription confirmed")
    });

    // the readings, published and produced in slices over the chaos
    let slices = 60usize;
    let pace = Duration::from_millis(seconds * 1000 / slices as u64 * 9 / 10);
    let publisher_paused = Arc::new(AtomicBool::new(false));
    let publisher_idle = Arc::new(AtomicBool::new(false));
    let publisher = {
        let messages: Vec<(String, Vec<u8>)> = aq1_records(&mqtt_input)
            .into_iter()
            .map(|(device, line)| (format!("aq1/{device}"), line))
            .collect();
        let (paused, idle, port) = (publisher_paused.clone(), publisher_idle.clone(), mosquitto.port);
        std::thread::spawn(move || {
            for slice in messages.chunks(messages.len().div_ceil(slices)) {
                while paused.load(Ordering::SeqCst) {
                    idle.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
                idle.store(false, Ordering::SeqCst);
                publish_all(port, "chaos-publisher", slice, rumqttc::QoS::AtLeastOnce);
                idle.store(true, Ordering::SeqCst);
                std::thread::sleep(pace);
            }
        })
    };
    let producer = {
        let records = aq1_records(&kafka_input);
        let brokers = tansu.brokers();
        std::thread::spawn(move || {
            for slice in records.chunks(records.len().div_ceil(slices)) {
                kafka_support::produce_to(&brokers, "aq1", slice, false);
                std::thread::sleep(pace);
            }
        })
    };

    // the faults
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    let mut kinds = vec![
        "kill mqtt",
        "kill kafka",
        "mosquitto restart",
        "kafka broker stall",
        "receiver 503",
        "receiver stall",
        "receiver reset",
    ];
    if disk.is_some() {
        kinds.push("disk full");
    }
    // every kind once first, in a random order; then at random
    let mut plan: Vec<&str> = kinds.clone();
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let settle = |members: &mut [&mut Member], d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            for m in members.iter_mut() {
                m.supervise();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut round = 0;
    while Instant::now() < deadline {
        settle(&mut [&mut mqtt, &mut kafka], rng.millis(300, 2000));
        let kind = if round < plan.len() {
            plan[round]
        } else {
            kinds[rng.below(kinds.len() as u64) as usize]
        };
        round += 1;
        *counts.entry(kind).or_default() += 1;
        eprintln!(
            "chaos: {:>5.1} s: {kind}",
            (Instant::now() + Duration::from_secs(seconds) - deadline).as_secs_f64()
        );
        match kind {
            "kill mqtt" => mqtt.kill(),
            "kill kafka" => kafka.kill(),
            "mosquitto restart" => {
                // between two slices (mosquitto mixes the messages it restores with ones
                // published while nobody is subscribed), with plume connected
                publisher_paused.store(true, Ordering::SeqCst);
                let waiting = Instant::now();
                while !publisher_idle.load(Ordering::SeqCst) && waiting.elapsed() < Duration::from_secs(60) {
                    settle(&mut [&mut mqtt, &mut kafka], Duration::from_millis(20));
                }
                let connected = |m: &Member| {
                    m.count(&["mqtt reconnected"])
                        + m.count(&["mqtt subscription confirmed"])
                        + m.count(&["session_present=true"])
                };
                let before = (mqtt.kills + mqtt.failed_exits, connected(&mqtt));
                mosquitto.stop();
                settle(&mut [&mut mqtt, &mut kafka], rng.millis(200, 1500));
                mosquitto.restart();
                let waiting = Instant::now();
                while (mqtt.kills + mqtt.failed_exits, connected(&mqtt)) == before || connected(&mqtt) == 0 {
                    assert!(
                        waiting.elapsed() < Duration::from_secs(90),
                        "plume did not reconnect after the broker restart:\n{}",
                        mqtt.log()
                    );
                    settle(&mut [&mut mqtt, &mut kafka], Duration::from_millis(50));
                }
                publisher_paused.store(false, Ordering::SeqCst);
            }
            "kafka broker stall" => {
                unsafe { libc::kill(tansu.pid() as i32, libc::SIGSTOP) };
                settle(&mut [&mut mqtt, &mut kafka], rng.millis(1000, 4000));
                unsafe { libc::kill(tansu.pid() as i32, libc::SIGCONT) };
            }
            "receiver 503" | "receiver stall" | "receiver reset" => {
                let fault = match kind {
                    "receiver 503" => FAILING,
                    "receiver stall" => STALLING,
                    _ => RESETTING,
                };
                mode.store(fault, Ordering::SeqCst);
                settle(&mut [&mut mqtt, &mut kafka], rng.millis(1000, 5000));
                mode.store(HEALTHY, Ordering::SeqCst);
            }
            "disk full" => {
                let filler = disk.as_ref().unwrap().fill();
                settle(&mut [&mut mqtt, &mut kafka], rng.millis(1000, 4000));
                std::fs::remove_file(filler).unwrap();
            }
            _ => unreachable!(),
        }
    }
    mode.store(HEALTHY, Ordering::SeqCst);
    publisher_paused.store(false, Ordering::SeqCst);

    // everything in, then caught up
    let waiting = Instant::now();
    while !(publisher.is_finished() && producer.is_finished()) {
        assert!(waiting.elapsed() < Duration::from_secs(300), "publishing did not end");
        settle(&mut [&mut mqtt, &mut kafka], Duration::from_millis(50));
    }
    publisher.join().unwrap();
    producer.join().unwrap();
    // MQTT: a marker after every reading, on a topic the template does not take
    publish_all(
        mosquitto.port,
        "chaos-marker",
        &[("aq1/".to_string(), b"{}".to_vec())],
        rumqttc::QoS::AtLeastOnce,
    );
    let waiting = Instant::now();
    while mqtt.count(&["mqtt topic does not match the template"]) == 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(180),
            "the MQTT marker did not arrive:\n{}\nearlier:\n{}",
            mqtt.log(),
            mqtt.earlier_logs()
        );
        settle(&mut [&mut mqtt, &mut kafka], Duration::from_millis(50));
    }
    // Kafka: the next time the member has read every partition to its end (a killed member's
    // partitions come back once its session times out)
    let caught_up = |m: &Member| m.count(&["kafka source caught up", &format!("partitions={PARTITIONS}")]);
    let before = caught_up(&kafka);
    let waiting = Instant::now();
    // seen with tansu (ARCHITECTURE.md, Kafka, quirks 2, 4 and 5): a member that joined while
    // the broker was stalled, or within the session timeout of the process it replaces, can hold
    // part of the partitions, or none, for minutes (no error from librdkafka; the CI run of
    // 2026-12-06 held 2 of 4 for 66 s and failed here), and a member whose session timed out in
    // a stall is given none back, nor is any member of its group after it (the CI run of
    // 2026-12-07: three replacements in a row got nothing). A supervisor would replace it, and
    // so does the test: a member whose last read to the end did not cover every partition (or
    // that was revoked after it) 60 s after its start is SIGKILLed and started again in a group
    // of its own, counted. Alone there, it gets every partition at once and resumes each from
    // the newer of its checkpoint and the partition's hand-off (the pipeline keeps hand-offs in
    // a directory of its own, not under the group's name); the group's offsets are not read.
    let mut unassigned_restarts = 0;
    loop {
        // what the member's last read to the end covered, unless it has been revoked since
        // (the CI run of 2026-12-07: a member alone in the group, its session timed out in a
        // broker stall, was revoked and given nothing back for the 58 s it had left)
        let reads_every_partition = kafka.child.as_ref().and_then(|c| {
            c.newest(|l| {
                if l.contains("kafka partitions revoked") {
                    Some(false)
                } else {
                    l.contains("kafka source caught up")
                        .then(|| l.contains(&format!("partitions={PARTITIONS}")))
                }
            })
        }) == Some(true);
        if reads_every_partition && (caught_up(&kafka) > before || waiting.elapsed() > Duration::from_secs(30)) {
            break;
        }
        if !reads_every_partition && kafka.started.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "chaos: the Kafka member did not hold and read every partition 60 s after its start: replacing it"
            );
            unassigned_restarts += 1;
            if unassigned_restarts > 3 {
                kafka_logs_to(&kafka);
                panic!("the Kafka member was replaced 3 times and still did not catch up");
            }
            kafka.env = vec![("PLUME_KAFKA_GROUP", format!("plume-chaos-{unassigned_restarts}"))];
            kafka.kill_and_replace_after(Duration::from_millis(500), &mut mqtt);
        }
        if waiting.elapsed() > Duration::from_secs(240) {
            kafka_logs_to(&kafka);
            panic!("the Kafka member did not catch up:\n{}", kafka.log());
        }
        settle(&mut [&mut mqtt, &mut kafka], Duration::from_millis(50));
    }
    // graceful stops: pending deliveries drain to the healthy receiver
    let mqtt_log = mqtt.child.take().unwrap().interrupt();
    let kafka_log = kafka.child.take().unwrap().interrupt();
    drop(disk);
    mosquitto.stop();

    let requests = {
        let mut r = rx.requests();
        r.sort_by_key(|r| r.seq);
        r
    };
    let acked = acked.lock().unwrap().clone();
    let summary = format!(
        "chaos: {} s, {} faults {:?}; kills: mqtt {}, kafka {}; exits on errors: mqtt {}, kafka {}; rollbacks: {}; \
         requests {}; Kafka member restarted for want of partitions: {unassigned_restarts}",
        seconds,
        round,
        counts,
        mqtt.kills,
        kafka.kills,
        mqtt.failed_exits,
        kafka.failed_exits,
        mqtt.rollbacks.len() + kafka.rollbacks.len(),
        requests.len(),
    );
    eprintln!("{summary}");
    if let Ok(d) = std::env::var("PLUME_CHAOS_LOGS") {
        let d = Path::new(&d);
        std::fs::write(
            d.join("mqtt.log"),
            format!("{}\n--- last ---\n{mqtt_log}", mqtt.earlier_logs()),
        )
        .unwrap();
        std::fs::write(
            d.join("kafka.log"),
            format!("{}\n--- last ---\n{kafka_log}", kafka.earlier_logs()),
        )
        .unwrap();
    }

    // no reading lost or counted twice
    let file_run = |dir: &Path, input: &Path| {
        let out = dir.join("out-file.jsonl");
        plume_run("pipelines/aq1.yaml", input, &out, &[]);
        out
    };
    assert_same_as_file_run("mqtt", &mqtt_out, &file_run(&mqtt_dir, &mqtt_input));
    assert_same_as_file_run("kafka", &kafka_out, &file_run(&kafka_dir, &kafka_input));
    // every event acknowledged, under a stable id; no acknowledged one sent again unexplained
    let (mqtt_events, mqtt_repeats) = check_deliveries(&mqtt, "/mqtt", &mqtt_out, &requests, &acked);
    let (kafka_events, kafka_repeats) = check_deliveries(&kafka, "/kafka", &kafka_out, &requests, &acked);
    let distinct: BTreeSet<&str> = requests.iter().filter_map(|r| r.header("webhook-id")).collect();
    eprintln!(
        "chaos: events mqtt {mqtt_events}, kafka {kafka_events}; distinct ids sent {}; acknowledged ones sent again \
         (plume ended before recording the acknowledgement): mqtt {mqtt_repeats}, kafka {kafka_repeats}",
        distinct.len()
    );
    assert!(mqtt.kills > 0 && kafka.kills > 0, "{summary}");
}
