//! The Kafka source: a consumer in a consumer group (rdkafka's `BaseConsumer`, polled on the
//! source thread), whose offsets belong to the checkpoints.
//!
//! - Auto-commit is off. Every chunk carries the next offset of every partition the source
//!   reads (`SourcePosition::partitions`); a checkpoint stores them (one stored position per
//!   partition, `kafka:<topic>:<partition>`) in the same synced batch as the device states, and
//!   only once that checkpoint is durable are they committed to the group. On assignment the
//!   source seeks to the checkpointed offsets, not the group's.
//! - Rebalances go through the actor system. On revoke (inside the rebalance callback, which
//!   runs on this thread) the source sends what it holds, asks the checkpointer for a
//!   checkpoint that covers it and waits until it is durable (answering checkpoint barriers
//!   meanwhile), commits the partitions' offsets, writes a [`PartitionHandoff`] per partition
//!   (its devices' state and next offset) to the group's hand-off directory, evicts those
//!   devices from the shards and drops them from the store. On assign it takes, per partition,
//!   the newer of its own checkpointed offset and a hand-off (importing the hand-off's device
//!   states into its store; devices then load lazily on their next reading).
//! - The store knows which devices came from which partition (`store::partitions`).
//! - Backpressure: when the runtime has no room for another chunk, the source pauses every
//!   partition it reads (librdkafka stops fetching) and resumes them when there is room.
//! - A graceful stop sends what is left, waits for the last checkpoint, commits its offsets and
//!   leaves a hand-off for every partition (so another member continues with the state), then
//!   closes the consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::decode::Decoder;
use crate::model::{ChunkData, Message, MessagePosition, Position, key_group_of};
use crate::runtime::ports::{ChunkFeeder, NotificationHandover, PartitionOwnership, Shutdown};
use crate::spec::{KafkaDeviceFrom, KafkaSourceSpec, KafkaTimeFrom};
use crate::store::partitions::{PartitionHandoff, parse_position_name};
use crate::store::{PipelineIdentity, StateStore};

use super::changelog::{ChangelogWriter, Standby};

/// Messages per chunk at most.
#[path = "rebalance.rs"]
mod rebalance;

const MAX_CHUNK_MESSAGES: usize = 8192;
/// Payload bytes per chunk at most.
const MAX_CHUNK_BYTES: usize = 4 << 20;
/// How long a rebalance waits for its checkpoint.
const REBALANCE_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// The Kafka source failed to start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka source {source_name}: the environment variable {variable} (for `{property}`) is not set")]
    MissingSecret {
        source_name: String,
        property: String,
        variable: String,
    },
    #[error("kafka source {source_name}: {error}")]
    Changelog {
        source_name: String,
        error: super::changelog::ChangelogError,
    },
    #[error("kafka source {source_name}: {operation}: {error}")]
    Client {
        source_name: String,
        operation: &'static str,
        error: KafkaError,
    },
}

/// What the Kafka source has done (tests, logs, the admin view).
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub messages: AtomicU64,
    pub chunks: AtomicU64,
    pub rebalances: AtomicU64,
    pub handoffs_written: AtomicU64,
    pub handoffs_taken: AtomicU64,
    /// Hand-offs written anew for partitions still read (`handoff_refresh`).
    pub handoffs_refreshed: AtomicU64,
    pub commits: AtomicU64,
    pub pauses: AtomicU64,
    /// Changelog publishes, the device records and bytes they wrote, and those that failed.
    pub changelog_publishes: AtomicU64,
    pub changelog_devices: AtomicU64,
    pub changelog_bytes: AtomicU64,
    pub changelog_failures: AtomicU64,
    /// Partitions restored from the changelog, their devices, and the time it took.
    pub changelog_restores: AtomicU64,
    pub changelog_restored_devices: AtomicU64,
    pub changelog_restore_ms: AtomicU64,
    /// Messages taken already that came again (dropped).
    pub duplicates_dropped: AtomicU64,
    /// Pending notifications another member left in the changelog that this one took over.
    pub changelog_notifications_taken: AtomicU64,
    /// Seeks back after the broker answered from a later offset than asked (tansu: a fetch that
    /// starts inside a record batch gets the next batch).
    pub gap_seeks: AtomicU64,
}

