//! The metrics of a run: one list ([`METRICS`]), one snapshot ([`snapshot`]) read from the
//! counters the runtime, sources and sinks already keep, and two encodings of it: the
//! Prometheus / OpenMetrics text of `/metrics` ([`prometheus_text`]) and OTLP
//! (`super::otlp`).
//!
//! # Layout
//! - [`METRICS`]: every metric, its kind, labels and meaning (README's table is generated from
//!   it). Names are Prometheus names; [`otel_name`] gives the OpenTelemetry name and unit.
//! - [`snapshot`]: a [`Family`] of [`Point`]s per metric, read with relaxed loads; nothing on
//!   the hot path is done for it.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::admin::AdminView;
use crate::runtime::histogram::HistogramValue;

#[derive(Debug)]
/// One metric of the list: its name (as Prometheus exposes it, without the `_total` the
/// encoder adds to counters), its kind and its help text.
pub struct MetricInfo {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static str,
    pub help: &'static str,
}

macro_rules! metric_list {
    ($($name:literal, $kind:literal, $labels:literal, $help:literal;)*) => {
        /// Every metric plume exports.
        pub const METRICS: &[MetricInfo] = &[$(MetricInfo { name: $name, kind: $kind, labels: $labels, help: $help }),*];
    };
}

metric_list! {
    "plume_readings", "counter", "", "Readings decoded and handed to their devices.";
    "plume_dead_letters", "counter", "", "Payloads and readings that became dead letters.";
    "plume_late_readings", "counter", "", "Readings behind their device's watermark (not in any window).";
    "plume_records", "counter", "kind", "Result records routed to the sinks, by kind (window, event_start, …, dead_letter).";
    "plume_operator_records", "counter", "operator, kind", "Result records each operator emitted, by kind (`operator=\"none\"`: dead letters and summaries).";
    "plume_source_readings", "counter", "source", "Readings each source brought in.";
    "plume_source_dead_letters", "counter", "source", "Dead letters of each source's payloads.";
    "plume_kafka_consumer_lag", "gauge", "source, topic, partition", "Messages of each partition a Kafka source has not read yet (high watermark from librdkafka's statistics, every second).";
    "plume_source_backlog", "gauge", "source, unit", "Input a source has and has not handed to the runtime yet: MQTT messages in the ingest log (`unit=\"messages\"`), bytes of a file (`unit=\"bytes\"`).";
    "plume_events_open", "gauge", "", "Pollution events open now.";
    "plume_events_open_by_severity", "gauge", "severity", "Pollution events open now, by severity (`none` for events without one).";
    "plume_devices", "gauge", "state", "Devices held in memory, by state (active, passive).";
    "plume_shard_devices", "gauge", "shard, state", "Devices held in memory by each shard (as of its last batch).";
    "plume_shard_batch_seconds", "histogram", "shard", "How long a shard took for one batch (one chunk's readings for it).";
    "plume_device_activations", "counter", "", "Devices activated (new, or back from passive or the store).";
    "plume_device_passivations", "counter", "", "Devices passivated.";
    "plume_device_restarts", "counter", "", "Device chains restarted after a panic.";
    "plume_chunks_in_flight", "gauge", "", "Chunks of input in the runtime (backpressure: at most the source's window).";
    "plume_checkpoints", "counter", "", "Durable checkpoints taken by this process.";
    "plume_checkpoint_failures", "counter", "", "Checkpoints that failed.";
    "plume_checkpoint_age_seconds", "gauge", "", "Time since the newest durable checkpoint of this process (since the start before the first).";
    "plume_checkpoint_duration_seconds", "histogram", "", "Checkpoints from their barrier to durable.";
    "plume_checkpoint_size_bytes", "gauge", "", "Device state the newest durable checkpoint wrote (keys and snapshots).";
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
    "plume_notifier_suppressed", "counter", "sink", "Events a notifier did not send because of the cooldown (kept with its checkpoints: a restart continues the count, a replay does not add to it).";
    "plume_notifier_tokens_removed", "counter", "sink", "Push tokens removed as unregistered.";
    "plume_notifier_policy_evicted", "counter", "sink", "Cooldown entries a notifier's policy dropped at its max_entries (the oldest first).";
    "plume_notifier_breaker_state", "gauge", "sink", "A notifier's circuit breaker: 0 closed, 1 open, 2 probing.";
    "plume_notifier_outbox_pending", "gauge", "sink", "Deliveries in a notifier's outbox not yet acknowledged or given up.";
    "plume_notifier_policy_entries", "gauge", "sink", "Cooldown entries a notifier's policy holds (bounded by max_entries).";
    "plume_notifier_delivery_seconds", "histogram", "sink", "From the notifier taking an event to its receiver's 2xx (retries included).";
    "plume_sources_not_ready", "gauge", "", "Sources that cannot take input now (their broker is away).";
    "process_resident_memory_bytes", "gauge", "", "Resident memory of the plume process.";
    "process_cpu_seconds", "counter", "", "CPU time (user and system) of the plume process.";
}

