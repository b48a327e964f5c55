//! Publishes output records to an MQTT broker: one message per record, the record's JSON as
//! payload, on a topic template with `{device}` and `{operator}` filled in (a record without a
//! device gets `_`, one without an operator its type: `plume/_/summary`). QoS and retain as
//! configured.
//!
//! The rumqttc event loop runs on its own thread (a small tokio runtime) and reconnects with
//! backoff; `write` queues publishes (waiting when the client's queue is full), `flush` waits
//! until the broker has acknowledged every QoS 1/2 publish (or the event loop has sent every
//! QoS 0 one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::connectors::mqtt::source::{Endpoint, password, tls_configuration};
use crate::output::OutputRecord;
use crate::runtime::ports::{Sink, SinkError};
use crate::spec::MqttSinkSpec;

#[derive(Default)]
struct Progress {
    /// Publishes written to the network (QoS 0) / acknowledged by the broker (QoS 1, 2).
    done: AtomicU64,
    stopped: AtomicBool,
}

pub struct MqttSink {
    name: String,
    topic: String,
    qos: rumqttc::QoS,
    retain: bool,
    operators: Vec<String>,
    client: rumqttc::AsyncClient,
    progress: Arc<Progress>,
    published: u64,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A broker failure: the broker may be back later.
fn error(sink: &str, operation: &'static str, message: impl ToString) -> SinkError {
    SinkError::broker(sink, operation, message)
}

/// A topic level made from a value: MQTT separators, wildcards and NUL become `_` (device ids
/// have no control characters and at most `decode.max_device_id_bytes`, so topics stay short).
fn level(value: &str) -> String {
    if value.is_empty() {
        return "_".to_string();
    }
    value.replace(['/', '+', '#', '\0'], "_")
}

impl MqttSink {
    /// Connects (in the background) with the spec's client id, or `client_id` (stable across
    /// restarts).
    pub fn connect(spec: &MqttSinkSpec, client_id: &str, operators: Vec<String>) -> Result<Self, SinkError> {
        let name = format!("mqtt:{}", spec.topic);
        let endpoint = Endpoint::parse(&spec.url).map_err(|e| error(&name, "parsing the url", e))?;
        let pass =
            password(spec.client.password_env.as_deref()).map_err(|e| error(&name, "reading the password", e))?;
        let client_id = spec.client.client_id.as_deref().unwrap_or(client_id);
        let mut o = rumqttc::MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_inflight(1_000);
        if let Some(user) = &spec.client.username {
            o.set_credentials(user.clone(), pass.unwrap_or_default());
        }
        if endpoint.tls {
            let tls =
                tls_configuration(spec.client.ca_file.as_deref()).map_err(|e| error(&name, "setting up TLS", e))?;
            o.set_transport(rumqttc::Transport::Tls(tls));
        }
        let (client, mut events) = rumqttc::AsyncClient::new(o, 10_000);
        let progress = Arc::new(Progress::default());
        let qos = match spec.qos.level() {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            _ => rumqttc::QoS::ExactlyOnce,
        };
        let thread = {
            let progress = progress.clone();
            let thread_name = name.clone();
            let name = name.clone();
            std::thread::Builder::new()
                .name(format!("sink {thread_name} network"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime");
                    runtime.block_on(async move {
                        use rumqttc::{Event, Outgoing, Packet};
                        let mut delay = Duration::from_millis(100);
                        loop {
                            match events.poll().await {
                                Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == rumqttc::QoS::AtMostOnce => {
                                    progress.done.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                                    progress.done.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Event::Incoming(Packet::ConnAck(_))) => delay = Duration::from_millis(100),
                                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                                Ok(_) => {}
                                Err(rumqttc::ConnectionError::RequestsDone) => break,
                                Err(e) => {
                                    if progress.stopped.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    warn!(sink = %name, error = %e, "mqtt sink connection lost, reconnecting");
                                    tokio::time::sleep(delay).await;
                                    delay = (delay * 2).min(Duration::from_secs(10));
                                }
                            }
                        }
                        debug!(sink = %name, "mqtt sink network stopped");
                    });
                })
                .map_err(|e| error(&thread_name, "starting its thread", e))?
        };
        Ok(MqttSink {
            name,
            topic: spec.topic.clone(),
            qos,
            retain: spec.retain,
            operators,
            client,
            progress,
            published: 0,
            thread: Some(thread),
        })
    }

    fn topic_of(&self, record: &OutputRecord) -> String {
        let device = record.device.as_deref().map_or_else(|| "_".to_string(), level);
        let operator = match record.op {
            Some(op) => self
                .operators
                .get(op as usize)
                .map_or_else(|| record.kind.to_string(), |n| level(n)),
            None => record.kind.to_string(),
        };
        self.topic.replace("{device}", &device).replace("{operator}", &operator)
    }

    /// Waits until everything published is done (sent for QoS 0, acknowledged otherwise).
    fn wait_done(&self, timeout: Duration) -> Result<u64, SinkError> {
        let started = Instant::now();
        while self.progress.done.load(Ordering::Relaxed) < self.published {
            if started.elapsed() > timeout {
                return Err(error(
                    &self.name,
                    "waiting for the broker",
                    format!(
                        "{} of {} publishes not acknowledged after {timeout:?}",
                        self.published - self.progress.done.load(Ordering::Relaxed),
                        self.published
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(self.published)
    }
}

impl Sink for MqttSink {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError> {
        for record in records {
            let topic = self.topic_of(record);
            futures::executor::block_on(self.client.publish(
                topic,
                self.qos,
                self.retain,
                record.json.as_bytes().to_vec(),
            ))
            .map_err(|e| error(&self.name, "publishing", e))?;
            self.published += 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<u64, SinkError> {
        self.wait_done(Duration::from_secs(30))
    }

    fn finish(&mut self) -> Result<u64, SinkError> {
        let done = self.wait_done(Duration::from_secs(30));
        self.progress.stopped.store(true, Ordering::Relaxed);
        let _ = futures::executor::block_on(self.client.disconnect());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        done
    }
}
