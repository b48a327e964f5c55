//! The admin endpoint of a run: `/metrics` (Prometheus / OpenMetrics text), `/healthz` (the
//! process answers) and `/readyz` (it can do its work now, with the reasons when it cannot).
//!
//! # Layout
//! - [`bind`] takes the address before anything starts (a taken port is refused like a bad
//!   config); [`serve`] answers on it from a thread of its own (a current-thread tokio runtime
//!   and hyper's HTTP/1.1 server) until the [`AdminServer`] is dropped.
//! - [`AdminView`] is what the answers are made of: the runtime's shared counters (relaxed
//!   atomics the routers, shards and checkpointer already keep, updated per chunk and per batch,
//!   not per reading), the sinks' statistics, and the run's checkpoint interval. A scrape reads
//!   them as they are; the hot path does no more work for it.
//! - [`AdminView::metrics_text`] encodes them with the `prometheus-client` crate (a collector
//!   that reads the counters on each scrape); [`AdminView::readiness`] lists what keeps the run
//!   from being ready.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::runtime::RuntimeMetrics;
use crate::runtime::ports::SinkHandle;

/// What the endpoint reports on.
#[derive(Clone)]
pub struct AdminView {
    pub metrics: Arc<RuntimeMetrics>,
    pub sinks: Vec<SinkHandle>,
    /// How often the run checkpoints (`None`: it keeps no state).
    pub checkpoint_interval: Option<Duration>,
    pub started: Instant,
}

impl std::fmt::Debug for AdminView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminView").finish_non_exhaustive()
    }
}

/// One metric of the list: its name (as exposed, without the `_total` the encoder adds to
/// counters), its kind and its help text. README's list is generated from [`METRICS`].
pub struct MetricInfo {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static str,
    pub help: &'static str,
}

macro_rules! metric_list {
    ($($name:literal, $kind:literal, $labels:literal, $help:literal;)*) => {
        /// Every metric `/metrics` exposes.
        pub const METRICS: &[MetricInfo] = &[$(MetricInfo { name: $name, kind: $kind, labels: $labels, help: $help }),*];
    };
}

metric_list! {
    "plume_readings", "counter", "", "Readings decoded and handed to their devices.";
    "plume_dead_letters", "counter", "", "Payloads and readings that became dead letters.";
    "plume_late_readings", "counter", "", "Readings behind their device's watermark (not in any window).";
    "plume_records", "counter", "kind", "Result records routed to the sinks, by kind (window, event_start, …, dead_letter).";
    "plume_source_readings", "counter", "source", "Readings each source brought in.";
    "plume_source_dead_letters", "counter", "source", "Dead letters of each source's payloads.";
    "plume_kafka_consumer_lag", "gauge", "source, topic, partition", "Messages of each partition a Kafka source has not read yet (high watermark from librdkafka's statistics, every second).";
    "plume_events_open", "gauge", "", "Pollution events open now.";
    "plume_devices", "gauge", "state", "Devices held in memory, by state (active, passive).";
    "plume_device_activations", "counter", "", "Devices activated (new, or back from passive or the store).";
    "plume_device_passivations", "counter", "", "Devices passivated.";
    "plume_device_restarts", "counter", "", "Device chains restarted after a panic.";
    "plume_chunks_in_flight", "gauge", "", "Chunks of input in the runtime (backpressure: at most the source's window).";
    "plume_checkpoints", "counter", "", "Durable checkpoints taken by this process.";
    "plume_checkpoint_failures", "counter", "", "Checkpoints that failed.";
    "plume_checkpoint_age_seconds", "gauge", "", "Time since the newest durable checkpoint of this process (since the start before the first).";
    "plume_checkpoint_duration_seconds", "histogram", "", "Checkpoints from their barrier to durable.";
    "plume_checkpoint_pause_max_seconds", "gauge", "", "Longest time a shard stopped processing for a checkpoint.";
    "plume_store_errors", "counter", "", "State store reads or writes that failed.";
    "plume_input_limit_hits", "counter", "limit", "Input refused or changed by a limit, by limit.";
    "plume_sink_records", "counter", "sink", "Records written by each sink.";
    "plume_sink_errors", "counter", "sink", "Failed writes of each sink.";
    "plume_sink_write_seconds", "histogram", "sink", "How long each batch took a sink to write.";
    "plume_sink_queue_records", "gauge", "sink", "Records waiting in each sink's queue.";
    "plume_notifier_deliveries", "counter", "sink", "Deliveries a notifier's receiver acknowledged.";
    "plume_notifier_attempts", "counter", "sink", "Delivery attempts of a notifier (first tries and retries).";
    "plume_notifier_retries", "counter", "sink", "Delivery retries of a notifier.";
    "plume_notifier_dead_letters", "counter", "sink", "Deliveries a notifier gave up (dead letters).";
    "plume_notifier_breaker_openings", "counter", "sink", "Times a notifier's circuit breaker opened.";
    "plume_notifier_suppressed", "counter", "sink", "Events a notifier did not send because of the cooldown.";
    "plume_notifier_tokens_removed", "counter", "sink", "Push tokens removed as unregistered.";
    "plume_sources_not_ready", "gauge", "", "Sources that cannot take input now (their broker is away).";
    "process_resident_memory_bytes", "gauge", "", "Resident memory of the plume process.";
    "process_cpu_seconds", "counter", "", "CPU time (user and system) of the plume process.";
}

