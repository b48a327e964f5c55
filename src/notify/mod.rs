//! Notifiers: sinks that tell people and systems about events — signed webhooks, FCM, APNs and
//! ntfy — at least once, with deterministic ids, through a durable outbox.
//!
//! A notifier is a [`Sink`] like the file sink: the OutputHub hands it records through the
//! bounded queue of its sink thread. `write` only decides (policy), puts the deliveries in the
//! outbox and hands them to the delivery engine, which runs on a tokio runtime of its own: a slow
//! or dead endpoint never holds the hub, the devices or the other sinks.
//!
//! # Layout
//! - [`NotifierSink`]: records → policy → outbox entries → delivery; digests after quiet hours;
//!   drains at the end of the run.
//! - `policy`: which records (`notify_on`), cooldown, quiet hours, severity, title/body
//!   templates (on event time); its state is bounded and saved with every checkpoint
//!   (`policy_store`, in the same column family as the outbox), so a restart decides as the run
//!   before it would have.
//! - `outbox`: the [`Outbox`] trait (durable pending deliveries, acknowledged ids, dead letters),
//!   [`StoreOutbox`] (in the RocksDB state store) and [`MemoryOutbox`].
//! - `delivery`: the engine: per device-and-target lanes in order, retries with backoff and
//!   jitter honouring `Retry-After`, max age → dead letters, concurrency limit, circuit breaker;
//!   the [`Transport`] trait every receiver kind implements.
//! - `webhook`: Standard Webhooks signing and the HTTP transport.
//! - `fcm`, `apns`, `ntfy`: the push transports; `jwt`: RS256/ES256 JWTs with `ring`.
//! - `handover`: the notifiers as a Kafka source with a changelog sees them, so that pending
//!   deliveries move with their devices' partitions to another member.
//! - `subscribers`: the [`Subscribers`] trait (device → push tokens), [`SubscriberStore`] (in the
//!   state store, managed with `plume subscribers`) and [`FileSubscribers`].
//!
//! A run with a state store gives its notifiers a [`NotifyStore`]: the outbox of each notifier
//! sink (namespaced by the sink's name, `webhook:0`, `fcm:0`, …) and the push subscriptions live
//! in the store; without one, [`MemoryOutbox`] and the spec's `subscribers` file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::model::RecordKind;
use crate::output::{OutputRecord, push_json_str};
use crate::runtime::ports::{Sink, SinkError};
use crate::spec::{NotifyPolicySpec, PushSinkSpec, RetrySpec, SinkSpec};

pub mod apns;
pub mod delivery;
pub mod fcm;
pub mod handover;
pub mod jwt;
pub mod ntfy;
pub mod outbox;
pub mod policy;
pub mod policy_store;
pub mod subscribers;
pub mod webhook;

pub use delivery::{Delivery, DeliveryConfig, DeliveryError, DeliveryStats, Transport};
pub use outbox::{DeadLetter, MemoryOutbox, Outbox, OutboxEntry, OutboxError, StoreOutbox};
pub use policy::{Decision, Policy, PolicyState};
pub use policy_store::{PolicyStateStore, PolicyStoreError};
pub use subscribers::{FileSubscribers, SubscriberStore, Subscribers};

/// A notifier could not be set up. None of these gets better by retrying: the configuration or
/// the environment must change. Messages name variables and files, never their secret values.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("environment variable `{0}` is not set (it should hold the {1})")]
    MissingEnv(String, &'static str),
    #[error("webhook secret in `{var}`: {message}")]
    Secret { var: String, message: String },
    #[error("{0}")]
    Credentials(String),
    #[error(
        "{0} needs device tokens: run with a data directory (`plume subscribers add`), or name a `subscribers` JSON file"
    )]
    NoSubscribers(&'static str),
    #[error("notifier outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Subscribers(#[from] subscribers::SubscribersError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    PolicyState(#[from] PolicyStoreError),
    #[error("http client: {0}")]
    Client(String),
    #[error("starting the delivery runtime: {0}")]
    Runtime(std::io::Error),
}

/// rustls needs a process-wide crypto provider; plume uses `ring` (a second call is a no-op).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn env(var: &str, what: &'static str) -> Result<String, NotifyError> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| NotifyError::MissingEnv(var.to_string(), what))
}

