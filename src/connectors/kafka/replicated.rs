//! A compacted one-partition topic that every member of a cluster writes to and tails from its
//! start: a small table each member keeps a full copy of (the push subscriptions). Pure
//! plumbing: what a record means is the caller's (`apply`).
//!
//! # Layout
//! - [`ReplicatedTopic::start`]: creates the topic when missing (compacted, one partition, so
//!   every member applies the changes in one order), and a thread that applies every record,
//!   this member's own included, from the topic's start.
//! - [`ReplicatedTopic::publish`]: writes one change (a key, and a value or a tombstone) and
//!   waits until the broker has it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::changelog::ChangelogError;

/// How long a publish waits for the broker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A table every member keeps a copy of, through one compacted topic.
pub struct ReplicatedTopic {
    topic: String,
    producer: BaseProducer,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Records applied (the tail's count).
    pub applied: Arc<AtomicU64>,
}

impl ReplicatedTopic {
    /// Creates `topic` if it does not exist, and starts applying its records (`apply(key,
    /// value)`, no value: a tombstone) from its start on a thread of its own. `reader`: client
    /// settings without a group; `writer`: for a producer.
    pub fn start(
        reader: &ClientConfig,
        writer: ClientConfig,
        topic: &str,
        replication: Option<i32>,
        apply: impl Fn(&[u8], Option<&[u8]>) + Send + 'static,
    ) -> Result<Self, ChangelogError> {
        let client = |operation: &'static str| ChangelogError::client(topic, operation);
        let mut reader = reader.clone();
        // (librdkafka assigns partitions only to a consumer with a group id; this one never
        // joins its group or commits, and no other process uses the id)
        reader.set("enable.auto.commit", "false").set(
            "group.id",
            format!(
                "plume-replicated-{:016x}",
                xxhash_rust::xxh3::xxh3_64(format!("{}-{}", std::process::id(), crate::clock::now_ms()).as_bytes())
            ),
        );
        let consumer: BaseConsumer = reader.create().map_err(client("creating the reader"))?;
        let exists = |consumer: &BaseConsumer| -> Result<bool, ChangelogError> {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(client("reading the topic's metadata"))?;
            Ok(metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
        };
        if !exists(&consumer)? {
            let admin: AdminClient<DefaultClientContext> =
                writer.create().map_err(client("creating the admin client"))?;
            let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication.unwrap_or(-1)))
                .set("cleanup.policy", "compact");
            let results = futures::executor::block_on(admin.create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ))
            .map_err(client("creating the topic"))?;
            for result in results {
                if let Err((_, code)) = result
                    && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
                {
                    return Err(ChangelogError::Topic {
                        topic: topic.to_string(),
                        problem: format!("creating it: {code}"),
                    });
                }
            }
            info!(topic, "replicated topic created");
        }
        let mut producer_config = writer.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0");
        let producer: BaseProducer = producer_config.create().map_err(client("creating the producer"))?;
        // (the metadata may lag the creation a moment: a reader assigned before it retries)
        let started = Instant::now();
        loop {
            if exists(&consumer)? {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(ChangelogError::Topic {
                    topic: topic.to_string(),
                    problem: "not in the metadata 30 s after its creation".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(client("assigning the reader"))?;
        consumer.assign(&tpl).map_err(client("assigning the reader"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, applied, topic) = (stop.clone(), applied.clone(), topic.to_string());
            std::thread::Builder::new()
                .name("plume-replicated".into())
                .spawn(move || {
                    info!(topic = %topic, "replicated topic: applying its records");
                    while !stop.load(Ordering::Relaxed) {
                        match consumer.poll(Duration::from_millis(100)) {
                            None => {}
                            Some(Ok(m)) => {
                                apply(m.key().unwrap_or_default(), m.payload());
                                applied.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Err(e)) => debug!(topic = %topic, error = %e, "replicated topic read"),
                        }
                    }
                })
                .expect("a thread for the replicated topic")
        };
        Ok(ReplicatedTopic {
            topic: topic.to_string(),
            producer,
            stop,
            thread: Some(thread),
            applied,
        })
    }

    /// Writes `key` → `value` (none: a tombstone) and waits until the broker has it.
    pub fn publish(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), ChangelogError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).partition(0).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer
            .send(record)
            .map_err(|(error, _)| ChangelogError::client(&self.topic, "producing")(error))?;
        self.producer
            .flush(PUBLISH_TIMEOUT)
            .map_err(ChangelogError::client(&self.topic, "waiting for the broker"))
    }
}

impl Drop for ReplicatedTopic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!(topic = %self.topic, "the replicated topic's thread panicked");
        }
    }
}
