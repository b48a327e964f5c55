//! MQTT input: subscribes to a broker with `rumqttc` (MQTT 3.1.1 or 5) and feeds the messages
//! to the routers in chunks, like every other source.
//!
//! - The topic template (`sensors/{device}/air`) becomes the subscription filter (`{device}`
//!   becomes `+`; with `shared_group`, `$share/<group>/…`), and each received topic is matched
//!   against it to capture the device id. A topic that does not match is counted and logged once.
//! - Two tasks on the source thread's own tokio runtime: the *driver* polls the event loop
//!   (reconnecting with exponential backoff and full jitter, subscribing again when the broker
//!   has no session for us) and passes the messages of each poll on as one batch; the *feeder*
//!   waits for room (backpressure), appends the batch to the ingest log (`durable: true`: one
//!   synced RocksDB write, on a blocking thread), sends it as one chunk whose end position is the
//!   log's next sequence number, then acknowledges its QoS 1/2 messages through [`AckGate`].
//!   Acks are manual: a message the broker has not had an ack for is sent again after a
//!   reconnect (persistent session), so nothing handed to us is lost. Plume's own embedded
//!   broker ([`super::broker::serves`]) is the exception: it dies with the process, so holding
//!   an ack back keeps nothing safe. The source reads it through the broker's in-process link
//!   ([`super::broker::InProcessLink`], the *driver* is `drive_in_process`): no TCP, no MQTT
//!   packets, nothing to acknowledge; a full buffer pauses the router until the batch is passed
//!   on. (Without a link, e.g. two sources with one client id, its client acknowledges each
//!   message as it reads it.)
//! - Checkpoints record the log position like a file offset; at start-up the source first
//!   replays the log from the checkpointed position to its end, then takes live messages. The
//!   log drops entries below the oldest checkpoint recovery could fall back to (`retain`).
//! - A message the broker sends again (`dup`) with a packet id and content we already handed on
//!   (the broker lost our ack in a crash or disconnect) is acknowledged and not fed twice; with
//!   the log, the packet ids survive a restart.
//! - `durable: false`, or no data directory (`--no-checkpoints`): no log; messages are
//!   acknowledged once handed to the routers, so a crash of plume loses what was in flight.
//! - Passwords come from an environment variable and appear in no log or error.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::ingest::{IngestLog, Trimmer, encode_entry};
use super::state::{ConnAck, Connection, Delivery, Redeliveries};
use crate::model::{ChunkData, Message, MessagePosition, Position};
use crate::runtime::ports::{ChunkFeeder, Shutdown, SourceHealth};
use crate::spec::MqttSourceSpec;

use super::client::*;
/// Problems of the MQTT source (and of the MQTT sink's connection settings).
pub use super::client::{Endpoint, MqttError, password, tls_configuration};
pub use super::topic::{TopicMismatch, TopicTemplate};

/// Live counters of one MQTT source.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Messages handed to the routers (replayed ones included).
    pub messages: AtomicU64,
    /// When the latest live message was handed to the routers (milliseconds since the Unix
    /// epoch; 0: none yet). The progress line carries it, so a reader knows when the source
    /// was done without the line's own delay (it is written after 100 ms of idling).
    pub last_handed_unix_ms: AtomicU64,
    /// Messages replayed from the ingest log at start-up.
    pub replayed: AtomicU64,
    /// Synced appends to the ingest log, and the time they took in total (µs).
    pub log_appends: AtomicU64,
    pub log_append_us: AtomicU64,
    /// QoS 1/2 messages acknowledged to the broker.
    pub acked: AtomicU64,
    /// Redeliveries of messages already handed on (acknowledged, not fed again).
    pub duplicates: AtomicU64,
    /// Messages whose topic did not fit the template.
    pub topic_mismatches: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Total time without a connection, in milliseconds (since the first connection).
    pub disconnected_ms: AtomicU64,
    pub connected: AtomicBool,
    /// Times the embedded broker's router paused the in-process link because its buffer for
    /// plume was full (it goes on once the source has passed the batch on).
    pub link_pauses: AtomicU64,
    /// Times the source said it was still waiting on one thing (a log write, room to
    /// acknowledge) after [`STALL_WARN_AFTER`], and again every as long ([`Watch`]).
    pub stalls: AtomicU64,
}

// ---------------------------------------------------------------------------------------------
// the ack point

/// A QoS 1/2 message to acknowledge to the broker.
#[derive(Debug, Clone, Copy)]
pub struct PendingAck {
    pub(super) pkid: u16,
    pub(super) qos: u8,
}

/// What `durable: true` without a data directory means (said once, at start-up).
fn no_log_warning(broker_in_process: bool) -> &'static str {
    if broker_in_process {
        // the embedded broker dies with plume: what it held is lost in a crash either way
        "durable: true needs a data directory (checkpoints are off): messages are not logged, and a crash loses those the embedded broker or plume still held"
    } else {
        "durable: true needs a data directory (checkpoints are off): messages are acknowledged once handed to the routers, and a crash loses those in flight"
    }
}

