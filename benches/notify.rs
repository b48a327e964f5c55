//! Notifications to a local webhook receiver (127.0.0.1, HTTP/1.1): throughput and latency from
//! the moment the notifier sink is handed the record (what the OutputHub does right after the
//! device's reading produced it) to the signed request arriving at the receiver.
//!
//! `cargo bench --bench notify` (prints one line per run; the numbers go to BENCHMARKS.md).
//!
//! `cargo bench --bench notify -- latency`: reading to webhook delivered, end to end, through
//! the whole plume process (`plume run`, stdin source, hysteresis, webhook route), in two
//! phases per setting:
//! 1. saturation: `PLUME_BENCH_LATENCY_BURST` readings (default 20 000) written to plume's
//!    stdin as fast as it takes them, every one producing an event (`event_start` or
//!    `event_end`, devices alternate above and below the thresholds) routed to the webhook; the
//!    rate is readings over the time from the first write to the last webhook received;
//! 2. the highest sustained rate: 3-second probes of paced readings (one write per reading),
//!    from the burst's rate down by a fifth until the probe's p99 stays under 100 ms (no queue
//!    builds), then two halvings of the gap to the failed rate (`PLUME_BENCH_LATENCY_MAX` skips
//!    the search);
//! 3. half of that rate (or `PLUME_BENCH_LATENCY_RATE`) for `PLUME_BENCH_LATENCY_SECS` seconds
//!    (default 10): each reading is timestamped as it is written, each webhook as the receiver
//!    gets it (the receiver checks the Standard Webhooks signature of every request and answers
//!    401 to a bad one); the webhook is matched to its reading by device and event time. p50,
//!    p99 and max are printed.
//!
//! After each, the floor at the same rate: a plain HTTP client (reqwest) in the bench process
//! posting signed requests one at a time to a receiver of the same kind, send to arrival.
//!
//! Settings (`PLUME_BENCH_LATENCY_SETTINGS`, comma-separated, default all): `durable` (a data
//! directory: the RocksDB outbox, checkpoints every 10 s, the default), `durable-1s`
//! (checkpoints every second), `memory` (`--no-checkpoints`: the in-memory outbox).

#[path = "../tests/common/receiver.rs"]
mod receiver;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plume::notify::{MemoryOutbox, NotifierParts, NotifierSink};
use plume::output::OutputRecord;
use plume::runtime::ports::Sink;
use plume::spec::{DurationSpec, NotifyPolicySpec, RetrySpec, SinkSpec, WebhookSinkSpec};

const LATENCY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One plume process for the latency mode, its stdin open.
struct LatencyRun {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    /// The next reading's number: event time (ms) = BASE + number, device = number % devices.
    next: u64,
    devices: u64,
    /// When each reading was written, by (device, event time).
    sent: HashMap<(String, i64), Instant>,
}

const BASE_TS: i64 = 1_767_225_600_000;

impl LatencyRun {
    /// The reading number `i`: device `d{i % devices}`; its k-th reading is above `enter` when k
    /// is even (an event starts) and below `exit` when k is odd (it ends).
    fn line(&self, i: u64) -> (String, i64, String) {
        let device = format!("d{}", i % self.devices);
        let k = i / self.devices;
        let ts = BASE_TS + i as i64;
        let pm25 = if k.is_multiple_of(2) { 40.0 } else { 10.0 };
        let line = format!("{{\"device\":\"{device}\",\"ts\":{ts},\"pm25\":{pm25}}}\n");
        (device, ts, line)
    }

    fn write(&mut self, count: u64) {
        use std::io::Write as _;
        let mut buf = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..count {
            let (device, ts, line) = self.line(self.next);
            self.next += 1;
            buf.extend_from_slice(line.as_bytes());
            keys.push((device, ts));
        }
        let now = Instant::now();
        for k in keys {
            self.sent.insert(k, now);
        }
        self.stdin.write_all(&buf).unwrap();
        self.stdin.flush().unwrap();
    }
}

/// (device, event time) of a webhook body: the event's end time for an end, else its start.
fn event_key(body: &str) -> Option<(String, i64)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let data = &v["data"];
    let ts = if data["type"] == "event_end" {
        data["end_ts"].as_i64()?
    } else {
        data["start_ts"].as_i64()?
    };
    Some((data["device"].as_str()?.to_string(), ts))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Writes readings at `rate` per second for `secs` seconds, one write per reading, waits for
