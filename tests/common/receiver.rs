//! A local HTTP receiver for the notifier tests and bench: HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c) on 127.0.0.1, recording every request and answering what the test says.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival order across every receiver sharing the same sequence counter.
    pub seq: u64,
    pub at: Instant,
    pub version: hyper::Version,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as they came (protobuf bodies are not text).
    pub raw: Vec<u8>,
    /// How many earlier requests carried the same `webhook-id` (0: the first).
    pub attempt: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Wait this long before answering (a slow or hung receiver).
    pub delay: Duration,
    /// Answer nothing: close the connection instead (a receiver that resets connections).
    pub reset: bool,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            reset: false,
        }
    }
    /// No answer: the connection is closed (after `delay`, if any).
    pub fn reset() -> Self {
        let mut r = Self::status(500);
        r.reset = true;
        r
    }
    pub fn ok() -> Self {
        Self::status(200)
    }
    pub fn json(status: u16, body: &str) -> Self {
        let mut r = Self::status(status);
        r.headers.push(("content-type", "application/json".into()));
        r.body = body.to_string();
        r
    }
    pub fn with_header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.push((k, v.to_string()));
        self
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

pub type Behaviour = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts on a free port.
    pub fn start(seq: Arc<AtomicU64>, behaviour: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(0, seq, behaviour)
    }

    /// Starts on `port` (0: any).
    pub fn start_on(
        port: u16,
        seq: Arc<AtomicU64>,
        behaviour: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("binding the receiver");
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        // requests so far per webhook-id (a scan of every recorded request per request made
        // long runs quadratic: the receiver, not plume, became the bottleneck of the benches)
        let attempts: Attempts = Arc::default();
        let behaviour: Behaviour = Arc::new(behaviour);
        let (reqs, b) = (requests.clone(), behaviour.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reqs, b, seq, attempts) = (reqs.clone(), b.clone(), seq.clone(), attempts.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (reqs, b, seq, attempts) = (reqs.clone(), b.clone(), seq.clone(), attempts.clone());
                        async move { handle(req, reqs, b, seq, attempts).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            requests,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

type Attempts = Arc<Mutex<std::collections::HashMap<String, usize>>>;

async fn handle(
    req: Request<Incoming>,
    reqs: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Behaviour,
    seq: Arc<AtomicU64>,
    attempts: Attempts,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let version = req.version();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = {
        let mut all = reqs.lock().unwrap();
        let id = headers.iter().find(|(k, _)| k == "webhook-id").map(|(_, v)| v.clone());
        let attempt = match id {
            Some(id) => {
                let mut attempts = attempts.lock().unwrap();
                let n = attempts.entry(id).or_default();
                *n += 1;
                *n - 1
            }
            None => 0,
        };
        let r = Recorded {
            seq: seq.fetch_add(1, Ordering::SeqCst),
            at: Instant::now(),
            version,
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            raw: body.to_vec(),
            attempt,
        };
        all.push(r.clone());
        r
    };
    let reply = behaviour(&recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.reset {
        // an error from the service: hyper closes the connection without an answer
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by the test",
        ));
    }
    let mut response = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        response = response.header(*k, v);
    }
    Ok(response.body(Full::new(Bytes::from(reply.body))).unwrap())
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// An independent Standard Webhooks verifier (from the specification): verifies one request as
/// a receiver does: the id, a timestamp within `tolerance_s`, and one of the space-separated
/// `v1,` signatures equal to
/// base64(HMAC-SHA256(base64decode(secret without `whsec_`), "{id}.{timestamp}.{body}")).
/// Returns the id.
pub fn verify_standard_webhook(r: &Recorded, secret: &str, tolerance_s: i64) -> Result<String, String> {
    let id = r.header("webhook-id").ok_or("no webhook-id")?;
    let ts = r.header("webhook-timestamp").ok_or("no webhook-timestamp")?;
    let sigs = r.header("webhook-signature").ok_or("no webhook-signature")?;
    let ts_n: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts_n).abs() > tolerance_s {
        return Err(format!("timestamp {ts_n} outside the tolerance"));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let signed = format!("{id}.{ts}.{}", r.body);
    for sig in sigs.split(' ') {
        if let Some(b64) = sig.strip_prefix("v1,")
            && let Ok(mac) = base64::engine::general_purpose::STANDARD.decode(b64)
            && ring::hmac::verify(&key, signed.as_bytes(), &mac).is_ok()
        {
            return Ok(id.to_string());
        }
    }
    Err("no signature matches".into())
}
