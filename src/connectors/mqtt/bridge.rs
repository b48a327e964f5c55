//! Keyed ingress (`plume ingest`): MQTT in, the keyed Kafka topic out, nothing kept.
//!
//! Any number of ingress members subscribe to the pipeline's `ingress.mqtt` topic in one MQTT
//! shared subscription (`$share/<group>/<filter>`), so the broker gives each message to one of
//! them. Each member decodes every payload with the pipeline's `decode` settings (the same
//! rules as a single-process MQTT run: the device id from the payload field or tag, or from the
//! topic's `{device}` with `decode.device.topic`), and produces it to `ingress.kafka.topic` with
//! key = the device id, value = the payload as received, timestamp = when it arrived. A payload
//! that does not decode (no device id, not JSON, a value out of range, …) becomes a
//! `dead_letter` record (the output schema: MQTT topic in `position`, the reason, the bounded raw
//! bytes) produced to `ingress.kafka.dead_letter_topic`.
//!
//! A QoS 1/2 message is acknowledged to the broker only once Kafka acknowledged its record
//! (idempotent producer, `acks=all`), and acknowledgements go out in the order the messages came
//! (MQTT asks for that) however the partitions' deliveries interleave. So a member that dies
//! loses nothing: what it had not acknowledged is delivered again (with mosquitto: to the same
//! client id when it comes back; the MQTT 5 spec lets a broker give it to another member of the
//! group). What it had produced but not yet acknowledged is produced again: at least once, and
//! a `dedup` operator first in the pipeline drops the repeated readings.
//!
//! A record whose delivery fails is produced again, up to [`MAX_RESENDS`] times; then the member
//! stops with an error, its unacknowledged messages left to the broker. Ctrl-C unsubscribes,
//! produces and acknowledges what was received, and disconnects.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::client::*;
use super::source::PendingAck;
use super::state::{ConnAck, Connection};
use super::topic::TopicTemplate;
use crate::decode::{Decoder, bounded_raw, oversized_reason};
use crate::model::SourceId;
use crate::pipeline::CompiledPipeline;
use crate::runtime::ports::Shutdown;
use crate::spec::{IngressSpec, MqttSourceSpec};

pub use super::client::MqttError;

/// Times one record is produced again after a failed delivery before the member gives up.
pub const MAX_RESENDS: u32 = 5;
/// How long a graceful stop waits for the last records to be delivered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start waits for the topics' metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why an ingress member stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(
        "the pipeline has no `ingress:` section: `plume ingest` needs one (the MQTT subscription and the keyed Kafka topic)"
    )]
    NotConfigured,
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("ingress: the mqtt broker refused the connection: {code}")]
    Refused { code: String },
    #[error("ingress: kafka producer for {topic}: {error}")]
    Producer { topic: String, error: String },
    #[error("ingress: a record for {topic} was not delivered after {attempts} attempts: {error}")]
    Undelivered {
        topic: String,
        attempts: u32,
        error: String,
    },
    #[error("ingress: the runtime could not start: {0}")]
    Runtime(std::io::Error),
    #[error("ingress: {0} records were not delivered before the stop (their messages stay unacknowledged)")]
    DrainTimedOut(usize),
}

/// Live counters of an ingress member.
#[derive(Debug, Default)]
pub struct IngressStats {
    /// Messages received from the broker (redeliveries included).
    pub received: AtomicU64,
    /// Readings Kafka acknowledged on the keyed topic.
    pub produced: AtomicU64,
    /// Dead letters Kafka acknowledged on the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// QoS 1/2 messages acknowledged to the broker.
    pub acked: AtomicU64,
    /// Messages the broker marked as sent again (`dup`).
    pub redelivered: AtomicU64,
    /// Records produced again after a failed delivery.
    pub resends: AtomicU64,
}

/// How `plume ingest` was started.
#[derive(Debug, Clone, Default)]
pub struct IngressOptions {
    /// The member's MQTT client id (each member needs its own); default: the spec's, or
    /// `plume-<pipeline>-ingress-<host name>`.
    pub client_id: Option<String>,
}

/// What a member did, at its end.
#[derive(Debug, Clone, Copy, Default)]
pub struct IngressReport {
    pub received: u64,
    pub produced: u64,
    pub dead_letters: u64,
    pub acked: u64,
    /// Messages the broker marked as sent again (`dup`: it had given them to this client id
    /// before, unacknowledged).
    pub redelivered: u64,
    pub elapsed: Duration,
}