/// The metric called `name` in [`METRICS`].
pub fn info(name: &str) -> &'static MetricInfo {
    METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} is in METRICS"))
}

/// The first words of metric names that are namespaces in their OpenTelemetry names.
const NAMESPACES: &[&str] = &[
    "checkpoint",
    "device",
    "events",
    "input",
    "kafka",
    "notifier",
    "operator",
    "shard",
    "sink",
    "source",
    "store",
];

/// The OpenTelemetry name and unit of a metric (semantic conventions: a dotted namespace, words
/// in snake case, the unit apart, durations named `….duration`): `plume_checkpoint_duration_seconds`
/// is `plume.checkpoint.duration` in `s`, `plume_notifier_delivery_seconds` is
/// `plume.notifier.delivery.duration`, `plume_dead_letters` is `plume.dead_letters` in `1`.
pub fn otel_name(m: &MetricInfo) -> (String, &'static str) {
    match m.name {
        "process_resident_memory_bytes" => return ("process.memory.usage".into(), "By"),
        "process_cpu_seconds" => return ("process.cpu.time".into(), "s"),
        _ => {}
    }
    let (base, unit) = if let Some(b) = m.name.strip_suffix("_seconds") {
        (b, "s")
    } else if let Some(b) = m.name.strip_suffix("_bytes") {
        (b, "By")
    } else {
        (m.name, "1")
    };
    let rest = base.strip_prefix("plume_").unwrap_or(base);
    let mut name = match rest.split_once('_') {
        Some((first, tail)) if NAMESPACES.contains(&first) => format!("plume.{first}.{tail}"),
        _ => format!("plume.{rest}"),
    };
    if m.kind == "histogram" && unit == "s" && !name.ends_with("duration") {
        name.push_str(".duration");
    }
    (name, unit)
}

/// A metric's value at one set of labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    CounterSeconds(f64),
    Gauge(i64),
    GaugeSeconds(f64),
    Histogram(HistogramValue),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// Every point of one metric now.
#[derive(Debug, Clone)]
pub struct Family {
    pub info: &'static MetricInfo,
    pub points: Vec<Point>,
}

struct Builder(Vec<Family>);

impl Builder {
    fn add(&mut self, name: &str, points: Vec<Point>) {
        if !points.is_empty() {
            self.0.push(Family {
                info: info(name),
                points,
            });
        }
    }

    fn one(&mut self, name: &str, value: Value) {
        self.add(
            name,
            vec![Point {
                labels: Vec::new(),
                value,
            }],
        );
    }

    fn by(&mut self, name: &str, label: &'static str, values: impl IntoIterator<Item = (String, Value)>) {
        let points = values
            .into_iter()
            .map(|(v, value)| Point {
                labels: vec![(label, v)],
                value,
            })
            .collect();
        self.add(name, points);
    }
}