/// A planned Kafka source.
pub struct KafkaSource {
    pub spec: KafkaSourceSpec,
    pub decoder: Arc<Decoder>,
    pub store: Option<Arc<StateStore>>,
    pub pipeline: Option<PipelineIdentity>,
    pub key_groups: u32,
    /// Where hand-offs go (none without a store).
    pub handoff_dir: Option<PathBuf>,
    /// Checkpoints and evictions on a rebalance (none without checkpoints).
    pub ownership: Option<Arc<dyn PartitionOwnership>>,
    /// The notifiers whose pending deliveries move with the partitions (with a changelog).
    pub notifications: Option<Arc<dyn NotificationHandover>>,
    pub stats: Arc<KafkaStats>,
}

/// The librdkafka configuration of a source or sink: plume's settings (`defaults`), then the
/// pipeline's `properties`, then the secret ones from the environment (never logged), each
/// overriding what came before.
pub fn client_config(
    source_name: &str,
    brokers: &str,
    defaults: &[(&str, String)],
    properties: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<ClientConfig, KafkaSourceError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, v);
    }
    for (k, v) in properties {
        config.set(k, v);
    }
    for (property, variable) in secrets {
        let value = std::env::var(variable).map_err(|_| KafkaSourceError::MissingSecret {
            source_name: source_name.to_string(),
            property: property.clone(),
            variable: variable.clone(),
        })?;
        config.set(property, value);
    }
    Ok(config)
}