// ---------------------------------------------------------------------------------------------
// deliveries

/// What a produced record carries to its delivery report.
struct Attempt {
    /// The message's place in the ack order, and the connection it came on.
    seq: u64,
    generation: u64,
    resends: u32,
}

/// A delivery report, sent from the producer's thread to the ingress loop.
enum Delivery {
    Done {
        seq: u64,
        generation: u64,
        dead_letter: bool,
    },
    Failed {
        topic: String,
        key: Vec<u8>,
        value: Vec<u8>,
        timestamp: Option<i64>,
        attempt: Attempt,
        error: String,
    },
}

struct IngressContext {
    deliveries: mpsc::UnboundedSender<Delivery>,
    dead_letter_topic: String,
}

impl ClientContext for IngressContext {}

impl ProducerContext for IngressContext {
    type DeliveryOpaque = Box<Attempt>;

    fn delivery(&self, result: &DeliveryResult<'_>, attempt: Self::DeliveryOpaque) {
        let report = match result {
            Ok(m) => Delivery::Done {
                seq: attempt.seq,
                generation: attempt.generation,
                dead_letter: m.topic() == self.dead_letter_topic,
            },
            Err((e, m)) => Delivery::Failed {
                topic: m.topic().to_string(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                timestamp: m.timestamp().to_millis(),
                attempt: *attempt,
                error: e.to_string(),
            },
        };
        // (the loop is gone only when the member stops: its messages stay unacknowledged)
        let _ = self.deliveries.send(report);
    }
}

/// QoS 1/2 messages received and not yet acknowledged, in the order they came: acknowledged
/// from the front as their records are delivered (MQTT wants acks in order).
#[derive(Default)]
struct AckQueue {
    /// `(seq, ack, delivered)`.
    waiting: VecDeque<(u64, PendingAck, bool)>,
}

impl AckQueue {
    fn push(&mut self, seq: u64, ack: PendingAck) {
        self.waiting.push_back((seq, ack, false));
    }

