//! MQTT test and bench support: a mosquitto on a free loopback port, plume as a subprocess
//! whose log is read, and a publisher. Shared by `tests/mqtt.rs` and `benches/mqtt.rs`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn plume() -> Command {
    plume_at(Path::new(env!("CARGO_BIN_EXE_plume")))
}

/// A plume binary (this build's or another's), run from the repository's root.
pub fn plume_at(binary: &Path) -> Command {
    let mut c = Command::new(binary);
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` every 20 ms until it holds, or panics after `timeout` with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// mosquitto

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto on a free loopback port; persistence (sessions and queued messages) in
    /// `dir`, so a restart keeps what plume has not acknowledged yet.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "")
    }

    /// Like [`Mosquitto::start`], with more configuration lines (they apply to its listener).
    pub fn start_with(dir: &Path, extra: &str) -> Self {
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        // mosquitto started as root drops to user `mosquitto`, which cannot write the temporary
        // directory: stay the current user
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let user = user.trim();
        std::fs::write(
            &config,
            format!(
                "user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_inflight_messages 100\nlog_dest file {}\nlog_type error\nlog_type warning\n",
                dir.display(),
                dir.join("mosquitto.log").display()
            ) + extra,
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            config,
        };
        m.restart();
        m
    }

    pub fn restart(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (scripts/setup installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto to listen", Duration::from_secs(10), || accepts(port));
    }

    /// SIGTERM: mosquitto writes its persistence file and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// plume as a subprocess

pub use child::LoggedChild;

#[path = "child.rs"]
pub mod child;

/// The number after `key=` in a log line (the first such key).
pub fn log_number(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// plume running an MQTT pipeline, its log collected.
pub struct Plume(LoggedChild);

impl Plume {
    pub fn run(pipeline: &Path, url: &str, output: &Path) -> Self {
        Self::run_with_env(pipeline, url, output, &[])
    }

    pub fn run_with_env(pipeline: &Path, url: &str, output: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn(pipeline, url, output, env, &[])
    }

    /// `plume run PIPELINE --data-dir OUT.state ARGS…` with the broker url and output in the
    /// environment.
    pub fn spawn(pipeline: &Path, url: &str, output: &Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::spawn_binary(Path::new(env!("CARGO_BIN_EXE_plume")), pipeline, url, output, env, args)
    }

    /// [`Plume::spawn`] with another build's `binary`, for benches that compare two builds side
    /// by side.
    pub fn spawn_binary(
        binary: &Path,
        pipeline: &Path,
        url: &str,
        output: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        Plume(LoggedChild::spawn(
            plume_at(binary)
                .arg("run")
                .arg(pipeline)
                .args(args)
                // state and checkpoints next to the output, one directory per output file
                .arg("--data-dir")
                .arg(output.with_extension("state"))
                .env("PLUME_MQTT_URL", url)
                .env("PLUME_OUTPUT", output)
                .env(
                    "PLUME_LOG",
                    "warn,plume::connectors::mqtt::source=debug,plume::connectors::mqtt::broker=info",
                )
                .env("NO_COLOR", "1")
                .envs(env.iter().copied()),
        ))
    }

    pub fn logged(&self, text: &str) -> bool {
        self.0.logged(text)
    }

    pub fn log_text(&self) -> String {
        self.0.log_text()
    }

    /// Messages the MQTT source has handed to the routers (its latest progress line).
    pub fn messages(&self) -> u64 {
        self.0.newest(|l| log_number(l, "messages")).unwrap_or(0)
    }

    /// When the MQTT source handed its latest live message on (ms since the Unix epoch), as its
    /// latest progress line says.
    pub fn last_handed_unix_ms(&self) -> Option<u64> {
        self.0.newest(|l| log_number(l, "last_handed_unix_ms"))
    }

    /// Until the subscription is confirmed, or the broker kept it from an earlier session.
    pub fn wait_subscribed(&self) {
        wait_for("plume to subscribe", Duration::from_secs(30), || {
            self.logged("mqtt subscription confirmed") || self.logged("session_present=true")
        });
    }

    pub fn wait_messages(&self, n: u64) {
        let started = Instant::now();
        while self.messages() < n {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "plume counted {} of {n} messages:\n{}",
                self.messages(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ctrl-C, then waits for the graceful end; returns the log.
    pub fn interrupt(self) -> String {
        self.0.interrupt()
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// SIGKILL: no chance to drain, flush or checkpoint; returns the log so far.
    pub fn kill(self) -> String {
        self.0.kill()
    }
}

// ---------------------------------------------------------------------------------------------
// publishing

/// Publishes `(topic, payload)` pairs in order with QoS `qos` from one client, and waits until
/// the broker has acknowledged every QoS 1 message (completed every QoS 2 one).
pub fn publish_all(port: u16, client_id: &str, messages: &[(String, Vec<u8>)], qos: rumqttc::QoS) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(o, 1000);
        let total = messages.len();
        let expect_acks = qos != rumqttc::QoS::AtMostOnce;
        let poller = tokio::spawn(async move {
            let (mut acks, mut sent) = (0usize, 0usize);
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_))) => acks += 1,
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_))) => sent += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
                if (expect_acks && acks == total) || (!expect_acks && sent == total) {
                    return;
                }
            }
        });
        for (topic, payload) in messages {
            client
                .publish(topic.clone(), qos, false, payload.clone())
                .await
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(120), poller)
            .await
            .expect("the broker acknowledges every publish")
            .unwrap();
        let _ = client.disconnect().await;
    });
}