/// Client settings for the source's side clients, outside its consumer group (the changelog's
/// readers and writer, the replicated subscriptions): the source's, without what only a group
/// member uses (`reader`) and without what only a consumer uses either (`writer`).
pub fn side_configs(
    source_name: &str,
    spec: &KafkaSourceSpec,
    client_id: &str,
) -> Result<(ClientConfig, ClientConfig), KafkaSourceError> {
    const GROUP_ONLY: &[&str] = &[
        "group.",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "enable.auto.",
        "auto.commit",
        "auto.offset.reset",
    ];
    const CONSUMER_ONLY: &[&str] = &[
        "fetch.",
        "queued.",
        "isolation.level",
        "check.crcs",
        "enable.partition.eof",
    ];
    let config_without = |skip: &[&str]| -> Result<ClientConfig, KafkaSourceError> {
        let properties = spec
            .client
            .properties
            .iter()
            .filter(|(k, _)| !skip.iter().any(|s| k.starts_with(s)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        client_config(
            source_name,
            &spec.brokers,
            &[("client.id", client_id.to_string())],
            &properties,
            &spec.client.secret_properties_env,
        )
    };
    Ok((
        config_without(GROUP_ONLY)?,
        config_without(&[GROUP_ONLY, CONSUMER_ONLY].concat())?,
    ))
}

type PartitionKey = (String, i32);

/// What the consumer loop and the rebalance callbacks share (both run on the source thread;
/// the lock is never held across a poll).
struct Inner {
    name: Arc<str>,
    feeder: ChunkFeeder,
    store: Option<Arc<StateStore>>,
    pipeline: Option<PipelineIdentity>,
    key_groups: u32,
    handoff_dir: Option<PathBuf>,
    /// `handoff_refresh`: how often the hand-offs of the partitions read are written anew.
    handoff_refresh: Option<Duration>,
    /// The offset and time of each assigned partition's newest hand-off (written or taken).
    handed_off_at: std::collections::HashMap<PartitionKey, (i64, Instant)>,
    ownership: Option<Arc<dyn PartitionOwnership>>,
    notifications: Option<Arc<dyn NotificationHandover>>,
    device_from: KafkaDeviceFrom,
    time_from: KafkaTimeFrom,
    decoder: Arc<Decoder>,
    stats: Arc<KafkaStats>,
    /// The next offset of every partition read (as of what was sent).
    consumed: BTreeMap<PartitionKey, i64>,
    /// Checkpointed offsets of partitions this member does not read now but whose state its
    /// store holds (not handed off): carried into every checkpoint, so none is forgotten while
    /// the group gives the partition to a member that may never come back.
    carried: BTreeMap<PartitionKey, i64>,
    /// Offsets as of each barrier this source sent, until that checkpoint is durable.
    at_barrier: Vec<(u64, BTreeMap<PartitionKey, i64>)>,
    /// Messages read but not yet sent, with their partition and offset.
    pending: Vec<(PartitionKey, i64, Message)>,
    pending_bytes: usize,
    /// Devices known per partition (written to the store's partition index when new).
    known: std::collections::HashMap<PartitionKey, rustc_hash::FxHashSet<String>>,
    assigned: BTreeSet<PartitionKey>,
    at_end: BTreeSet<PartitionKey>,
    caught_up_logged: bool,
    paused: bool,
    closing: bool,
    /// The partition state's changelog (none: hand-off files, or no store).
    changelog: Option<SourceChangelog>,
    /// Per partition, where the next message must be after a seek (an assignment or a resume):
    /// see [`Inner::check_gap`].
    expected: std::collections::HashMap<PartitionKey, Expected>,
    /// Per partition, the offset after the newest message taken (read, pending or sent): a
    /// message before it was taken already and is dropped, whatever brought it again (a seek
    /// back, a fetch after a resume), so that no reading reaches the state twice.
    read_next: std::collections::HashMap<PartitionKey, i64>,
}

/// The offset a partition's next message must have after a seek, and how the search for the
/// record batch that holds it goes.
#[derive(Debug, Clone, Copy)]
struct Expected {
    want: i64,
    /// How far before `want` the next seek back goes.
    step: i64,
    /// When the last seek was made: with no answer for a while, the next one goes further back.
    since: Instant,
    /// A message before `want` arrived: the broker answers from a batch at or before `want`, so
    /// what follows comes in order.
    anchored: bool,
}

impl Expected {
    fn at(want: i64) -> Self {
        Expected {
            want,
            step: 1,
            since: Instant::now(),
            anchored: false,
        }
    }
}

/// A source's changelog: what it publishes, and how it reads.
struct SourceChangelog {
    topic: String,
    writer: ChangelogWriter,
    /// Client settings for readers (not in the group).
    reader_config: ClientConfig,
    standby: Option<Standby>,
    /// Partitions whose next publish writes every device (this member's own state was newer
    /// than the changelog's).
    full: BTreeSet<PartitionKey>,
    /// Devices whose newest changelog record no marker committed: written again (committed
    /// state or tombstone) by the next publish.
    repair: BTreeMap<PartitionKey, Vec<(String, Option<Vec<u8>>)>>,
    /// Devices changed by checkpoints and not yet published.
    dirty: std::collections::HashMap<PartitionKey, rustc_hash::FxHashSet<String>>,
    /// The input offset of each partition's newest marker.
    published: std::collections::HashMap<PartitionKey, i64>,
    /// The notifiers' records (pending notifications, policy entries) each partition's
    /// changelog holds: key → hash of the value. A publish writes those new or changed since,
    /// and a tombstone for each one gone (delivered, expired).
    extras: std::collections::HashMap<PartitionKey, BTreeMap<String, u64>>,
}

impl Inner {
    fn snapshot(&self) -> Arc<Vec<(String, i32, i64)>> {
        let mut all = self.carried.clone();
        all.extend(self.consumed.iter().map(|(k, o)| (k.clone(), *o)));
        Arc::new(all.into_iter().map(|((t, p), o)| (t, p, o)).collect())
    }

    /// Sends a barrier if one is asked for, remembering the offsets it stands for.
    fn poll_barrier(&mut self) {
        if let Some(id) = self.feeder.poll_barrier() {
            self.at_barrier.push((id, self.consumed.clone()));
        }
    }

    /// The position for `key` this member's own state is at, if any.
    fn own_offset(&self, key: &PartitionKey) -> Option<i64> {
        self.consumed.get(key).or_else(|| self.carried.get(key)).copied()
    }

    fn push(&mut self, key: PartitionKey, offset: i64, message: Message) {
        self.pending_bytes += message.payload.len();
        self.pending.push((key, offset, message));
    }

    fn full(&self) -> bool {
        self.pending.len() >= MAX_CHUNK_MESSAGES || self.pending_bytes >= MAX_CHUNK_BYTES
    }

    /// Sends the pending messages as one chunk with `permit`.
    fn send(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        if self.pending.is_empty() {
            return;
        }
        self.poll_barrier();
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut messages = Vec::with_capacity(pending.len());
        let mut new_devices: BTreeMap<PartitionKey, Vec<String>> = BTreeMap::new();
        for (key, offset, message) in pending {
            if self.store.is_some() {
                // allocation only for a device not seen on this partition before
                let device = match self.device_from {
                    KafkaDeviceFrom::Key => message.device_hint.as_deref().map(std::borrow::Cow::Borrowed),
                    KafkaDeviceFrom::Payload => self.decoder.device_of(&message.payload, None),
                };
                if let Some(device) = device {
                    let seen = self.known.get(&key).is_some_and(|k| k.contains(device.as_ref()));
                    if !seen {
                        let device = device.into_owned();
                        self.known.entry(key.clone()).or_default().insert(device.clone());
                        new_devices.entry(key.clone()).or_default().push(device);
                    }
                }
            }
            match self.consumed.get_mut(&key) {
                Some(next) => *next = offset + 1,
                None => {
                    self.consumed.insert(key, offset + 1);
                }
            }
            messages.push(message);
        }
        if let Some(store) = &self.store {
            for ((topic, partition), devices) in &new_devices {
                if let Err(e) = store.index_partition_devices(topic, *partition, devices.iter().map(String::as_str)) {
                    error!(source = %self.name, topic = %topic, partition, error = %e, "the partition index could not be written");
                }
            }
        }
        self.stats.messages.fetch_add(messages.len() as u64, Ordering::Relaxed);
        self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.snapshot();
        self.feeder
            .send(ChunkData::Messages(messages), Position::Partitions(snapshot), permit);
    }

    /// Sends what is pending, waiting for room (used by rebalances and the end).
    fn send_all_blocking(&mut self) {
        if !self.pending.is_empty() {
            let permit = self.feeder.wait_for_room();
            self.send(permit);
        }
    }

    fn offsets_list(
        offsets: &BTreeMap<PartitionKey, i64>,
        only: Option<&BTreeSet<PartitionKey>>,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in offsets {
            if only.is_none_or(|set| set.contains(&(t.clone(), *p))) {
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
            }
        }
        tpl
    }

    /// Commits to the group the offsets of the newest durable checkpoint this source sent a
    /// barrier for.
    fn commit_durable(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let Some(signal) = self.feeder.barrier_signal().cloned() else {
            return;
        };
        let durable = signal.durable.load(Ordering::Acquire);
        let Some(i) = self.at_barrier.iter().rposition(|(id, _)| *id <= durable) else {
            return;
        };
        let (id, offsets) = self.at_barrier[i].clone();
        self.at_barrier.drain(..=i);
        // Only while no later barrier is out: the store holds exactly checkpoint `id` then, and
        // no later one can commit while this thread writes (it needs this source's barrier).
        if self.at_barrier.is_empty() {
            if self.changelog.is_some() {
                let assigned = self.assigned.clone();
                self.publish_changelog(&offsets, id, &assigned);
            } else {
                self.refresh_handoffs(&offsets, id);
            }
        }
        let tpl = Self::offsets_list(&self.committable(&offsets), Some(&self.assigned));
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                debug!(source = %self.name, checkpoint = id, partitions = tpl.count(), "kafka offsets committed");
            }
            Err(e) => {
                warn!(source = %self.name, checkpoint = id, error = %e, "kafka offsets not committed (the next checkpoint commits them)")
            }
        }
    }
}

