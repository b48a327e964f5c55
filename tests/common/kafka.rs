//! Kafka test and bench support: a tansu broker (a Kafka-protocol broker, in memory) on a free
//! loopback port, topics, a producer and a reader built on rdkafka. Shared by `tests/kafka.rs`
//! and `benches/kafka.rs`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The tansu binary: `PLUME_TANSU`, on the PATH, or in `~/.cargo/bin` (where `scripts/setup`
/// installs it).
pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PLUME_TANSU") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("tansu");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cargo/bin/tansu");
    assert!(
        p.is_file(),
        "tansu is not installed: run scripts/setup (it runs `cargo install tansu --locked --features dynostore`)"
    );
    p
}

/// A tansu broker with in-memory storage, stopped on drop.
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        // PLUME_TANSU_LOG=FILE keeps what the broker prints (for diagnosing a failed run;
        // RUST_LOG picks how much)
        let log = || match std::env::var_os("PLUME_TANSU_LOG") {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .expect("PLUME_TANSU_LOG opens"),
            None => Stdio::null(),
        };
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("tansu starts");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Tansu { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `name` with `tansu topic create`. A loaded machine (two tests, each with its
    /// broker and member processes, on two CPUs) sometimes sees the command fail on its own
    /// time-out while the broker is still working on it: it is tried again, for up to 60 s, and
    /// "already exists" after a failed try counts as created (on the first try it is an error at
    /// once). A final failure names what tansu printed.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let started = Instant::now();
        let mut tries = Vec::new();
        loop {
            let output = Command::new(tansu_binary())
                .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                .args(["--partitions", &partitions.to_string(), name])
                .output()
                .expect("tansu topic create runs");
            if output.status.success() {
                return;
            }
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if printed.contains("already exists") {
                // (a first try's "already exists" is the caller's second creation)
                assert!(!tries.is_empty(), "topic {name} already exists: {}", printed.trim());
                return;
            }
            tries.push(format!(
                "after {:?}: {} {}",
                started.elapsed(),
                output.status,
                printed.trim()
            ));
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "creating topic {name} failed {} times:\n{}",
                tries.len(),
                tries.join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Produces `(key, value)` records in order (one producer: the per-key order is kept, and
    /// records with the same key go to the same partition), and waits until all are delivered.
    ///
    /// One record per batch: tansu 0.6 answers a fetch that starts inside a record batch with
    /// the next batch, skipping the rest of the one asked for (a real Kafka broker returns the
    /// batch that holds the offset; `tests/kafka.rs` probes this). With one-record batches
    /// every offset a consumer resumes from is the start of a batch.
    pub fn produce(&self, topic: &str, records: &[(String, Vec<u8>)]) {
        self.produce_with(topic, records, false)
    }

    /// [`Tansu::produce`], in batches of up to 10 000 records when `batched` (for a consumer
    /// that reads from the start only: see above).
    pub fn produce_with(&self, topic: &str, records: &[(String, Vec<u8>)], batched: bool) {
        produce_to(&self.brokers(), topic, records, batched)
    }

    /// Reads `topic` from the beginning until `n` records arrived (or `timeout`): `(key, value,
    /// plume-id header)`.
    pub fn read(&self, topic: &str, n: usize, timeout: Duration) -> Vec<(String, String, Option<String>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", format!("reader-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let started = Instant::now();
        let mut out = Vec::new();
        while out.len() < n && started.elapsed() < timeout {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let value = m
                    .payload()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let id = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "plume-id")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                out.push((key, value, id));
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`Tansu::produce_with`] to the broker at `brokers` (from any thread).
pub fn produce_to(brokers: &str, topic: &str, records: &[(String, Vec<u8>)], batched: bool) {
    let (linger, batch) = if batched { ("20", "10000") } else { ("0", "1") };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger)
        .set("batch.num.messages", batch)
        .set("queue.buffering.max.messages", "1000000")
        .set("acks", "all")
        .create()
        .expect("producer");
    for (key, value) in records {
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(600))
        .expect("every record delivered");
}

/// The end (last offset + 1) of each of `topic`'s `partitions` partitions, found by reading its
/// `records` records: tansu's high watermark of a partition whose last record batch holds
/// several records is that batch's first offset + 1, not its end.
#[allow(dead_code)]
pub fn partition_ends(
    brokers: &str,
    topic: &str,
    partitions: i32,
    records: usize,
) -> std::collections::BTreeMap<i32, i64> {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ends")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut ends = std::collections::BTreeMap::new();
    let mut read = 0;
    let started = Instant::now();
    while read < records {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "read {read} of {records} records"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
            let end = ends.entry(m.partition()).or_insert(0);
            *end = (*end).max(m.offset() + 1);
        }
    }
    ends
}

/// Whether `group`'s committed offset of every partition in `ends` has reached its end: every
/// record is in some member's durable checkpoint.
#[allow(dead_code)]
pub fn group_reached(brokers: &str, group: &str, topic: &str, ends: &std::collections::BTreeMap<i32, i64>) -> bool {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition(topic, *p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
        return false;
    };
    committed.elements().iter().all(|e| match e.offset() {
        Offset::Offset(o) => ends.get(&e.partition()).is_some_and(|end| o >= *end),
        _ => false,
    })
}