/// Deliveries fan out per target: one endpoint, or one delivery per subscribed token.
enum Targets {
    Endpoint,
    Tokens(Arc<dyn Subscribers>),
}

/// A notifier sink (webhook, FCM, APNs or ntfy).
pub struct NotifierSink {
    name: String,
    pipeline: String,
    webhook_body: bool,
    targets: Targets,
    policy: Policy,
    outbox: Arc<dyn Outbox>,
    delivery: Delivery,
    stats: Arc<DeliveryStats>,
    /// Held by quiet hours (also in the outbox, `held`), and when the quiet hours end.
    held: Vec<OutboxEntry>,
    release_at: i64,
    drain_timeout: Duration,
    /// Where the policy's state is saved with each checkpoint (runs with a state store).
    policy_store: Option<PolicyStateStore>,
    /// `release_at` as last saved (a change of it alone is a change of the state).
    saved_release_at: i64,
    /// Policy entries another member had for devices this one took over (a Kafka changelog):
    /// merged before the next decision.
    policy_inbox: handover::PolicyInbox,
}

/// What a notifier is built from besides its spec.
pub struct NotifierParts {
    pub pipeline: String,
    /// The sink's stable name (`webhook:0`): its outbox namespace, and the `source` of its dead
    /// letters (`notify:<name>`). `None`: the transport's description.
    pub name: Option<String>,
    pub outbox: Arc<dyn Outbox>,
    /// For FCM and APNs; `None`: the spec's `subscribers` file.
    pub subscribers: Option<Arc<dyn Subscribers>>,
    /// How long the end of a run waits for pending deliveries.
    pub drain_timeout: Duration,
    /// Where dead letters go besides the outbox (the pipeline's `dead_letters` route).
    pub dead_letters: Option<DeadLetterOutlet>,
    /// Where the policy's state is saved with each checkpoint and restored from at start;
    /// `None`: in memory only.
    pub policy_state: Option<PolicyStateStore>,
}

fn delivery_config(retry: &RetrySpec) -> DeliveryConfig {
    if retry.allow_insecure {
        warn!("a notifier has `allow_insecure: true`: its credentials may cross the network without TLS");
    }
    DeliveryConfig {
        timeout: retry.timeout.as_duration(),
        max_age: retry.max_age.as_duration(),
        concurrency: retry.concurrency.max(1) as usize,
        backoff: retry.backoff.as_duration(),
        breaker_open: retry.breaker_open.as_duration(),
        ..Default::default()
    }
}

/// The notifiers' dead letters on their way to the pipeline's `dead_letters` route. The sinks
/// are built before the OutputHub runs: records given up before [`DeadLetterOutlet::connect`]
/// wait here.
#[derive(Clone, Default)]
pub struct DeadLetterOutlet {
    inner: Arc<std::sync::Mutex<OutletState>>,
}

#[derive(Default)]
struct OutletState {
    send: Option<Box<dyn Fn(OutputRecord) + Send>>,
    waiting: Vec<OutputRecord>,
}

impl DeadLetterOutlet {
    /// From now on records go to `send` (those waiting first).
    pub fn connect(&self, send: impl Fn(OutputRecord) + Send + 'static) {
        let mut s = self.inner.lock().unwrap();
        for r in std::mem::take(&mut s.waiting) {
            send(r);
        }
        s.send = Some(Box::new(send));
    }

    pub fn send(&self, record: OutputRecord) {
        let mut s = self.inner.lock().unwrap();
        match &s.send {
            Some(send) => send(record),
            None => s.waiting.push(record),
        }
    }
}

/// The `dead_letter` output record of a notifier's given-up delivery: `source` is
/// `notify:<sink>`, `position` the delivery id, `reason` the last error, `raw` (at most 1 KiB
/// of) the webhook body or the notification's title; `device` and `event_id` name the event.
/// Never the device token.
pub fn dead_letter_record(pipeline: &str, sink: &str, entry: &OutboxEntry, error: &str, attempts: u32) -> OutputRecord {
    let raw = if entry.payload.is_empty() {
        &entry.title
    } else {
        &entry.payload
    };
    let mut cut = raw.len().min(1024);
    while !raw.is_char_boundary(cut) {
        cut -= 1;
    }
    let source = match crate::model::SinkId::parse(sink) {
        Some(id) => crate::model::SourceId::Notifier(id).to_string(),
        None => format!("notify:{sink}"),
    };
    crate::output::dead_letter_record(pipeline, &source, &entry.id, error, raw[..cut].as_bytes(), |j| {
        crate::output::push_field(j, "device", &entry.device);
        crate::output::push_field(j, "event_id", &entry.event_id);
        j.push_str(",\"attempts\":");
        j.push_str(&attempts.to_string());
    })
}

