//! Delivering outbox entries: retries, backoff, dead letters, the per-endpoint concurrency
//! limit and circuit breaker, and order per device.
//!
//! Each notifier sink has its own [`Delivery`] engine on a tokio runtime of its own (one worker
//! thread), so a slow or dead endpoint only ever holds its own deliveries: the sink's `write`
//! only puts entries in the outbox and hands them over.
//!
//! - **Lanes**: deliveries of one device to one target (an endpoint, or one device token) form a
//!   lane, delivered one at a time in the order they were put: an event's end never overtakes
//!   its start. Lanes run concurrently, at most `concurrency` requests in flight per endpoint.
//! - **Retries**: a retryable failure (timeout, connection error, 408, 429, 5xx) is retried after
//!   `backoff · 2^(attempt-1)` (capped at `max_backoff`) with full jitter, and never sooner than
//!   the receiver's `Retry-After`. Other 4xx are permanent: the entry goes to the dead letters at
//!   once. An entry still undelivered `max_age` after it was put goes to the dead letters with its
//!   last error.
//! - **Circuit breaker**: after `breaker_failures` failures in a row the endpoint is considered
//!   down for `breaker_open`; then one probe request goes out, and only its success lets the
//!   other lanes send again. A dead endpoint costs one request per `breaker_open`, not one per
//!   lane per backoff.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use opentelemetry::trace::FutureExt;

use super::outbox::{Outbox, OutboxEntry};
use crate::trace;

/// A failed delivery attempt. Says whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver answered with a status that is not success.
    #[error("HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("request failed: {0}")]
    Transport(String),
    /// The provider says the device token is no longer valid (FCM `UNREGISTERED`, APNs 410).
    #[error("device token unregistered ({0})")]
    Unregistered(String),
    /// Credentials could not be made or were refused for good (bad key, bad token endpoint).
    #[error("credentials: {message}")]
    Credentials { message: String, retryable: bool },
}

impl DeliveryError {
    /// Whether a later attempt can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            DeliveryError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500 || *status < 400,
            DeliveryError::Transport(_) => true,
            DeliveryError::Unregistered(_) => false,
            DeliveryError::Credentials { retryable, .. } => *retryable,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// From a reqwest error, without the URL's query (never holds secrets, but stays short).
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        let mut cause = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        DeliveryError::Transport(if cause.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {cause}")
        })
    }
}

/// Parses a `Retry-After` header: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    let d = when.duration_since(now);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One kind of receiver (webhook, FCM, APNs, ntfy).
pub trait Transport: Send + Sync + 'static {
    /// For logs: `webhook https://host/path`, never with credentials.
    fn describe(&self) -> String;
    /// One attempt to deliver `entry`; `Ok` means the receiver acknowledged it.
    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), DeliveryError>>;
    /// The provider reported the token of `entry` as unregistered: stop sending to it.
    fn token_unregistered(&self, _entry: &OutboxEntry) {}
    /// Whether `entry` should still be sent (false once its token was removed).
    fn wanted(&self, _entry: &OutboxEntry) -> bool {
        true
    }
}

/// Retry and protection settings of one endpoint.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Timeout of one attempt (the transports apply it to their requests).
    pub timeout: Duration,
    pub max_age: Duration,
    pub concurrency: usize,
    /// First retry delay (before jitter).
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            concurrency: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
        }
    }
}

/// Counters of one notifier.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Deliveries acknowledged by the receiver.
    pub delivered: AtomicU64,
    /// Attempts (first tries and retries).
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Device tokens removed because the provider reported them unregistered.
    pub tokens_removed: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Events not notified because of the cooldown, over the policy state's life (restored
    /// with it at a restart, so a replay does not count them twice).
    pub suppressed: AtomicU64,
    /// Events held by quiet hours (later folded into a digest).
    pub held: AtomicU64,
    /// Events skipped because the outbox already had them acknowledged or pending.
    pub duplicates: AtomicU64,
    /// Cooldown entries the policy holds now.
    pub policy_entries: std::sync::atomic::AtomicI64,
    /// Cooldown entries the policy evicted at its `max_entries`, over the policy state's life.
    pub policy_evicted: AtomicU64,
    /// The circuit breaker now: 0 closed, 1 open, 2 probing.
    pub breaker_state: std::sync::atomic::AtomicI64,
    /// Entries handed over and not yet acknowledged or given up.
    pub pending: std::sync::atomic::AtomicI64,
    /// From the entry's creation to its acknowledgement (seconds).
    pub delivery_seconds: crate::runtime::ports::Histogram,
}