/// Every metric of the run now.
pub fn snapshot(view: &AdminView) -> Vec<Family> {
    let m = &*view.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let geti = |c: &std::sync::atomic::AtomicI64| c.load(Ordering::Relaxed);
    let mut b = Builder(Vec::new());
    b.one("plume_readings", Value::Counter(get(&m.readings)));
    b.one("plume_dead_letters", Value::Counter(get(&m.dead_letters)));
    b.one("plume_late_readings", Value::Counter(get(&m.late)));
    let kinds = crate::model::RecordKind::ALL;
    b.by(
        "plume_records",
        "kind",
        kinds
            .iter()
            .zip(m.records_by_kind())
            .map(|(kind, n)| (kind.as_str().to_string(), Value::Counter(n))),
    );
    let mut per_operator = Vec::new();
    for (row, counts) in m.records_by_operator.iter().enumerate() {
        let operator = if row + 1 == m.records_by_operator.len() {
            "none".to_string()
        } else {
            view.operators.get(row).cloned().unwrap_or_else(|| format!("#{row}"))
        };
        for (kind, n) in kinds.iter().zip(counts) {
            let n = get(n);
            // a kind an operator never emitted is left out (not every pair exists)
            if n > 0 {
                per_operator.push(Point {
                    labels: vec![("operator", operator.clone()), ("kind", kind.as_str().to_string())],
                    value: Value::Counter(n),
                });
            }
        }
    }
    b.add("plume_operator_records", per_operator);
    let sources = || m.sources.iter().enumerate().map(|(i, s)| (s.label(i), s));
    b.by(
        "plume_source_readings",
        "source",
        sources().map(|(name, s)| (name, Value::Counter(get(&s.readings)))),
    );
    b.by(
        "plume_source_dead_letters",
        "source",
        sources().map(|(name, s)| (name, Value::Counter(get(&s.dead_letters)))),
    );
    let mut lags = Vec::new();
    for (name, s) in sources() {
        for (topic, partition, lag) in s.partition_lag.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            lags.push(Point {
                labels: vec![
                    ("source", name.clone()),
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ],
                value: Value::Gauge(*lag),
            });
        }
    }
    b.add("plume_kafka_consumer_lag", lags);
    b.add(
        "plume_source_backlog",
        sources()
            .filter_map(|(name, s)| {
                let (unit, n) = s.backlog()?;
                Some(Point {
                    labels: vec![("source", name), ("unit", unit.to_string())],
                    value: Value::Gauge(n),
                })
            })
            .collect(),
    );
    b.one("plume_events_open", Value::Gauge(geti(&m.events_open)));
    b.by(
        "plume_events_open_by_severity",
        "severity",
        m.events_open_by_severity.iter().enumerate().filter_map(|(slot, n)| {
            let n = geti(n);
            // severity `none` always; a severity once it has had an event
            (slot == 0 || n != 0).then(|| {
                let label = if slot == 0 {
                    "none".to_string()
                } else {
                    (slot - 1).to_string()
                };
                (label, Value::Gauge(n))
            })
        }),
    );
    b.by(
        "plume_devices",
        "state",
        [
            ("active".to_string(), Value::Gauge(geti(&m.devices_active))),
            ("passive".to_string(), Value::Gauge(geti(&m.devices_passive))),
        ],
    );
    b.add(
        "plume_shard_devices",
        m.shard_devices
            .iter()
            .enumerate()
            .flat_map(|(shard, [active, passive])| {
                [("active", geti(active)), ("passive", geti(passive))].map(|(state, n)| Point {
                    labels: vec![("shard", shard.to_string()), ("state", state.to_string())],
                    value: Value::Gauge(n),
                })
            })
            .collect(),
    );
    b.by(
        "plume_shard_batch_seconds",
        "shard",
        m.timings
            .shard_batch_seconds
            .iter()
            .enumerate()
            .map(|(shard, h)| (shard.to_string(), Value::Histogram(h.read()))),
    );
    b.one("plume_device_activations", Value::Counter(get(&m.activations)));
    b.one("plume_device_passivations", Value::Counter(get(&m.passivations)));
    b.one("plume_device_restarts", Value::Counter(get(&m.restarts)));
    b.one("plume_chunks_in_flight", Value::Gauge(geti(&m.chunks_in_flight)));
    b.one("plume_checkpoints", Value::Counter(get(&m.checkpoints)));
    b.one("plume_checkpoint_failures", Value::Counter(get(&m.checkpoint_failures)));
    if view.checkpoint_interval.is_some() {
        b.one(
            "plume_checkpoint_age_seconds",
            Value::GaugeSeconds(view.checkpoint_age().as_secs_f64()),
        );
        b.one(
            "plume_checkpoint_duration_seconds",
            Value::Histogram(m.timings.checkpoint_seconds.read()),
        );
        b.one(
            "plume_checkpoint_size_bytes",
            Value::Gauge(get(&m.last_checkpoint_bytes) as i64),
        );
    }
    b.one(
        "plume_checkpoint_pause_max_seconds",
        Value::GaugeSeconds(get(&m.checkpoint_pause_max_us) as f64 / 1e6),
    );
    b.one("plume_store_errors", Value::Counter(get(&m.store_errors)));
    let limits = m.limits();
    b.by(
        "plume_input_limit_hits",
        "limit",
        [
            ("max_payload_bytes", limits.payloads_oversized),
            ("max_fields", limits.payloads_too_many_fields),
            ("max_device_id_bytes", limits.device_ids_refused),
            ("plausible_time", limits.times_implausible),
            ("max_devices", limits.devices_refused),
        ]
        .map(|(limit, n)| (limit.to_string(), Value::Counter(n))),
    );
    let sinks = &view.sinks;
    b.by(
        "plume_sink_records",
        "sink",
        sinks
            .iter()
            .map(|s| (s.name.clone(), Value::Counter(get(&s.stats.records)))),
    );
    b.by(
        "plume_sink_errors",
        "sink",
        sinks
            .iter()
            .map(|s| (s.name.clone(), Value::Counter(get(&s.stats.errors)))),
    );
    b.by(
        "plume_sink_write_seconds",
        "sink",
        sinks
            .iter()
            .map(|s| (s.name.clone(), Value::Histogram(s.stats.write_seconds.read()))),
    );
    b.by(
        "plume_sink_queue_records",
        "sink",
        sinks.iter().map(|s| (s.name.clone(), Value::Gauge(s.waiting() as i64))),
    );
    // the sinks' own metrics (notifiers), one family per name
    let own: Vec<_> = sinks
        .iter()
        .filter_map(|s| s.counters.as_ref().map(|c| (s.name.clone(), c)))
        .collect();
    for info in METRICS.iter().filter(|m| m.name.starts_with("plume_notifier_")) {
        let mut points = Vec::new();
        for (sink, c) in &own {
            let value = match info.kind {
                "counter" => c
                    .counters()
                    .into_iter()
                    .find(|(n, _)| *n == info.name)
                    .map(|(_, v)| Value::Counter(v)),
                "gauge" => c
                    .gauges()
                    .into_iter()
                    .find(|(n, _)| *n == info.name)
                    .map(|(_, v)| Value::Gauge(v)),
                _ => c
                    .histograms()
                    .into_iter()
                    .find(|(n, _)| *n == info.name)
                    .map(|(_, v)| Value::Histogram(v)),
            };
            if let Some(value) = value {
                points.push(Point {
                    labels: vec![("sink", sink.clone())],
                    value,
                });
            }
        }
        b.add(info.name, points);
    }
    b.one(
        "plume_sources_not_ready",
        Value::Gauge(m.sources.iter().filter(|s| s.not_ready().is_some()).count() as i64),
    );
    let (rss, cpu) = process_usage();
    b.one("process_resident_memory_bytes", Value::Gauge(rss as i64));
    b.one("process_cpu_seconds", Value::CounterSeconds(cpu));
    b.0
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

