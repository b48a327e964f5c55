//! MQTT into the full pipeline, against mosquitto and the embedded broker (`cargo bench --bench
//! mqtt`; mosquitto must be installed: `scripts/setup`).
//!
//! - Throughput: plume runs `pipelines/mqtt-aq1.yaml` (QoS 0 or 1); one publisher sends N aq1
//!   readings (1000 devices) as fast as the broker takes them; timed from the first publish until
//!   plume's MQTT source has handed all N to the routers (the time its progress line gives for
//!   the last hand-off; the line itself comes after 100 ms of idling). Readings lost on the way
//!   (possible at QoS 0) are reported.
//! - Latency: a pipeline whose `smooth` operator emits a result for every reading, published by
//!   the MQTT sink (QoS 0) to the same broker; readings are published at a steady rate and the
//!   time from a reading's publish to the arrival of its result is measured (p50, p99).
//!
//! - Each throughput and latency run has a fresh data directory and session, with the ingest log
//!   (`durable: true`) and without it; throughput runs alternate the two and the plain client
//!   (below) `PLUME_BENCH_MQTT_ROUNDS` times (default 3), the order rotating from round to round,
//!   and the medians and their ratio are printed at the end.
//! - The baseline, in the same rounds: a plain rumqttc client (clean session, the same QoS,
//!   rumqttc's automatic acks, counting the messages) subscribed to the same broker and filter,
//!   with the same publisher, timed the same way (first publish to the last message received).
//!   The embedded broker lives in plume's process, so its baseline runs the same broker (plume's
//!   `connectors::mqtt::broker`, the same settings) in this process.
//!   `PLUME_BENCH_PERF=DIR` records plume's first durable QoS 1 run per broker with `perf record -g`.
//!
//! Subsets: `PLUME_BENCH_MQTT_BROKERS=embedded` (or `mosquitto`), `PLUME_BENCH_MQTT_QOS=1`,
//! `PLUME_BENCH_MQTT_NO_LATENCY=1`. Two builds side by side: `PLUME_BENCH_MQTT_OTHER_BUILD=BINARY`
//! runs that binary's durable runs in the durable-off slot (same rounds, same rotation) and
//! reports this build / the other, paired round by round.
//! Sizes: `PLUME_BENCH_MQTT_N` readings (default 100 000), latency at `PLUME_BENCH_MQTT_RATE`
//! readings/s (default 1000) for 5 s.

#[path = "../tests/common/mqtt.rs"]
mod mqtt_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

enum Broker {
    Mosquitto(Mosquitto),
    /// The port plume's embedded broker takes, and the port of the same broker in this process
    /// (for the plain client), started on first use.
    Embedded(u16, std::sync::OnceLock<u16>),
}

impl Broker {
    fn port(&self) -> u16 {
        match self {
            Broker::Mosquitto(m) => m.port,
            Broker::Embedded(p, _) => *p,
        }
    }
    /// Where the plain client's run goes: the same broker, or the same embedded broker in this
    /// process.
    fn plain_port(&self) -> u16 {
        match self {
            Broker::Mosquitto(m) => m.port,
            Broker::Embedded(_, here) => *here.get_or_init(|| {
                let port = free_port();
                plume::connectors::mqtt::broker::start(
                    &plume::spec::EmbeddedBrokerSpec {
                        port,
                        bind: "127.0.0.1".into(),
                    },
                    &[],
                )
                .expect("the embedded broker starts in the bench");
                port
            }),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Broker::Mosquitto(_) => "mosquitto",
            Broker::Embedded(..) => "embedded",
        }
    }
    /// The pipeline text with the embedded broker added when it is the one.
    fn pipeline(&self, text: &str) -> String {
        match self {
            Broker::Mosquitto(_) => text.to_string(),
            Broker::Embedded(port, _) => format!("{text}\nembedded_broker: {{ port: {port} }}\n"),
        }
    }
}

fn brokers(dir: &Path) -> Vec<Broker> {
    let m = dir.join("mosquitto");
    std::fs::create_dir_all(&m).unwrap();
    vec![
        Broker::Mosquitto(Mosquitto::start(&m)),
        Broker::Embedded(free_port(), Default::default()),
    ]
}