    /// Marks `seq` delivered; returns the acks now due, in order.
    fn delivered(&mut self, seq: u64) -> Vec<PendingAck> {
        // (seqs grow, with gaps where a QoS 0 message needs no ack)
        if let Ok(i) = self.waiting.binary_search_by_key(&seq, |w| w.0) {
            self.waiting[i].2 = true;
        }
        let mut due = Vec::new();
        while self.waiting.front().is_some_and(|w| w.2) {
            due.push(self.waiting.pop_front().expect("front").1);
        }
        due
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn clear(&mut self) {
        self.waiting.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// the member

/// `plume-<pipeline>-ingress-<host name>`.
fn default_client_id(pipeline: &str) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates what fits
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "host".to_string()
    };
    format!("plume-{pipeline}-ingress-{host}")
}

/// Everything the loop needs besides the connections.
struct Member {
    spec: IngressSpec,
    decoder: Decoder,
    template: TopicTemplate,
    /// `mqtt:<topic template>`, the dead letters' `source`.
    source: String,
    pipeline: String,
    client_id: String,
    producer: ThreadedProducer<IngressContext>,
    stats: Arc<IngressStats>,
    acks: AckQueue,
    next_seq: u64,
    /// +1 on every (re)connection: deliveries of messages from an earlier connection acknowledge
    /// nothing (the broker sends those messages again).
    generation: u64,
}

impl Member {
    /// Produces one record, waiting while the producer's queue is full.
    async fn produce(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp: Option<i64>,
        attempt: Attempt,
    ) -> Result<(), IngressError> {
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(attempt))
            .key(key)
            .payload(value);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(IngressError::Producer {
                        topic: topic.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }

    /// One received message: decoded, produced (a reading or a dead letter), and queued for its
    /// ack.
    async fn take(&mut self, m: Received) -> Result<(), IngressError> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if m.dup {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let attempt = || Attempt {
            seq,
            generation: self.generation,
            resends: 0,
        };
        let produced = match self.decode(&m) {
            Ok(device) => {
                let topic = self.spec.kafka.topic.clone();
                match self
                    .produce(&topic, device.as_bytes(), &m.payload, Some(m.at_ms), attempt())
                    .await
                {
                    Ok(()) => Ok(()),
                    // the producer refused this record (larger than `message.max.bytes`, …): a
                    // dead letter, not a stop (the broker would send it again and again)
                    Err(IngressError::Producer { error, .. }) => Err(format!("kafka refused the record: {error}")),
                    Err(e) => return Err(e),
                }
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = produced {
            // unique per member and message: the dead letter's id derives from it
            let position = format!("topic {} message {seq} at {} by {}", m.topic, m.at_ms, self.client_id);
            debug!(topic = %m.topic, %reason, "ingress dead letter");
            let raw = bounded_raw(&m.payload, self.decoder.max_dead_letter_bytes);
            let record =
                crate::output::dead_letter_record(&self.pipeline, &self.source, &position, &reason, raw, |_| {});
            let topic = self.spec.kafka.dead_letter_topic.clone();
            self.produce(
                &topic,
                self.source.as_bytes(),
                record.json.as_bytes(),
                Some(m.at_ms),
                attempt(),
            )
            .await?;
        }
        if m.qos > 0 {
            self.acks.push(
                seq,
                PendingAck {
                    pkid: m.pkid,
                    qos: m.qos,
                },
            );
        }
        Ok(())
    }

    /// The device id of a message, or why it has none usable.
    fn decode(&self, m: &Received) -> Result<String, String> {
        if m.payload.len() > self.decoder.max_payload_bytes {
            return Err(oversized_reason(m.payload.len() as u64, self.decoder.max_payload_bytes));
        }
        let capture = match self.template.capture(&m.topic) {
            Ok(c) => c,
            Err(_) => {
                return Err(format!(
                    "topic {} does not fit the template {}",
                    m.topic, self.spec.mqtt.topic
                ));
            }
        };
        match self.decoder.decode(&m.payload, capture, m.at_ms) {
            Ok(decoded) => Ok(decoded.device.into_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A delivery report: acknowledge what is due, or produce a failed record again.
    async fn on_delivery(&mut self, client: &Client, delivery: Delivery) -> Result<(), IngressError> {
        match delivery {
            Delivery::Done {
                seq,
                generation,
                dead_letter,
            } => {
                let counter = if dead_letter {
                    &self.stats.dead_letters
                } else {
                    &self.stats.produced
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if generation != self.generation {
                    return Ok(());
                }
                for ack in self.acks.delivered(seq) {
                    // an error means the event loop is gone: the broker sends the message again
                    if client.ack(ack).await.is_ok() {
                        self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            Delivery::Failed {
                topic,
                key,
                value,
                timestamp,
                mut attempt,
                error,
            } => {
                if attempt.resends >= MAX_RESENDS {
                    return Err(IngressError::Undelivered {
                        topic,
                        attempts: attempt.resends + 1,
                        error,
                    });
                }
                attempt.resends += 1;
                self.stats.resends.fetch_add(1, Ordering::Relaxed);
                warn!(topic = %topic, %error, attempt = attempt.resends + 1, "ingress kafka delivery failed: producing again");
                self.produce(&topic, &key, &value, timestamp, attempt).await
            }
        }
    }

    fn log_progress(&self) {
        let s = &self.stats;
        info!(
            received = s.received.load(Ordering::Relaxed),
            produced = s.produced.load(Ordering::Relaxed),
            dead_letters = s.dead_letters.load(Ordering::Relaxed),
            acked = s.acked.load(Ordering::Relaxed),
            redelivered = s.redelivered.load(Ordering::Relaxed),
            unacked = self.acks.len(),
            "ingress progress"
        );
    }
}

/// What the driver task passes on.
enum Event {
    Connected { session_present: bool },
    Refused(String),
    Messages(Vec<Received>),
}

/// Polls the MQTT event loop (rumqttc sends the acks and reconnects while it is polled),
/// subscribes on every connection (again after a graceful stop unsubscribed) and passes the
/// messages of each poll on.
async fn drive(mut events: EventLoop, client: Client, filter: String, qos: u8, tx: mpsc::Sender<Event>) {
    let mut connection = Connection::new();
    let mut polled = Vec::new();
    if qos == 2 {
        events.complete_any_pubrel();
    }
    loop {
        polled.clear();
        if let Err(error) = events.poll_batch(&mut polled).await {
            if tx.is_closed() {
                return;
            }
            if qos == 2 {
                events.complete_any_pubrel();
            }
            let failed = connection.on_poll_failed(Instant::now());
            if failed.newly_lost {
                warn!(%error, "ingress mqtt connection lost, reconnecting");
            } else {
                debug!(%error, "ingress mqtt reconnect failed");
            }
            tokio::time::sleep(failed.retry_in).await;
            continue;
        }
        let mut batch = Vec::new();
        for event in polled.drain(..) {
            match event {
                Polled::ConnAck {
                    refused,
                    session_present,
                } => match connection.on_connack(refused, session_present, Instant::now()) {
                    ConnAck::Refused { code } => {
                        let _ = tx.send(Event::Refused(code)).await;
                        return;
                    }
                    ConnAck::Connected { .. } => {
                        if !batch.is_empty() {
                            let _ = tx.send(Event::Messages(std::mem::take(&mut batch))).await;
                        }
                        if tx.send(Event::Connected { session_present }).await.is_err() {
                            return;
                        }
                        match client.try_subscribe(&filter, qos) {
                            Ok(()) => info!(filter = %filter, qos, session_present, "ingress mqtt subscribing"),
                            Err(error) => warn!(%error, "ingress mqtt subscribe request failed"),
                        }
                    }
                },
                Polled::Publish(m) => batch.push(m),
                Polled::SubAck => info!(filter = %filter, "ingress subscribed"),
                Polled::Other => {}
            }
        }
        if !batch.is_empty() && tx.send(Event::Messages(batch)).await.is_err() {
            return;
        }
    }
}

/// Runs one ingress member of `pipeline` until `shutdown` (or a failure that stops it).
pub fn run(
    pipeline: &CompiledPipeline,
    options: IngressOptions,
    shutdown: Shutdown,
) -> Result<IngressReport, IngressError> {
    let spec = pipeline.spec.ingress.clone().ok_or(IngressError::NotConfigured)?;
    let client_id = options
        .client_id
        .or_else(|| spec.mqtt.client.client_id.clone())
        .unwrap_or_else(|| default_client_id(&pipeline.name));
    let source_spec = MqttSourceSpec {
        url: spec.mqtt.url.clone(),
        topic: spec.mqtt.topic.clone(),
        qos: spec.mqtt.qos,
        client: spec.mqtt.client.clone(),
        version: spec.mqtt.version,
        persistent_session: spec.mqtt.persistent_session,
        shared_group: spec.mqtt.shared_group.clone(),
        durable: false,
        keep_alive: spec.mqtt.keep_alive,
    };
    let template = TopicTemplate::parse(&spec.mqtt.topic);
    let mut filter = template.filter();
    if let Some(group) = &spec.mqtt.shared_group {
        filter = format!("$share/{group}/{filter}");
    }
    let qos = spec.mqtt.qos.level();
    // the pipeline's decode settings as written (not the Kafka source's "device from the key")
    let decoder = Decoder::new(&pipeline.spec.decode, pipeline.fields.len());
    let (deliveries_tx, mut deliveries) = mpsc::unbounded_channel();
    let producer_defaults = [
        ("client.id", client_id.clone()),
        ("enable.idempotence", "true".to_string()),
        ("acks", "all".to_string()),
        ("linger.ms", "5".to_string()),
        ("message.timeout.ms", "30000".to_string()),
    ];
    let producer_error = |error: String| IngressError::Producer {
        topic: spec.kafka.topic.clone(),
        error,
    };
    let config = crate::connectors::kafka::source::client_config(
        "ingress",
        &spec.kafka.brokers,
        &producer_defaults,
        &spec.kafka.client.properties,
        &spec.kafka.client.secret_properties_env,
    )
    .map_err(|e| producer_error(e.to_string()))?;
    let producer: ThreadedProducer<IngressContext> = config
        .create_with_context(IngressContext {
            deliveries: deliveries_tx,
            dead_letter_topic: spec.kafka.dead_letter_topic.clone(),
        })
        .map_err(|e| producer_error(e.to_string()))?;
    // the topics must exist, and the producer knows their partitions before the first message
    // (otherwise the first records of each member wait for the metadata, and a device's first
    // readings, spread over the members, can land out of order)
    for topic in [&spec.kafka.topic, &spec.kafka.dead_letter_topic] {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| IngressError::Producer {
                topic: topic.clone(),
                error: format!("reading the topic's metadata: {e}"),
            })?;
        let known = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.as_str())
            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
        if !known {
            return Err(IngressError::Producer {
                topic: topic.clone(),
                error: "the topic does not exist (create it, with as many partitions as stateful members may share)"
                    .to_string(),
            });
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IngressError::Runtime)?;
    let started = Instant::now();
    let stats = Arc::new(IngressStats::default());
    let mut member = Member {
        source: SourceId::Mqtt(spec.mqtt.topic.clone()).to_string(),
        pipeline: pipeline.name.clone(),
        client_id: client_id.clone(),
        decoder,
        template,
        producer,
        stats: stats.clone(),
        acks: AckQueue::default(),
        next_seq: 0,
        generation: 0,
        spec,
    };
    info!(
        pipeline = %pipeline.name,
        url = %crate::model::redact::url(&member.spec.mqtt.url),
        client_id = %client_id,
        filter = %filter,
        qos,
        topic = %member.spec.kafka.topic,
        dead_letter_topic = %member.spec.kafka.dead_letter_topic,
        "ingress starting"
    );
    runtime.block_on(async {
        let (client, events) = connect(&source_spec, &client_id, true)?;
        let (tx, mut rx) = mpsc::channel::<Event>(64);
        let driver = tokio::spawn(drive(events, client.clone(), filter.clone(), qos, tx));
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let result: Result<(), IngressError> = async {
            while !shutdown.is_requested() {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(Event::Messages(batch)) => {
                            for m in batch {
                                member.take(m).await?;
                            }
                        }
                        Some(Event::Connected { session_present }) => {
                            // what the last connection did not acknowledge comes again
                            member.generation += 1;
                            member.acks.clear();
                            info!(session_present, "ingress mqtt connected");
                        }
                        Some(Event::Refused(code)) => return Err(IngressError::Refused { code }),
                        None => break,
                    },
                    Some(delivery) = deliveries.recv() => member.on_delivery(&client, delivery).await?,
                    _ = progress.tick() => member.log_progress(),
                    _ = tick.tick() => {}
                }
            }
            // graceful stop: no new messages, then everything received delivered and acknowledged
            let _ = match &client {
                Client::V4(c) => c.try_unsubscribe(filter.as_str()).map_err(|_| ()),
                Client::V5(c) => c.try_unsubscribe(filter.as_str()).map_err(|_| ()),
            };
            info!(filter = %filter, "ingress stopping: unsubscribed, delivering what was received");
            let draining = Instant::now();
            let mut quiet_since = Instant::now();
            loop {
                let quiet = quiet_since.elapsed() > Duration::from_millis(500);
                if member.acks.len() == 0 && quiet && member.producer.in_flight_count() == 0 {
                    break;
                }
                if draining.elapsed() > DRAIN_TIMEOUT {
                    return Err(IngressError::DrainTimedOut(member.acks.len()));
                }
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(Event::Messages(batch)) => {
                            quiet_since = Instant::now();
                            for m in batch {
                                member.take(m).await?;
                            }
                        }
                        Some(Event::Connected { .. }) => {
                            member.generation += 1;
                            member.acks.clear();
                        }
                        Some(Event::Refused(code)) => return Err(IngressError::Refused { code }),
                        None => break,
                    },
                    Some(delivery) = deliveries.recv() => member.on_delivery(&client, delivery).await?,
                    _ = tick.tick() => {}
                }
            }
            Ok(())
        }
        .await;
        // let the last acks go out before the connection closes
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        member.log_progress();
        result
    })?;
    Ok(IngressReport {
        received: stats.received.load(Ordering::Relaxed),
        produced: stats.produced.load(Ordering::Relaxed),
        dead_letters: stats.dead_letters.load(Ordering::Relaxed),
        acked: stats.acked.load(Ordering::Relaxed),
        redelivered: stats.redelivered.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_out_in_arrival_order_whatever_the_delivery_order() {
        let mut q = AckQueue::default();
        for (seq, pkid) in [(0u64, 10u16), (1, 11), (2, 12), (5, 13)] {
            q.push(seq, PendingAck { pkid, qos: 1 });
        }
        assert!(q.delivered(2).is_empty());
        assert!(q.delivered(1).is_empty());
        let due: Vec<u16> = q.delivered(0).iter().map(|a| a.pkid).collect();
        assert_eq!(due, vec![10, 11, 12]);
        // a delivery of a message not waiting (QoS 0, or an earlier connection's) changes nothing
        assert!(q.delivered(9).is_empty());
        assert!(q.delivered(3).is_empty());
        assert_eq!(q.delivered(5).iter().map(|a| a.pkid).collect::<Vec<_>>(), vec![13]);
        assert_eq!(q.len(), 0);
    }
}