/// The consumer's context: rebalance callbacks go through [`Inner`].
pub struct SourceContext {
    inner: Arc<Mutex<Inner>>,
}

impl ClientContext for SourceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`, on the polling thread): the lag
    /// of each partition read, from its high watermark and the next offset this member sent on.
    fn stats(&self, statistics: rdkafka::Statistics) {
        // (never waits: a report is skipped if the source loop holds the lock)
        let Ok(inner) = self.inner.try_lock() else {
            return;
        };
        let lags = inner
            .assigned
            .iter()
            .filter_map(|key @ (topic, partition)| {
                let high = statistics.topics.get(topic)?.partitions.get(partition)?.hi_offset;
                let next = inner.own_offset(key)?;
                (high >= 0).then(|| (topic.clone(), *partition, (high - next).max(0)))
            })
            .collect();
        inner.feeder.health().set_partition_lag(lags);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // the end of a partition is reported through `poll` too: not an error (librdkafka also
        // hands it here as a global error)
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            error!(error = %error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for SourceContext {
    /// Replaces rdkafka's default so that an assignment starts at the offsets plume chose (set
    /// in the list before `assign`: assigning twice would let librdkafka fetch from the group's
    /// offsets first and skip what it had fetched).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr;
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        // a span per rebalance (the checkpoint a revoke takes runs inside it)
        let what = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => "assign",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => "revoke",
            _ => "error",
        };
        let partitions: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        let span = crate::trace::start(
            "kafka rebalance",
            crate::trace::Kind::Internal,
            vec![
                crate::trace::Attribute::new("plume.kafka.rebalance", what),
                crate::trace::Attribute::new("plume.kafka.partitions", partitions.join(",")),
                crate::trace::Attribute::new("plume.kafka.cooperative", cooperative),
            ],
            Some(&crate::trace::root()),
        );
        let _current = span.enter();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                {
                    let mut inner = self.inner.lock().expect("kafka source lock");
                    if !inner.closing {
                        inner.assign(consumer, tpl);
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    error!(error = %e, "kafka assignment failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut inner = self.inner.lock().expect("kafka source lock");
                    if !inner.closing {
                        let revoked: Vec<PartitionKey> = tpl
                            .elements()
                            .iter()
                            .map(|e| (e.topic().to_string(), e.partition()))
                            .collect();
                        inner.revoke(consumer, revoked);
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    error!(error = %e, "kafka unassignment failed");
                }
            }
            other => {
                warn!(error = ?other, "kafka rebalance error: dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Consumes until `stop`, then sends what is left, commits the last checkpoint's offsets,
/// leaves hand-offs and closes the consumer.
pub fn run(source: KafkaSource, feeder: ChunkFeeder, stop: Shutdown) -> Result<(), crate::connectors::SourceError> {
    let name = feeder.name.clone();
    let spec = source.spec;
    let fail = |feeder: &ChunkFeeder, e: KafkaSourceError| {
        feeder.end();
        Err(crate::connectors::SourceError::Kafka(e))
    };
    let defaults = [
        ("group.id", spec.group.clone()),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("auto.offset.reset", "earliest".into()),
        ("enable.partition.eof", "true".into()),
        ("queued.max.messages.kbytes", "16384".into()),
        // how long a fetch may wait at the broker for data: librdkafka's 500 ms costs nothing
        // with a broker that answers as soon as it has data (Kafka), but brokers that wait out
        // the time even with data (tansu 0.6 sleeps at least half of it per fetch) then deliver
        // one fetch per 250 ms; 100 ms bounds that, for ten idle fetches a second per broker
        // (BENCHMARKS.md, "Sources and latency at the floor")
        ("fetch.wait.max.ms", "100".into()),
        ("client.id", format!("plume-{name}")),
        // the partitions' high watermarks, for the lag (`SourceContext::stats`)
        ("statistics.interval.ms", "1000".into()),
    ];
    let config = match client_config(
        &name,
        &spec.brokers,
        &defaults,
        &spec.client.properties,
        &spec.client.secret_properties_env,
    ) {
        Ok(c) => c,
        Err(e) => return fail(&feeder, e),
    };
    let signal = feeder.barrier_signal().cloned();
    // the partitions the resumed checkpoint holds positions (and state) for
    let record = match &source.store {
        Some(store) => match store.latest_record() {
            Ok(r) => r,
            Err(e) => {
                error!(source = %name, error = %e, "reading the checkpoint record");
                None
            }
        },
        None => None,
    };
    let carried: BTreeMap<PartitionKey, i64> = record
        .iter()
        .flat_map(|r| r.sources.iter())
        .filter(|p| p.source == feeder.source)
        .filter_map(|p| parse_position_name(&p.name).map(|k| (k, p.offset as i64)))
        .collect();
    let inner = Arc::new(Mutex::new(Inner {
        name: name.clone(),
        feeder,
        store: source.store,
        pipeline: source.pipeline,
        key_groups: source.key_groups,
        handoff_dir: source.handoff_dir,
        handoff_refresh: spec
            .handoff_refresh
            .map(|d| Duration::from_millis(d.as_millis() as u64)),
        handed_off_at: Default::default(),
        ownership: source.ownership,
        notifications: source.notifications,
        device_from: spec.device_from,
        time_from: spec.time_from,
        decoder: source.decoder,
        stats: source.stats.clone(),
        consumed: BTreeMap::new(),
        carried,
        at_barrier: Vec::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        known: Default::default(),
        assigned: BTreeSet::new(),
        at_end: BTreeSet::new(),
        caught_up_logged: false,
        paused: false,
        closing: false,
        changelog: None,
        expected: Default::default(),
        read_next: Default::default(),
    }));
    let consumer: BaseConsumer<SourceContext> = match config.create_with_context(SourceContext { inner: inner.clone() })
    {
        Ok(c) => c,
        Err(error) => {
            let feeder = &inner.lock().expect("kafka source lock").feeder;
            return fail(
                feeder,
                KafkaSourceError::Client {
                    source_name: name.to_string(),
                    operation: "creating the consumer",
                    error,
                },
            );
        }
    };
    if let Some(changelog_spec) = &spec.changelog {
        let mut guard = inner.lock().expect("kafka source lock");
        let prepared = match (&guard.store, &guard.pipeline) {
            (Some(store), Some(pipeline)) => {
                store.track_changes();
                prepare_changelog(&name, &spec, changelog_spec, &pipeline.name, &consumer).map(Some)
            }
            _ => {
                warn!(source = %name, "a changelog needs checkpoints: without a data directory none is written");
                Ok(None)
            }
        };
        match prepared {
            Ok(c) => guard.changelog = c,
            Err(e) => return fail(&guard.feeder, e),
        }
    }
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    if let Err(error) = consumer.subscribe(&topics) {
        let feeder = &inner.lock().expect("kafka source lock").feeder;
        return fail(
            feeder,
            KafkaSourceError::Client {
                source_name: name.to_string(),
                operation: "subscribing",
                error,
            },
        );
    }
    info!(source = %name, brokers = %spec.brokers, group = %spec.group, topics = ?spec.topics, "kafka source starting");
    let stats = source.stats;
    let mut reported = Instant::now();
    let mut errors_logged = 0u32;
    while !stop.is_requested() {
        let polled = consumer.poll(Duration::from_millis(50));
        let mut inner = inner.lock().expect("kafka source lock");
        let mut idle = false;
        match polled {
            None => idle = true,
            Some(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                if !inner.assigned.contains(&key) {
                    // fetched before a revoke: not ours any more
                    continue;
                }
                if !inner.check_gap(&consumer, &key, m.offset()) {
                    continue;
                }
                match inner.read_next.get_mut(&key) {
                    Some(next) if m.offset() < *next => {
                        let n = stats.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
                        if n < 5 || n.is_power_of_two() {
                            warn!(source = %name, topic = %key.0, partition = key.1, offset = m.offset(), next = *next, dropped = n + 1, "a kafka message taken already came again: dropped");
                        }
                        continue;
                    }
                    Some(next) => *next = m.offset() + 1,
                    None => {
                        inner.read_next.insert(key.clone(), m.offset() + 1);
                    }
                }
                inner.at_end.remove(&key);
                let arrival_ms = match inner.time_from {
                    KafkaTimeFrom::Record => m.timestamp().to_millis().unwrap_or_else(crate::clock::now_ms),
                    KafkaTimeFrom::Payload => crate::clock::now_ms(),
                };
                let device_hint = match inner.device_from {
                    KafkaDeviceFrom::Key => m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    KafkaDeviceFrom::Payload => None,
                };
                let message = Message {
                    payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    device_hint,
                    position: MessagePosition::Kafka {
                        topic: key.0.clone(),
                        partition: key.1,
                        offset: m.offset(),
                    },
                    arrival_ms,
                };
                let offset = m.offset();
                inner.push(key, offset, message);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // which topic: every assigned partition with this number that has nothing newer
                let keys: Vec<PartitionKey> = inner.assigned.iter().filter(|k| k.1 == partition).cloned().collect();
                for k in keys {
                    inner.at_end.insert(k);
                }
                idle = true;
            }
            Some(Err(e)) => {
                if errors_logged < 20 {
                    warn!(source = %name, error = %e, "kafka consumer error");
                    errors_logged += 1;
                }
                idle = true;
            }
        }
        if inner.full() || (idle && !inner.pending.is_empty()) {
            match inner.feeder.try_room() {
                Some(permit) => {
                    if inner.paused {
                        let all = assignment_list(&inner.assigned);
                        if let Err(e) = consumer.resume(&all) {
                            warn!(source = %name, error = %e, "resuming kafka partitions");
                        }
                        inner.paused = false;
                        // librdkafka fetches again from the next offset to deliver: after every
                        // message delivered so far, those still pending included. So the
                        // expected offsets are taken once they are sent (taken before, they
                        // were behind the pending messages: the check saw the next message as
                        // a gap, sought back, and the pending messages came a second time)
                        inner.send(permit);
                        let resumed: Vec<(PartitionKey, i64)> = inner
                            .assigned
                            .iter()
                            .filter_map(|k| inner.consumed.get(k).map(|o| (k.clone(), *o)))
                            .collect();
                        for (k, o) in resumed {
                            inner.expected.insert(k, Expected::at(o));
                        }
                        debug!(source = %name, "kafka partitions resumed");
                    } else {
                        inner.send(permit);
                    }
                }
                None if !inner.paused && inner.full() => {
                    // no room in the runtime: stop fetching instead of buffering
                    let all = assignment_list(&inner.assigned);
                    if let Err(e) = consumer.pause(&all) {
                        warn!(source = %name, error = %e, "pausing kafka partitions");
                    }
                    inner.paused = true;
                    stats.pauses.fetch_add(1, Ordering::Relaxed);
                    debug!(source = %name, "kafka partitions paused: the runtime is full");
                }
                None => {}
            }
        }
        if idle {
            inner.poll_barrier();
            inner.probe_silent_starts(&consumer);
        }
        inner.commit_durable(&consumer);
        if idle
            && inner.pending.is_empty()
            && !inner.assigned.is_empty()
            && inner.at_end.len() == inner.assigned.len()
            && !inner.caught_up_logged
        {
            inner.caught_up_logged = true;
            info!(source = %name, messages = stats.messages.load(Ordering::Relaxed), partitions = inner.assigned.len(), "kafka source caught up");
        } else if !idle {
            inner.caught_up_logged = false;
        }
        if reported.elapsed() > Duration::from_secs(1) {
            reported = Instant::now();

            debug!(source = %name, messages = stats.messages.load(Ordering::Relaxed), "kafka source progress");
        }
    }
    // graceful end: what is read goes in, the last checkpoint decides what is committed
    let mut guard = inner.lock().expect("kafka source lock");
    guard.closing = true;
    guard.send_all_blocking();
    let durable_before = signal.as_ref().map(|s| s.durable.load(Ordering::Acquire));
    guard.feeder.end();
    let final_checkpoint = match (&signal, durable_before) {
        (Some(signal), Some(before)) => {
            let started = Instant::now();
            loop {
                let now = signal.durable.load(Ordering::Acquire);
                if now > before {
                    break Some(now);
                }
                if started.elapsed() > Duration::from_secs(120) {
                    warn!(source = %name, "the last checkpoint did not complete: offsets are not committed");
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        _ => None,
    };
    if let Some(id) = final_checkpoint
        && guard.changelog.is_some()
    {
        let offsets = guard.consumed.clone();
        let all: BTreeSet<PartitionKey> = offsets.keys().cloned().collect();
        guard.publish_changelog(&offsets, id, &all);
    }
    if final_checkpoint.is_some() || signal.is_none() {
        let offsets = guard.committable(&guard.consumed);
        let tpl = Inner::offsets_list(&offsets, None);
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn!(source = %name, error = %e, "kafka offsets not committed at the end"),
            }
        }
    }
    if let Some(id) = final_checkpoint {
        let partitions: Vec<(PartitionKey, i64)> = guard.consumed.iter().map(|(k, o)| (k.clone(), *o)).collect();
        if guard.changelog.is_none() {
            for (key, offset) in partitions {
                guard.write_handoff(&key, offset, id, "stopped");
            }
        }
    }
    info!(
        source = %name,
        messages = stats.messages.load(Ordering::Relaxed),
        rebalances = stats.rebalances.load(Ordering::Relaxed),
        handoffs_written = stats.handoffs_written.load(Ordering::Relaxed),
        handoffs_taken = stats.handoffs_taken.load(Ordering::Relaxed),
        handoffs_refreshed = stats.handoffs_refreshed.load(Ordering::Relaxed),
        changelog_publishes = stats.changelog_publishes.load(Ordering::Relaxed),
        changelog_devices = stats.changelog_devices.load(Ordering::Relaxed),
        changelog_bytes = stats.changelog_bytes.load(Ordering::Relaxed),
        changelog_restores = stats.changelog_restores.load(Ordering::Relaxed),
        gap_seeks = stats.gap_seeks.load(Ordering::Relaxed),
        duplicates_dropped = stats.duplicates_dropped.load(Ordering::Relaxed),
        "kafka source stopped"
    );
    drop(guard);
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

/// The source's changelog: the topic made sure of, a writer, and a standby if asked for.
fn prepare_changelog(
    name: &str,
    spec: &KafkaSourceSpec,
    changelog: &crate::spec::KafkaChangelogSpec,
    pipeline: &str,
    consumer: &BaseConsumer<SourceContext>,
) -> Result<SourceChangelog, KafkaSourceError> {
    let topic = changelog.topic_of(pipeline);
    let input = spec.topics.first().cloned().unwrap_or_default();
    let (reader_config, writer_config) = side_configs(name, spec, &format!("plume-{name}-changelog"))?;
    let as_source_error = |e: super::changelog::ChangelogError| KafkaSourceError::Changelog {
        source_name: name.to_string(),
        error: e,
    };
    let partitions =
        super::changelog::ensure_topic(consumer, &writer_config, &input, &topic, changelog.replication_factor)
            .map_err(as_source_error)?;
    let writer = ChangelogWriter::new(writer_config, &topic).map_err(as_source_error)?;
    let standby = if changelog.standby_replicas > 0 {
        Some(Standby::start(&reader_config, &topic, partitions).map_err(as_source_error)?)
    } else {
        None
    };
    info!(source = %name, topic = %topic, partitions, standby = standby.is_some(), "kafka changelog ready");
    Ok(SourceChangelog {
        topic,
        writer,
        reader_config,
        standby,
        full: BTreeSet::new(),
        repair: BTreeMap::new(),
        dirty: Default::default(),
        published: Default::default(),
        extras: Default::default(),
    })
}

fn assignment_list(assigned: &BTreeSet<PartitionKey>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in assigned {
        tpl.add_partition(t, *p);
    }
    tpl
}