impl AdminView {
    /// Why the run is not ready (empty: ready).
    pub fn readiness(&self) -> Vec<String> {
        let m = &self.metrics;
        let mut problems = Vec::new();
        for (i, source) in m.sources.iter().enumerate() {
            if let Some(why) = source.not_ready() {
                problems.push(format!("source {}: {why}", source.label(i)));
            }
        }
        if let Some(reason) = m.stopped_by.get() {
            problems.push(format!("the run is stopping: {reason}"));
        }
        if let Some(interval) = self.checkpoint_interval {
            let allowed = (interval * 3).max(Duration::from_secs(30));
            let since = self.checkpoint_age();
            if since > allowed {
                problems.push(format!(
                    "no durable checkpoint for {:.1} s (checkpoints every {:.1} s; ready while under {:.1} s)",
                    since.as_secs_f64(),
                    interval.as_secs_f64(),
                    allowed.as_secs_f64()
                ));
            }
        }
        for sink in &self.sinks {
            if sink.stats.errors.load(Ordering::Relaxed) > 0 {
                problems.push(format!(
                    "sink {}: a write failed (the run stops, or restarts from its last checkpoint)",
                    sink.name
                ));
            }
        }
        problems
    }

    fn checkpoint_age(&self) -> Duration {
        let last = self.metrics.last_checkpoint_at_ms.load(Ordering::Relaxed);
        if last == 0 {
            self.started.elapsed()
        } else {
            Duration::from_millis(crate::clock::now_ms().saturating_sub(last).max(0) as u64)
        }
    }

    /// The OpenMetrics text of every metric in [`METRICS`].
    pub fn metrics_text(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
        text
    }
}

/// Reads the counters on each scrape.
#[derive(Debug)]
struct Scrape(AdminView);

fn info(name: &str) -> &'static MetricInfo {
    METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} is in METRICS"))
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    let m = info(name);
    metric.encode(encoder.encode_descriptor(m.name, m.help, None, metric.metric_type())?)
}

fn gauge<T: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    value: T,
) -> std::fmt::Result
where
    ConstGauge<T>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    let m = info(name);
    metric.encode(encoder.encode_descriptor(m.name, m.help, None, metric.metric_type())?)
}