/// The one place that acknowledges QoS 1/2 messages to the broker. [`run`] calls
/// [`AckGate::release`] for a batch once it is synced to the ingest log (`durable: true`), or
/// without the log once its chunk has been handed to the routers (`ChunkFeeder::send`): a
/// broker outage or reconnect loses nothing either way, a crash of plume only without the log.
/// Not with plume's embedded broker ([`MqttSource::broker_in_process`]): the client acknowledges
/// there as it reads.
pub struct AckGate {
    /// None with the in-process link, which has nothing to acknowledge.
    client: Option<Client>,
    stats: Arc<MqttStats>,
}

impl AckGate {
    /// The messages of a chunk are safe: acknowledge them.
    pub async fn release(&self, acks: &[PendingAck]) {
        let Some(client) = &self.client else { return };
        for ack in acks {
            // an error means the event loop is gone (shutting down): the broker redelivers
            if client.ack(*ack).await.is_ok() {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// waits that say so

/// How long the source waits on one thing before it says so (and again every as long).
pub const STALL_WARN_AFTER: Duration = Duration::from_secs(10);

/// How long a wait may still go on once a stop was requested: a write or an acknowledgement
/// under way finishes, one that hangs is given up.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Waits that say so: the feeder's awaits that nothing but their work wakes (an ingest-log
/// write on the blocking pool, acknowledgements into the client's request channel).
struct Watch<'a> {
    name: &'a str,
    stats: &'a MqttStats,
    stop: &'a Shutdown,
    /// [`STALL_WARN_AFTER`] (shorter in tests).
    warn_after: Duration,
}

impl Watch<'_> {
    /// Awaits `work`, looking every 100 ms at how long it has waited: every `warn_after` it
    /// warns, with what it waits for and for how long, and counts it in `stats.stalls`; once a
    /// stop was requested and the wait has lasted [`STOP_GRACE`], it gives up (`None`: what was
    /// not acknowledged stays with the broker for the next run). A source that stops moving
    /// says where instead of sitting in an await that nothing wakes (BENCHMARKS.md, "Found, not
    /// fixed: a stall"), and Ctrl-C still stops it.
    async fn wait<T>(&self, work: impl std::future::Future<Output = T>, waiting_for: &'static str) -> Option<T> {
        let began = Instant::now();
        let mut next_warning = began + self.warn_after;
        tokio::pin!(work);
        loop {
            tokio::select! {
                // the work first: when it is ready at once, no timer is made
                biased;
                done = &mut work => return Some(done),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let waited_ms = began.elapsed().as_millis() as u64;
                    // (a wait given up on is said to be a stall first)
                    if Instant::now() >= next_warning {
                        self.stats.stalls.fetch_add(1, Ordering::Relaxed);
                        warn!(source = %self.name, waiting_for, waited_ms, "mqtt source still waiting");
                        next_warning += self.warn_after;
                    }
                    if self.stop.is_requested() && began.elapsed() >= STOP_GRACE {
                        warn!(source = %self.name, waiting_for, waited_ms, "mqtt source stopping without waiting any longer");
                        return None;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// one client over both protocol versions

/// Settings of an MQTT source run.
pub struct MqttSource {
    pub spec: MqttSourceSpec,
    /// Client id when the spec has none: stable across restarts (the persistent session).
    pub default_client_id: String,
    pub stats: Arc<MqttStats>,
    /// Where the ingest log is (`durable: true` in a run with a data directory).
    pub ingest: Option<IngestPlan>,
    /// The broker is plume's embedded one ([`super::broker::serves`]): it dies with this
    /// process, so the client acknowledges each message as it reads it (rumqttc's automatic
    /// acks, all of one network read in one write) instead of after the synced write.
    pub broker_in_process: bool,
    /// The embedded broker's in-process link for this source (taken when the broker started):
    /// read through it instead of a TCP connection.
    pub link: Option<super::broker::InProcessLink>,
}

impl MqttSource {
    /// The client id it connects with: the spec's, or the stable default.
    pub fn client_id(&self) -> String {
        self.spec
            .client
            .client_id
            .clone()
            .unwrap_or_else(|| self.default_client_id.clone())
    }
}

/// How the source reaches its broker.
enum Upstream {
    Network(Client, EventLoop),
    /// The embedded broker, through its router's in-process link.
    InProcess(super::broker::InProcessLink),
}

/// Where a durable MQTT source keeps its ingest log.
#[derive(Debug, Clone)]
pub struct IngestPlan {
    /// The log's directory ([`super::ingest::dir_for`]).
    pub dir: std::path::PathBuf,
    /// The position the resumed checkpoint recorded for this source (none: replay the log).
    pub resume_from: Option<u64>,
    /// Checkpoints kept (`checkpoint.retain`): the log keeps what the oldest of them needs.
    pub keep_checkpoints: u32,
}

/// Polls the event loop until the feeder goes away: reconnects, subscribes, passes batches on.
async fn drive(
    mut events: EventLoop,
    client: Client,
    filter: String,
    qos: u8,
    name: Arc<str>,
    stats: Arc<MqttStats>,
    health: SourceHealth,
    tx: mpsc::Sender<Vec<Received>>,
) {
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
                // the failed poll cleared rumqttc's QoS 2 state: before it reconnects
                events.complete_any_pubrel();
            }
            let failed = connection.on_poll_failed(Instant::now());
            stats.connected.store(false, Ordering::Relaxed);
            health.not_ready(format!("the MQTT broker is unreachable: {error}"));
            if failed.newly_lost {
                warn!(source = %name, %error, "mqtt connection lost, reconnecting");
            } else {
                debug!(source = %name, %error, "mqtt reconnect failed");
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
                        health.not_ready(format!("the MQTT broker refused the connection: {code}"));
                        warn!(source = %name, %code, "mqtt broker refused the connection");
                    }
                    ConnAck::Connected {
                        reconnect,
                        down_for,
                        subscribe,
                    } => {
                        stats.connected.store(true, Ordering::Relaxed);
                        health.ready();
                        match (reconnect, down_for.map(|d| d.as_millis() as u64)) {
                            (true, Some(ms)) => {
                                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                                stats.disconnected_ms.fetch_add(ms, Ordering::Relaxed);
                                warn!(source = %name, disconnected_ms = ms, session_present, "mqtt reconnected");
                            }
                            (false, Some(ms)) => {
                                info!(source = %name, waited_ms = ms, session_present, "mqtt connected")
                            }
                            (_, None) => info!(source = %name, session_present, "mqtt connected"),
                        }
                        if subscribe {
                            if let Err(error) = client.try_subscribe(&filter, qos) {
                                warn!(source = %name, %error, "mqtt subscribe request failed");
                            } else {
                                info!(source = %name, filter = %filter, qos, "mqtt subscribed");
                            }
                        }
                    }
                },
                Polled::Publish(m) => batch.push(m),
                Polled::SubAck => info!(source = %name, "mqtt subscription confirmed"),
                Polled::Other => {}
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Reads the embedded broker's router through the in-process link until the feeder goes away:
/// subscribes at QoS 0 (in one process an acknowledgement keeps nothing safer: the broker has
/// acknowledged each message to its publisher already, and both die together), then passes on,
/// as one batch, everything the router has handed over since the last look. When the router
/// paused the link because its buffer was full (`Unschedule`), it is told to go on once the
/// batch is passed on, so a slow pipeline holds the messages back in the broker's log.
async fn drive_in_process(
    link: super::broker::InProcessLink,
    filter: String,
    name: Arc<str>,
    stats: Arc<MqttStats>,
    health: SourceHealth,
    tx: mpsc::Sender<Vec<Received>>,
) {
    use futures::FutureExt;
    use rumqttd::Notification;
    use rumqttd::protocol::{Filter, Packet, QoS, RetainForwardRule, Subscribe};
    let super::broker::InProcessLink {
        client_id,
        tx: mut link_tx,
        rx: mut link_rx,
    } = link;
    let subscribe = Subscribe {
        pkid: 1,
        filters: vec![Filter {
            path: filter.clone(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }],
    };
    if let Err(error) = link_tx.send(Packet::Subscribe(subscribe, None)).await {
        health.not_ready(format!("the embedded MQTT broker is gone: {error}"));
        error!(source = %name, %error, "mqtt in-process subscribe failed");
        return;
    }
    stats.connected.store(true, Ordering::Relaxed);
    health.ready();
    info!(source = %name, client_id = %client_id, "mqtt connected in-process");
    info!(source = %name, filter = %filter, qos = 0, "mqtt subscribed");
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            n = link_rx.next() => n,
            _ = tx.closed() => break,
        };
        let mut next = Some(first);
        let mut paused = false;
        let at_ms = crate::clock::now_ms();
        while let Some(notification) = next.take() {
            match notification {
                Ok(Some(Notification::Forward(forward))) => {
                    let publish = forward.publish;
                    batch.push(Received {
                        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                        payload: publish.payload,
                        qos: 0,
                        pkid: 0,
                        dup: false,
                        at_ms,
                    });
                }
                Ok(Some(Notification::Unschedule)) => {
                    stats.link_pauses.fetch_add(1, Ordering::Relaxed);
                    paused = true
                }
                // (the only request sent is the subscription)
                Ok(Some(Notification::DeviceAck(_))) => info!(source = %name, "mqtt subscription confirmed"),
                Ok(Some(Notification::Disconnect(..))) | Err(_) => {
                    stats.connected.store(false, Ordering::Relaxed);
                    health.not_ready("the embedded MQTT broker closed plume's in-process link");
                    error!(source = %name, "the embedded mqtt broker closed the in-process link: no more messages");
                    if !batch.is_empty() {
                        let _ = tx.send(std::mem::take(&mut batch)).await;
                    }
                    return;
                }
                Ok(_) => {}
            }
            if batch.len() < MAX_CHUNK_MESSAGES {
                // what the router has handed over already (`None`: nothing more yet)
                next = link_rx.next().now_or_never();
            }
        }
        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
            break;
        }
        if paused && link_rx.wake().await.is_err() {
            break;
        }
    }
    // (rumqttd drops the connection's subscriptions with it)
    let disconnect = rumqttd::protocol::Disconnect {
        reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
    };
    let _ = link_tx.send(Packet::Disconnect(disconnect, None)).await;
}

/// Most messages in one chunk.
const MAX_CHUNK_MESSAGES: usize = 4096;

/// How long a durable source of plume's own embedded broker gathers messages before a synced
/// write, and up to how many: a synced write costs this VM about 0.2 ms of CPU whatever its
/// size (the sync's own writes and the wake-ups around it), and nothing waits on its ack there,
/// so fewer, larger writes are cheaper (BENCHMARKS.md, "The embedded broker read in-process").
/// Not with an external broker: it sends no more than its in-flight window before our acks,
/// which wait for the write, so gathering would only wait.
/// Only under load: after a batch of at least [`GATHER_UNDER_LOAD`] messages (one that came
/// while the last write synced). A trickle is written at once, so its readings do not wait.
pub const GATHER_FOR: Duration = Duration::from_millis(2);
pub const GATHER_UP_TO: usize = 1024;
pub const GATHER_UNDER_LOAD: usize = 64;

/// Adds to `pending` what the driver hands over until it holds `up_to` messages or `until` has
/// come (or the driver is gone).
async fn gather(
    rx: &mut mpsc::Receiver<Vec<Received>>,
    pending: &mut Vec<Received>,
    until: tokio::time::Instant,
    up_to: usize,
) {
    while pending.len() < up_to {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(more)) => pending.extend(more),
            Ok(None) | Err(_) => return,
        }
    }
}

/// A message of the current batch, on its way to the log and the routers.
struct Taken {
    topic: String,
    payload: bytes::Bytes,
    device: Option<String>,
    at_ms: i64,
}

/// The durable part of a run: the open log and what to trim.
struct Durable {
    log: Arc<IngestLog>,
    trimmer: Trimmer,
}

impl Durable {
    /// Entries below this may go (the oldest checkpoint recovery can fall back to), if more
    /// than the log already dropped.
    fn trim(&mut self, durable_checkpoint: u64) -> Option<u64> {
        self.trimmer
            .durable(durable_checkpoint)
            .filter(|&t| t > self.log.first())
    }
}

/// Opens the ingest log and replays it from the checkpointed position (on the source thread,
/// before any live message): every entry there was acknowledged (or is about to be redelivered
/// and recognised), so the pipeline sees it again exactly as a resumed file is read again.
fn open_and_replay(
    plan: &IngestPlan,
    feeder: &mut ChunkFeeder,
    template: &TopicTemplate,
    stats: &MqttStats,
    stop: &Shutdown,
) -> Result<(Durable, FxHashMap<u16, u64>, u64), crate::connectors::SourceError> {
    let name = feeder.name.clone();
    let log = Arc::new(IngestLog::open(&plan.dir, &name)?);
    let handed = log.handed()?;
    let mut trimmer = Trimmer::new(plan.keep_checkpoints);
    let (first, end) = (log.first(), log.next());
    let mut from = plan.resume_from.unwrap_or(first);
    if from > end {
        warn!(source = %name, checkpoint = from, log_end = end, "the checkpoint is ahead of the ingest log: continuing at the log's end");
        from = end;
    }
    if from < first {
        warn!(source = %name, checkpoint = from, log_first = first, "the ingest log no longer holds the entries from the checkpoint's position: replaying from its oldest entry");
        from = first;
    }
    info!(source = %name, dir = %plan.dir.display(), from, to = end, "mqtt ingest log open");
    let mut position = from;
    while position < end && !stop.is_requested() {
        feeder.health().set_backlog("messages", (end - position) as i64);
        let entries = log.read(position, MAX_CHUNK_MESSAGES)?;
        let Some(&(last, _)) = entries.last() else { break };
        let permit = feeder.wait_for_room();
        let mut messages = Vec::with_capacity(entries.len());
        for (seq, e) in entries {
            // a topic the (changed) template no longer takes is skipped, as when it arrived
            if let Ok(device) = template.capture(&e.topic) {
                let device_hint = device.map(str::to_string);
                messages.push(Message {
                    position: MessagePosition::Mqtt {
                        number: seq,
                        topic: e.topic,
                    },
                    device_hint,
                    payload: e.payload.into(),
                    arrival_ms: e.arrival_ms,
                });
            }
        }
        if let Some(id) = feeder.poll_barrier() {
            trimmer.barrier(id, position);
        }
        position = last + 1;
        stats.messages.fetch_add(messages.len() as u64, Ordering::Relaxed);
        stats.replayed.fetch_add(messages.len() as u64, Ordering::Relaxed);
        feeder.send(ChunkData::Messages(messages), Position::Sequence(position), permit);
    }
    feeder.health().set_backlog("messages", 0);
    if position > from {
        info!(source = %name, from, to = position, "mqtt ingest log replayed");
    }
    Ok((Durable { log, trimmer }, handed, position))
}

/// Subscribes and feeds messages until `stop`; then disconnects (what was not acknowledged stays
/// with the broker for the next run) and ends the source.
pub fn run(source: MqttSource, mut feeder: ChunkFeeder, stop: Shutdown) -> Result<(), crate::connectors::SourceError> {
    let name = feeder.name.clone();
    // not ready until the broker has accepted the connection
    feeder.health().not_ready("connecting to the MQTT broker");
    let client_id = source.client_id();
    let spec = source.spec;
    let stats = source.stats;
    let template = TopicTemplate::parse(&spec.topic);
    let link = source.link;
    let in_process = link.is_some();
    let result = (|| {
        let upstream = match link {
            Some(link) => Upstream::InProcess(link),
            None => {
                let (client, events) = connect(&spec, &client_id, !source.broker_in_process)?;
                Upstream::Network(client, events)
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| MqttError::Runtime {
                source_name: name.to_string(),
                error,
            })?;
        Ok::<_, MqttError>((upstream, runtime))
    })()
    .map_err(crate::connectors::SourceError::from)
    .and_then(|(upstream, runtime)| {
        let durable = match (spec.durable, &source.ingest) {
            (true, Some(plan)) => Some(open_and_replay(plan, &mut feeder, &template, &stats, &stop)?),
            (true, None) => {
                warn!(
                    source = %name,
                    "{}",
                    no_log_warning(source.broker_in_process)
                );
                None
            }
            (false, _) => None,
        };
        Ok((upstream, runtime, durable))
    });
    let (upstream, runtime, durable) = match result {
        Ok(x) => x,
        Err(e) => {
            feeder.end();
            return Err(e);
        }
    };
    let (mut durable, mut redeliveries, mut position) = match durable {
        Some((d, handed, position)) => (Some(d), Redeliveries::from_handed(handed), position),
        None => (None, Redeliveries::default(), 0),
    };
    let mut filter = template.filter();
    if let Some(group) = &spec.shared_group {
        filter = format!("$share/{group}/{filter}");
    }
    let qos = spec.qos.level();
    let durable_on = durable.is_some();
    let manual_acks = !source.broker_in_process;
    // fewer, larger synced writes where no ack waits on them ([`GATHER_FOR`])
    let gathers = durable_on && !manual_acks;
    // when QoS 1/2 messages are acknowledged (ARCHITECTURE.md, MQTT)
    let ack_point = match (source.broker_in_process, durable_on) {
        // nothing to acknowledge: the broker did when it took each message
        _ if in_process => "none_in_process",
        (true, _) => "on_receipt",
        (false, true) => "after_sync",
        (false, false) => "once_handed_on",
    };
    info!(source = %name, url = %crate::model::redact::url(&spec.url), client_id = %client_id, filter = %filter, qos, durable = durable_on, acks = %ack_point, "mqtt source starting");
    let mut failure = None;
    runtime.block_on(async {
        // In-process, one batch waits at most: while the feeder is busy (a synced write, no room
        // downstream) the driver waits to hand over the next one instead of being woken for every
        // few messages the router forwards; the router pauses at its buffer's bound and the next
        // batch is what gathered meanwhile. Over TCP, 64 network reads.
        let (tx, mut rx) = mpsc::channel::<Vec<Received>>(if in_process { 1 } else { 64 });
        let health = feeder.health();
        let (driver, client) = match upstream {
            Upstream::Network(client, events) => (
                tokio::spawn(drive(
                    events,
                    client.clone(),
                    filter,
                    qos,
                    name.clone(),
                    stats.clone(),
                    feeder.health(),
                    tx,
                )),
                Some(client),
            ),
            Upstream::InProcess(link) => (
                tokio::spawn(drive_in_process(link, filter, name.clone(), stats.clone(), feeder.health(), tx)),
                None,
            ),
        };
        let gate = AckGate {
            client: client.clone(),
            stats: stats.clone(),
        };
        let watch = Watch {
            name: &name,
            stats: &stats,
            stop: &stop,
            warn_after: STALL_WARN_AFTER,
        };
        let mut mismatched: HashSet<String> = HashSet::new();
        let mut pending: Vec<Received> = Vec::new();
        // messages in the last batch: under load, the next one gathers ([`GATHER_UNDER_LOAD`])
        let mut last_batch = 0;
        let mut reported = (Instant::now(), 0u64);
        let mut progress = |force: bool| {
            let messages = stats.messages.load(Ordering::Relaxed);
            if messages != reported.1 && (force || reported.0.elapsed() > Duration::from_secs(1)) {
                let last_handed_unix_ms = stats.last_handed_unix_ms.load(Ordering::Relaxed);
                debug!(source = %name, messages, last_handed_unix_ms, "mqtt source progress");
                reported = (Instant::now(), messages);
            }
        };
        while !stop.is_requested() {
            if pending.is_empty() {
                match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                    Ok(Some(batch)) => pending = batch,
                    Ok(None) => break,
                    Err(_) => {
                        // idle: checkpoints still need this source's barrier
                        if let Some(id) = feeder.poll_barrier()
                            && let Some(d) = durable.as_mut()
                        {
                            d.trimmer.barrier(id, position);
                        }
                        if let Some(d) = durable.as_mut()
                            && let Some(trim) = d.trim(feeder.durable_checkpoint())
                        {
                            let log = d.log.clone();
                            let write = tokio::task::spawn_blocking(move || log.append(&[], &[], Some(trim)));
                            let Some(result) = watch.wait(write, "the ingest log's trim").await
                            else {
                                break;
                            };
                            if let Err(e) = result.expect("the ingest log write does not panic") {
                                failure = Some(e);
                                break;
                            }
                        }
                        progress(true);
                        continue;
                    }
                }
            }
            if gathers && last_batch >= GATHER_UNDER_LOAD {
                gather(&mut rx, &mut pending, tokio::time::Instant::now() + GATHER_FOR, GATHER_UP_TO).await;
            }
            while pending.len() < MAX_CHUNK_MESSAGES {
                match rx.try_recv() {
                    Ok(more) => pending.extend(more),
                    Err(_) => break,
                }
            }
            last_batch = pending.len();
            // received and not handed on yet (waiting for the log, or for room downstream)
            health.set_backlog("messages", pending.len() as i64);
            let permit = tokio::select! {
                p = feeder.room() => p,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let mut taken = Vec::with_capacity(pending.len());
            let mut acks = Vec::new();
            let mut handed_now = Vec::new();
            for m in pending.drain(..) {
                if m.qos > 0 {
                    if manual_acks {
                        acks.push(PendingAck { pkid: m.pkid, qos: m.qos });
                    } else {
                        // the client acknowledged it as it read it
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    let hash = content_hash(&m.topic, &m.payload);
                    if redeliveries.on_message(m.pkid, m.dup, hash) == Delivery::AlreadyHandedOn {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        debug!(source = %name, topic = %m.topic, pkid = m.pkid, "mqtt redelivery of a message already handed on");
                        continue;
                    }
                    // kept in the log so that the check survives a restart; the embedded broker's
                    // sessions do not, so it never sends a message again after one
                    if manual_acks {
                        handed_now.push((m.pkid, hash));
                    }
                }
                let device = match template.capture(&m.topic) {
                    Ok(device) => device.map(str::to_string),
                    Err(TopicMismatch) => {
                        stats.topic_mismatches.fetch_add(1, Ordering::Relaxed);
                        if mismatched.len() < 10_000 && mismatched.insert(m.topic.clone()) {
                            warn!(source = %name, topic = %m.topic, template = %spec.topic, "mqtt topic does not match the template: its messages are skipped");
                        }
                        continue;
                    }
                };
                taken.push(Taken {
                    topic: m.topic,
                    payload: m.payload,
                    device,
                    at_ms: m.at_ms,
                });
            }
            let start = match durable.as_mut() {
                // durable: the entries (and their packet ids) are synced to the log first
                Some(d) if !taken.is_empty() || !handed_now.is_empty() => {
                    let encoded: Vec<Vec<u8>> = taken
                        .iter()
                        .map(|t| encode_entry(&t.topic, &t.payload, t.at_ms))
                        .collect();
                    let trim = d.trim(feeder.durable_checkpoint());
                    let log = d.log.clone();
                    let began = Instant::now();
                    let write = tokio::task::spawn_blocking(move || log.append(&encoded, &handed_now, trim));
                    let Some(result) = watch.wait(write, "the ingest log's synced write").await
                    else {
                        // not acknowledged: the broker keeps the batch for the next run
                        break;
                    };
                    let result = result.expect("the ingest log write does not panic");
                    stats.log_appends.fetch_add(1, Ordering::Relaxed);
                    stats
                        .log_append_us
                        .fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                    match result {
                        Ok(start) => start,
                        Err(e) => {
                            // nothing of this batch is acknowledged: the broker keeps it
                            failure = Some(e);
                            break;
                        }
                    }
                }
                _ => position,
            };
            if !taken.is_empty() {
                if let Some(id) = feeder.poll_barrier()
                    && let Some(d) = durable.as_mut()
                {
                    d.trimmer.barrier(id, position);
                }
                let n = taken.len() as u64;
                let messages = taken
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| Message {
                        position: MessagePosition::Mqtt {
                            topic: t.topic,
                            number: start + i as u64 + u64::from(!durable_on),
                        },
                        device_hint: t.device,
                        payload: t.payload,
                        arrival_ms: t.at_ms,
                    })
                    .collect();
                position = start + n;
                stats.messages.fetch_add(n, Ordering::Relaxed);
                feeder.send(ChunkData::Messages(messages), Position::Sequence(position), permit);
                stats
                    .last_handed_unix_ms
                    .store(crate::clock::now_ms().max(0) as u64, Ordering::Relaxed);
            }
            if watch.wait(gate.release(&acks), "room to acknowledge to the broker")
                .await
                .is_none()
            {
                break;
            }
            progress(false);
        }
        rx.close();
        // (bounded: after a stall the client's request channel may have no room)
        if let Some(client) = &client {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        }
        // let the disconnect go out, then stop polling
        let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    });
    // a log write given up on (a stop during a stall) may still run: not waited for past this
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Some(e) = &failure {
        error!(source = %name, error = %e, "mqtt source stopped: the ingest log cannot be written");
    }
    info!(
        source = %name,
        messages = stats.messages.load(Ordering::Relaxed),
        replayed = stats.replayed.load(Ordering::Relaxed),
        log_appends = stats.log_appends.load(Ordering::Relaxed),
        log_append_ms = stats.log_append_us.load(Ordering::Relaxed) / 1000,
        acked = stats.acked.load(Ordering::Relaxed),
        duplicates = stats.duplicates.load(Ordering::Relaxed),
        topic_mismatches = stats.topic_mismatches.load(Ordering::Relaxed),
        reconnects = stats.reconnects.load(Ordering::Relaxed),
        disconnected_ms = stats.disconnected_ms.load(Ordering::Relaxed),
        stalls = stats.stalls.load(Ordering::Relaxed),
        link_pauses = stats.link_pauses.load(Ordering::Relaxed),
        "mqtt source stopped"
    );
    drop(durable);
    feeder.end();
    failure.map_or(Ok(()), Err)
}

fn content_hash(topic: &str, payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(topic.as_bytes());
    h.update(&[0]);
    h.update(payload);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `work` (made with the watch's counters) through a [`Watch`] that warns every
    /// 150 ms, with a stop requested `stop_after` if given: its result, the stalls counted and
    /// the time it took.
    fn watch_test<T, F: std::future::Future<Output = T>>(
        work: impl FnOnce(Arc<MqttStats>) -> F,
        stop_after: Option<Duration>,
    ) -> (Option<T>, u64, Duration) {
        let stats = Arc::new(MqttStats::default());
        let stop = Shutdown::new();
        let watch = Watch {
            name: "mqtt:test",
            stats: &stats,
            stop: &stop,
            warn_after: Duration::from_millis(150),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let began = Instant::now();
        let result = runtime.block_on(async {
            if let Some(after) = stop_after {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    stop.request();
                });
            }
            watch.wait(work(stats.clone()), "the test").await
        });
        (result, stats.stalls.load(Ordering::Relaxed), began.elapsed())
    }

    /// Without a data directory the warning says what really happens: over the network
    /// messages are acknowledged once handed on; the embedded broker's in-process link has no
    /// acknowledgements to speak of.
    #[test]
    fn durable_without_a_data_directory_warns_of_what_a_crash_loses() {
        assert!(no_log_warning(false).contains("acknowledged once handed to the routers"));
        let in_process = no_log_warning(true);
        assert!(!in_process.contains("acknowledged"), "{in_process}");
        assert!(in_process.contains("embedded broker"), "{in_process}");
    }

    #[test]
    fn a_wait_that_ends_at_once_gives_its_result_and_is_no_stall() {
        let (result, stalls, _) = watch_test(|_| async { 7 }, None);
        assert_eq!(result, Some(7));
        assert_eq!(stalls, 0);
    }

    #[test]
    fn a_long_wait_is_counted_as_a_stall_and_still_gives_its_result() {
        // the work ends once the watch has said it is a stall (or after 10 s: then it failed to)
        let (result, stalls, took) = watch_test(
            |stats| async move {
                let began = Instant::now();
                while stats.stalls.load(Ordering::Relaxed) == 0 {
                    if began.elapsed() > Duration::from_secs(10) {
                        return "never counted";
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                "done"
            },
            None,
        );
        assert_eq!(result, Some("done"));
        assert_eq!(stalls, 1);
        // not before its time
        assert!(took >= Duration::from_millis(150), "{took:?}");
    }

    #[test]
    fn a_wait_under_way_when_a_stop_is_requested_still_finishes() {
        let (result, _, _) = watch_test(
            |_| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "written"
            },
            Some(Duration::from_millis(100)),
        );
        assert_eq!(result, Some("written"));
    }

    #[test]
    fn a_wait_that_never_ends_gives_up_once_a_stop_is_requested() {
        let (result, stalls, took) = watch_test(|_| std::future::pending::<()>(), Some(Duration::from_millis(400)));
        assert_eq!(result, None);
        // a stop lets the wait go on for the grace, then gives up
        assert!(took >= STOP_GRACE, "{took:?}");
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert!(stalls >= 1, "{stalls} stalls");
    }

    #[test]
    fn templates_capture_the_device_and_reject_other_topics() {
        let t = TopicTemplate::parse("sensors/{device}/air");
        assert_eq!(t.filter(), "sensors/+/air");
        assert_eq!(t.capture("sensors/room-1/air"), Ok(Some("room-1")));
        assert_eq!(t.capture("sensors/room-1/water"), Err(TopicMismatch));
        assert_eq!(t.capture("sensors//air"), Err(TopicMismatch));
        assert_eq!(t.capture("sensors/room-1/air/x"), Err(TopicMismatch));
        assert_eq!(t.capture("sensors/room-1"), Err(TopicMismatch));
        let t = TopicTemplate::parse("site/+/{device}/#");
        assert_eq!(t.filter(), "site/+/+/#");
        assert_eq!(t.capture("site/a/dev/x/y"), Ok(Some("dev")));
        assert_eq!(t.capture("site/a/dev"), Ok(Some("dev")));
        assert_eq!(TopicTemplate::parse("a/#").capture("a/b/c"), Ok(None));
    }

    #[test]
    fn urls_give_host_port_and_tls() {
        assert_eq!(
            Endpoint::parse("mqtt://127.0.0.1:1884").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(Endpoint::parse("mqtts://broker").unwrap().port, 8883);
        assert_eq!(Endpoint::parse("mqtt://[::1]:99").unwrap().host, "::1");
        assert!(Endpoint::parse("tcp://x").is_err());
    }

    #[test]
    fn a_missing_password_variable_names_the_variable_only() {
        let e = password(Some("PLUME_TEST_SURELY_UNSET_VAR")).unwrap_err().to_string();
        assert!(e.contains("PLUME_TEST_SURELY_UNSET_VAR"), "{e}");
    }

    #[test]
    fn a_pubrel_rumqttc_forgot_is_completed_after_a_reconnect() {
        // rumqttc alone: a PUBREL for a packet id it has no state for is an error (rumqtt #664)
        let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (_c, mut plain) = rumqttc::AsyncClient::new(options.clone(), 10);
        assert!(
            plain
                .state
                .handle_incoming_packet(rumqttc::Packet::PubRel(rumqttc::PubRel::new(7)))
                .is_err()
        );
        let (_c, e) = rumqttc::AsyncClient::new(options, 10);
        let mut events = EventLoop::V4(Box::new(e));
        events.complete_any_pubrel();
        let EventLoop::V4(e) = &mut events else { unreachable!() };
        assert!(e.state.events.is_empty(), "no made-up events are left");
        for pkid in [1, 7, u16::MAX] {
            let out = e
                .state
                .handle_incoming_packet(rumqttc::Packet::PubRel(rumqttc::PubRel::new(pkid)))
                .unwrap();
            assert!(
                matches!(&out, Some(rumqttc::Packet::PubComp(c)) if c.pkid == pkid),
                "{out:?}"
            );
        }
        let options = rumqttc::v5::MqttOptions::new("t", "127.0.0.1", 1);
        let (_c, e) = rumqttc::v5::AsyncClient::new(options, 10);
        let mut events = EventLoop::V5(Box::new(e));
        events.complete_any_pubrel();
        let EventLoop::V5(e) = &mut events else { unreachable!() };
        let pubrel = rumqttc::v5::mqttbytes::v5::PubRel::new(9, None);
        let out = e
            .state
            .handle_incoming_packet(rumqttc::v5::mqttbytes::v5::Packet::PubRel(pubrel))
            .unwrap();
        assert!(
            matches!(&out, Some(rumqttc::v5::mqttbytes::v5::Packet::PubComp(_))),
            "{out:?}"
        );
    }

    fn received(n: usize) -> Vec<Received> {
        (0..n)
            .map(|i| Received {
                topic: format!("t/dev-{i}"),
                payload: vec![b'x'].into(),
                qos: 0,
                pkid: 0,
                dup: false,
                at_ms: 0,
            })
            .collect()
    }

    #[test]
    fn gathering_stops_at_its_size_at_its_deadline_or_when_the_driver_is_gone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let far = tokio::time::Instant::now() + Duration::from_secs(60);
            let (tx, mut rx) = mpsc::channel(8);
            // at its size: the third batch is left for the next write
            for n in [600, 600, 600] {
                tx.send(received(n)).await.unwrap();
            }
            let mut pending = received(10);
            gather(&mut rx, &mut pending, far, 1024).await;
            assert_eq!(pending.len(), 1210);
            assert_eq!(rx.try_recv().map(|b| b.len()).ok(), Some(600));
            // at its deadline: nothing more came
            let mut pending = received(10);
            let began = Instant::now();
            gather(&mut rx, &mut pending, tokio::time::Instant::now() + GATHER_FOR, 1024).await;
            assert_eq!(pending.len(), 10);
            assert!(began.elapsed() >= GATHER_FOR, "{:?}", began.elapsed());
            // the driver is gone: no wait for the far deadline
            tx.send(received(5)).await.unwrap();
            drop(tx);
            let mut pending = Vec::new();
            gather(&mut rx, &mut pending, far, 1024).await;
            assert_eq!(pending.len(), 5);
        });
    }

    #[test]
    fn the_in_process_link_passes_every_message_on_in_order_after_the_router_paused_it() {
        let broker = rumqttd::Broker::new(super::super::broker::config("127.0.0.1:0".parse().unwrap()));
        let (tx, rx) = broker.link("plume-in-process-test").unwrap();
        let link = super::super::broker::InProcessLink {
            client_id: "plume-in-process-test".into(),
            tx,
            rx,
        };
        let (mut publisher, _publisher_rx) = broker.link("publisher").unwrap();
        let stats = Arc::new(MqttStats::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        const N: usize = 5_000;
        let received = runtime.block_on(async {
            // room for one batch: the driver stops taking from the router until it is read
            let (batches_tx, mut batches) = mpsc::channel(1);
            let driver = tokio::spawn(drive_in_process(
                link,
                "t/+".into(),
                "mqtt:test".into(),
                stats.clone(),
                SourceHealth::detached(),
                batches_tx,
            ));
            let began = Instant::now();
            while !stats.connected.load(Ordering::Relaxed) {
                assert!(began.elapsed() < Duration::from_secs(10), "not subscribed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // the subscription reaches the router before these publishes (one channel)
            for i in 0..N {
                publisher.publish(format!("t/dev-{}", i % 7), i.to_string()).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                stats.link_pauses.load(Ordering::Relaxed) > 0,
                "the router paused the link while its batches were not taken"
            );
            let mut received = Vec::new();
            while received.len() < N {
                let batch = tokio::time::timeout(Duration::from_secs(10), batches.recv())
                    .await
                    .unwrap_or_else(|_| panic!("stuck after {} of {N} messages", received.len()))
                    .expect("the driver runs");
                received.extend(batch);
            }
            drop(batches);
            tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("the driver ends once nobody takes its batches")
                .unwrap();
            received
        });
        assert_eq!(received.len(), N);
        for (i, m) in received.iter().enumerate() {
            assert_eq!(m.topic, format!("t/dev-{}", i % 7));
            assert_eq!(m.payload, i.to_string().into_bytes());
        }
    }
}
