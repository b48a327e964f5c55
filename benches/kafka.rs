//! Kafka into the full pipeline (`cargo bench --bench kafka`; tansu must be installed:
//! `scripts/setup`), next to the file source in the same run.
//!
//! A tansu broker (in memory) on a free loopback port gets a topic with 4 partitions, pre-filled
//! with N aq1 readings (1000 devices, key = device id). Then, `PLUME_BENCH_KAFKA_ROUNDS` times
//! (default 3), alternating:
//! - file: `plume run pipelines/aq1.yaml --input FILE` (the same readings), whole command timed;
//! - kafka: `plume run pipelines/kafka-aq1.yaml` with a fresh consumer group and data directory,
//!   timed from the start of the command, and from the first partition assignment (after the
//!   group join), until its source has read every partition to its end (its `caught up` log
//!   line), then stopped with Ctrl-C.
//!
//! Medians and the ratio kafka/file are printed. Size: `PLUME_BENCH_KAFKA_N` (default 300 000: one record per batch, see below, makes filling the
//! topic slow).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/kafka.rs"]
mod kafka_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::aq1_records;
use kafka_support::Tansu;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_or("PLUME_BENCH_KAFKA_N", 300_000);
    let rounds = env_or("PLUME_BENCH_KAFKA_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 1000, n, 7);
    let records = aq1_records(&input);
    let broker = Tansu::start();
    broker.create_topic("aq1", 4);
    let started = Instant::now();
    // one record per batch: backpressure pauses and resumes partitions, and tansu 0.6 skips the
    // rest of a batch when a fetch resumes inside it (see tests/common/kafka.rs)
    broker.produce_with("aq1", &records, false);
    let produce = started.elapsed();
    println!(
        "kafka bench: {n} readings produced to 4 partitions in {:.1} s ({:.0}/s)",
        produce.as_secs_f64(),
        n as f64 / produce.as_secs_f64()
    );
    let (mut file_rates, mut kafka_rates, mut kafka_after_join) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // file
        let out = dir.path().join(format!("file-{round}.jsonl"));
        let t = Instant::now();
        let status = common::plume()
            .args(["run", "pipelines/aq1.yaml", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .arg("--data-dir")
            .arg(dir.path().join(format!("file-{round}.state")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let file_s = t.elapsed().as_secs_f64();
        file_rates.push(n as f64 / file_s);
        // kafka
        let out = dir.path().join(format!("kafka-{round}.jsonl"));
        let t = Instant::now();
        let mut child = common::plume()
            .args(["run", "pipelines/kafka-aq1.yaml", "--data-dir"])
            .arg(dir.path().join(format!("kafka-{round}.state")))
            .env("PLUME_KAFKA_BROKERS", broker.brokers())
            .env("PLUME_KAFKA_TOPIC", "aq1")
            .env("PLUME_KAFKA_GROUP", format!("bench-{round}"))
            .env("PLUME_OUTPUT", &out)
            .env("PLUME_LOG", "warn,plume::connectors::kafka::source=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let assigned: Arc<Mutex<Option<Instant>>> = Default::default();
        let caught_up: Arc<Mutex<Option<Instant>>> = Default::default();
        let reader = {
            let (assigned, caught_up) = (assigned.clone(), caught_up.clone());
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("kafka partition assigned") {
                        assigned.lock().unwrap().get_or_insert(Instant::now());
                    }
                    if line.contains("kafka source caught up") && line.contains("partitions=4") {
                        caught_up.lock().unwrap().get_or_insert(Instant::now());
                    }
                }
            })
        };
        while caught_up.lock().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(600), "plume did not catch up");
            std::thread::sleep(Duration::from_millis(5));
        }
        let end = caught_up.lock().unwrap().unwrap();
        let join = assigned.lock().unwrap().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        assert!(child.wait().unwrap().success());
        reader.join().unwrap();
        let kafka_s = end.duration_since(t).as_secs_f64();
        let after_join_s = end.duration_since(join).as_secs_f64();
        kafka_rates.push(n as f64 / kafka_s);
        kafka_after_join.push(n as f64 / after_join_s);
        // the same results as the file run
        assert_eq!(
            common::aq1_summary(&out),
            common::aq1_summary(&dir.path().join(format!("file-{round}.jsonl")))
        );
        println!(
            "round {round}: file {:.0} readings/s ({file_s:.2} s); kafka {:.0} readings/s ({kafka_s:.2} s from start, {:.0}/s after the group join)",
            n as f64 / file_s,
            n as f64 / kafka_s,
            n as f64 / after_join_s
        );
    }
    let (f, k, j) = (median(file_rates), median(kafka_rates), median(kafka_after_join));
    println!(
        "kafka bench: {n} readings, medians of {rounds}: file {f:.0}/s, kafka {k:.0}/s from start ({:.2}x the file), {j:.0}/s after the group join ({:.2}x)",
        k / f,
        j / f
    );
}
