//! The changelog of a Kafka source's partition state: a compacted topic with the input topic's
//! partition count, so that a member on another machine takes a partition over with its state.
//!
//! # Layout
//! - [`PartitionReplica`]: the state of one changelog partition as a reader rebuilds it, record
//!   by record (pure: no IO). Only what a marker commits counts.
//! - [`ChangelogWriter`]: an idempotent producer that publishes a partition's changed devices
//!   and then its marker, and waits until the broker has them all.
//! - [`read_partitions`]: reads changelog partitions into replicas, from their start or from
//!   where a standby's replicas stopped.
//! - [`Standby`]: a thread that keeps replicas of every changelog partition up to date by
//!   tailing the topic (`standby_replicas`), so that a failover reads only the tail.
//! - [`ensure_topic`]: creates the topic (compacted, as many partitions as the input topic).
//!
//! # Records
//! Changelog partition `p` holds the state of input partition `p`. A device's record: key = the
//! device id, value = its stored envelope (`store::seal` of the encoded `DeviceSnapshot`), or
//! no value (a tombstone) when its state is dropped. After a publish's device records comes its
//! marker: key [`MARKER_KEY`], value a sealed [`ChangelogMarker`] (the input offset the state
//! stands for). Every record carries the header [`PUBLISH_HEADER`]: the writing member and the
//! publish's number. A reader applies a publish's device records only when the marker of the
//! same publish follows them: a member that dies halfway through a publish leaves records no
//! marker commits, and a reader drops them (the member that takes the partition over writes
//! their committed values again, so that compaction, which keeps the newest value of a key,
//! cannot keep an uncommitted one).
//!
//! A partition's notifications waiting for delivery travel the same way, as records of the
//! same publishes: key [`notification_key`] (`NUL plume-outbox NUL <notifier> NUL <delivery
//! id>`), value the sealed outbox record, and a tombstone once delivered. A reader keeps them
//! apart from the devices ([`PartitionReplica::notifications`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::store::partitions::PartitionHandoff;
use crate::store::{bincode_decode, bincode_encode, seal, unseal};

/// The key of a partition's marker (no device id starts with a NUL byte).
pub const MARKER_KEY: &[u8] = b"\x00plume-marker";
/// The header naming a record's publish: 8 bytes of member id, 8 of publish number.
pub const PUBLISH_HEADER: &str = "plume-publish";
/// The marker format.
pub const MARKER_VERSION: u32 = 1;
/// How the key of a notification record starts (no device id starts with a NUL byte).
pub const NOTIFICATION_KEY_PREFIX: &str = "\0plume-outbox\0";

/// How the key of a device's policy entries starts.
pub const POLICY_KEY_PREFIX: &str = "\0plume-policy\0";

/// The changelog key of notifier `notifier`'s policy entries of `device`.
pub fn policy_key(notifier: &str, device: &str) -> String {
    format!("{POLICY_KEY_PREFIX}{notifier}\0{device}")
}

/// The notifier and device of a policy record's key; `None` for other keys.
pub fn parse_policy_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(POLICY_KEY_PREFIX)?.split_once('\0')
}

/// The changelog key of notifier `notifier`'s delivery `id`.
pub fn notification_key(notifier: &str, id: &str) -> String {
    format!("{NOTIFICATION_KEY_PREFIX}{notifier}\0{id}")
}

/// What a publish compares to know whether a notifier record changed.
pub fn extra_hash(value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(value)
}

/// The notifier and delivery id of a notification record's key; `None` for other keys.
pub fn parse_notification_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(NOTIFICATION_KEY_PREFIX)?.split_once('\0')
}