impl DeliveryStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

impl crate::runtime::ports::SinkCounters for DeliveryStats {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("plume_notifier_deliveries", Self::get(&self.delivered)),
            ("plume_notifier_attempts", Self::get(&self.attempts)),
            ("plume_notifier_retries", Self::get(&self.retries)),
            ("plume_notifier_dead_letters", Self::get(&self.dead_letters)),
            ("plume_notifier_breaker_openings", Self::get(&self.breaker_opened)),
            ("plume_notifier_suppressed", Self::get(&self.suppressed)),
            ("plume_notifier_tokens_removed", Self::get(&self.tokens_removed)),
            ("plume_notifier_policy_evicted", Self::get(&self.policy_evicted)),
        ]
    }

    fn gauges(&self) -> Vec<(&'static str, i64)> {
        vec![
            (
                "plume_notifier_breaker_state",
                self.breaker_state.load(Ordering::Relaxed),
            ),
            ("plume_notifier_outbox_pending", self.pending.load(Ordering::Relaxed)),
            (
                "plume_notifier_policy_entries",
                self.policy_entries.load(Ordering::Relaxed),
            ),
        ]
    }

    fn histograms(&self) -> Vec<(&'static str, crate::runtime::ports::HistogramValue)> {
        vec![("plume_notifier_delivery_seconds", self.delivery_seconds.read())]
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// Circuit breaker of one endpoint.
struct Breaker {
    state: Mutex<BreakerState>,
    failures: u32,
    open_for: Duration,
}

enum Admission {
    Closed,
    Probe,
}

impl Breaker {
    /// Waits until a request may go out.
    async fn admit(&self) -> Admission {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap();
                match s.open_until {
                    None => return Admission::Closed,
                    Some(until) => {
                        let now = Instant::now();
                        if now >= until && !s.probing {
                            s.probing = true;
                            return Admission::Probe;
                        }
                        if now >= until {
                            // another lane's probe is out: check again shortly
                            Duration::from_millis(20)
                        } else {
                            until - now
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn success(&self) {
        let mut s = self.state.lock().unwrap();
        *s = BreakerState::default();
    }

    /// Returns true when this failure opened the breaker.
    fn failure(&self, probe: bool) -> bool {
        let mut s = self.state.lock().unwrap();
        s.failures += 1;
        if probe || (s.open_until.is_none() && s.failures >= self.failures) {
            let opened = s.open_until.is_none();
            s.open_until = Some(Instant::now() + self.open_for);
            s.probing = false;
            return opened;
        }
        false
    }
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<OutboxEntry>,
    running: bool,
}

/// Called when a delivery is given up (after the outbox recorded the dead letter).
pub type DeadLetterHook = Arc<dyn Fn(&OutboxEntry, &str, u32) + Send + Sync>;

struct Shared {
    on_dead_letter: Option<DeadLetterHook>,
    transport: Arc<dyn Transport>,
    outbox: Arc<dyn Outbox>,
    config: DeliveryConfig,
    stats: Arc<DeliveryStats>,
    limit: Semaphore,
    breaker: Breaker,
    lanes: Mutex<HashMap<(String, String), Lane>>,
    /// Device tokens reported unregistered whose removal from the subscribers is being written:
    /// no lane sends to them meanwhile.
    gone: Mutex<std::collections::HashSet<String>>,
    /// Entries handed over and not yet finished.
    outstanding: watch::Sender<usize>,
}

/// The delivery engine of one notifier sink.
pub struct Delivery {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Delivery {
    /// Starts the engine and resumes the outbox's pending (not held) entries.
    pub fn start(
        name: &str,
        transport: Arc<dyn Transport>,
        outbox: Arc<dyn Outbox>,
        config: DeliveryConfig,
        stats: Arc<DeliveryStats>,
        on_dead_letter: Option<DeadLetterHook>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("notify {name}"))
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            on_dead_letter,
            limit: Semaphore::new(config.concurrency.max(1)),
            breaker: Breaker {
                state: Mutex::new(BreakerState::default()),
                failures: config.breaker_failures.max(1),
                open_for: config.breaker_open,
            },
            transport,
            outbox,
            config,
            stats,
            lanes: Mutex::new(HashMap::new()),
            gone: Mutex::new(Default::default()),
            outstanding: watch::channel(0).0,
        });
        Ok(Delivery { runtime, shared })
    }

    /// Hands entries (already in the outbox) over for delivery, in order.
    pub fn submit(&self, entries: Vec<OutboxEntry>) {
        let _guard = self.runtime.enter();
        for entry in entries {
            submit(&self.shared, entry);
        }
    }

    /// A handle that hands entries to this engine from any thread (entries another member's
    /// outbox held, taken over with their partition).
    pub fn submitter(&self) -> Submitter {
        Submitter {
            runtime: self.runtime.handle().clone(),
            shared: self.shared.clone(),
        }
    }

    /// Entries handed over and not yet acknowledged or given up.
    pub fn outstanding(&self) -> usize {
        *self.shared.outstanding.borrow()
    }

    /// Blocks until every handed-over entry is finished (acknowledged, dead letter, dropped
    /// token), or `deadline` passes. Returns how many are still outstanding.
    pub fn drain(&self, deadline: Option<Instant>) -> usize {
        let mut rx = self.shared.outstanding.subscribe();
        self.runtime.block_on(async move {
            let wait = rx.wait_for(|n| *n == 0);
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), wait).await;
                }
                None => {
                    let _ = wait.await;
                }
            }
        });
        self.outstanding()
    }
}