impl NotifierSink {
    /// Builds the notifier for a webhook or push sink spec; `None` for other sinks.
    pub fn build(spec: &SinkSpec, parts: NotifierParts) -> Result<Option<Self>, NotifyError> {
        let subscribers = |path: &Option<String>, what: &'static str| -> Result<Arc<dyn Subscribers>, NotifyError> {
            if let Some(s) = &parts.subscribers {
                return Ok(s.clone());
            }
            let path = path.as_deref().ok_or(NotifyError::NoSubscribers(what))?;
            Ok(Arc::new(FileSubscribers::open(std::path::Path::new(path))?))
        };
        let (transport, targets, config, policy, webhook_body): (Arc<dyn Transport>, _, _, _, _) = match spec {
            SinkSpec::Webhook(w) => {
                let secret = match &w.secret_env {
                    Some(var) => Some(
                        webhook::WebhookSecret::parse(&env(var, "webhook secret (whsec_…)")?).map_err(|message| {
                            NotifyError::Secret {
                                var: var.clone(),
                                message,
                            }
                        })?,
                    ),
                    None => None,
                };
                let config = delivery_config(&w.retry);
                if w.secret_env.is_none() {
                    warn!(
                        url = %crate::model::redact::url(&w.url),
                        "webhook without secret_env: its requests are not signed, so the receiver cannot tell them from anyone else's"
                    );
                }
                let t = webhook::WebhookTransport::new(&w.url, secret, config.timeout)?;
                (Arc::new(t), Targets::Endpoint, config, &w.policy, true)
            }
            SinkSpec::Push(PushSinkSpec::Ntfy(n)) => {
                let token = match &n.token_env {
                    Some(var) => Some(env(var, "ntfy access token")?),
                    None => None,
                };
                let critical = n
                    .policy
                    .quiet_hours
                    .as_ref()
                    .map(|q| q.critical.clone())
                    .unwrap_or_default();
                let config = delivery_config(&n.retry);
                let t = ntfy::NtfyTransport::new(&n.server, &n.topic, token, critical, config.timeout)?;
                (Arc::new(t), Targets::Endpoint, config, &n.policy, false)
            }
            SinkSpec::Push(PushSinkSpec::Fcm(f)) => {
                let subs = subscribers(&f.subscribers, "fcm")?;
                let key = env(&f.service_account_env, "FCM service-account key (JSON or a path)")?;
                let config = delivery_config(&f.retry);
                let t = fcm::FcmTransport::new(
                    &key,
                    f.endpoint.as_deref(),
                    f.token_endpoint.as_deref(),
                    subs.clone(),
                    config.timeout,
                )?;
                // (the token endpoint comes from the key file: the pipeline check cannot see it)
                if !f.retry.allow_insecure && crate::model::redact::plaintext_to_another_host(t.token_uri()) {
                    return Err(NotifyError::Credentials(format!(
                        "fcm: the service account's token_uri `{}` would send the signed assertion in clear: \
                         use https://, or set `allow_insecure: true` to accept that",
                        crate::model::redact::url(t.token_uri())
                    )));
                }
                (Arc::new(t), Targets::Tokens(subs), config, &f.policy, false)
            }
            SinkSpec::Push(PushSinkSpec::Apns(a)) => {
                let subs = subscribers(&a.subscribers, "apns")?;
                let key = env(&a.key_env, "APNs .p8 signing key (PEM)")?;
                let config = delivery_config(&a.retry);
                let t = apns::ApnsTransport::new(
                    &a.team_id,
                    &a.key_id,
                    &key,
                    &a.topic,
                    a.endpoint.as_deref(),
                    subs.clone(),
                    config.timeout,
                )?;
                (Arc::new(t), Targets::Tokens(subs), config, &a.policy, false)
            }
            _ => return Ok(None),
        };
        Ok(Some(Self::new(
            transport,
            targets,
            config,
            policy,
            webhook_body,
            parts,
        )?))
    }

    fn new(
        transport: Arc<dyn Transport>,
        targets: Targets,
        config: DeliveryConfig,
        policy: &NotifyPolicySpec,
        webhook_body: bool,
        parts: NotifierParts,
    ) -> Result<Self, NotifyError> {
        let name = transport.describe();
        let sink_name = parts.name.clone().unwrap_or_else(|| name.clone());
        let stats = Arc::new(DeliveryStats::default());
        let on_dead_letter: Option<delivery::DeadLetterHook> = parts.dead_letters.clone().map(|outlet| {
            let (pipeline, sink) = (parts.pipeline.clone(), sink_name.clone());
            Arc::new(move |entry: &OutboxEntry, error: &str, attempts: u32| {
                outlet.send(dead_letter_record(&pipeline, &sink, entry, error, attempts));
            }) as delivery::DeadLetterHook
        });
        let delivery = Delivery::start(
            &name,
            transport,
            parts.outbox.clone(),
            config,
            stats.clone(),
            on_dead_letter,
        )
        .map_err(NotifyError::Runtime)?;
        let mut sink = NotifierSink {
            name,
            pipeline: parts.pipeline,
            webhook_body,
            targets,
            policy: Policy::new(policy)?,
            outbox: parts.outbox,
            delivery,
            stats,
            held: Vec::new(),
            release_at: i64::MAX,
            drain_timeout: parts.drain_timeout,
            policy_store: parts.policy_state,
            saved_release_at: i64::MAX,
            policy_inbox: Default::default(),
        };
        let restored = sink.restore_policy()?;
        sink.resume(restored)?;
        Ok(sink)
    }

    /// At start: the policy's state as of the checkpoint the run resumes from (whether there
    /// was one).
    fn restore_policy(&mut self) -> Result<bool, NotifyError> {
        let Some(store) = &self.policy_store else {
            return Ok(false);
        };
        let Some((checkpoint, state)) = store.load()? else {
            return Ok(false);
        };
        info!(
            notifier = %self.name,
            checkpoint,
            entries = state.last.len() + state.suppressed.len(),
            suppressed = state.suppressed_total,
            "policy state restored"
        );
        self.release_at = state.release_at_ms;
        self.saved_release_at = state.release_at_ms;
        self.policy.restore(state);
        self.publish_policy_counters();
        Ok(true)
    }

    /// The policy's counters into the notifier's stats (read by `/metrics`).
    fn publish_policy_counters(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.policy_entries.store(self.policy.entries() as i64, Relaxed);
        self.stats.policy_evicted.store(self.policy.evicted_total(), Relaxed);
        self.stats.suppressed.store(self.policy.suppressed_total(), Relaxed);
    }

    /// After a restart: every pending delivery is resumed; held ones go out in the next digest,
    /// when the quiet hours of the restored state end (without a restored state: at once, with
    /// the next record).
    fn resume(&mut self, restored: bool) -> Result<(), OutboxError> {
        let pending = self.outbox.pending()?;
        if pending.is_empty() {
            return Ok(());
        }
        let (held, send): (Vec<_>, Vec<_>) = pending.into_iter().partition(|e| e.held);
        info!(notifier = %self.name, pending = send.len(), held = held.len(), "resuming pending deliveries");
        if !held.is_empty() {
            self.held = held;
            // held after the checkpoint: their records come again in the replay, which sets
            // `release_at` (a restored state without one released nothing yet)
            if !restored {
                self.release_at = i64::MIN;
            }
        }
        self.delivery.submit(send);
        Ok(())
    }

    /// The notifier's counters.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    fn outbox_error(&self, e: OutboxError) -> SinkError {
        SinkError::Failed {
            sink: self.name.clone(),
            operation: "writing the outbox",
            retryable: e.retryable(),
            message: e.to_string(),
        }
    }

    /// The webhook body: see the README, "Notifications".
    fn webhook_payload(&self, kind: &str, id: &str, device: &str, r: &policy::Rendered, data: &str) -> String {
        let mut j = String::with_capacity(data.len() + 256);
        j.push_str("{\"type\":");
        push_json_str(&mut j, kind);
        j.push_str(",\"timestamp\":");
        let ts = jiff::Timestamp::from_millisecond(r.time_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        push_json_str(&mut j, &ts.to_string());
        j.push_str(",\"id\":");
        push_json_str(&mut j, id);
        j.push_str(",\"pipeline\":");
        push_json_str(&mut j, &self.pipeline);
        j.push_str(",\"device\":");
        push_json_str(&mut j, device);
        j.push_str(",\"severity\":");
        match &r.severity {
            Some(s) => push_json_str(&mut j, s),
            None => j.push_str("null"),
        }
        j.push_str(",\"title\":");
        push_json_str(&mut j, &r.title);
        j.push_str(",\"body\":");
        push_json_str(&mut j, &r.body);
        j.push_str(",\"data\":");
        j.push_str(data);
        j.push('}');
        j
    }

    fn target_list(&self, device: &str) -> Result<Vec<String>, SinkError> {
        match &self.targets {
            Targets::Endpoint => Ok(vec![String::new()]),
            Targets::Tokens(subs) => subs.tokens_for(device).map_err(|e| SinkError::Failed {
                sink: self.name.clone(),
                operation: "reading the subscribers",
                retryable: e.retryable(),
                message: e.to_string(),
            }),
        }
    }

    fn delivery_id(event_id: &str, target: &str) -> String {
        if target.is_empty() {
            event_id.to_string()
        } else {
            format!("{event_id}:{:016x}", xxh3_64(target.as_bytes()))
        }
    }

    /// Folds the held notifications into one digest per target and sends it.
    fn release_digest(&mut self) -> Result<(), SinkError> {
        // (held ones a restart found already folded into a digest leave nothing to release)
        self.release_at = i64::MAX;
        if self.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        let mut targets: Vec<String> = held.iter().map(|e| e.target.clone()).collect();
        targets.sort();
        targets.dedup();
        let mut digests = Vec::new();
        for target in targets {
            let items: Vec<&OutboxEntry> = held.iter().filter(|e| e.target == target).collect();
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for e in &items {
                h.update(e.id.as_bytes());
                h.update(b"\n");
            }
            let event_id = format!("{:032x}", h.digest128());
            let title = format!("{} notifications during quiet hours", items.len());
            let body = items.iter().map(|e| e.title.as_str()).collect::<Vec<_>>().join("\n");
            let mut payload = String::from("{\"type\":\"digest\",\"id\":");
            push_json_str(&mut payload, &event_id);
            payload.push_str(",\"pipeline\":");
            push_json_str(&mut payload, &self.pipeline);
            payload.push_str(",\"title\":");
            push_json_str(&mut payload, &title);
            payload.push_str(",\"items\":[");
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    payload.push(',');
                }
                payload.push_str(&e.payload);
            }
            payload.push_str("]}");
            digests.push(OutboxEntry {
                id: Self::delivery_id(&event_id, &target),
                event_id,
                device: String::new(),
                target: target.clone(),
                kind: "digest".into(),
                severity: None,
                title,
                body,
                payload,
                created_ms: jiff::Timestamp::now().as_millisecond(),
                held: false,
            });
        }
        // the digest is durable before the held entries leave the outbox
        let added = self.outbox.put(digests).map_err(|e| self.outbox_error(e))?;
        for e in &held {
            self.outbox.discard(&e.id).map_err(|e| self.outbox_error(e))?;
        }
        info!(notifier = %self.name, notifications = held.len(), digests = added.len(), "quiet hours over: sending the digest");
        self.delivery.submit(added);
        Ok(())
    }
}