/// How long a publish waits for the broker to have every record.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong with a changelog.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("changelog {topic}: {operation}: {error}")]
    Client {
        topic: String,
        operation: &'static str,
        error: KafkaError,
    },
    #[error("changelog {topic}: {problem}")]
    Topic { topic: String, problem: String },
    #[error(
        "changelog {topic} partition {partition}: {failed} of {sent} records were not delivered (retrying can help: the next checkpoint publishes them again)"
    )]
    Delivery {
        topic: String,
        partition: i32,
        failed: u64,
        sent: u64,
    },
    #[error("changelog {topic} partition {partition}: read up to offset {at} of {high} in {seconds} s, then gave up")]
    ReadTimeout {
        topic: String,
        partition: i32,
        at: i64,
        high: i64,
        seconds: u64,
    },
}

impl ChangelogError {
    /// A client error of `operation` on `topic`, for `map_err`.
    pub fn client(topic: &str, operation: &'static str) -> impl FnOnce(KafkaError) -> ChangelogError {
        let topic = topic.to_string();
        move |error| ChangelogError::Client { topic, operation, error }
    }
}

/// The input offset a partition's state stands for (the value of a [`MARKER_KEY`] record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangelogMarker {
    pub version: u32,
    /// The input topic and partition.
    pub topic: String,
    pub partition: i32,
    /// The next input offset to read: the state holds every reading before it.
    pub next_offset: i64,
    pub pipeline_hash: String,
    pub key_groups: u32,
    /// The writing member's checkpoint the state is taken from.
    pub checkpoint: u64,
    pub written_ms: i64,
    /// Device records in this publish.
    pub devices: u64,
}

/// A publish's identity: the writing member and its publish number.
pub type PublishId = [u8; 16];

/// Damage in one changelog record (reported; the record is skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct DamagedRecord {
    pub offset: i64,
    pub problem: String,
}

/// One changelog partition as a reader rebuilds it.
#[derive(Debug, Clone, Default)]
pub struct PartitionReplica {
    /// Device → encoded snapshot, as of [`PartitionReplica::marker`].
    committed: HashMap<String, Vec<u8>>,
    marker: Option<ChangelogMarker>,
    /// The publish whose device records are being read (not yet committed by its marker).
    pending_publish: Option<PublishId>,
    pending: HashMap<String, Option<Vec<u8>>>,
    /// Devices written by a publish no marker committed (and not written since).
    abandoned: HashSet<String>,
    /// The next changelog offset to read.
    pub next_offset: i64,
    pub records: u64,
    pub bytes: u64,
    pub damaged: Vec<DamagedRecord>,
}

impl PartitionReplica {
    /// Applies the record at `offset` (`value` none: a tombstone).
    pub fn apply(&mut self, offset: i64, key: &[u8], value: Option<&[u8]>, publish: Option<PublishId>) {
        self.next_offset = offset + 1;
        self.records += 1;
        self.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        let damaged = |problem: String| DamagedRecord { offset, problem };
        let Some(publish) = publish else {
            self.damaged.push(damaged(format!("no {PUBLISH_HEADER} header")));
            return;
        };
        if key == MARKER_KEY {
            let marker = value
                .ok_or_else(|| "a marker without a value".to_string())
                .and_then(|v| unseal(v).map(<[u8]>::to_vec))
                .and_then(|payload| bincode_decode::<ChangelogMarker>(&payload));
            let marker = match marker {
                Ok(m) => m,
                Err(problem) => {
                    self.damaged.push(damaged(format!("marker: {problem}")));
                    return;
                }
            };
            if self.pending_publish == Some(publish) {
                for (device, state) in self.pending.drain() {
                    self.abandoned.remove(&device);
                    match state {
                        Some(s) => self.committed.insert(device, s),
                        None => self.committed.remove(&device),
                    };
                }
            } else {
                self.abandon_pending();
            }
            self.pending_publish = None;
            self.marker = Some(marker);
            return;
        }
        let device = match std::str::from_utf8(key) {
            Ok(d) => d.to_string(),
            Err(_) => {
                self.damaged.push(damaged("a device id that is not UTF-8".into()));
                return;
            }
        };
        let state = match value.map(unseal) {
            None => None,
            Some(Ok(payload)) => Some(payload.to_vec()),
            Some(Err(problem)) => {
                self.damaged
                    .push(damaged(format!("state of device {device}: {problem}")));
                return;
            }
        };
        if self.pending_publish != Some(publish) {
            self.abandon_pending();
            self.pending_publish = Some(publish);
        }
        self.pending.insert(device, state);
    }

