//! Watching plume (issue 17): Debian's `prometheus` scrapes a running plume's `/metrics` and its
//! query API gives the counts of the input; `/readyz` follows the MQTT broker; the README's
//! metric list is the one in the code (`PLUME_UPDATE_README=1` rewrites it).

mod common;
#[path = "common/mqtt.rs"]
mod mqtt_support;
#[path = "common/receiver.rs"]
mod receiver;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mqtt_support::{LoggedChild, Mosquitto, free_port, wait_for};
use receiver::{Receiver, Reply};

/// Starts the command `command(port)` makes, with its admin endpoint on a free loopback `port`,
/// and `input` written to its standard input, which stays open (the run goes on until the
/// returned handle is dropped). A port found free can be taken by another test's process before
/// plume binds it ("cannot serve /metrics on …": plume ends, and the write finds the pipe
/// closed): then it starts again on another port (up to five times). Any other early end fails
/// the test with what plume said.
fn spawn_fed(command: impl Fn(u16) -> Command, input: &[u8]) -> (Child, std::process::ChildStdin, u16) {
    let stderr_dir = tempfile::tempdir().unwrap();
    for attempt in 1..=5 {
        let port = free_port();
        let stderr_path = stderr_dir.path().join(format!("stderr-{attempt}"));
        let mut child = command(port)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        match stdin.write_all(input).and_then(|()| stdin.flush()) {
            Ok(()) => return (child, stdin, port),
            Err(e) => {
                let status = child.wait().unwrap();
                let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                assert!(
                    said.contains("cannot serve /metrics on"),
                    "plume ended before it read its input ({e}; {status}):\n{said}"
                );
            }
        }
    }
    panic!("plume found no free port for its admin endpoint in five attempts");
}

/// `name{label="value"}`, URL-encoded for a query.
fn selector(name: &str, label: &str, value: &str) -> String {
    format!("{name}%7B{label}%3D%22{value}%22%7D")
}