/// `plume run` of `pipeline` against the broker on `port`: this build's, or `other_build`.
fn run_plume(pipeline: &Path, port: u16, out: &Path, other_build: Option<&Path>) -> Plume {
    let url = format!("mqtt://127.0.0.1:{port}");
    match other_build {
        None => Plume::run(pipeline, &url, out),
        Some(bin) => Plume::spawn_binary(bin, pipeline, &url, out, &[], &[]),
    }
}

/// One throughput run with a fresh data directory and session; returns readings/s.
fn throughput(
    dir: &Path,
    broker: &Broker,
    qos: u8,
    durable: bool,
    round: usize,
    messages: &[(String, Vec<u8>)],
    other_build: Option<&Path>,
) -> f64 {
    let run = format!(
        "{}-{qos}-{durable}-{round}{}",
        broker.name(),
        if other_build.is_some() { "-other" } else { "" }
    );
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/mqtt-aq1.yaml"))
        .unwrap()
        .replace(
            "qos: 1\n",
            &format!("qos: {qos}\n      client_id: bench-{run}\n      durable: {durable}\n"),
        );
    let file = dir.join(format!("tp-{run}.yaml"));
    std::fs::write(&file, broker.pipeline(&text)).unwrap();
    let port = broker.port();
    let out = dir.join(format!("tp-{run}.jsonl"));
    let plume = run_plume(&file, port, &out, other_build);
    plume.wait_subscribed();
    let perf = std::env::var_os("PLUME_BENCH_PERF")
        .filter(|_| round == 0 && qos == 1 && durable)
        .map(|d| {
            std::process::Command::new("perf")
                .args(["record", "-F", "499", "-g", "-p", &plume.pid().to_string(), "-o"])
                .arg(Path::new(&d).join(format!("mqtt-{}.data", broker.name())))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf runs")
        });
    let cpu_before = cpu_of(plume.pid());
    let q = if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    let n = messages.len() as u64;
    let started = Instant::now();
    let started_unix_ms = plume::clock::now_ms() as u64;
    publish_all(port, &format!("bench-pub-{qos}"), messages, q);
    let published = started.elapsed();
    // until every reading is in, or nothing more came for 3 s (lost at QoS 0)
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let now = plume.messages();
        if now >= n {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let counted = plume.messages();
    let secs = if counted >= n {
        // when the source handed the last one on (its progress line comes after 100 ms idle)
        match plume.last_handed_unix_ms() {
            Some(t) if t >= started_unix_ms => (t - started_unix_ms) as f64 / 1000.0,
            _ => started.elapsed().as_secs_f64(),
        }
    } else {
        (last_change - started).as_secs_f64()
    };
    let cpu = cpu_of(plume.pid()) - cpu_before;
    if let Some(mut p) = perf {
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    let log = if qos > 0 && counted < n {
        // nothing is lost at QoS 1: plume stopped taking messages; it would not stop on Ctrl-C
        // either, so it is killed and its log shown
        let log = plume.kill();
        println!("           plume STALLED at {counted} of {n} at QoS {qos}; its log:\n{log}");
        log
    } else {
        plume.interrupt()
    };
    let rate = counted as f64 / secs;
    println!(
        "throughput {:<9} qos {qos} durable {:<5} round {round}{}: {counted} of {n} readings in {secs:.2} s = {rate:.0} readings/s (publishing took {:.2} s; plume CPU {cpu:.2} s)",
        broker.name(),
        durable,
        if other_build.is_some() { " (other build)" } else { "" },
        published.as_secs_f64()
    );
    if let Some(stopped) = log.lines().find(|l| l.contains("mqtt source stopped")) {
        let fields: Vec<&str> = stopped
            .split_whitespace()
            .filter(|f| {
                ["messages=", "log_appends=", "log_append_ms="]
                    .iter()
                    .any(|k| f.starts_with(k))
            })
            .collect();
        println!("           {}", fields.join(" "));
    }
    let _ = std::fs::remove_dir_all(out.with_extension("state"));
    rate
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The baseline: a plain rumqttc client subscribed to the same filter with the same QoS (automatic
/// acks, persistent session), counting messages, while the same publisher sends the same
/// messages. Returns readings/s.
fn plain(broker: &Broker, qos: u8, round: usize, messages: &[(String, Vec<u8>)]) -> f64 {
    let port = broker.plain_port();
    let q = if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    let n = messages.len() as u64;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let client_id = format!("plain-{}-{qos}-{round}", broker.name());
    let subscriber = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
            // a clean session: a persistent one would make the broker keep queueing every later
            // round's messages for it
            o.set_clean_session(true)
                .set_max_packet_size(1 << 20, 1 << 20)
                .set_keep_alive(Duration::from_secs(30));
            let (client, mut connection) = rumqttc::Client::new(o, 1000);
            client.subscribe("aq1/+", q).unwrap();
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                        if received.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == n {
                            let _ = client.disconnect();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    publish_all(port, &format!("bench-plain-pub-{qos}-{round}"), messages, q);
    let published = started.elapsed();
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let now = received.load(std::sync::atomic::Ordering::Relaxed);
        if now >= n {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let counted = received.load(std::sync::atomic::Ordering::Relaxed);
    let secs = if counted >= n {
        started.elapsed().as_secs_f64()
    } else {
        (last_change - started).as_secs_f64()
    };
    if counted < n {
        // a QoS 0 loss: the subscriber is still connected; it ends with the process
        drop(subscriber);
    } else {
        subscriber.join().unwrap();
    }
    let rate = counted as f64 / secs;
    println!(
        "throughput {:<9} qos {qos} plain client  round {round}: {counted} of {n} readings in {secs:.2} s = {rate:.0} readings/s (publishing took {:.2} s)",
        broker.name(),
        published.as_secs_f64()
    );
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn latency(dir: &Path, broker: &Broker, rate: u64, durable: bool, other_build: Option<&Path>) {
    let port = broker.port();
    let text = format!(
        r#"version: 1
pipeline: mqtt-latency
sources:
  - mqtt: {{ url: "mqtt://127.0.0.1:{port}", topic: "lat-in/{{device}}", qos: 1, client_id: "lat-{durable}", durable: {durable} }}
decode:
  format: json
  device: {{ topic: true }}
  time: {{ field: ts, unit: ms }}
  fields:
    pm25: {{}}
operators:
  - smooth: {{ name: s, field: pm25, method: ewma, alpha: 0.3, emit: true }}
outputs:
  - when: s
    to:
      - mqtt: {{ url: "mqtt://127.0.0.1:{port}", topic: "lat-out/{{device}}", qos: 0 }}
"#
    );
    let other = if other_build.is_some() { "-other" } else { "" };
    let file = dir.join(format!("lat-{}-{durable}{other}.yaml", broker.name()));
    std::fs::write(&file, broker.pipeline(&text)).unwrap();
    let out = dir.join(format!("lat-out-{}-{durable}{other}.jsonl", broker.name()));
    let plume = run_plume(&file, port, &out, other_build);
    plume.wait_subscribed();
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Default::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Default::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let (sent, latencies) = (sent.clone(), latencies.clone());
        std::thread::spawn(move || {
            let (client, mut connection) =
                rumqttc::Client::new(rumqttc::MqttOptions::new("lat-sub", "127.0.0.1", port), 1000);
            client.subscribe("lat-out/#", rumqttc::QoS::AtMostOnce).unwrap();
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let at = Instant::now();
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        if let Some(t) = sent.lock().unwrap().get(&v["ts"].as_i64().unwrap()) {
                            latencies.lock().unwrap().push(at - *t);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
    }
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let total = rate * 5;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, mut events) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("lat-pub", "127.0.0.1", port), 1000);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let started = Instant::now();
        for i in 0..total as i64 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let payload = format!(r#"{{"ts":{},"pm25":{}}}"#, 1_000_000 + i, 10 + i % 7);
            sent.lock().unwrap().insert(1_000_000 + i, Instant::now());
            client
                .publish(
                    format!("lat-in/d{}", i % 100),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while (latencies.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    plume.interrupt();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "latency    {:<9} durable {:<5}{} publish -> result at {rate}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} of {total} results)",
        broker.name(),
        durable,
        if other_build.is_some() { " (other build)" } else { "" },
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        l.last().unwrap().as_secs_f64() * 1e3,
        l.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this without it: skip then
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_or("PLUME_BENCH_MQTT_N", 100_000);
    let rate = env_or("PLUME_BENCH_MQTT_RATE", 1000);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("aq1.jsonl");
    let spec = plume::workload::Aq1Spec {
        devices: 1000,
        readings: n as u64,
        seed: 1,
    };
    plume::workload::generate_aq1(
        spec,
        &mut std::io::BufWriter::new(std::fs::File::create(&input).unwrap()),
    )
    .unwrap();
    let messages: Vec<(String, Vec<u8>)> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                format!("aq1/{}", v["device"].as_str().unwrap()),
                line.as_bytes().to_vec(),
            )
        })
        .collect();
    // durable on and off side by side, alternating, so the machine's noise hits both alike
    let rounds = env_or("PLUME_BENCH_MQTT_ROUNDS", 3) as usize;
    // another build's binary: its durable runs take the durable-off slot, side by side
    let other_build = std::env::var_os("PLUME_BENCH_MQTT_OTHER_BUILD").map(PathBuf::from);
    let mut summary = Vec::new();
    let only = std::env::var("PLUME_BENCH_MQTT_BROKERS").unwrap_or_default();
    let qos_levels: Vec<u8> = std::env::var("PLUME_BENCH_MQTT_QOS")
        .ok()
        .map(|v| v.split(',').filter_map(|q| q.trim().parse().ok()).collect())
        .unwrap_or(vec![0, 1]);
    for broker in brokers(dir.path()) {
        if !only.is_empty() && !only.split(',').any(|b| b == broker.name()) {
            continue;
        }
        for &qos in &qos_levels {
            let (mut on, mut off, mut base, mut ratio) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                // the order rotates: one run differs from the next by 20–30 % on this machine,
                // and which of two back-to-back durable runs came out faster depended on the
                // session (BENCHMARKS.md), so no kind always runs in the same place
                let (mut r_on, mut r_off, mut r_base) = (0.0, 0.0, 0.0);
                for kind in (0..3).map(|k| (k + round) % 3) {
                    match kind {
                        0 => r_on = throughput(dir.path(), &broker, qos, true, round, &messages, None),
                        1 => {
                            r_off = match &other_build {
                                None => throughput(dir.path(), &broker, qos, false, round, &messages, None),
                                Some(bin) => throughput(dir.path(), &broker, qos, true, round, &messages, Some(bin)),
                            }
                        }
                        _ => r_base = plain(&broker, qos, round, &messages),
                    }
                }
                on.push(r_on);
                off.push(r_off);
                base.push(r_base);
                ratio.push(r_on / r_base);
            }
            if other_build.is_some() {
                let paired = median(on.iter().zip(&off).map(|(a, b)| a / b).collect());
                let other_ratio = median(off.iter().zip(&base).map(|(a, b)| a / b).collect());
                summary.push(format!(
                    "throughput {:<9} qos {qos}: durable on, this build {:.0} readings/s, the other build {:.0} readings/s, plain client {:.0} readings/s (medians of {rounds}); this / other = {paired:.2}, this / plain = {:.2}, other / plain = {other_ratio:.2} (medians of the rounds' ratios)",
                    broker.name(),
                    median(on.clone()),
                    median(off.clone()),
                    median(base.clone()),
                    median(ratio.clone()),
                ));
                continue;
            }
            let (on, off, base, ratio) = (median(on), median(off), median(base), median(ratio));
            summary.push(format!(
                "throughput {:<9} qos {qos}: durable on {on:.0} readings/s, off {off:.0} readings/s, plain client {base:.0} readings/s (medians of {rounds}); on/off = {:.2}; durable on / plain = {ratio:.2} (median of the rounds' ratios)",
                broker.name(),
                on / off
            ));
        }
        if std::env::var_os("PLUME_BENCH_MQTT_NO_LATENCY").is_none() {
            for durable in [true, false] {
                latency(dir.path(), &broker, rate, durable, None);
                if let Some(bin) = &other_build {
                    latency(dir.path(), &broker, rate, durable, Some(bin));
                }
            }
        }
    }
    println!();
    for line in summary {
        println!("{line}");
    }
}
