//! Notifications to a local webhook receiver (127.0.0.1, HTTP/1.1): throughput and latency from
//! the moment the notifier sink is handed the record (what the OutputHub does right after the
//! device's reading produced it) to the signed request arriving at the receiver.
//!
//! `cargo bench --bench notify` (prints one line per run; the numbers go to BENCHMARKS.md).

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

fn main() {
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
                    ),
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
