//! `plume demo --mqtt`: the simulated fleet publishes over real MQTT through the embedded broker,
//! and the pipeline reads it with its MQTT source, as it would read real monitors.
//!
//! [`use_embedded_broker`] rewrites a demo pipeline: an embedded broker on `port`, and one MQTT
//! source on `sensors/{device}/air` instead of its simulator. [`spawn_publisher`] runs the
//! simulator on its own thread and publishes every reading (QoS 1) to `sensors/<device>/air`;
//! when the simulated duration is over and the broker has acknowledged everything, it stops the
//! run the way Ctrl-C does (the same stop flag), without Ctrl-C's warning.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::clock;
use crate::connectors::simulator::{SimulatedClock, Simulator};
use crate::runtime::ports::Shutdown;
use crate::spec::{
    DurationSpec, EmbeddedBrokerSpec, MqttClientSpec, MqttSourceSpec, MqttVersion, PipelineSpec, Qos,
    SimulatorSourceSpec, SourceSpec,
};

/// The topic the simulated monitors publish to.
pub const TOPIC: &str = "sensors/{device}/air";

/// Makes `spec` read MQTT from its own embedded broker on `port`.
///
/// The simulated monitors' clocks run `speed` times faster than the wall clock, while an MQTT
/// message's event time is judged against the wall clock at its arrival: event times are
/// believed up to the whole simulated duration ahead (`decode.plausible_time.ahead`).
pub fn use_embedded_broker(spec: &mut PipelineSpec, port: u16) {
    let simulated = spec.sources.iter().find_map(|s| match s {
        SourceSpec::Simulator(sim) if sim.speed > 1.0 => {
            Some(sim.duration.map_or(3650 * 86_400_000, |d| d.as_millis()))
        }
        _ => None,
    });
    if let Some(lead) = simulated {
        let window = &mut spec.decode.plausible_time;
        let ahead = window
            .ahead
            .as_millis()
            .max(lead.saturating_add(window.ahead.as_millis()));
        window.ahead = DurationSpec::from_millis(ahead as u64);
    }
    spec.embedded_broker = Some(EmbeddedBrokerSpec {
        port,
        bind: "127.0.0.1".to_string(),
    });
    spec.sources = vec![SourceSpec::Mqtt(MqttSourceSpec {
        url: format!("mqtt://127.0.0.1:{port}"),
        topic: TOPIC.to_string(),
        qos: Qos::AtLeastOnce,
        client: MqttClientSpec {
            client_id: Some(format!("plume-demo-{}", spec.pipeline)),
            ..MqttClientSpec::default()
        },
        version: MqttVersion::V311,
        persistent_session: false,
        shared_group: None,
        durable: false,
        keep_alive: DurationSpec::from_millis(30_000),
    })];
}

/// Publishes the simulated fleet's readings to the broker on `port` until the simulated
/// `duration` is over, then requests the run's `shutdown` (the graceful stop of `plume run`).
pub fn spawn_publisher(sim: SimulatorSourceSpec, port: u16, shutdown: Shutdown) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("simulator publisher".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            runtime.block_on(publish(sim, port));
            info!("the demo's simulated time is over: stopping");
            shutdown.request();
        })
        .expect("spawning the simulator publisher")
}

async fn publish(spec: SimulatorSourceSpec, port: u16) {
    let mut o = rumqttc::MqttOptions::new("plume-demo-simulator", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30)).set_inflight(500);
    let (client, mut events) = rumqttc::AsyncClient::new(o, 10_000);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connected = std::sync::Arc::new(tokio::sync::Notify::new());
    let poller = {
        let (acked, connected) = (acked.clone(), connected.clone());
        tokio::spawn(async move {
            // (the publisher starts before the run has started the broker: until the first
            // connection, a refused one is expected and not worth a warning)
            let mut ever_connected = false;
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        ever_connected = true;
                        connected.notify_one()
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if ever_connected {
                            warn!(error = %e, "simulator publisher: connection lost, retrying");
                        } else {
                            tracing::debug!(error = %e, "simulator publisher: waiting for the embedded broker");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    // the broker starts with the pipeline; the pipeline's source subscribes right after it
    connected.notified().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_ms = clock::now_ms();
    let mut simulated = SimulatedClock::new(&spec, start_ms);
    let mut sim = Simulator::new(spec, start_ms);
    let mut published = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(until) = simulated.advance() {
            let mut bytes = Vec::new();
            sim.generate_until(until, &mut bytes);
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let device = device_of(line).unwrap_or_else(|| "unknown".to_string());
                let topic = TOPIC.replace("{device}", &device);
                if client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, line.to_vec())
                    .await
                    .is_err()
                {
                    return;
                }
                published += 1;
            }
        }
        if simulated.finished() {
            break;
        }
    }
    // the broker has everything; give the pipeline a moment to take the last messages
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(std::sync::atomic::Ordering::Relaxed) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    info!(published, "simulator publisher done");
    poller.abort();
}

/// The `device` of a simulated JSON line (malformed lines still start with it).
fn device_of(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = &text[text.find("\"device\":\"")? + 10..];
    Some(rest[..rest.find('"')?].to_string())
}
