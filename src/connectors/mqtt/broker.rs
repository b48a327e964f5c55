//! The embedded MQTT broker (`rumqttd`), for the zero-setup default: `plume run` and `plume demo`
//! start it in-process when the pipeline has `embedded_broker: { port: … }`, so devices,
//! `mosquitto_pub` and plume's own MQTT source and sink can talk to it with nothing else
//! installed.
//!
//! It speaks MQTT 3.1.1 on one TCP port, keeps persistent sessions in memory (they survive a
//! client's reconnect, not a restart of plume) and lives until the process exits (rumqttd has no
//! shutdown). Plume's own MQTT sources of such a pipeline do not connect over TCP: each reads
//! through an [`InProcessLink`] to the broker's router, made when the broker starts.

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
    #[error("embedded broker: no in-process link for `{client_id}`: {error}")]
    Link { client_id: String, error: String },
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    /// The in-process links asked for at start, by client id, until their sources take them.
    pub links: HashMap<String, InProcessLink>,
}

/// A subscriber in the broker's own process: rumqttd's local link to its router. An MQTT source
/// whose broker is the embedded one ([`serves`]) reads through it instead of a TCP connection:
/// no MQTT packets encoded, sent, read and decoded again, no acknowledgements, and one wake-up
/// per batch the router hands over (BENCHMARKS.md, "The embedded broker read in-process").
pub struct InProcessLink {
    pub(super) client_id: String,
    pub(super) tx: rumqttd::local::LinkTx,
    pub(super) rx: rumqttd::local::LinkRx,
}

impl std::fmt::Debug for InProcessLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessLink")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// The client id of the in-process link for a source with `client_id`: its own, so that a
/// network client that happens to use the source's id does not take the link's session over
/// (rumqttd refuses ids with `+`, `$`, `#` or `/`: those become `_`).
pub fn in_process_client_id(client_id: &str) -> String {
    let safe: String = client_id
        .chars()
        .map(|c| if "+$#/".contains(c) { '_' } else { c })
        .collect();
    format!("plume-in-process-{safe}")
}

/// Whether a client of `url` talks to this embedded broker: plain `mqtt://` to its port, at the
/// address it listens on, or at a loopback address of the same family when it listens on all of
/// them. Host names (`localhost` too, which may resolve to either family) are not taken for it:
/// the answer needs no look-up, and a "no" only costs speed.
///
/// The MQTT source uses it to acknowledge this broker as it reads each message instead of after
/// the synced write to its ingest log: the broker lives in plume's process and has already
/// acknowledged each message to its publisher, so waiting keeps nothing safe that a crash or a
/// failed write would otherwise lose (ARCHITECTURE.md, MQTT).
pub fn serves(spec: &EmbeddedBrokerSpec, url: &str) -> bool {
    let Ok(endpoint) = super::client::Endpoint::parse(url) else {
        return false;
    };
    if endpoint.tls || endpoint.port != spec.port {
        return false;
    }
    let (Ok(host), Ok(bind)) = (endpoint.host.parse::<IpAddr>(), spec.bind.parse::<IpAddr>()) else {
        return false;
    };
    host == bind || (bind.is_unspecified() && host.is_loopback() && host.is_ipv4() == bind.is_ipv4())
}

/// Starts the pipeline's embedded broker, if it has one, with an in-process link for each of
/// `in_process_clients` (the client ids of the sources it serves).
pub fn start_for(spec: &PipelineSpec, in_process_clients: &[String]) -> Result<Option<EmbeddedBroker>, BrokerError> {
    spec.embedded_broker
        .as_ref()
        .map(|broker| start(broker, in_process_clients))
        .transpose()
}

/// rumqttd's settings for one MQTT 3.1.1 listener.
pub(super) fn config(addr: SocketAddr) -> rumqttd::Config {
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

/// Starts the broker on its own threads and waits until it accepts connections. The links for
/// `in_process_clients` are made first: rumqttd gives them out only before its `start`, which
/// keeps the broker to itself from then on.
pub fn start(spec: &EmbeddedBrokerSpec, in_process_clients: &[String]) -> Result<EmbeddedBroker, BrokerError> {
    let ip: IpAddr = spec.bind.parse().map_err(|_| BrokerError::Bind(spec.bind.clone()))?;
    let addr = SocketAddr::new(ip, spec.port);
    // a clear error when the port is taken (rumqttd would only log it on its own thread)
    drop(TcpListener::bind(addr).map_err(|error| BrokerError::Listen { addr, error })?);
    let mut broker = rumqttd::Broker::new(config(addr));
    let mut links: HashMap<String, InProcessLink> = HashMap::new();
    for client_id in in_process_clients {
        if links.contains_key(client_id) {
            continue;
        }
        // (rumqttd lets a second connection with an id take the first one's place)
        let mut link_id = in_process_client_id(client_id);
        while links.values().any(|l| l.client_id == link_id) {
            link_id.push('_');
        }
        let (tx, rx) = broker.link(&link_id).map_err(|error| BrokerError::Link {
            client_id: link_id.clone(),
            error: error.to_string(),
        })?;
        links.insert(
            client_id.clone(),
            InProcessLink {
                client_id: link_id,
                tx,
                rx,
            },
        );
    }
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
    Ok(EmbeddedBroker { addr, links })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(port: u16, bind: &str) -> EmbeddedBrokerSpec {
        EmbeddedBrokerSpec {
            port,
            bind: bind.to_string(),
        }
    }

    #[test]
    fn an_in_process_link_has_an_id_of_its_own_that_rumqttd_takes() {
        assert_eq!(in_process_client_id("plume-aq1-0"), "plume-in-process-plume-aq1-0");
        assert_eq!(in_process_client_id("site/a+b#$"), "plume-in-process-site_a_b__");
    }

    #[test]
    fn a_source_is_served_by_the_embedded_broker_only_at_its_own_address_and_port() {
        let loopback = broker(1883, "127.0.0.1");
        assert!(serves(&loopback, "mqtt://127.0.0.1:1883"));
        assert!(serves(&loopback, "mqtt://127.0.0.1"), "1883 is the default port");
        assert!(!serves(&loopback, "mqtt://127.0.0.1:1884"), "another port");
        assert!(
            !serves(&loopback, "mqtts://127.0.0.1:1883"),
            "the embedded broker has no TLS"
        );
        assert!(!serves(&loopback, "mqtt://localhost:1883"), "a name is not looked up");
        assert!(
            !serves(&loopback, "mqtt://[::1]:1883"),
            "another broker may listen there"
        );
        assert!(!serves(&loopback, "mqtt://10.0.0.7:1883"));
        assert!(!serves(&loopback, "not a url"));
        let everywhere = broker(1883, "0.0.0.0");
        assert!(serves(&everywhere, "mqtt://127.0.0.1:1883"));
        assert!(!serves(&everywhere, "mqtt://[::1]:1883"), "0.0.0.0 is IPv4 only");
        assert!(serves(&broker(1883, "::"), "mqtt://[::1]:1883"));
        let lan = broker(1883, "10.0.0.7");
        assert!(serves(&lan, "mqtt://10.0.0.7:1883"), "the address it listens on");
        assert!(!serves(&lan, "mqtt://10.0.0.8:1883"));
        assert!(!serves(&lan, "mqtt://127.0.0.1:1883"), "it does not listen there");
    }
}