impl Sink for NotifierSink {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn counters(&self) -> Option<Arc<dyn crate::runtime::ports::SinkCounters>> {
        Some(self.stats.clone())
    }

    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError> {
        self.merge_taken_over_policies();
        let mut batch = Vec::new();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        for record in records {
            let Ok(value) = serde_json::from_str::<Value>(&record.json) else {
                continue;
            };
            if record.kind == RecordKind::DeadLetter
                && value["source"]
                    .as_str()
                    .and_then(crate::model::SourceId::parse)
                    .is_some_and(|s| s.is_notifier())
            {
                // a notifier's own dead letters are not notified again (no loops)
                continue;
            }
            let (decision, rendered) = self.policy.decide(&value);
            if rendered.time_ms >= self.release_at {
                // the event-time clock passed the end of the quiet hours
                self.enqueue(std::mem::take(&mut batch))?;
                self.release_digest()?;
            }
            // the event's span: its trace id is the record's id, the parent of its deliveries
            let note = match decision {
                Decision::Filtered => "not sent: not in notify_on",
                Decision::Suppress => "not sent: cooldown",
                Decision::Hold { .. } => "held: quiet hours (sent in a digest)",
                Decision::Send => "sent to the outbox",
            };
            let mut attributes = vec![
                crate::trace::Attribute::new("plume.sink", self.name.clone()),
                crate::trace::Attribute::new("plume.event.id", record.id_hex()),
                crate::trace::Attribute::new("plume.event.kind", record.kind.as_str()),
                crate::trace::Attribute::new("plume.device", record.device.as_deref().unwrap_or("").to_string()),
                crate::trace::Attribute::new("plume.record", record.json.to_string()),
            ];
            if let Some(severity) = &rendered.severity {
                attributes.push(crate::trace::Attribute::new("plume.severity", severity.clone()));
            }
            crate::trace::event(
                record.kind.as_str(),
                record.id,
                std::time::SystemTime::now(),
                attributes,
                vec![note],
            );
            let held = match decision {
                Decision::Filtered => continue,
                // (counted by the policy, whose count is checkpointed with it)
                Decision::Suppress => continue,
                Decision::Hold { until_ms } => {
                    self.release_at = self.release_at.min(until_ms);
                    self.stats.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    true
                }
                Decision::Send => false,
            };
            let event_id = record.id_hex();
            let device = record.device.as_deref().unwrap_or("");
            let payload = if self.webhook_body {
                self.webhook_payload(record.kind.as_str(), &event_id, device, &rendered, &record.json)
            } else {
                String::new()
            };
            for target in self.target_list(device)? {
                let entry = OutboxEntry {
                    id: Self::delivery_id(&event_id, &target),
                    event_id: event_id.clone(),
                    device: device.to_string(),
                    target,
                    kind: record.kind.to_string(),
                    severity: rendered.severity.clone(),
                    title: rendered.title.clone(),
                    body: rendered.body.clone(),
                    payload: payload.clone(),
                    created_ms: now_ms,
                    held,
                };
                batch.push(entry);
            }
        }
        self.publish_policy_counters();
        self.enqueue(batch)
    }