    fn abandon_pending(&mut self) {
        let abandoned: Vec<String> = self.pending.drain().map(|(d, _)| d).collect();
        self.abandoned.extend(abandoned);
        self.pending_publish = None;
    }

    /// The newest marker read.
    pub fn marker(&self) -> Option<&ChangelogMarker> {
        self.marker.as_ref()
    }

    /// Devices in the committed state.
    pub fn devices(&self) -> usize {
        self.committed.keys().filter(|k| !k.starts_with('\0')).count()
    }

    /// The committed notifications waiting for delivery (key order).
    pub fn notifications(&self) -> Vec<crate::runtime::ports::PendingNotification> {
        let mut out: Vec<_> = self
            .committed
            .iter()
            .filter_map(|(key, record)| {
                let (notifier, id) = parse_notification_key(key)?;
                Some(crate::runtime::ports::PendingNotification {
                    notifier: notifier.to_string(),
                    id: id.to_string(),
                    device: String::new(),
                    record: record.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.notifier, &a.id).cmp(&(&b.notifier, &b.id)));
        out
    }

    /// The committed policy entries of devices (key order).
    pub fn policies(&self) -> Vec<crate::runtime::ports::DevicePolicy> {
        let mut out: Vec<_> = self
            .committed
            .iter()
            .filter_map(|(key, record)| {
                let (notifier, device) = parse_policy_key(key)?;
                Some(crate::runtime::ports::DevicePolicy {
                    notifier: notifier.to_string(),
                    device: device.to_string(),
                    record: record.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.notifier, &a.device).cmp(&(&b.notifier, &b.device)));
        out
    }

    /// The committed records that are not devices' (notifications, policy entries): key →
    /// [`extra_hash`] of the value.
    pub fn extras(&self) -> BTreeMap<String, u64> {
        self.committed
            .iter()
            .filter(|(k, _)| k.starts_with('\0'))
            .map(|(k, v)| (k.clone(), extra_hash(v)))
            .collect()
    }

    /// Devices whose newest record no marker committed: what the next writer writes again
    /// (their committed state, or a tombstone).
    pub fn uncommitted(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out: Vec<(String, Option<Vec<u8>>)> = self
            .abandoned
            .iter()
            .chain(self.pending.keys())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|d| (d.clone(), self.committed.get(d).cloned()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The committed state as a hand-off (what the store imports), if a marker was read.
    pub fn to_handoff(&self) -> Option<PartitionHandoff> {
        let m = self.marker.as_ref()?;
        let mut devices: Vec<(String, Vec<u8>)> = self
            .committed
            .iter()
            .filter(|(d, _)| !d.starts_with('\0'))
            .map(|(d, s)| (d.clone(), s.clone()))
            .collect();
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        Some(PartitionHandoff {
            topic: m.topic.clone(),
            partition: m.partition,
            next_offset: m.next_offset,
            pipeline_hash: m.pipeline_hash.clone(),
            key_groups: m.key_groups,
            checkpoint: m.checkpoint,
            written_ms: m.written_ms,
            devices,
        })
    }
}

/// The header value of a record, as a publish id.
fn publish_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<PublishId> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == PUBLISH_HEADER)
        .and_then(|h| h.value)
        .and_then(|v| v.try_into().ok())
}

#[derive(Default)]
struct WriterDeliveries {
    /// Failed deliveries per changelog partition.
    failed: Mutex<BTreeMap<i32, u64>>,
    last_error: Mutex<Option<String>>,
}

struct WriterContext {
    deliveries: Arc<WriterDeliveries>,
}

impl ClientContext for WriterContext {}

impl ProducerContext for WriterContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, partition: usize) {
        if let Err((e, _)) = result {
            *self
                .deliveries
                .failed
                .lock()
                .expect("lock")
                .entry(partition as i32)
                .or_default() += 1;
            *self.deliveries.last_error.lock().expect("lock") = Some(e.to_string());
        }
    }
}

/// What one publish wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    pub devices: u64,
    pub bytes: u64,
}

/// Publishes partition state to the changelog topic.
pub struct ChangelogWriter {
    topic: String,
    producer: BaseProducer<WriterContext>,
    deliveries: Arc<WriterDeliveries>,
    member: u64,
    publishes: u64,
}

impl ChangelogWriter {
    /// An idempotent producer for `topic` (`config`: the source's client settings).
    pub fn new(mut config: ClientConfig, topic: &str) -> Result<Self, ChangelogError> {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "none");
        let deliveries = Arc::new(WriterDeliveries::default());
        let producer = config
            .create_with_context(WriterContext {
                deliveries: deliveries.clone(),
            })
            .map_err(|error| ChangelogError::Client {
                topic: topic.to_string(),
                operation: "creating the producer",
                error,
            })?;
        // a member id that differs between processes and restarts
        let member = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{}-{}-{:?}",
                std::process::id(),
                crate::clock::now_ms(),
                std::thread::current().id()
            )
            .as_bytes(),
        );
        Ok(ChangelogWriter {
            topic: topic.to_string(),
            producer,
            deliveries,
            member,
            publishes: 0,
        })
    }

    /// Queues `states` (device → encoded snapshot; none: a tombstone) for `partition`, then
    /// `marker`; [`ChangelogWriter::flush`] waits until the broker has them.
    pub fn queue(
        &mut self,
        partition: i32,
        states: &[(String, Option<Vec<u8>>)],
        marker: &ChangelogMarker,
    ) -> Result<Published, ChangelogError> {
        self.publishes += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.member.to_be_bytes());
        id[8..].copy_from_slice(&self.publishes.to_be_bytes());
        let mut published = Published::default();
        let marker_value = seal(&bincode_encode(marker));
        let records = states
            .iter()
            .map(|(d, s)| (d.as_bytes(), s.as_ref().map(|s| seal(s))))
            .chain(std::iter::once((MARKER_KEY, Some(marker_value))));
        for (key, value) in records {
            let headers = OwnedHeaders::new().insert(Header {
                key: PUBLISH_HEADER,
                value: Some(&id[..]),
            });
            published.bytes += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
            let mut record: BaseRecord<'_, [u8], Vec<u8>, usize> =
                BaseRecord::with_opaque_to(&self.topic, partition as usize)
                    .partition(partition)
                    .key(key)
                    .headers(headers);
            if let Some(v) = &value {
                record = record.payload(v);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.producer.poll(Duration::from_millis(5));
                    }
                    Err((error, _)) => {
                        return Err(ChangelogError::Client {
                            topic: self.topic.clone(),
                            operation: "producing",
                            error,
                        });
                    }
                }
            }
            self.producer.poll(Duration::ZERO);
        }
        published.devices = states.iter().filter(|(key, _)| !key.starts_with('\0')).count() as u64;
        Ok(published)
    }

    /// Waits until the broker has every queued record: the partitions some of whose records
    /// were not delivered, with how many (their publishes do not count: no marker of theirs
    /// commits anything a reader can see, unless it was delivered after all of them).
    pub fn flush(&mut self) -> Result<BTreeMap<i32, u64>, ChangelogError> {
        self.producer
            .flush(PUBLISH_TIMEOUT)
            .map_err(ChangelogError::client(&self.topic, "waiting for the broker"))?;
        let failed = std::mem::take(&mut *self.deliveries.failed.lock().expect("lock"));
        if !failed.is_empty()
            && let Some(e) = self.deliveries.last_error.lock().expect("lock").take()
        {
            warn!(topic = %self.topic, partitions = ?failed.keys().collect::<Vec<_>>(), error = %e, "changelog records not delivered");
        }
        Ok(failed)
    }

    /// [`ChangelogWriter::queue`] and [`ChangelogWriter::flush`] for one partition.
    pub fn publish(
        &mut self,
        partition: i32,
        states: &[(String, Option<Vec<u8>>)],
        marker: &ChangelogMarker,
    ) -> Result<Published, ChangelogError> {
        let published = self.queue(partition, states, marker)?;
        match self.flush()?.get(&partition) {
            None => Ok(published),
            Some(&failed) => Err(ChangelogError::Delivery {
                topic: self.topic.clone(),
                partition,
                failed,
                sent: published.devices + 1,
            }),
        }
    }
}

