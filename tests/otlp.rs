//! OTLP export (issue 17): a local collector decodes what plume sends with the OpenTelemetry
//! protobuf definitions (the `opentelemetry-proto` crate): the metric names and values, a
//! checkpoint span with its phases, a notifier delivery span with its retries against a
//! receiver that fails every first attempt, the event span it belongs to, and log lines that
//! carry the delivery's trace id.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use common::*;
use receiver::{Receiver, Reply};

const SECRET_HEADER: &str = "Bearer otlp-test-token-4b1d";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The value of a sum or gauge metric's data point whose attributes include `labels`.
fn number(metric: &Metric, labels: &[(&str, &str)]) -> Option<f64> {
    let points = match metric.data.as_ref()? {
        metric::Data::Sum(s) => &s.data_points,
        metric::Data::Gauge(g) => &g.data_points,
        _ => return None,
    };
    let point = points.iter().find(|p| {
        labels
            .iter()
            .all(|(k, v)| string_attribute(&p.attributes, k).as_deref() == Some(*v))
    })?;
    match point.value? {
        number_data_point::Value::AsInt(n) => Some(n as f64),
        number_data_point::Value::AsDouble(d) => Some(d),
    }
}

#[test]
fn plume_exports_metrics_and_spans_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let generated = aq1_input(dir.path(), 20, 8_000, 3);
    let mut lines = std::fs::read_to_string(&generated).unwrap();
    let good = lines.lines().count();
    lines.push_str("not json\n{\"device\":\"x\"}\n");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, &lines).unwrap();
    // the webhook fails every delivery's first attempt: each is retried once. The very first
    // answer is slow, so the run outlasts several export intervals however fast the machine
    // processes the readings: the exports seen include periodic ones, not only the final one.
    let answers = AtomicU64::new(0);
    let webhook = Receiver::start(Arc::new(AtomicU64::new(0)), move |r| {
        let first = answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        if r.attempt > 0 {
            Reply::ok()
        } else if first {
            Reply::status(503).delayed(std::time::Duration::from_millis(500))
        } else {
            Reply::status(503)
        }
    });
    let collector = Receiver::start(Arc::new(AtomicU64::new(0)), |_| Reply::ok());
    let output = plume()
        .args(["run", "pipelines/webhook-aq1.yaml", "--checkpoint-interval", "100ms"])
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .env("PLUME_OUTPUT", dir.path().join("out.jsonl"))
        .env("PLUME_WEBHOOK_URL", webhook.url("/aq1"))
        .env("PLUME_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("PLUME_WEBHOOK_BACKOFF", "10ms")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url(""))
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization={}", SECRET_HEADER.replace(' ', "%20")),
        )
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("PLUME_LOG", "warn,plume::notify=debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    assert!(!log.contains("otlp-test-token"), "a header value was logged:\n{log}");

    let requests = collector.requests();
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"), "{}", r.path);
        assert_eq!(r.header("authorization"), Some(SECRET_HEADER), "{}", r.path);
    }

    // metrics: the last export holds the run's final counts
    let metrics: Vec<ExportMetricsServiceRequest> = requests
        .iter()
        .filter(|r| r.path == "/v1/metrics")
        .map(|r| ExportMetricsServiceRequest::decode(r.raw.as_slice()).expect("a valid OTLP metrics request"))
        .collect();
    assert!(metrics.len() >= 2, "{} metric exports", metrics.len());
    let last = &metrics.last().unwrap().resource_metrics[0];
    let resource = &last.resource.as_ref().unwrap().attributes;
    assert_eq!(string_attribute(resource, "service.name").as_deref(), Some("plume"));
    let scope = &last.scope_metrics[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "plume");
    let by_name = |name: &str| {
        scope.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| {
            panic!(
                "no {name} in {:?}",
                scope.metrics.iter().map(|m| &m.name).collect::<Vec<_>>()
            )
        })
    };
    assert_eq!(number(by_name("plume.readings"), &[]), Some(good as f64));
    assert_eq!(number(by_name("plume.dead_letters"), &[]), Some(2.0));
    assert_eq!(
        number(
            by_name("plume.source.readings"),
            &[("source", &format!("file:{}", input.display()))]
        ),
        Some(good as f64)
    );
    // the file was read to its end
    assert_eq!(number(by_name("plume.source.backlog"), &[("unit", "bytes")]), Some(0.0));
    let readings = by_name("plume.readings");
    assert_eq!(readings.unit, "1");
    match readings.data.as_ref().unwrap() {
        metric::Data::Sum(s) => assert!(s.is_monotonic && s.aggregation_temporality == 2, "cumulative"),
        other => panic!("plume.readings is a sum, not {other:?}"),
    }
    let checkpoint = by_name("plume.checkpoint.duration");
    assert_eq!(checkpoint.unit, "s");
    match checkpoint.data.as_ref().unwrap() {
        metric::Data::Histogram(h) => {
            let p = &h.data_points[0];
            assert!(p.count >= 1);
            assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
            assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        }
        other => panic!("plume.checkpoint.duration is a histogram, not {other:?}"),
    }
    let webhook_requests = webhook.requests();
    let acknowledged = webhook_requests.iter().filter(|r| r.attempt > 0).count();
    assert!(acknowledged >= 3, "{acknowledged} deliveries");
    let sink = [("sink", "webhook")];
    assert_eq!(
        number(by_name("plume.notifier.deliveries"), &[]),
        Some(acknowledged as f64),
        "{:?}",
        sink
    );
    assert_eq!(
        number(by_name("plume.notifier.retries"), &[]),
        Some(acknowledged as f64)
    );
    assert_eq!(number(by_name("plume.notifier.outbox_pending"), &[]), Some(0.0));
    match by_name("plume.notifier.delivery.duration").data.as_ref().unwrap() {
        metric::Data::Histogram(h) => assert_eq!(h.data_points[0].count, acknowledged as u64),
        other => panic!("{other:?}"),
    }
    for name in [
        "plume.records",
        "plume.operator.records",
        "plume.devices",
        "process.memory.usage",
        "process.cpu.time",
    ] {
        by_name(name);
    }

    // spans
    let spans: Vec<Span> = requests
        .iter()
        .filter(|r| r.path == "/v1/traces")
        .flat_map(|r| {
            let request = ExportTraceServiceRequest::decode(r.raw.as_slice()).expect("a valid OTLP trace request");
            request
                .resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans.into_iter().flat_map(|ss| ss.spans))
        })
        .collect();
    let named = |name: &'static str| spans.iter().filter(move |s| s.name == name);
    let children = |parent: &Span| -> BTreeSet<String> {
        spans
            .iter()
            .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
            .map(|s| s.name.clone())
            .collect()
    };
    // a checkpoint with its phases: the barrier (each shard's snapshot under it), the sinks
    // made durable, the store write
    let checkpoint = named("checkpoint")
        .find(|c| children(c).len() == 3)
        .unwrap_or_else(|| panic!("no checkpoint span with its three phases among {} spans", spans.len()));
    assert_eq!(
        children(checkpoint),
        ["checkpoint barrier", "checkpoint sinks flush", "checkpoint write"]
            .map(String::from)
            .into()
    );
    assert!(int_attribute(&checkpoint.attributes, "plume.checkpoint.id").is_some_and(|id| id >= 1));
    let barrier = spans
        .iter()
        .find(|s| s.name == "checkpoint barrier" && s.parent_span_id == checkpoint.span_id)
        .unwrap();
    assert!(children(barrier).contains("shard snapshot"));
    assert!(barrier.start_time_unix_nano >= checkpoint.start_time_unix_nano);
    assert!(barrier.end_time_unix_nano <= checkpoint.end_time_unix_nano);
    assert_eq!(named("restore").count(), 1);

    // every delivery: a span in the trace of its event (trace id = the webhook-id the receiver
    // saw), under the event's span, with its failed first attempt and its retry as span events
    let deliveries: Vec<&Span> = named("notifier delivery").collect();
    assert_eq!(deliveries.len(), acknowledged, "one delivery span per delivery");
    for r in webhook_requests.iter().filter(|r| r.attempt > 0) {
        let id = r.header("webhook-id").unwrap();
        let delivery = deliveries
            .iter()
            .find(|s| hex(&s.trace_id) == id)
            .unwrap_or_else(|| panic!("no delivery span in the trace of event {id}"));
        let events: Vec<&str> = delivery.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(events, ["attempt failed", "retry scheduled"], "{id}");
        let failed = &delivery.events[0];
        assert!(
            string_attribute(&failed.attributes, "error").is_some_and(|e| e.contains("503")),
            "{failed:?}"
        );
        assert_eq!(int_attribute(&delivery.attributes, "plume.delivery.attempts"), Some(2));
        let event = spans
            .iter()
            .find(|s| s.span_id == delivery.parent_span_id && s.trace_id == delivery.trace_id)
            .unwrap_or_else(|| panic!("the delivery of {id} has no event span as its parent"));
        assert!(
            event.name == "event_start" || event.name == "event_end",
            "{}",
            event.name
        );
        assert_eq!(
            string_attribute(&event.attributes, "plume.event.id").as_deref(),
            Some(id)
        );
        // and the log line of the delivery carries its trace id
        assert!(
            log.lines()
                .any(|l| l.contains("delivered") && l.contains(&format!("trace_id={id}"))),
            "no `delivered` log line with trace_id={id}:\n{log}"
        );
    }
}
