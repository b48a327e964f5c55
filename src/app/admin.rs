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
//! - [`AdminView::metrics_text`] encodes `super::metrics::snapshot` (read on each scrape) with
//!   the `prometheus-client` crate; [`AdminView::readiness`] lists what keeps the run from being
//!   ready.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
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
    /// The pipeline's operator names, by index (labels of the per-operator counts).
    pub operators: Vec<String>,
}

impl std::fmt::Debug for AdminView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminView").finish_non_exhaustive()
    }
}

pub use super::metrics::{METRICS, MetricInfo};

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

    pub(super) fn checkpoint_age(&self) -> Duration {
        let last = self.metrics.last_checkpoint_at_ms.load(Ordering::Relaxed);
        if last == 0 {
            self.started.elapsed()
        } else {
            Duration::from_millis(crate::clock::now_ms().saturating_sub(last).max(0) as u64)
        }
    }

    /// The OpenMetrics text of every metric in [`METRICS`].
    pub fn metrics_text(&self) -> String {
        super::metrics::prometheus_text(super::metrics::snapshot(self))
    }
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
