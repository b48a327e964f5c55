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

use crate::output::OutputRecord;
use crate::runtime::ports::{Sink, SinkError};
use crate::spec::KafkaSinkSpec;

/// Times one record is produced again after a failed delivery before the sink gives up.
pub const MAX_RESENDS: u32 = 5;
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// What a produced record carries to its delivery report: its id and how often it was sent
/// again. Key and value stay in the producer's copy; a failed record is rebuilt from the report.
struct Attempt {
    id: Option<String>,
    resends: u32,
}

/// A record whose delivery failed, to be produced again.
struct Failed {
    key: Vec<u8>,
    value: Vec<u8>,
    attempt: Attempt,
    error: String,
}

#[derive(Default)]
struct Deliveries {
    delivered: u64,
    failed: Vec<Failed>,
}

struct SinkContext {
    deliveries: Arc<Mutex<Deliveries>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Attempt>;

    fn delivery(&self, result: &DeliveryResult<'_>, attempt: Self::DeliveryOpaque) {
        let mut d = self.deliveries.lock().expect("deliveries lock");
        match result {
            Ok(_) => d.delivered += 1,
            Err((e, m)) => d.failed.push(Failed {
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                attempt: *attempt,
                error: e.to_string(),
            }),
        }
    }
}

pub struct KafkaSink {
    name: String,
    topic: String,
    producer: ThreadedProducer<SinkContext>,
    deliveries: Arc<Mutex<Deliveries>>,
}

/// A broker failure: the broker may be back later.
fn error(sink: &str, operation: &'static str, message: impl ToString) -> SinkError {
    SinkError::broker(sink, operation, message)
}

impl KafkaSink {
    pub fn connect(spec: &KafkaSinkSpec, client_id: &str) -> Result<Self, SinkError> {
        let name = format!("kafka:{}", spec.topic);
        let defaults = [
            ("client.id", client_id.to_string()),
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("linger.ms", "5".into()),
            ("message.timeout.ms", "30000".into()),
        ];
        let config = crate::connectors::kafka::source::client_config(
            &name,
            &spec.brokers,
            &defaults,
            &spec.client.properties,
            &spec.client.secret_properties_env,
        )
        .map_err(|e| error(&name, "configuring the producer", e))?;
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
        })
    }

    /// Produces one record (the producer copies key and value), waiting while its queue is full.
    fn produce(&self, key: &[u8], value: &[u8], attempt: Attempt) -> Result<(), SinkError> {
        // records without an id (the summary) carry no header
        let headers = attempt.id.as_deref().map(|id| {
            OwnedHeaders::new().insert(Header {
                key: "plume-id",
                value: Some(id.as_bytes()),
            })
        });
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(attempt))
            .key(key)
            .payload(value);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    // the producer's queue is full: wait for deliveries
                    record = r;
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
            for Failed {
                key,
                value,
                mut attempt,
                error: e,
            } in failed
            {
                let id = attempt.id.clone().unwrap_or_default();
                if attempt.resends >= MAX_RESENDS {
                    return Err(error(
                        &self.name,
                        "delivering",
                        format!("record {id} not delivered after {} attempts: {e}", attempt.resends + 1),
                    ));
                }
                attempt.resends += 1;
                warn!(sink = %self.name, id = %id, error = %e, attempt = attempt.resends + 1, "kafka delivery failed: producing again");
                self.produce(&key, &value, attempt)?;
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
            let key = r.device.as_deref().unwrap_or(r.kind.as_str());
            let attempt = Attempt {
                id: (r.id != 0).then(|| r.id_hex()),
                resends: 0,
            };
            self.produce(key.as_bytes(), r.json.as_bytes(), attempt)?;
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
