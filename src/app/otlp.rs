//! OTLP export of a run's metrics and spans, configured by the standard `OTEL_*` environment
//! variables (OTLP over HTTP with protobuf bodies, the collector's port 4318).
//!
//! # Layout
//! - [`OtlpConfig::from_env`] reads the variables (no IO) and refuses what plume cannot do
//!   (`grpc`, `http/json`) before anything starts. Export is on when an endpoint is set
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the `…_TRACES_…` / `…_METRICS_…` one), unless
//!   `OTEL_SDK_DISABLED=true` or `OTEL_{TRACES,METRICS}_EXPORTER=none`.
//! - Spans ([`install_tracing`]): the OpenTelemetry SDK's tracer provider with a batch span
//!   processor and `opentelemetry-otlp`'s HTTP exporter, which sends with plume's reqwest
//!   ([`BlockingHttp`]). `crate::trace` records into it.
//! - Metrics ([`MetricsExporter`]): every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s) and once
//!   at the end, a thread encodes `super::metrics::snapshot` (the same snapshot `/metrics`
//!   encodes) as an OTLP `ExportMetricsServiceRequest`, cumulative, and posts it.
//! - Header values (`OTEL_EXPORTER_OTLP_HEADERS`, often an API key) are sent and never logged.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tracing::{info, warn};

use super::admin::AdminView;
use super::metrics::{Family, Value, otel_name};

/// The OTLP settings are not usable.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("{variable}={value}: plume exports OTLP over http/protobuf only (point it at the collector's HTTP port, 4318)")]
    Protocol { variable: String, value: String },
    #[error("{variable}: {reason}")]
    Invalid { variable: String, reason: String },
    #[error("the OTLP span exporter: {0}")]
    Exporter(String),
}

/// Where one signal goes.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    /// Sent with every request; never logged.
    headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("headers", &format!("{} header(s)", self.headers.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub traces: Option<Endpoint>,
    pub metrics: Option<Endpoint>,
    pub metric_interval: Duration,
}

fn parse_ms(variable: &str, value: &str) -> Result<Duration, OtlpError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| OtlpError::Invalid {
            variable: variable.to_string(),
            reason: format!("`{value}` is not a number of milliseconds"),
        })
}

/// `key=value,key2=value2`, values percent-decoded (the OpenTelemetry format).
fn parse_headers(variable: &str, value: &str) -> Result<Vec<(String, String)>, OtlpError> {
    let mut headers = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(OtlpError::Invalid {
                variable: variable.to_string(),
                // (the value may be a secret: only its position is named)
                reason: format!("entry {} is not `name=value`", headers.len() + 1),
            });
        };
        headers.push((
            k.trim().to_string(),
            percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy().into_owned(),
        ));
    }
    Ok(headers)
}

impl OtlpConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, OtlpError> {
        Self::from_vars(&|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// From `var` (a variable's value, `None` when unset or empty).
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, OtlpError> {
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let signal = |name: &str, path: &str, exporter_var: &str| -> Result<Option<Endpoint>, OtlpError> {
            if disabled || var(exporter_var).is_some_and(|v| v.trim() == "none") {
                return Ok(None);
            }
            for protocol_var in [format!("OTEL_EXPORTER_OTLP_{name}_PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL".into()] {
                if let Some(p) = var(&protocol_var) {
                    if p.trim() != "http/protobuf" {
                        return Err(OtlpError::Protocol {
                            variable: protocol_var,
                            value: p,
                        });
                    }
                    break;
                }
            }
            let url = if let Some(url) = var(&format!("OTEL_EXPORTER_OTLP_{name}_ENDPOINT")) {
                url
            } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                format!("{}/{path}", base.trim_end_matches('/'))
            } else {
                return Ok(None);
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(OtlpError::Invalid {
                    variable: format!("OTEL_EXPORTER_OTLP_{name}_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT"),
                    reason: format!("`{url}` is not an http:// or https:// URL"),
                });
            }
            let headers_var = [format!("OTEL_EXPORTER_OTLP_{name}_HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS".into()];
            let headers = match headers_var.iter().find_map(|v| var(v).map(|value| (v, value))) {
                Some((v, value)) => parse_headers(v, &value)?,
                None => Vec::new(),
            };
            let timeout_var = [format!("OTEL_EXPORTER_OTLP_{name}_TIMEOUT"), "OTEL_EXPORTER_OTLP_TIMEOUT".into()];
            let timeout = match timeout_var.iter().find_map(|v| var(v).map(|value| (v, value))) {
                Some((v, value)) => parse_ms(v, &value)?,
                None => Duration::from_secs(10),
            };
            Ok(Some(Endpoint { url, headers, timeout }))
        };
        let traces = signal("TRACES", "v1/traces", "OTEL_TRACES_EXPORTER")?;
        let metrics = signal("METRICS", "v1/metrics", "OTEL_METRICS_EXPORTER")?;
        let metric_interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(v) => parse_ms("OTEL_METRIC_EXPORT_INTERVAL", &v)?.max(Duration::from_millis(100)),
            None => Duration::from_secs(60),
        };
        Ok(OtlpConfig {
            traces,
            metrics,
            metric_interval,
        })
    }
}

/// plume's reqwest (blocking: the SDK's batch processor and the metrics thread are plain
/// threads) as the OTLP exporter's HTTP client.
#[derive(Debug, Clone)]
pub struct BlockingHttp(reqwest::blocking::Client);

impl BlockingHttp {
    pub fn new(timeout: Duration) -> Self {
        crate::notify::install_crypto_provider();
        // (a blocking client is made and dropped outside any async runtime: its own thread)
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_else(|_| reqwest::blocking::Client::new())
        })
        .join()
        .expect("building an HTTP client");
        BlockingHttp(client)
    }

    fn post(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<(), String> {
        let mut request = self
            .0
            .post(&endpoint.url)
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &endpoint.headers {
            request = request.header(k, v);
        }
        let response = request.send().map_err(|e| e.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let status = response.status();
        let body = response.bytes()?;
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()).into());
        }
        Ok(http::Response::builder().status(status).body(body)?)
    }
}