    /// Every outbox write is already synced; the position is the number of deliveries the
    /// receivers acknowledged, over the outbox's life.
    fn flush(&mut self) -> Result<u64, SinkError> {
        self.outbox.delivered().map_err(|e| self.outbox_error(e))
    }

    /// Also saves the policy's state as of checkpoint `checkpoint` (when it changed since the
    /// last save: see `policy_store`).
    fn flush_for_checkpoint(&mut self, checkpoint: u64) -> Result<u64, SinkError> {
        self.merge_taken_over_policies();
        if let Some(store) = &self.policy_store {
            // (a failed save leaves the state changed: the next checkpoint saves it)
            if self.policy.changed() || self.release_at != self.saved_release_at {
                let mut state = self.policy.state();
                state.release_at_ms = self.release_at;
                store.save(checkpoint, &state).map_err(|e| SinkError::Failed {
                    sink: self.name.clone(),
                    operation: "saving the policy state",
                    retryable: false,
                    message: e.to_string(),
                })?;
                self.policy.mark_saved();
                self.saved_release_at = self.release_at;
            }
        }
        self.flush()
    }

    fn finishes_first(&self) -> bool {
        true
    }

    fn finish(&mut self) -> Result<u64, SinkError> {
        // the end of the input ends the quiet hours' story too
        self.release_digest()?;
        let left = self.delivery.drain(Some(Instant::now() + self.drain_timeout));
        if left > 0 {
            warn!(notifier = %self.name, pending = left, "deliveries still pending at the end of the run: they stay in the outbox");
        }
        self.outbox.delivered().map_err(|e| self.outbox_error(e))
    }
}