/// What reading a changelog partition took.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadStats {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// The end of each of `partitions` of `topic` as the broker reports it (its high watermark).
pub fn partition_ends(
    config: &ClientConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ChangelogError> {
    let client = |operation, error| ChangelogError::Client {
        topic: topic.to_string(),
        operation,
        error,
    };
    let consumer: BaseConsumer = config.create().map_err(|e| client("creating a reader", e))?;
    partitions
        .iter()
        .map(|&p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| (p, high))
                .map_err(|e| client("reading the watermarks", e))
        })
        .collect()
}

/// Reads changelog partitions of `topic` into their replicas, each from its replica's next
/// offset (0: the partition's start) up to the partition's end as it is now, all at once.
///
/// A new consumer (not in any group) starts at the partition's start or where the replica
/// stopped, which is always the start of a record batch: tansu answers a fetch that starts
/// inside a batch with the next batch (ARCHITECTURE.md, Kafka).
pub fn read_partitions(
    config: &ClientConfig,
    topic: &str,
    replicas: &mut BTreeMap<i32, PartitionReplica>,
    timeout: Duration,
) -> Result<ReadStats, ChangelogError> {
    let started = Instant::now();
    let client = |operation, error| ChangelogError::Client {
        topic: topic.to_string(),
        operation,
        error,
    };
    let mut config = config.clone();
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("group.id", "plume-changelog-reader");
    let consumer: BaseConsumer = config.create().map_err(|e| client("creating the reader", e))?;
    let before: (u64, u64) = replicas.values().fold((0, 0), |a, r| (a.0 + r.records, a.1 + r.bytes));
    let mut high = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (&p, replica) in replicas.iter() {
        let (_, h) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| client("reading the watermarks", e))?;
        if replica.next_offset < h {
            high.insert(p, h);
            let start = if replica.next_offset == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(replica.next_offset)
            };
            tpl.add_partition_offset(topic, p, start)
                .map_err(|e| client("assigning", e))?;
        }
    }
    if !high.is_empty() {
        consumer.assign(&tpl).map_err(|e| client("assigning", e))?;
        // tansu's high watermark of a partition whose last record batch holds several records
        // is that batch's first offset + 1: past it, the reader drains what was fetched with
        // it, and stops once the broker has nothing more
        let mut at_end: HashSet<i32> = HashSet::new();
        loop {
            let reached = high.iter().all(|(p, h)| replicas[p].next_offset >= *h);
            if reached && at_end.len() == high.len() {
                break;
            }
            if started.elapsed() > timeout {
                let (p, h) = high
                    .iter()
                    .find(|(p, h)| replicas[*p].next_offset < **h)
                    .unwrap_or((&0, &0));
                return Err(ChangelogError::ReadTimeout {
                    topic: topic.to_string(),
                    partition: *p,
                    at: replicas.get(p).map_or(0, |r| r.next_offset),
                    high: *h,
                    seconds: timeout.as_secs(),
                });
            }
            match consumer.poll(Duration::from_millis(if reached { 250 } else { 100 })) {
                Some(Ok(m)) => {
                    if let Some(r) = replicas.get_mut(&m.partition()) {
                        r.apply(m.offset(), m.key().unwrap_or_default(), m.payload(), publish_of(&m));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let (Some(r), Some(h)) = (replicas.get_mut(&p), high.get(&p)) {
                        // compaction may have removed the last records: the end is the end
                        r.next_offset = r.next_offset.max(*h);
                        at_end.insert(p);
                    }
                }
                Some(Err(e)) => debug!(topic, error = %e, "changelog read"),
                None if reached => break,
                None => {}
            }
        }
    }
    let after: (u64, u64) = replicas.values().fold((0, 0), |a, r| (a.0 + r.records, a.1 + r.bytes));
    Ok(ReadStats {
        records: after.0 - before.0,
        bytes: after.1 - before.1,
        elapsed: started.elapsed(),
    })
}