/// A Prometheus server scraping `target` every second, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: plume\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (scripts/setup installs it)");
        Prometheus { child, port }
    }

    /// The value of an instant query that has one series, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={query}"))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_readings_and_dead_letters_of_a_running_plume() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 20, 5_000, 7);
    let mut lines = std::fs::read_to_string(&input).unwrap();
    let good = lines.lines().count();
    lines.push_str("not json\n{\"device\":\"x\"}\n{\"device\":\"y\",\"ts\":1,\"pm25\":\"high\",\"co2\":1}\n");
    // reads standard input, which stays open: the process runs until the test closes it
    let output = dir.path().join("out.jsonl");
    let command = |port: u16| {
        let mut command = plume();
        command
            .args([
                "run",
                "pipelines/aq1.yaml",
                "--input",
                "-",
                "--no-checkpoints",
                "--metrics",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--output")
            .arg(&output);
        command
    };
    let (mut plume, stdin, port) = spawn_fed(command, lines.as_bytes());
    let address = format!("127.0.0.1:{port}");
    wait_for("plume's /healthz", Duration::from_secs(30), || {
        http_get(port, "/healthz").is_some_and(|(s, b)| s == 200 && b == "ok\n")
    });
    let prometheus = Prometheus::start(dir.path(), &address);
    let started = Instant::now();
    let readings = loop {
        let v = prometheus.value("plume_readings_total");
        if v == Some(good as f64) {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "prometheus has plume_readings_total {v:?}, the input {good} readings; plume says:\n{}",
            http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(readings, Some(good as f64));
    assert_eq!(prometheus.value("plume_dead_letters_total"), Some(3.0));
    assert_eq!(prometheus.value("up"), Some(1.0));
    // records by kind: the dead letters were routed like every record
    assert_eq!(
        prometheus.value(&selector("plume_records_total", "kind", "dead_letter")),
        Some(3.0)
    );
    assert!(
        prometheus
            .value(&selector("plume_records_total", "kind", "window"))
            .is_some_and(|n| n > 0.0)
    );
    // by source: the one source, standard input
    assert_eq!(
        prometheus.value(&selector("plume_source_readings_total", "source", "stdin")),
        Some(good as f64)
    );
    assert_eq!(
        prometheus.value(&selector("plume_source_dead_letters_total", "source", "stdin")),
        Some(3.0)
    );
    assert_eq!(
        prometheus.value(&selector("plume_devices", "state", "active")),
        Some(20.0)
    );
    // per shard: the devices of the shards add up; per operator: the window operator made
    // every window record
    assert_eq!(
        prometheus.value("sum(plume_shard_devices%7Bstate%3D%22active%22%7D)"),
        Some(20.0)
    );
    let windows = prometheus.value(&selector("plume_records_total", "kind", "window"));
    assert_eq!(
        prometheus.value("plume_operator_records_total%7Boperator%3D%22window%22%2Ckind%3D%22window%22%7D"),
        windows
    );
    assert!(
        prometheus
            .value("sum(plume_shard_batch_seconds_count)")
            .is_some_and(|n| n >= 2.0)
    );
    assert_eq!(
        prometheus.value(&selector("plume_input_limit_hits_total", "limit", "plausible_time")),
        Some(0.0)
    );
    assert!(
        prometheus
            .value("process_resident_memory_bytes")
            .is_some_and(|b| b > 1e6)
    );
    drop(stdin);
    let status = plume.wait().unwrap();
    assert!(status.success());
}

#[test]
fn readyz_follows_the_mqtt_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let port = free_port();
    let plume = LoggedChild::spawn(
        plume()
            .args(["run", "pipelines/mqtt-aq1.yaml", "--checkpoint-interval", "200ms"])
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .env("PLUME_MQTT_URL", broker.url())
            .env("PLUME_OUTPUT", dir.path().join("out.jsonl"))
            .env("NO_COLOR", "1"),
    );
    let ready = || http_get(port, "/readyz");
    wait_for("ready", Duration::from_secs(30), || {
        ready().is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(ready().unwrap().1, "ready\n");
    // checkpoints every 200 ms: counted, timed and recent
    wait_for("checkpoints in the metrics", Duration::from_secs(30), || {
        let text = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        value("plume_checkpoints_total").is_some_and(|n| n >= 3.0)
            && value("plume_checkpoint_duration_seconds_count").is_some_and(|n| n >= 3.0)
            && value("plume_checkpoint_age_seconds").is_some_and(|s| s < 5.0)
    });
    broker.stop();
    wait_for("not ready without the broker", Duration::from_secs(30), || {
        ready().is_some_and(|(s, _)| s == 503)
    });
    let (_, body) = ready().unwrap();
    assert!(
        body.starts_with("not ready:\n- source mqtt:aq1/{device}: the MQTT broker is unreachable"),
        "{body}"
    );
    // the process itself is alive all along
    assert_eq!(http_get(port, "/healthz").unwrap(), (200, "ok\n".to_string()));
    broker.restart();
    wait_for("ready again", Duration::from_secs(60), || {
        ready().is_some_and(|(s, _)| s == 200)
    });
    let log = plume.interrupt();
    broker.stop();
    assert!(log.contains("mqtt reconnected"), "{log}");
}

const START: &str = "<!-- metrics:start (generated from src/app/metrics.rs: PLUME_UPDATE_README=1 cargo test --release --test observe) -->";
const END: &str = "<!-- metrics:end -->";

#[test]
fn the_readme_lists_the_metrics_of_the_code_and_metrics_exposes_each() {
    let mut table =
        String::from("| Prometheus | OTLP (unit) | type | labels | meaning |\n| --- | --- | --- | --- | --- |\n");
    for m in plume::app::admin::METRICS {
        let name = if m.kind == "counter" {
            format!("{}_total", m.name)
        } else {
            m.name.to_string()
        };
        let (otel, unit) = plume::app::metrics::otel_name(m);
        table.push_str(&format!(
            "| `{name}` | `{otel}` ({unit}) | {} | {} | {} |\n",
            m.kind, m.labels, m.help
        ));
    }
    let path = repo().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        panic!("README.md has no `{START}` … `{END}` block");
    };
    let current = &readme[start + START.len()..end];
    let generated = format!("\n{table}");
    if std::env::var_os("PLUME_UPDATE_README").is_some() {
        let updated = format!("{}{generated}{}", &readme[..start + START.len()], &readme[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert_eq!(
        current, generated,
        "README.md's metric list is out of date: run `PLUME_UPDATE_README=1 cargo test --release --test observe`"
    );
    // and the endpoint's text has each (the sinks' families need a sink)
    let view = plume::app::admin::AdminView {
        metrics: std::sync::Arc::new(plume::runtime::RuntimeMetrics::default()),
        sinks: Vec::new(),
        checkpoint_interval: Some(Duration::from_secs(1)),
        started: Instant::now(),
        operators: Vec::new(),
    };
    let text = view.metrics_text();
    for m in plume::app::admin::METRICS
        .iter()
        // (families need a sink, a source, a shard or an operator; the Kafka lag a Kafka source)
        .filter(|m| {
            !["sink", "source", "shard", "operator"]
                .iter()
                .any(|l| m.labels.contains(l))
        })
    {
        assert!(
            text.contains(&format!("# TYPE {} {}\n", m.name, m.kind)),
            "{}:\n{text}",
            m.name
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn the_dashboard_queries_only_metrics_plume_exposes() {
    let text = std::fs::read_to_string(repo().join("dashboards/plume.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exposed: Vec<String> = plume::app::admin::METRICS
        .iter()
        .flat_map(|m| match m.kind {
            "counter" => vec![format!("{}_total", m.name)],
            "histogram" => ["_bucket", "_sum", "_count"].map(|s| format!("{}{s}", m.name)).to_vec(),
            _ => vec![m.name.to_string()],
        })
        .collect();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queries += 1;
            // every metric name in the query (a word starting with plume_ or process_)
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("plume_") || word.starts_with("process_") {
                    assert!(
                        exposed.iter().any(|e| e == word),
                        "panel `{}` queries `{word}`, which /metrics does not have",
                        panel["title"]
                    );
                }
            }
        }
    }
    assert!(queries >= 10, "{queries} queries");
}

/// The value of `name{sink="…"}` in a `/metrics` text, for the one sink that has it.
fn sink_metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{sink=")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn notifier_counters_equal_what_the_receiver_saw() {
    let dir = tempfile::tempdir().unwrap();
    let input = aq1_input(dir.path(), 20, 8_000, 3);
    // every third request fails: retries
    let rx = Receiver::start(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)), |r| {
        if r.seq % 3 == 2 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let command = |port: u16| {
        let mut command = plume();
        command
            .args(["run", "pipelines/webhook-aq1.yaml", "--input", "-", "--no-checkpoints"])
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .env("PLUME_OUTPUT", dir.path().join("out.jsonl"))
            .env("PLUME_WEBHOOK_URL", rx.url("/aq1"))
            .env("PLUME_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .env("PLUME_WEBHOOK_BACKOFF", "10ms");
        command
    };
    let (mut plume, stdin, port) = spawn_fed(command, &std::fs::read(&input).unwrap());
    // until the receiver has been quiet for a second and plume's counts match it
    let started = Instant::now();
    let (mut last_count, mut quiet_since) = (usize::MAX, Instant::now());
    loop {
        let requests = rx.requests();
        if requests.len() != last_count {
            (last_count, quiet_since) = (requests.len(), Instant::now());
        }
        let text = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        let acked = requests.iter().filter(|r| r.seq % 3 != 2).count() as u64;
        let failed = requests.len() as u64 - acked;
        let ours = (
            sink_metric(&text, "plume_notifier_deliveries_total"),
            sink_metric(&text, "plume_notifier_attempts_total"),
            sink_metric(&text, "plume_notifier_retries_total"),
        );
        if quiet_since.elapsed() > Duration::from_secs(1)
            && acked >= 3
            && failed > 0
            && ours == (Some(acked), Some(requests.len() as u64), Some(failed))
        {
            assert!(text.contains("plume_notifier_dead_letters_total{sink="), "{text}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "plume counts {ours:?}; the receiver saw {} requests, {acked} acknowledged:\n{text}",
            requests.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    assert!(plume.wait().unwrap().success());
}
