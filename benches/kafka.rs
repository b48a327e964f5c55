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
//!   line), then stopped with Ctrl-C;
//! - plain: the baseline, a plain rdkafka `BaseConsumer` (the crate and librdkafka plume uses,
//!   with the fetch and queue settings of plume's source) in this process, assigned the 4 partitions from the beginning (no
//!   group join), polling until every partition reported its end, and decoding each message's
//!   JSON into a struct of the four aq1 fields (`serde_json`), i.e. the least a consumer that
//!   uses the readings does. Timed from the assignment, once connected with the topic's metadata
//!   (plume's "after the group join" is timed from its first assignment too).
//!
//! Medians, the ratio kafka/file and the ratio plume/plain (plume after its group join, against
//! the plain consumer, which has no join) are printed, with the CPU seconds the broker, plume and
//! the plain consumer used in each phase (from `/proc`: who is busy, and who waits).
//! `PLUME_BENCH_KAFKA_BATCHED=1` also fills a second topic with the same readings in batches
//! of up to 10 000 records and reads it with plume and the plain consumer (the broker's cost per
//! batch); plume's results there are compared, not asserted (a pause can make tansu skip).
//! `PLUME_BENCH_KAFKA_PROPS="k=v,k=v"` adds librdkafka properties to plume's source and to the
//! plain consumer; `PLUME_BENCH_PERF=DIR` records the first
//! round's plume run with `perf record -g` into `DIR/kafka-plume.data` (and the broker's into
//! `DIR/kafka-tansu.data`). Size: `PLUME_BENCH_KAFKA_N` (default 300 000: one record per batch, see below, makes filling the
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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name (which is in parentheses and may hold spaces)
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state
    (ticks(11) + ticks(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn properties(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Aq1<'a> {
    device: &'a str,
    ts: i64,
    pm25: f64,
    co2: f64,
}

/// The baseline: a plain `BaseConsumer` reads every partition of `topic` to its end, decoding
/// each value. Returns (seconds, messages, CPU seconds of this process).
fn plain_consume(brokers: &str, topic: &str, partitions: i32, n: u64) -> (f64, u64, f64) {
    let cpu_before = cpu_of(std::process::id());
    let mut config = ClientConfig::new();
    // the fetch settings plume's source has (src/connectors/kafka/source.rs), nothing else
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "plain-baseline")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in properties("PLUME_BENCH_KAFKA_PROPS") {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().expect("plain consumer");
    // connected and the topic's metadata known before the clock starts (as plume's is, at its
    // first assignment)
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("the topic's metadata");
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let (mut count, mut ended, mut sum) = (0u64, std::collections::HashSet::new(), 0f64);
    while ended.len() < partitions as usize {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the plain consumer did not finish"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let r: Aq1 = serde_json::from_slice(m.payload().unwrap_or_default()).expect("an aq1 reading");
                sum += r.pm25;
                count += 1;
                ended.remove(&m.partition());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("plain consumer: {e}"),
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(sum.is_finite());
    assert_eq!(count, n, "the plain consumer read every record");
    (secs, count, cpu_of(std::process::id()) - cpu_before)
}

/// `perf record -g` on `pid` into `file` (stopped with SIGINT by the caller).
fn perf(pid: u32, file: &std::path::Path) -> std::process::Child {
    std::process::Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf runs")
}

/// One plume run of the Kafka pipeline until its source caught up.
struct KafkaRun {
    from_start: f64,
    after_join: f64,
    plume_cpu: f64,
    tansu_cpu: f64,
    /// Backpressure pauses of the source (its debug log).
    pauses: usize,
}

fn plume_kafka(
    pipeline: &std::path::Path,
    broker: &Tansu,
    topic: &str,
    group: &str,
    state: &std::path::Path,
    out: &std::path::Path,
    perf_dir: Option<&std::path::Path>,
) -> KafkaRun {
    let t = Instant::now();
    let tansu_cpu = cpu_of(broker.pid());
    let mut child = common::plume()
        .args(["run"])
        .arg(pipeline)
        .arg("--data-dir")
        .arg(state)
        .env("PLUME_KAFKA_BROKERS", broker.brokers())
        .env("PLUME_KAFKA_TOPIC", topic)
        .env("PLUME_KAFKA_GROUP", group)
        .env("PLUME_OUTPUT", out)
        .env("PLUME_LOG", "warn,plume::connectors::kafka::source=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let assigned: Arc<Mutex<Option<Instant>>> = Default::default();
    let caught_up: Arc<Mutex<Option<Instant>>> = Default::default();
    let pauses = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (assigned, caught_up, pauses) = (assigned.clone(), caught_up.clone(), pauses.clone());
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("kafka partition assigned") {
                    assigned.lock().unwrap().get_or_insert(Instant::now());
                }
                if line.contains("kafka partitions paused") {
                    pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if line.contains("kafka source caught up") && line.contains("partitions=4") {
                    caught_up.lock().unwrap().get_or_insert(Instant::now());
                }
            }
        })
    };
    let mut perfs = Vec::new();
    while caught_up.lock().unwrap().is_none() {
        // perf once plume's threads run (it samples the threads there are when it attaches)
        if let (Some(d), true) = (perf_dir, perfs.is_empty() && assigned.lock().unwrap().is_some()) {
            perfs.push(perf(child.id(), &d.join("kafka-plume.data")));
            perfs.push(perf(broker.pid(), &d.join("kafka-tansu.data")));
        }
        assert!(t.elapsed() < Duration::from_secs(600), "plume did not catch up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let end = caught_up.lock().unwrap().unwrap();
    let (plume_cpu, tansu_cpu) = (cpu_of(child.id()), cpu_of(broker.pid()) - tansu_cpu);
    for mut p in perfs {
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    let join = assigned.lock().unwrap().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    KafkaRun {
        from_start: end.duration_since(t).as_secs_f64(),
        after_join: end.duration_since(join).as_secs_f64(),
        plume_cpu,
        tansu_cpu,
        pauses: pauses.load(std::sync::atomic::Ordering::Relaxed),
    }
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
    // the pipeline with the extra consumer properties, if any
    let extra = properties("PLUME_BENCH_KAFKA_PROPS");
    let mut pipeline_text = std::fs::read_to_string(common::repo().join("pipelines/kafka-aq1.yaml")).unwrap();
    let anchor = "      properties:\n";
    let at = pipeline_text.find(anchor).expect("the pipeline has properties") + anchor.len();
    for (k, v) in &extra {
        pipeline_text.insert_str(at, &format!("        {k}: \"{v}\"\n"));
    }
    let pipeline = dir.path().join("kafka-aq1.yaml");
    std::fs::write(&pipeline, pipeline_text).unwrap();
    if !extra.is_empty() {
        println!("kafka bench: plume's source with {extra:?}");
    }
    let perf_dir = std::env::var_os("PLUME_BENCH_PERF").map(std::path::PathBuf::from);
    let (mut file_rates, mut kafka_rates, mut kafka_after_join) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_rates, mut ratios) = (Vec::new(), Vec::new());
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
        let run = plume_kafka(
            &pipeline,
            &broker,
            "aq1",
            &format!("bench-{round}"),
            &dir.path().join(format!("kafka-{round}.state")),
            &out,
            perf_dir.as_deref().filter(|_| round == 0),
        );
        let (kafka_s, after_join_s, plume_cpu, tansu_cpu) =
            (run.from_start, run.after_join, run.plume_cpu, run.tansu_cpu);
        kafka_rates.push(n as f64 / kafka_s);
        kafka_after_join.push(n as f64 / after_join_s);
        // the same results as the file run
        assert_eq!(
            common::aq1_summary(&out),
            common::aq1_summary(&dir.path().join(format!("file-{round}.jsonl")))
        );
        // plain
        let before = cpu_of(broker.pid());
        let (plain_s, _, plain_cpu) = plain_consume(&broker.brokers(), "aq1", 4, n);
        let plain_tansu_cpu = cpu_of(broker.pid()) - before;
        plain_rates.push(n as f64 / plain_s);
        ratios.push(plain_s / after_join_s);
        println!(
            "round {round}: file {:.0} readings/s ({file_s:.2} s); kafka {:.0} readings/s ({kafka_s:.2} s from start, {:.0}/s after the group join; CPU s plume {plume_cpu:.2}, tansu {tansu_cpu:.2}); plain consumer {:.0} readings/s ({plain_s:.2} s; CPU s consumer {plain_cpu:.2}, tansu {plain_tansu_cpu:.2}); plume/plain {:.2}",
            n as f64 / file_s,
            n as f64 / kafka_s,
            n as f64 / after_join_s,
            n as f64 / plain_s,
            plain_s / after_join_s
        );
    }
    let (f, k, j) = (median(file_rates), median(kafka_rates), median(kafka_after_join));
    println!(
        "kafka bench: {n} readings, medians of {rounds}: file {f:.0}/s, kafka {k:.0}/s from start ({:.2}x the file), {j:.0}/s after the group join ({:.2}x)",
        k / f,
        j / f
    );
    println!(
        "kafka bench: plain consumer {:.0}/s (median); plume after the join / plain, median of the rounds' ratios: {:.2}x",
        median(plain_rates),
        median(ratios)
    );
    // the broker's side: the same readings produced in batches of up to 10 000 records, read
    // by the plain consumer (plume does not read such a topic from tansu: see `produce_with`)
    if std::env::var_os("PLUME_BENCH_KAFKA_BATCHED").is_some() {
        broker.create_topic("aq1-batched", 4);
        broker.produce_with("aq1-batched", &records, true);
        let (mut rates, mut plume_rates, mut batched_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let out = dir.path().join(format!("batched-{round}.jsonl"));
            let run = plume_kafka(
                &pipeline,
                &broker,
                "aq1-batched",
                &format!("batched-{round}"),
                &dir.path().join(format!("batched-{round}.state")),
                &out,
                None,
            );
            let same =
                common::aq1_summary(&out) == common::aq1_summary(&dir.path().join(format!("file-{round}.jsonl")));
            println!(
                "plume, topic in batches of up to 10 000: {:.0} readings/s after the group join ({:.2} s; CPU s plume {:.2}, tansu {:.2}); {} pauses; results {}",
                n as f64 / run.after_join,
                run.after_join,
                run.plume_cpu,
                run.tansu_cpu,
                run.pauses,
                if same {
                    "equal the file run's"
                } else {
                    "DIFFER from the file run's (records skipped by the broker after a pause)"
                }
            );
            let before = cpu_of(broker.pid());
            let (secs, _, cpu) = plain_consume(&broker.brokers(), "aq1-batched", 4, n);
            println!(
                "plain consumer, topic in batches of up to 10 000: {:.0} readings/s ({secs:.2} s; CPU s consumer {cpu:.2}, tansu {:.2})",
                n as f64 / secs,
                cpu_of(broker.pid()) - before
            );
            rates.push(n as f64 / secs);
            plume_rates.push(n as f64 / run.after_join);
            batched_ratios.push(secs / run.after_join);
        }
        println!(
            "kafka bench: batched topic: plume {:.0}/s after the join, plain consumer {:.0}/s (medians); plume/plain {:.2}x (median of the rounds' ratios)",
            median(plume_rates),
            median(rates),
            median(batched_ratios)
        );
    }
}