/// What the notifiers of a run with a state store share: the store (their outboxes) and the
/// push subscriptions.
#[derive(Clone)]
pub struct NotifyStore {
    pub store: Arc<crate::store::StateStore>,
    pub subscribers: Arc<SubscriberStore>,
    /// Every notifier built with this store (for a Kafka source's changelog).
    pub handles: handover::NotifierHandles,
}

impl NotifyStore {
    pub fn open(store: Arc<crate::store::StateStore>) -> Result<Self, NotifyError> {
        Ok(NotifyStore {
            subscribers: SubscriberStore::open(store.clone())?,
            store,
            handles: Default::default(),
        })
    }
}

/// The notifier of a pipeline's webhook or push sink named `name` (`webhook:0`, …). With a
/// store: its outbox in the store (pending deliveries resumed) and the store's subscriptions;
/// without: an in-memory outbox and the spec's `subscribers` file.
pub fn notifier_for(
    pipeline: &crate::pipeline::CompiledPipeline,
    spec: &SinkSpec,
    name: &str,
    store: Option<&NotifyStore>,
    dead_letters: DeadLetterOutlet,
) -> Result<NotifierSink, NotifyError> {
    let (outbox, subscribers): (Arc<dyn Outbox>, Option<Arc<dyn Subscribers>>) = match store {
        Some(s) => {
            let provider = match spec {
                SinkSpec::Push(PushSinkSpec::Fcm(f)) => Some(("fcm", &f.subscribers)),
                SinkSpec::Push(PushSinkSpec::Apns(a)) => Some(("apns", &a.subscribers)),
                _ => None,
            };
            let subscribers = match provider {
                Some((provider, file)) => {
                    if let Some(file) = file {
                        warn!(sink = %name, file = %file, "the pipeline names a subscribers file, but this run has a state store: using the store's subscriptions (`plume subscribers`)");
                    }
                    Some(s.subscribers.for_provider(provider)?)
                }
                None => None,
            };
            (Arc::new(StoreOutbox::open(s.store.clone(), name)?), subscribers)
        }
        None => (Arc::new(MemoryOutbox::new()), None),
    };
    let policy_state = store.map(|s| PolicyStateStore::new(s.store.clone(), name));
    let parts = NotifierParts {
        pipeline: pipeline.name.clone(),
        name: Some(name.to_string()),
        outbox: outbox.clone(),
        subscribers,
        drain_timeout: pipeline.spec.shutdown.drain_timeout.as_duration(),
        dead_letters: Some(dead_letters),
        policy_state,
    };
    let sink = NotifierSink::build(spec, parts)?.expect("a webhook or push sink spec");
    if let Some(s) = store {
        s.handles.register(
            name,
            outbox,
            sink.delivery.submitter(),
            Some(PolicyStateStore::new(s.store.clone(), name)),
            sink.policy_inbox.clone(),
        );
    }
    Ok(sink)
}