/// A labelled family: one value per label value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    label: &str,
    values: Vec<(String, M)>,
) -> std::fmt::Result {
    let m = info(name);
    let Some((_, first)) = values.first() else {
        return Ok(());
    };
    let mut descriptor = encoder.encode_descriptor(m.name, m.help, None, first.metric_type())?;
    for (value, metric) in &values {
        let labels = [(label.to_string(), value.clone())];
        metric.encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let view = &self.0;
        let m = &*view.metrics;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        counter(&mut e, "plume_readings", get(&m.readings))?;
        counter(&mut e, "plume_dead_letters", get(&m.dead_letters))?;
        counter(&mut e, "plume_late_readings", get(&m.late))?;
        family(
            &mut e,
            "plume_records",
            "kind",
            crate::model::RecordKind::ALL
                .iter()
                .zip(&m.records_by_kind)
                .map(|(kind, n)| (kind.as_str().to_string(), ConstCounter::new(n.load(Ordering::Relaxed))))
                .collect(),
        )?;
        let by_source = |value: &dyn Fn(&crate::runtime::SourceCounters) -> u64| {
            m.sources
                .iter()
                .enumerate()
                .map(|(i, s)| (s.label(i), ConstCounter::new(value(s))))
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "plume_source_readings",
            "source",
            by_source(&|s| s.readings.load(Ordering::Relaxed)),
        )?;
        family(
            &mut e,
            "plume_source_dead_letters",
            "source",
            by_source(&|s| s.dead_letters.load(Ordering::Relaxed)),
        )?;
        let lags: Vec<(Vec<(String, String)>, i64)> = m
            .sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                let name = s.label(i);
                let lags = s.partition_lag.lock().unwrap_or_else(|e| e.into_inner()).clone();
                lags.into_iter().map(move |(topic, partition, lag)| {
                    let labels = vec![
                        ("source".to_string(), name.clone()),
                        ("topic".to_string(), topic),
                        ("partition".to_string(), partition.to_string()),
                    ];
                    (labels, lag)
                })
            })
            .collect();
        if !lags.is_empty() {
            let i = info("plume_kafka_consumer_lag");
            let mut descriptor =
                e.encode_descriptor(i.name, i.help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for (labels, lag) in lags {
                ConstGauge::new(lag).encode(descriptor.encode_family(&labels)?)?;
            }
        }
        gauge(&mut e, "plume_events_open", m.events_open.load(Ordering::Relaxed))?;
        family(
            &mut e,
            "plume_devices",
            "state",
            vec![
                (
                    "active".into(),
                    ConstGauge::new(m.devices_active.load(Ordering::Relaxed)),
                ),
                (
                    "passive".into(),
                    ConstGauge::new(m.devices_passive.load(Ordering::Relaxed)),
                ),
            ],
        )?;
        counter(&mut e, "plume_device_activations", get(&m.activations))?;
        counter(&mut e, "plume_device_passivations", get(&m.passivations))?;
        counter(&mut e, "plume_device_restarts", get(&m.restarts))?;
        gauge(
            &mut e,
            "plume_chunks_in_flight",
            m.chunks_in_flight.load(Ordering::Relaxed),
        )?;
        counter(&mut e, "plume_checkpoints", get(&m.checkpoints))?;
        counter(&mut e, "plume_checkpoint_failures", get(&m.checkpoint_failures))?;
        if view.checkpoint_interval.is_some() {
            gauge(
                &mut e,
                "plume_checkpoint_age_seconds",
                view.checkpoint_age().as_secs_f64(),
            )?;
        }
        if view.checkpoint_interval.is_some() {
            let i = info("plume_checkpoint_duration_seconds");
            let h = &m.timings.checkpoint_seconds;
            h.encode(e.encode_descriptor(i.name, i.help, None, h.metric_type())?)?;
        }
        gauge(
            &mut e,
            "plume_checkpoint_pause_max_seconds",
            get(&m.checkpoint_pause_max_us) as f64 / 1e6,
        )?;
        counter(&mut e, "plume_store_errors", get(&m.store_errors))?;
        let limits = m.limits();
        family(
            &mut e,
            "plume_input_limit_hits",
            "limit",
            [
                ("max_payload_bytes", limits.payloads_oversized),
                ("max_fields", limits.payloads_too_many_fields),
                ("max_device_id_bytes", limits.device_ids_refused),
                ("plausible_time", limits.times_implausible),
                ("max_devices", limits.devices_refused),
            ]
            .into_iter()
            .map(|(limit, n)| (limit.to_string(), ConstCounter::new(n)))
            .collect(),
        )?;
        let sinks = |value: &dyn Fn(&SinkHandle) -> u64| {
            view.sinks
                .iter()
                .map(|s| (s.name.clone(), value(s)))
                .collect::<Vec<_>>()
        };
        let counters = |v: Vec<(String, u64)>| v.into_iter().map(|(k, n)| (k, ConstCounter::new(n))).collect();
        family(
            &mut e,
            "plume_sink_records",
            "sink",
            counters(sinks(&|s| s.stats.records.load(Ordering::Relaxed))),
        )?;
        family(
            &mut e,
            "plume_sink_errors",
            "sink",
            counters(sinks(&|s| s.stats.errors.load(Ordering::Relaxed))),
        )?;
        family(
            &mut e,
            "plume_sink_write_seconds",
            "sink",
            view.sinks
                .iter()
                .map(|s| (s.name.clone(), s.stats.write_seconds.clone()))
                .collect(),
        )?;
        family(
            &mut e,
            "plume_sink_queue_records",
            "sink",
            sinks(&|s| s.waiting() as u64)
                .into_iter()
                .map(|(k, n)| (k, ConstGauge::new(n as i64)))
                .collect(),
        )?;
        // the sinks' own counters (notifiers), one family per name
        let own: Vec<(String, Vec<(&'static str, u64)>)> = view
            .sinks
            .iter()
            .filter_map(|s| s.counters.as_ref().map(|c| (s.name.clone(), c.counters())))
            .collect();
        for m in METRICS.iter().filter(|m| m.name.starts_with("plume_notifier_")) {
            let values: Vec<(String, ConstCounter<u64>)> = own
                .iter()
                .filter_map(|(sink, counters)| {
                    let (_, n) = counters.iter().find(|(name, _)| *name == m.name)?;
                    Some((sink.clone(), ConstCounter::new(*n)))
                })
                .collect();
            family(&mut e, m.name, "sink", values)?;
        }
        gauge(
            &mut e,
            "plume_sources_not_ready",
            m.sources.iter().filter(|s| s.not_ready().is_some()).count() as i64,
        )?;
        let (rss, cpu) = process_usage();
        gauge(&mut e, "process_resident_memory_bytes", rss as i64)?;
        let cpu = ConstCounter::new(cpu);
        let i = info("process_cpu_seconds");
        cpu.encode(e.encode_descriptor(i.name, i.help, None, cpu.metric_type())?)?;
        Ok(())
    }
}

/// Resident memory (bytes) and CPU time (seconds) of this process.
fn process_usage() -> (u64, f64) {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page);
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let cpu = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    } else {
        0.0
    };
    (rss, cpu)
}