/// their webhooks (after a second's pause for the previous phase to settle) and returns the
/// latencies, sorted.
fn paced(run: &mut LatencyRun, rx: &receiver::Receiver, rate: f64, secs: f64) -> Vec<Duration> {
    std::thread::sleep(Duration::from_secs(1));
    let before = rx.count();
    let total = (rate * secs) as u64;
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > Duration::from_micros(300) {
                std::thread::sleep(left - Duration::from_micros(200));
            } else {
                std::hint::spin_loop();
            }
        }
        run.write(1);
    }
    let waited = Instant::now();
    while rx.count() < before + total as usize {
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "{} of {total} webhooks",
            rx.count() - before
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let requests = rx.requests();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut per_second: Vec<Vec<Duration>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in &requests[before..] {
        let Some(key) = event_key(&r.body) else { continue };
        // the first request per event (a retry would be a later one)
        if !seen.insert(key.clone()) {
            continue;
        }
        let at = run.sent[&key];
        latencies.push(r.at - at);
        let second = (at - started).as_secs() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, Vec::new());
        }
        per_second[second].push(r.at - at);
    }
    assert_eq!(latencies.len() as u64, total, "one webhook per paced reading");
    latencies.sort();
    // the p99 of each second of the phase: a tail clustered in one second (a checkpoint) or
    // spread over all (the machine's scheduling)
    let p99s: Vec<String> = per_second
        .iter_mut()
        .map(|l| {
            l.sort();
            format!("{:.1}", ms(pct(l, 0.99)))
        })
        .collect();
    if secs >= 5.0 {
        println!("  p99 per second (ms): {}", p99s.join(" "));
    }
    latencies
}