impl NotifierSink {
    /// Merges the policy entries taken over with partitions since the last call.
    fn merge_taken_over_policies(&mut self) {
        let taken = std::mem::take(&mut *self.policy_inbox.lock().expect("lock"));
        if taken.is_empty() {
            return;
        }
        let devices = taken.len();
        for entries in taken {
            self.policy.merge(entries.last, entries.suppressed);
        }
        self.publish_policy_counters();
        info!(notifier = %self.name, devices, "policy entries taken over from the changelog");
    }

    /// Puts entries in the outbox; sends those not held (and not already there or acknowledged).
    fn enqueue(&mut self, batch: Vec<OutboxEntry>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let offered = batch.len();
        // in the outbox (a crash of plume keeps it) before any attempt; the first attempts start
        // while the disk syncs, and the write returns once it is durable: an fsync no longer
        // sits between an event and its delivery (BENCHMARKS.md, "Sources and latency at the
        // floor"). A power cut inside the sync can only repeat a delivery (same id) or lose
        // one whose sink write had not returned, as before.
        let added = self.outbox.put_unsynced(batch).map_err(|e| self.outbox_error(e))?;
        self.stats
            .duplicates
            .fetch_add((offered - added.len()) as u64, std::sync::atomic::Ordering::Relaxed);
        let (held, send): (Vec<_>, Vec<_>) = added.into_iter().partition(|e| e.held);
        self.held.extend(held);
        self.delivery.submit(send);
        self.outbox.sync().map_err(|e| self.outbox_error(e))?;
        Ok(())
    }
}
