//! The embedded MQTT broker (`rumqttd`), for the zero-setup default: `plume run` and `plume demo`
//! start it in-process when the pipeline has `embedded_broker: { port: … }`, so devices,
//! `mosquitto_pub` and plume's own MQTT source and sink can talk to it with nothing else
//! installed.
//!
//! It speaks MQTT 3.1.1 on one TCP port, keeps persistent sessions in memory (they survive a
//! client's reconnect, not a restart of plume) and lives until the process exits (rumqttd has no
//! shutdown).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tracing::info;

use crate::spec::{EmbeddedBrokerSpec, PipelineSpec};

/// The embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: `{0}` is not an IP address")]
    Bind(String),
    #[error("embedded broker: cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("embedded broker: not accepting connections on {addr} after {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
    #[error("embedded broker: {0}")]
    Start(std::io::Error),
}

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

/// Starts the pipeline's embedded broker, if it has one.
pub fn start_for(spec: &PipelineSpec) -> Result<Option<EmbeddedBroker>, BrokerError> {
    spec.embedded_broker.as_ref().map(start).transpose()
}

/// rumqttd's settings for one MQTT 3.1.1 listener.
fn config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 1_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "plume-embedded".to_string(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 1_000,
            // messages are kept per filter in a commit log of these segments
            max_segment_size: 16 << 20,
            max_segment_count: 16,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// Starts the broker on its own threads and waits until it accepts connections.
pub fn start(spec: &EmbeddedBrokerSpec) -> Result<EmbeddedBroker, BrokerError> {
    let ip: IpAddr = spec.bind.parse().map_err(|_| BrokerError::Bind(spec.bind.clone()))?;
    let addr = SocketAddr::new(ip, spec.port);
    // a clear error when the port is taken (rumqttd would only log it on its own thread)
    drop(TcpListener::bind(addr).map_err(|error| BrokerError::Listen { addr, error })?);
    let mut broker = rumqttd::Broker::new(config(addr));
    std::thread::Builder::new()
        .name("embedded broker".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Start)?;
    let probe = if ip.is_unspecified() {
        SocketAddr::new(
            if ip.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            },
            spec.port,
        )
    } else {
        addr
    };
    let started = Instant::now();
    let deadline = Duration::from_secs(10);
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if started.elapsed() > deadline {
            return Err(BrokerError::NotReady { addr, waited: deadline });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    info!(%addr, "embedded mqtt broker listening");
    Ok(EmbeddedBroker { addr })
}