/// Takes the address now, so that a taken port stops the run before anything starts.
pub fn bind(address: &str) -> Result<TcpListener, AdminError> {
    let addr: SocketAddr = address.parse().map_err(|_| AdminError {
        address: address.to_string(),
        error: "not an address and a port (such as 127.0.0.1:9464)".to_string(),
    })?;
    let listener = TcpListener::bind(addr).map_err(|e| AdminError {
        address: address.to_string(),
        error: e.to_string(),
    })?;
    listener.set_nonblocking(true).map_err(|e| AdminError {
        address: address.to_string(),
        error: e.to_string(),
    })?;
    Ok(listener)
}

/// The admin endpoint could not listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve /metrics on {address}: {error}")]
pub struct AdminError {
    pub address: String,
    pub error: String,
}

/// Answers until dropped.
pub struct AdminServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` from a thread of its own.
pub fn serve(listener: TcpListener, view: AdminView) -> AdminServer {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let thread = std::thread::Builder::new()
        .name("admin endpoint".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(error) => {
                    warn!(%error, "the admin endpoint could not start");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(error) => {
                        warn!(%error, "the admin endpoint could not start");
                        return;
                    }
                };
                info!(address = %address, "admin endpoint: /metrics, /healthz, /readyz");
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let view = view.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                            let view = view.clone();
                            async move { Ok::<_, std::convert::Infallible>(answer(&view, &request)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .expect("spawning the admin endpoint");
    AdminServer {
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn answer(view: &AdminView, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            view.metrics_text(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_string()),
        "/readyz" => {
            let problems = view.readiness();
            if problems.is_empty() {
                (StatusCode::OK, "text/plain; charset=utf-8", "ready\n".to_string())
            } else {
                let mut body = "not ready:\n".to_string();
                for p in problems {
                    body.push_str(&format!("- {p}\n"));
                }
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body)
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "plume answers /metrics, /healthz and /readyz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