/// Hands entries to a delivery engine from any thread ([`Delivery::submitter`]).
#[derive(Clone)]
pub struct Submitter {
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

impl Submitter {
    /// [`Delivery::submit`].
    pub fn submit(&self, entries: Vec<OutboxEntry>) {
        let _guard = self.runtime.enter();
        for entry in entries {
            submit(&self.shared, entry);
        }
    }
}

fn submit(shared: &Arc<Shared>, entry: OutboxEntry) {
    shared.outstanding.send_modify(|n| *n += 1);
    shared.stats.pending.fetch_add(1, Ordering::Relaxed);
    let key = (entry.device.clone(), entry.target.clone());
    let mut lanes = shared.lanes.lock().unwrap();
    let lane = lanes.entry(key.clone()).or_default();
    lane.queue.push_back(entry);
    if !lane.running {
        lane.running = true;
        tokio::spawn(run_lane(shared.clone(), key));
    }
}

async fn run_lane(shared: Arc<Shared>, key: (String, String)) {
    loop {
        let entry = {
            let mut lanes = shared.lanes.lock().unwrap();
            let lane = lanes.get_mut(&key).expect("a running lane is in the map");
            match lane.queue.pop_front() {
                Some(e) => e,
                None => {
                    lanes.remove(&key);
                    return;
                }
            }
        };
        // the delivery's span is the child of its event's (trace id = the event record's id),
        // and the current span while it runs (its log lines carry its ids)
        let span = DeliverySpan {
            span: delivery_span(&shared, &entry),
            attempts: std::sync::atomic::AtomicU32::new(0),
        };
        let context = span.context().clone();
        deliver_one(&shared, entry, &span).with_context(context).await;
        span.set(trace::Attribute::new(
            "plume.delivery.attempts",
            span.attempts.load(Ordering::Relaxed) as i64,
        ));
        span.span.end();
        shared.outstanding.send_modify(|n| *n -= 1);
        shared.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs a blocking outbox call (a synced RocksDB write) off the async worker.
async fn outbox_call(
    shared: &Shared,
    id: &str,
    what: &'static str,
    call: impl FnOnce(&dyn Outbox) -> Result<(), super::outbox::OutboxError> + Send + 'static,
) {
    let outbox = shared.outbox.clone();
    let result = tokio::task::spawn_blocking(move || call(outbox.as_ref())).await;
    let error = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    // e.g. delivered but not recorded: a restart sends it again, with the same id
    warn!(endpoint = %shared.transport.describe(), id = %id, error = %error, operation = what, "outbox write failed");
}

fn backoff(config: &DeliveryConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20))
        .min(config.max_backoff);
    // full jitter, but at least half the step so retries do not bunch up at zero
    let half = exp / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

fn wanted(shared: &Shared, entry: &OutboxEntry) -> bool {
    let gone = !entry.target.is_empty() && shared.gone.lock().unwrap().contains(&entry.target);
    !gone && shared.transport.wanted(entry)
}

fn delivery_span(shared: &Shared, entry: &OutboxEntry) -> trace::OpenSpan {
    let parent = u128::from_str_radix(&entry.event_id, 16).ok().map(trace::event_context);
    let mut attributes = vec![
        trace::Attribute::new("plume.notifier.endpoint", shared.transport.describe()),
        trace::Attribute::new("plume.delivery.id", entry.id.clone()),
        trace::Attribute::new("plume.event.id", entry.event_id.clone()),
        trace::Attribute::new("plume.event.kind", entry.kind.clone()),
        trace::Attribute::new("plume.device", entry.device.clone()),
    ];
    if let Some(severity) = &entry.severity {
        attributes.push(trace::Attribute::new("plume.severity", severity.clone()));
    }
    trace::start("notifier delivery", trace::Kind::Client, attributes, parent.as_ref())
}

/// A delivery's span, and its attempts so far (an attribute once it ends).
struct DeliverySpan {
    span: trace::OpenSpan,
    attempts: std::sync::atomic::AtomicU32,
}

impl std::ops::Deref for DeliverySpan {
    type Target = trace::OpenSpan;
    fn deref(&self) -> &trace::OpenSpan {
        &self.span
    }
}

async fn deliver_one(shared: &Shared, entry: OutboxEntry, span: &DeliverySpan) {
    let endpoint = shared.transport.describe();
    let max_age_ms = shared.config.max_age.as_millis() as i64;
    let mut attempts = 0u32;
    let mut last_error: Option<DeliveryError> = None;
    loop {
        if !wanted(shared, &entry) {
            debug!(endpoint = %endpoint, id = %entry.id, "token no longer subscribed: dropped");
            let id = entry.id.clone();
            outbox_call(shared, &entry.id, "discard", move |o| o.discard(&id)).await;
            return;
        }
        let age_left = entry.created_ms + max_age_ms - now_ms();
        if age_left <= 0 {
            let error = last_error.map_or("not delivered within max_age".to_string(), |e| e.to_string());
            span.fail(format!("given up at max_age: {error}"));
            give_up(
                shared,
                &entry,
                &format!("max_age reached; last error: {error}"),
                attempts,
            )
            .await;
            return;
        }
        let admission = match tokio::time::timeout(Duration::from_millis(age_left as u64), shared.breaker.admit()).await
        {
            Ok(a) => a,
            Err(_) => continue, // max_age passed while the breaker was open
        };
        let age_left = (entry.created_ms + max_age_ms - now_ms()).max(1) as u64;
        let Ok(permit) = tokio::time::timeout(Duration::from_millis(age_left), shared.limit.acquire()).await else {
            continue; // max_age passed while other lanes held every slot
        };
        let permit = permit.expect("the limit is never closed");
        if !wanted(shared, &entry) {
            // its token was removed while this lane waited for a slot
            drop(permit);
            continue;
        }
        attempts += 1;
        shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
        if attempts > 1 {
            shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(admission, Admission::Probe) {
            shared.stats.breaker_state.store(2, Ordering::Relaxed);
        }
        let result = shared.transport.deliver(&entry).await;
        drop(permit);
        span.attempts.store(attempts, Ordering::Relaxed);
        if let Err(e) = &result {
            span.event(
                "attempt failed",
                vec![
                    trace::Attribute::new("attempt", attempts as i64),
                    trace::Attribute::new("error", e.to_string()),
                    trace::Attribute::new("retryable", e.retryable()),
                ],
            );
        }
        match result {
            Ok(()) => {
                shared.breaker.success();
                shared.stats.breaker_state.store(0, Ordering::Relaxed);
                shared
                    .stats
                    .delivery_seconds
                    .observe((now_ms() - entry.created_ms).max(0) as f64 / 1000.0);
                let id = entry.id.clone();
                outbox_call(shared, &entry.id, "acknowledge", move |o| o.acknowledge(&id)).await;
                shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
                debug!(endpoint = %endpoint, id = %entry.id, attempts, "delivered");
                return;
            }
            Err(DeliveryError::Unregistered(detail)) => {
                shared.breaker.success();
                {
                    // removing the token is a store write too; until it is done, no lane sends
                    // to the token
                    shared.gone.lock().unwrap().insert(entry.target.clone());
                    let (transport, e) = (shared.transport.clone(), entry.clone());
                    let _ = tokio::task::spawn_blocking(move || transport.token_unregistered(&e)).await;
                    shared.gone.lock().unwrap().remove(&entry.target);
                }
                shared.stats.tokens_removed.fetch_add(1, Ordering::Relaxed);
                info!(endpoint = %endpoint, device = %entry.device, token = %super::subscribers::token_hint(&entry.target), detail = %detail, "device token unregistered: removed");
                let id = entry.id.clone();
                outbox_call(shared, &entry.id, "discard", move |o| o.discard(&id)).await;
                return;
            }
            Err(e) if !e.retryable() => {
                // the endpoint answered: it is up
                shared.breaker.success();
                shared.stats.breaker_state.store(0, Ordering::Relaxed);
                span.fail(format!("given up: {e}"));
                give_up(shared, &entry, &e.to_string(), attempts).await;
                return;
            }
            Err(e) => {
                let probe = matches!(admission, Admission::Probe);
                let opened = shared.breaker.failure(probe);
                if opened {
                    shared.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                    warn!(endpoint = %endpoint, error = %e, open_for = ?shared.config.breaker_open, "endpoint failing: circuit breaker open");
                }
                if opened || probe {
                    // (a failed probe opens it again)
                    shared.stats.breaker_state.store(1, Ordering::Relaxed);
                }
                let delay = backoff(&shared.config, attempts).max(e.retry_after().unwrap_or_default());
                debug!(endpoint = %endpoint, id = %entry.id, attempts, error = %e, delay = ?delay, "delivery failed: will retry");
                span.event(
                    "retry scheduled",
                    vec![
                        trace::Attribute::new("attempt", attempts as i64 + 1),
                        trace::Attribute::new("delay_ms", delay.as_millis() as i64),
                    ],
                );
                last_error = Some(e);
                let age_left = (entry.created_ms + max_age_ms - now_ms()).max(0) as u64;
                tokio::time::sleep(delay.min(Duration::from_millis(age_left))).await;
            }
        }
    }
}

async fn give_up(shared: &Shared, entry: &OutboxEntry, error: &str, attempts: u32) {
    shared.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    warn!(endpoint = %shared.transport.describe(), id = %entry.id, device = %entry.device, attempts, error = %error, "delivery given up: dead letter");
    let (id, message) = (entry.id.clone(), error.to_string());
    outbox_call(shared, &entry.id, "dead letter", move |o| {
        o.dead_letter(&id, &message, attempts)
    })
    .await;
    if let Some(hook) = &shared.on_dead_letter {
        hook(entry, error, attempts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_are_retried() {
        let status = |s| DeliveryError::Status {
            status: s,
            retry_after: None,
            detail: String::new(),
        };
        for s in [408, 429, 500, 502, 503] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 413] {
            assert!(!status(s).retryable(), "{s}");
        }
        assert!(DeliveryError::Transport("timed out".into()).retryable());
        assert!(!DeliveryError::Unregistered("x".into()).retryable());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = DeliveryConfig {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..Default::default()
        };
        for _ in 0..50 {
            let b1 = backoff(&c, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = backoff(&c, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            assert!(backoff(&c, 30) <= Duration::from_millis(1000));
        }
    }
}