/// Creates changelog `topic` (compacted) with as many partitions as `input_topic`, unless it
/// exists; refuses one whose partition count differs. `consumer`: any client of the cluster.
pub fn ensure_topic<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    admin_config: &ClientConfig,
    input_topic: &str,
    topic: &str,
    replication: Option<i32>,
) -> Result<i32, ChangelogError> {
    let problem = |problem: String| ChangelogError::Topic {
        topic: topic.to_string(),
        problem,
    };
    let partitions_of = |name: &str| -> Result<Option<i32>, ChangelogError> {
        let metadata = consumer
            .fetch_metadata(Some(name), Duration::from_secs(10))
            .map_err(|error| ChangelogError::Client {
                topic: topic.to_string(),
                operation: "reading the topics' metadata",
                error,
            })?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    };
    let wanted = partitions_of(input_topic)?.ok_or_else(|| {
        problem(format!(
            "the input topic `{input_topic}` does not exist (yet): the changelog needs its partition count"
        ))
    })?;
    match partitions_of(topic)? {
        Some(n) if n == wanted => return Ok(n),
        Some(n) => {
            return Err(problem(format!(
                "it has {n} partitions and the input topic `{input_topic}` {wanted}: they must be equal (partition p of the changelog holds the state of input partition p)"
            )));
        }
        None => {}
    }
    let admin: AdminClient<DefaultClientContext> = admin_config.create().map_err(|error| ChangelogError::Client {
        topic: topic.to_string(),
        operation: "creating the admin client",
        error,
    })?;
    let new = NewTopic::new(topic, wanted, TopicReplication::Fixed(replication.unwrap_or(-1)))
        .set("cleanup.policy", "compact");
    let results = futures::executor::block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .map_err(|error| ChangelogError::Client {
        topic: topic.to_string(),
        operation: "creating the topic",
        error,
    })?;
    for result in results {
        if let Err((_, code)) = result
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(problem(format!("creating it: {code}")));
        }
    }
    info!(topic, partitions = wanted, "changelog topic created");
    // wait until the metadata shows it (a producer would fail before)
    let started = Instant::now();
    while partitions_of(topic)?.is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(problem("created, but not in the metadata after 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(wanted)
}

/// Warm copies of every changelog partition, kept by tailing the topic on a thread.
pub struct Standby {
    replicas: Arc<Mutex<BTreeMap<i32, PartitionReplica>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Standby {
    /// Starts tailing every partition of `topic` (`partitions` of them) from its start.
    pub fn start(config: &ClientConfig, topic: &str, partitions: i32) -> Result<Self, ChangelogError> {
        let mut config = config.clone();
        config
            .set("enable.auto.commit", "false")
            .set("group.id", "plume-changelog-standby");
        let consumer: BaseConsumer = config.create().map_err(|error| ChangelogError::Client {
            topic: topic.to_string(),
            operation: "creating the standby reader",
            error,
        })?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
        }
        consumer.assign(&tpl).map_err(|error| ChangelogError::Client {
            topic: topic.to_string(),
            operation: "assigning the standby reader",
            error,
        })?;
        let replicas: Arc<Mutex<BTreeMap<i32, PartitionReplica>>> = Arc::new(Mutex::new(
            (0..partitions).map(|p| (p, PartitionReplica::default())).collect(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (replicas, stop, topic) = (replicas.clone(), stop.clone(), topic.to_string());
            std::thread::Builder::new()
                .name("plume-standby".into())
                .spawn(move || {
                    info!(topic = %topic, partitions, "changelog standby started");
                    while !stop.load(Ordering::Relaxed) {
                        // a batch's records are applied under one lock, so a taken replica
                        // always ends at the end of what the consumer had fetched
                        let Some(first) = consumer.poll(Duration::from_millis(100)) else {
                            continue;
                        };
                        let mut replicas = replicas.lock().expect("standby lock");
                        let mut next = Some(first);
                        while let Some(polled) = next {
                            match polled {
                                Ok(m) => {
                                    if let Some(r) = replicas.get_mut(&m.partition()) {
                                        r.apply(m.offset(), m.key().unwrap_or_default(), m.payload(), publish_of(&m));
                                    }
                                }
                                Err(e) => debug!(topic = %topic, error = %e, "changelog standby read"),
                            }
                            next = consumer.poll(Duration::ZERO);
                        }
                    }
                })
                .expect("a thread for the changelog standby")
        };
        Ok(Standby {
            replicas,
            stop,
            thread: Some(thread),
        })
    }

    /// A copy of partition `partition`'s replica once it has read up to `high` (or `None`
    /// after `timeout`: then the caller reads the partition itself).
    pub fn caught_up(&self, partition: i32, high: i64, timeout: Duration) -> Option<PartitionReplica> {
        let started = Instant::now();
        loop {
            {
                let replicas = self.replicas.lock().expect("standby lock");
                let r = replicas.get(&partition)?;
                if r.next_offset >= high {
                    return Some(r.clone());
                }
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(next_offset: i64) -> Vec<u8> {
        seal(&bincode_encode(&ChangelogMarker {
            version: MARKER_VERSION,
            topic: "in".into(),
            partition: 3,
            next_offset,
            pipeline_hash: "h".into(),
            key_groups: 256,
            checkpoint: 1,
            written_ms: 0,
            devices: 0,
        }))
    }

    fn id(member: u8, n: u8) -> Option<PublishId> {
        let mut id = [0u8; 16];
        id[0] = member;
        id[15] = n;
        Some(id)
    }

    #[test]
    fn a_publish_counts_only_once_its_marker_is_read() {
        let mut r = PartitionReplica::default();
        r.apply(0, b"a", Some(&seal(b"a1")), id(1, 1));
        r.apply(1, b"b", Some(&seal(b"b1")), id(1, 1));
        assert!(r.to_handoff().is_none(), "no marker yet");
        r.apply(2, MARKER_KEY, Some(&marker(100)), id(1, 1));
        let h = r.to_handoff().unwrap();
        assert_eq!(h.next_offset, 100);
        assert_eq!(
            h.devices,
            vec![("a".into(), b"a1".to_vec()), ("b".into(), b"b1".to_vec())]
        );
        // the next publish changes a and drops b
        r.apply(3, b"a", Some(&seal(b"a2")), id(1, 2));
        r.apply(4, b"b", None, id(1, 2));
        assert_eq!(r.to_handoff().unwrap().devices.len(), 2, "not committed yet");
        r.apply(5, MARKER_KEY, Some(&marker(200)), id(1, 2));
        let h = r.to_handoff().unwrap();
        assert_eq!((h.next_offset, h.devices), (200, vec![("a".into(), b"a2".to_vec())]));
        assert!(r.uncommitted().is_empty());
        assert_eq!(r.next_offset, 6);
    }

    #[test]
    fn a_publish_a_member_died_in_is_dropped_and_named_for_repair() {
        let mut r = PartitionReplica::default();
        r.apply(0, b"a", Some(&seal(b"a1")), id(1, 1));
        r.apply(1, MARKER_KEY, Some(&marker(100)), id(1, 1));
        // member 1 dies halfway through its next publish
        r.apply(2, b"a", Some(&seal(b"a-lost")), id(1, 2));
        r.apply(3, b"c", Some(&seal(b"c-lost")), id(1, 2));
        // member 2 took over: its own publish, then its marker
        r.apply(4, b"d", Some(&seal(b"d1")), id(2, 1));
        assert_eq!(
            r.uncommitted(),
            vec![
                ("a".into(), Some(b"a1".to_vec())),
                ("c".into(), None),
                ("d".into(), None)
            ]
        );
        r.apply(5, MARKER_KEY, Some(&marker(150)), id(2, 1));
        let h = r.to_handoff().unwrap();
        assert_eq!(h.next_offset, 150);
        assert_eq!(
            h.devices,
            vec![("a".into(), b"a1".to_vec()), ("d".into(), b"d1".to_vec())]
        );
        // a and c are still uncommitted: the next writer writes a's state again and drops c
        assert_eq!(
            r.uncommitted(),
            vec![("a".into(), Some(b"a1".to_vec())), ("c".into(), None)]
        );
        // a marker of another publish does not commit records it did not follow
        r.apply(6, b"e", Some(&seal(b"e1")), id(3, 1));
        r.apply(7, MARKER_KEY, Some(&marker(160)), id(2, 2));
        assert_eq!(r.to_handoff().unwrap().devices.len(), 2);
    }

    #[test]
    fn notifications_travel_with_the_devices_and_leave_on_a_tombstone() {
        let mut r = PartitionReplica::default();
        let note = notification_key("webhook:0", "e1");
        assert_eq!(parse_notification_key(&note), Some(("webhook:0", "e1")));
        assert_eq!(parse_notification_key("device-7"), None);
        r.apply(0, b"a", Some(&seal(b"a1")), id(1, 1));
        r.apply(1, note.as_bytes(), Some(&seal(b"n1")), id(1, 1));
        assert!(r.notifications().is_empty(), "not committed yet");
        r.apply(2, MARKER_KEY, Some(&marker(100)), id(1, 1));
        // the devices are the devices alone
        assert_eq!(r.devices(), 1);
        assert_eq!(r.to_handoff().unwrap().devices, vec![("a".into(), b"a1".to_vec())]);
        let waiting = r.notifications();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            (waiting[0].notifier.as_str(), waiting[0].id.as_str(), waiting[0].record.as_slice()),
            ("webhook:0", "e1", &b"n1"[..])
        );
        assert_eq!(
            r.extras().into_iter().collect::<Vec<_>>(),
            vec![(note.clone(), extra_hash(b"n1"))]
        );
        // a device's policy entries ride along the same way
        let policy = policy_key("webhook:0", "a");
        assert_eq!(parse_policy_key(&policy), Some(("webhook:0", "a")));
        assert_eq!(parse_notification_key(&policy), None);
        r.apply(3, policy.as_bytes(), Some(&seal(b"p1")), id(1, 2));
        r.apply(4, MARKER_KEY, Some(&marker(110)), id(1, 2));
        assert_eq!(r.policies().len(), 1);
        assert_eq!(r.policies()[0].device, "a");
        assert_eq!(r.notifications().len(), 1);
        assert_eq!(r.devices(), 1);
        // delivered: the next publish's tombstone removes it
        r.apply(5, note.as_bytes(), None, id(1, 3));
        r.apply(6, MARKER_KEY, Some(&marker(120)), id(1, 3));
        assert!(r.notifications().is_empty());
        assert_eq!(r.devices(), 1);
    }

    #[test]
    fn damaged_records_are_reported_and_skipped() {
        let mut r = PartitionReplica::default();
        let mut bad = seal(b"a1");
        let n = bad.len();
        bad[n - 1] ^= 1;
        r.apply(0, b"a", Some(&bad), id(1, 1));
        r.apply(1, b"b", Some(&seal(b"b1")), None);
        r.apply(2, MARKER_KEY, Some(b"junk"), id(1, 1));
        assert_eq!(r.damaged.len(), 3, "{:?}", r.damaged);
        assert!(r.damaged[0].problem.contains("device a"), "{:?}", r.damaged);
        assert!(r.to_handoff().is_none());
    }
}