/// The floor: a plain HTTP client (reqwest, as plume's notifier uses) in this process posting
/// Standard-Webhooks-signed requests to a receiver like the one plume's go to, at `rate` for
/// `secs`, one request at a time; the time from each send to its arrival at the receiver, sorted.
/// What one local HTTP hop costs on this machine at this moment, without plume.
fn floor(rate: f64, secs: f64) -> Vec<Duration> {
    use base64::Engine as _;
    let rx = receiver::Receiver::start(Arc::new(AtomicU64::new(0)), |r| {
        if receiver::verify_standard_webhook(r, LATENCY_SECRET, 300).is_ok() {
            receiver::Reply::ok()
        } else {
            receiver::Reply::status(401)
        }
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::new();
    let key = base64::engine::general_purpose::STANDARD
        .decode(LATENCY_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let url = rx.url("/floor");
    let total = (rate * secs) as u64;
    let mut sent = HashMap::new();
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let id = format!("floor-{i}");
        let body = format!(r#"{{"type":"event_start","id":"{id}"}}"#);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mac = ring::hmac::sign(&key, format!("{id}.{ts}.{body}").as_bytes());
        let signature = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.as_ref()));
        sent.insert(id.clone(), Instant::now());
        let response = client
            .post(&url)
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("the receiver answers");
        assert!(response.status().is_success(), "the floor's signature verifies");
    }
    let mut latencies: Vec<Duration> = rx
        .requests()
        .iter()
        .map(|r| r.at - sent[r.header("webhook-id").unwrap()])
        .collect();
    assert_eq!(latencies.len() as u64, total);
    latencies.sort();
    latencies
}

/// The latency mode (see the module docs).
fn latency() {
    let burst = env_or("PLUME_BENCH_LATENCY_BURST", 20_000);
    let secs = env_or("PLUME_BENCH_LATENCY_SECS", 10);
    let devices = env_or("PLUME_BENCH_LATENCY_DEVICES", 1000);
    let settings = std::env::var("PLUME_BENCH_LATENCY_SETTINGS").unwrap_or_else(|_| "durable,durable-1s,memory".into());
    for setting in settings.split(',') {
        let bad = Arc::new(AtomicU64::new(0));
        let rx = {
            let bad = bad.clone();
            receiver::Receiver::start(Arc::new(AtomicU64::new(0)), move |r| {
                // a receiver checks the signature before it takes the event
                if receiver::verify_standard_webhook(r, LATENCY_SECRET, 300).is_ok() {
                    receiver::Reply::ok()
                } else {
                    bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    receiver::Reply::status(401)
                }
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let interval = if setting == "durable-1s" { "1s" } else { "10s" };
        let pipeline = format!(
            r#"version: 1
pipeline: latency
sources:
  - stdin: {{}}
decode:
  format: json
  device: {{ field: device }}
  time: {{ field: ts, unit: ms }}
  fields:
    pm25: {{ type: float, required: true }}
operators:
  - hysteresis: {{ name: pm25_event, field: pm25, enter: 35, exit: 25 }}
outputs:
  - when: pm25_event
    events: [start, end]
    to:
      - webhook: {{ url: "{}", secret_env: PLUME_WEBHOOK_SECRET, timeout: 5s, max_age: 1h, backoff: 100ms }}
checkpoint: {{ interval: {interval} }}
shutdown: {{ flush: true, drain_timeout: 5m }}
"#,
            rx.url("/hook")
        );
        let file = dir.path().join("latency.yaml");
        std::fs::write(&file, pipeline).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_plume"));
        command.arg("run").arg(&file);
        if setting == "memory" {
            command.arg("--no-checkpoints");
        } else {
            command.arg("--data-dir").arg(dir.path().join("state"));
        }
        let mut child = command
            .env("PLUME_WEBHOOK_SECRET", LATENCY_SECRET)
            .env("PLUME_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("plume runs");
        let stdin = child.stdin.take().unwrap();
        let mut run = LatencyRun {
            child,
            stdin,
            next: 0,
            devices,
            sent: HashMap::new(),
        };
        let wait_for = |rx: &receiver::Receiver, n: usize, what: &str| {
            let started = Instant::now();
            while rx.count() < n {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "{what}: {} of {n} webhooks",
                    rx.count()
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        // warm-up: one event per device (plume started, connections open)
        run.write(devices);
        wait_for(&rx, devices as usize, "warm-up");
        // 1. saturation
        let before = rx.count();
        let started = Instant::now();
        let mut left = burst;
        while left > 0 {
            let n = left.min(1000);
            run.write(n);
            left -= n;
        }
        wait_for(&rx, before + burst as usize, "saturation");
        let max_rate = burst as f64 / started.elapsed().as_secs_f64();
        // 2. the highest paced rate plume keeps up with: from the burst's rate down by a fifth
        //    until a 3-second probe passes, then halving the gap to the failed rate twice
        let sustains = |run: &mut LatencyRun, rate: f64| {
            let l = paced(run, &rx, rate, 3.0);
            let ok = pct(&l, 0.99) < Duration::from_millis(100);
            println!(
                "  probe {setting:<10} {rate:>7.0}/s: p50 {:.2} ms, p99 {:.2} ms -> {}",
                ms(pct(&l, 0.50)),
                ms(pct(&l, 0.99)),
                if ok {
                    "sustained"
                } else {
                    "not sustained (p99 >= 100 ms: a queue builds)"
                }
            );
            ok
        };
        let sustained = match std::env::var("PLUME_BENCH_LATENCY_MAX")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            Some(max) => max,
            None => {
                let (mut failed, mut rate) = (max_rate, max_rate);
                while !sustains(&mut run, rate) {
                    failed = rate;
                    rate *= 0.8;
                    assert!(rate > 50.0, "plume sustains no rate above 50/s");
                }
                for _ in 0..2 {
                    let mid = (rate + failed) / 2.0;
                    if failed - rate < 0.02 * rate {
                        break;
                    }
                    if sustains(&mut run, mid) {
                        rate = mid;
                    } else {
                        failed = mid;
                    }
                }
                rate
            }
        };
        // 3. half of it, paced, measured
        let rate = std::env::var("PLUME_BENCH_LATENCY_RATE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(sustained / 2.0);
        let started = Instant::now();
        let latencies = paced(&mut run, &rx, rate, secs as f64);
        let took = started.elapsed();
        println!(
            "latency {setting:<10}: burst {max_rate:.0}/s, highest sustained {sustained:.0}/s; at {rate:.0}/s for {secs} s ({} readings, {:.1} s with the drain): reading -> webhook p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; bad signatures {}",
            latencies.len(),
            took.as_secs_f64(),
            ms(pct(&latencies, 0.50)),
            ms(pct(&latencies, 0.99)),
            ms(pct(&latencies, 0.999)),
            ms(*latencies.last().unwrap()),
            bad.load(std::sync::atomic::Ordering::Relaxed)
        );
        drop(run.stdin);
        assert!(run.child.wait().unwrap().success());
        let f = floor(rate, secs as f64);
        println!(
            "floor   {setting:<10}: a plain HTTP client to the same kind of receiver at {rate:.0}/s for {secs} s: send -> received p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            ms(pct(&f, 0.50)),
            ms(pct(&f, 0.99)),
            ms(pct(&f, 0.999)),
            ms(*f.last().unwrap())
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "latency") {
        return latency();
    }
    // SAFETY: single-threaded here, before anything reads the environment
    unsafe { std::env::set_var("PLUME_BENCH_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") };
    let n_devices = 200usize;
    let per_device = 25usize;
    // the in-memory outbox (runs without a data directory), then the RocksDB one (every put,
    // acknowledgement a synced write)
    for (concurrency, durable) in [(4u32, false), (16, false), (4, true)] {
        // a receiver of its own per run: the runs do not share its records
        let rx = receiver::Receiver::start(Arc::new(AtomicU64::new(0)), |_| receiver::Reply::ok());
        let dir = tempfile::tempdir().unwrap();
        let store = durable.then(|| plume::store::StateStore::open_tool(dir.path()).unwrap());
        let outbox: Arc<dyn plume::notify::Outbox> = match &store {
            Some(store) => Arc::new(plume::notify::StoreOutbox::open(store.clone(), "webhook:0").unwrap()),
            None => Arc::new(MemoryOutbox::new()),
        };
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let spec = SinkSpec::Webhook(WebhookSinkSpec {
            url: rx.url("/bench"),
            secret_env: Some("PLUME_BENCH_SECRET".into()),
            retry: RetrySpec {
                timeout: DurationSpec::from_millis(10_000),
                max_age: DurationSpec::from_millis(3_600_000),
                concurrency,
                backoff: DurationSpec::from_millis(100),
                breaker_open: DurationSpec::from_millis(1000),
                allow_insecure: false,
            },
            policy: NotifyPolicySpec::default(),
        });
        let mut sink = NotifierSink::build(
            &spec,
            NotifierParts {
                pipeline: "bench".into(),
                name: None,
                outbox,
                subscribers: None,
                drain_timeout: Duration::from_secs(600),
                dead_letters: None,
                policy_state: None,
            },
        )
        .unwrap()
        .unwrap();
        let before = rx.count();
        let start = Instant::now();
        for e in 0..per_device {
            let mut batch = Vec::new();
            for d in 0..n_devices {
                let id: u128 = (concurrency as u128 + 32 * durable as u128) << 100 | (d as u128) << 32 | e as u128;
                let device = format!("room-{d}");
                let ts = 1_700_000_000_000i64 + e as i64 * 60_000;
                batch.push(OutputRecord {
                    op: Some(1),
                    kind: plume::model::RecordKind::EventStart,
                    id,
                    device: Some(device.clone().into()),
                    json: format!(
                        r#"{{"v":1,"type":"event_start","operator":"pm25_event","device":"{device}","id":"{id:032x}","field":"pm25","start_ts":{ts},"value":40.5,"peak":48.0}}"#
                    )
                    .into(),
                    backfill: false,
                });
            }
            let now = Instant::now();
            {
                let mut s = sent.lock().unwrap();
                for r in &batch {
                    s.insert(r.id_hex(), now);
                }
            }
            sink.write(&batch).unwrap();
        }
        sink.finish().unwrap();
        let elapsed = start.elapsed();
        let requests = rx.requests();
        let sent = sent.lock().unwrap();
        let mut latencies: Vec<Duration> = requests[before..]
            .iter()
            .map(|r| r.at - sent[r.header("webhook-id").unwrap()])
            .collect();
        latencies.sort();
        let n = latencies.len();
        assert_eq!(n, n_devices * per_device);
        let pct = |p: f64| latencies[((n as f64 * p) as usize).min(n - 1)];
        println!(
            "webhook concurrency {concurrency}, {} outbox: {n} notifications in {:.2?}: {:.0}/s; latency p50 {:.2?}, p99 {:.2?}",
            if durable { "RocksDB" } else { "memory" },
            elapsed,
            n as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
    }
}