/// The OpenMetrics text of `families`.
pub fn prometheus_text(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Encode(families)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
    text
}

#[derive(Debug)]
struct Encode(Vec<Family>);

/// One point, as `prometheus-client` encodes metrics.
#[derive(Debug)]
struct Encoded<'a>(&'a Value);

impl EncodeMetric for Encoded<'_> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        match self.0 {
            Value::Counter(n) => encoder.encode_counter::<NoLabelSet, _, u64>(n, None),
            Value::CounterSeconds(n) => encoder.encode_counter::<NoLabelSet, _, f64>(n, None),
            Value::Gauge(n) => encoder.encode_gauge(n),
            Value::GaugeSeconds(n) => encoder.encode_gauge(n),
            Value::Histogram(h) => {
                let buckets: Vec<(f64, u64)> = h
                    .bounds
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(h.counts.iter().copied())
                    .collect();
                encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.0 {
            Value::Counter(_) | Value::CounterSeconds(_) => MetricType::Counter,
            Value::Gauge(_) | Value::GaugeSeconds(_) => MetricType::Gauge,
            Value::Histogram(_) => MetricType::Histogram,
        }
    }
}

impl Collector for Encode {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        for family in &self.0 {
            let Some(first) = family.points.first() else { continue };
            let metric_type = Encoded(&first.value).metric_type();
            let descriptor = e.encode_descriptor(family.info.name, family.info.help, None, metric_type)?;
            if first.labels.is_empty() {
                Encoded(&first.value).encode(descriptor)?;
                continue;
            }
            let mut descriptor = descriptor;
            for point in &family.points {
                let labels: Vec<(String, String)> =
                    point.labels.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                Encoded(&point.value).encode(descriptor.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_an_otel_name_and_unit() {
        assert_eq!(
            otel_name(info("plume_checkpoint_duration_seconds")),
            ("plume.checkpoint.duration".to_string(), "s")
        );
        assert_eq!(otel_name(info("plume_readings")), ("plume.readings".to_string(), "1"));
        assert_eq!(
            otel_name(info("plume_dead_letters")),
            ("plume.dead_letters".to_string(), "1")
        );
        assert_eq!(
            otel_name(info("plume_notifier_delivery_seconds")),
            ("plume.notifier.delivery.duration".to_string(), "s")
        );
        assert_eq!(
            otel_name(info("plume_kafka_consumer_lag")),
            ("plume.kafka.consumer_lag".to_string(), "1")
        );
        assert_eq!(
            otel_name(info("process_resident_memory_bytes")),
            ("process.memory.usage".to_string(), "By")
        );
        let mut names: Vec<String> = METRICS.iter().map(|m| otel_name(m).0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "two metrics share an OpenTelemetry name");
    }
}
