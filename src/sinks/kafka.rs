//! Produces output records to a Kafka topic: one record per output record, key = device id
//! (records without a device: their type), value = the record's JSON (the file output's
//! schema), header `plume-id` = the record's deterministic id so consumers can deduplicate.
//!
//! The producer is idempotent (`enable.idempotence`, `acks=all`: librdkafka retries without
//! duplicating or reordering). A record whose delivery still fails (its message timeout
//! passed) is sent again by `flush`, up to [`MAX_RESENDS`] times; after that `flush` fails, and
//! with it the checkpoint, so the run's offsets are not committed past it. `flush` (called
//! before every checkpoint completes) returns once every record written so far is delivered:
//! at-least-once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message as _};
use tracing::warn;

use super::{Sink, SinkError};
use crate::config::KafkaSinkSpec;
use crate::output::OutputRecord;

/// Times one record is produced again after a failed delivery before the sink gives up.
pub const MAX_RESENDS: u32 = 5;
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A record to produce: key, value, id.
#[derive(Clone)]
struct Outgoing {
    key: String,
    value: String,
    id: String,
    resends: u32,
}

#[derive(Default)]
struct Deliveries {
    delivered: u64,
    failed: Vec<(Outgoing, String)>,
}

struct SinkContext {
    deliveries: Arc<Mutex<Deliveries>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Outgoing>;

    fn delivery(&self, result: &DeliveryResult<'_>, outgoing: Self::DeliveryOpaque) {
        let mut d = self.deliveries.lock().expect("deliveries lock");
        match result {
            Ok(_) => d.delivered += 1,
            Err((e, m)) => {
                let _ = m.topic();
                d.failed.push((*outgoing, e.to_string()));
            }
        }
    }
}

pub struct KafkaSink {
    name: String,
    topic: String,
    producer: ThreadedProducer<SinkContext>,
    deliveries: Arc<Mutex<Deliveries>>,
    written: u64,
}

fn error(sink: &str, operation: &'static str, message: impl ToString) -> SinkError {
    SinkError::Io {
        sink: sink.to_string(),
        operation,
        source: std::io::Error::other(message.to_string()),
    }
}

impl KafkaSink {
    pub fn connect(spec: &KafkaSinkSpec, client_id: &str) -> Result<Self, SinkError> {
        let name = format!("kafka:{}", spec.topic);
        let mut config = crate::sources::kafka::client_config(
            &name,
            &spec.brokers,
            &Default::default(),
            &Default::default(),
        )
        .map_err(|e| error(&name, "configuring the producer", e))?;
        config
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (k, v) in &spec.properties {
            config.set(k, v);
        }
        for (property, variable) in &spec.secret_properties_env {
            let value = std::env::var(variable).map_err(|_| {
                error(
                    &name,
                    "configuring the producer",
                    format!("the environment variable {variable} (for `{property}`) is not set"),
                )
            })?;
            config.set(property, value);
        }
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let producer: ThreadedProducer<SinkContext> = config
            .create_with_context(SinkContext {
                deliveries: deliveries.clone(),
            })
            .map_err(|e| error(&name, "creating the producer", e))?;
        Ok(KafkaSink {
            name,
            topic: spec.topic.clone(),
            producer,
            deliveries,
            written: 0,
        })
    }

    fn produce(&self, outgoing: Outgoing) -> Result<(), SinkError> {
        let mut outgoing = Box::new(outgoing);
        loop {
            // records without an id (the summary) carry no header
            let headers = if outgoing.id.is_empty() {
                OwnedHeaders::new()
            } else {
                OwnedHeaders::new().insert(Header {
                    key: "plume-id",
                    value: Some(outgoing.id.as_bytes()),
                })
            };
            let (key, value) = (outgoing.key.clone(), outgoing.value.clone());
            let record = BaseRecord::with_opaque_to(&self.topic, outgoing)
                .key(&key)
                .payload(&value)
                .headers(headers);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), record)) => {
                    // the producer's queue is full: wait for deliveries
                    outgoing = record.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(error(&self.name, "producing", e)),
            }
        }
    }

    /// Waits until every record is delivered, producing failed ones again.
    fn deliver_all(&mut self) -> Result<u64, SinkError> {
        loop {
            self.producer
                .flush(FLUSH_TIMEOUT)
                .map_err(|e| error(&self.name, "flushing", e))?;
            let failed = std::mem::take(&mut self.deliveries.lock().expect("deliveries lock").failed);
            if failed.is_empty() {
                return Ok(self.deliveries.lock().expect("deliveries lock").delivered);
            }
            for (mut outgoing, e) in failed {
                if outgoing.resends >= MAX_RESENDS {
                    return Err(error(
                        &self.name,
                        "delivering",
                        format!("record {} not delivered after {} attempts: {e}", outgoing.id, outgoing.resends + 1),
                    ));
                }
                outgoing.resends += 1;
                warn!(sink = %self.name, id = %outgoing.id, error = %e, attempt = outgoing.resends + 1, "kafka delivery failed: producing again");
                self.produce(outgoing)?;
            }
        }
    }
}

impl Sink for KafkaSink {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError> {
        for r in records {
            let key = r.device.as_deref().unwrap_or(r.kind).to_string();
            self.produce(Outgoing {
                key,
                value: r.json.clone(),
                id: if r.id == 0 { String::new() } else { r.id_hex() },
                resends: 0,
            })?;
            self.written += 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<u64, SinkError> {
        self.deliver_all()
    }

    fn finish(&mut self) -> Result<u64, SinkError> {
        self.deliver_all()
    }
}