/// The resource every signal is sent with: `service.name` (`OTEL_SERVICE_NAME`, default
/// `plume`), `OTEL_RESOURCE_ATTRIBUTES`, and the SDK's own.
fn resource() -> opentelemetry_sdk::Resource {
    let builder = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("plume").build()
    }
}

/// Keeps the tracer provider; flushes and shuts it down when dropped (at the end of `main`).
pub struct TracingGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Sends `crate::trace`'s spans to the OTLP endpoint, when one is configured. Call outside any
/// async runtime.
pub fn install_tracing(config: &OtlpConfig) -> Result<TracingGuard, OtlpError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let Some(endpoint) = &config.traces else {
        return Ok(TracingGuard { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp::new(endpoint.timeout))
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint.url.clone())
        .with_headers(endpoint.headers.iter().cloned().collect::<HashMap<_, _>>())
        .with_timeout(endpoint.timeout)
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    info!(endpoint = %endpoint.url, "exporting spans over OTLP");
    Ok(TracingGuard {
        provider: Some(provider),
    })
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

fn resource_proto() -> Resource {
    let attributes = resource()
        .iter()
        .map(|(k, v)| {
            let value = match v {
                opentelemetry::Value::Bool(b) => any_value::Value::BoolValue(*b),
                opentelemetry::Value::I64(n) => any_value::Value::IntValue(*n),
                opentelemetry::Value::F64(n) => any_value::Value::DoubleValue(*n),
                other => any_value::Value::StringValue(other.to_string()),
            };
            KeyValue {
                key: k.to_string(),
                value: Some(AnyValue { value: Some(value) }),
            }
        })
        .collect();
    Resource {
        attributes,
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// `families` as one OTLP export request: counters as cumulative monotonic sums, gauges as
/// gauges, histograms as cumulative explicit-bucket histograms; `start` is the run's start.
pub fn export_request(families: &[Family], start: SystemTime, now: SystemTime) -> ExportMetricsServiceRequest {
    let (start_ns, now_ns) = (unix_nanos(start), unix_nanos(now));
    let metrics = families
        .iter()
        .filter_map(|family| {
            let (name, unit) = otel_name(family.info);
            let attributes = |p: &super::metrics::Point| -> Vec<KeyValue> {
                p.labels.iter().map(|(k, v)| kv(k, v.clone())).collect()
            };
            let number = |p: &super::metrics::Point, value: number_data_point::Value| NumberDataPoint {
                attributes: attributes(p),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                value: Some(value),
                ..Default::default()
            };
            let first = family.points.first()?;
            let data = match &first.value {
                Value::Counter(_) | Value::CounterSeconds(_) => metric::Data::Sum(Sum {
                    data_points: family
                        .points
                        .iter()
                        .map(|p| {
                            let v = match p.value {
                                Value::Counter(n) => number_data_point::Value::AsInt(n as i64),
                                Value::CounterSeconds(s) => number_data_point::Value::AsDouble(s),
                                _ => number_data_point::Value::AsInt(0),
                            };
                            number(p, v)
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Value::Gauge(_) | Value::GaugeSeconds(_) => metric::Data::Gauge(Gauge {
                    data_points: family
                        .points
                        .iter()
                        .map(|p| {
                            let v = match p.value {
                                Value::Gauge(n) => number_data_point::Value::AsInt(n),
                                Value::GaugeSeconds(s) => number_data_point::Value::AsDouble(s),
                                _ => number_data_point::Value::AsInt(0),
                            };
                            NumberDataPoint {
                                start_time_unix_nano: 0,
                                ..number(p, v)
                            }
                        })
                        .collect(),
                }),
                Value::Histogram(_) => metric::Data::Histogram(Histogram {
                    data_points: family
                        .points
                        .iter()
                        .filter_map(|p| match &p.value {
                            Value::Histogram(h) => Some(HistogramDataPoint {
                                attributes: attributes(p),
                                start_time_unix_nano: start_ns,
                                time_unix_nano: now_ns,
                                count: h.count,
                                sum: Some(h.sum),
                                bucket_counts: h.counts.clone(),
                                explicit_bounds: h.bounds.clone(),
                                ..Default::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            };
            Some(Metric {
                name,
                description: family.info.help.to_string(),
                unit: unit.to_string(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource_proto()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: crate::trace::SCOPE.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Posts the run's metrics every interval and once more when dropped.
pub struct MetricsExporter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsExporter {
    pub fn start(endpoint: Endpoint, interval: Duration, view: AdminView) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let start = SystemTime::now() - view.started.elapsed();
        let thread = std::thread::Builder::new()
            .name("otlp metrics".into())
            .spawn(move || {
                let http = BlockingHttp::new(endpoint.timeout);
                info!(endpoint = %endpoint.url, interval_ms = interval.as_millis() as u64, "exporting metrics over OTLP");
                let mut failing = false;
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(interval),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    let request = export_request(&super::metrics::snapshot(&view), start, SystemTime::now());
                    match http.post(&endpoint, prost::Message::encode_to_vec(&request)) {
                        Ok(()) if failing => {
                            failing = false;
                            info!(endpoint = %endpoint.url, "otlp metrics export works again");
                        }
                        Ok(()) => {}
                        Err(error) if !failing => {
                            failing = true;
                            warn!(endpoint = %endpoint.url, %error, "otlp metrics export failed (retried at the next interval)");
                        }
                        Err(_) => {}
                    }
                    if last {
                        return;
                    }
                }
            })
            .expect("spawning the OTLP metrics thread");
        MetricsExporter {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for MetricsExporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<OtlpConfig, OtlpError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtlpConfig::from_vars(&|name| vars.get(name).cloned())
    }

    #[test]
    fn endpoints_follow_the_opentelemetry_variables() {
        let c = config(&[]).unwrap();
        assert!(c.traces.is_none() && c.metrics.is_none(), "off unless an endpoint is set");
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret,x-team=air"),
        ])
        .unwrap();
        let traces = c.traces.unwrap();
        assert_eq!(traces.url, "http://collector:4318/v1/traces");
        assert_eq!(
            traces.headers,
            vec![
                ("authorization".to_string(), "Bearer s3cret".to_string()),
                ("x-team".to_string(), "air".to_string())
            ]
        );
        assert!(!format!("{traces:?}").contains("s3cret"), "headers are never printed");
        assert_eq!(c.metrics.unwrap().url, "http://collector:4318/v1/metrics");
        assert_eq!(c.metric_interval, Duration::from_secs(60));
        // a signal's own endpoint is used as it is; `none` and the SDK switch turn signals off
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
        ])
        .unwrap();
        assert_eq!(c.metrics.unwrap().url, "http://m:9/x");
        assert!(c.traces.is_none());
        assert_eq!(c.metric_interval, Duration::from_millis(250));
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert!(c.traces.is_none() && c.metrics.is_none());
    }

    #[test]
    fn what_plume_cannot_do_is_refused_with_the_variable() {
        let e = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && e.contains("http/protobuf"), "{e}");
        let e = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err().to_string();
        assert!(e.contains("not an http:// or https:// URL"), "{e}");
        let e = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS") && e.contains("entry 1"), "{e}");
        let e = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("OTEL_METRIC_EXPORT_INTERVAL"), "{e}");
    }
}
