//! The MQTT connection shared by the source and the sink: the broker URL, credentials and TLS
//! settings, and one client type over rumqttc's MQTT 3.1.1 and 5 (connect, poll, subscribe,
//! acknowledge) with the events of both versions in one form.

use std::time::Duration;

use super::source::PendingAck;
use crate::clock;
use crate::spec::{MqttSourceSpec, MqttVersion};

/// Problems of the MQTT source (and of the MQTT sink's connection settings).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("the mqtt password variable `{var}` (password_env) is not set")]
    PasswordEnv { var: String },
    #[error("reading the CA file {path}: {error}")]
    CaFile { path: String, error: std::io::Error },
    #[error("mqtt source {source_name}: the runtime could not start: {error}")]
    Runtime { source_name: String, error: std::io::Error },
}

/// Where a broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883).
    pub fn parse(url: &str) -> Result<Self, MqttError> {
        let bad = |reason: &str| MqttError::Url {
            url: crate::model::redact::url(url),
            reason: reason.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(bad("must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed `[`"))?;
            let host = &v6[..end];
            let port = match v6[end + 1..].strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("the port is not a number from 0 to 65535"))?,
                None => default_port,
            };
            (host.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| bad("the port is not a number from 0 to 65535"))?,
                ),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Endpoint { host, port, tls })
    }
}

/// The password from the variable `password_env` names (never logged).
pub fn password(var: Option<&str>) -> Result<Option<String>, MqttError> {
    match var {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(Some)
            .map_err(|_| MqttError::PasswordEnv { var: var.to_string() }),
    }
}

/// TLS settings for `mqtts://`: the CA file's certificates, or the system's roots.
pub fn tls_configuration(ca_file: Option<&str>) -> Result<rumqttc::TlsConfiguration, MqttError> {
    // rustls is built without a default provider in rumqttc: install ring once
    let _ = rustls::crypto::ring::default_provider().install_default();
    match ca_file {
        Some(path) => {
            let ca = std::fs::read(path).map_err(|error| MqttError::CaFile {
                path: path.to_string(),
                error,
            })?;
            Ok(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            })
        }
        None => Ok(rumqttc::TlsConfiguration::default()),
    }
}

// ---------------------------------------------------------------------------------------------
// topic templates

#[derive(Clone)]
pub(super) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub(super) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A received message, protocol-independent.
pub(super) struct Received {
    pub(super) topic: String,
    pub(super) payload: bytes::Bytes,
    pub(super) qos: u8,
    pub(super) pkid: u16,
    pub(super) dup: bool,
    pub(super) at_ms: i64,
}

pub(super) enum Polled {
    ConnAck {
        session_present: bool,
        refused: Option<String>,
    },
    Publish(Received),
    SubAck,
    Other,
}

pub(super) fn qos_v4(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

pub(super) fn qos_v5(level: u8) -> rumqttc::v5::mqttbytes::QoS {
    match level {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    pub(super) async fn ack(&self, ack: PendingAck) -> Result<(), ()> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos_v4(ack.qos), Vec::new());
                p.pkid = ack.pkid;
                c.ack(&p).await.map_err(|_| ())
            }
            Client::V5(c) => {
                let mut p = rumqttc::v5::mqttbytes::v5::Publish::new("", qos_v5(ack.qos), Vec::new(), None);
                p.pkid = ack.pkid;
                c.ack(&p).await.map_err(|_| ())
            }
        }
    }

    pub(super) fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, qos_v4(qos)).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_subscribe(filter, qos_v5(qos)).map_err(|e| e.to_string()),
        }
    }

    pub(super) async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|_| ()),
            Client::V5(c) => c.disconnect().await.map_err(|_| ()),
        };
    }
}

/// Requests (acks) that may wait in the client's queue: more than the packet ids there are,
/// so acknowledging never waits for the event loop.
pub(super) const REQUEST_CAPACITY: usize = 70_000;
pub(super) const MAX_PACKET: usize = 1 << 20;

/// The source's client. `manual_acks`: QoS 1/2 messages are acknowledged only through
/// `Client::ack` (the source's `AckGate`); otherwise rumqttc acknowledges each as it reads it,
/// all of one network read in one write (only for plume's embedded broker).
pub(super) fn connect(
    spec: &MqttSourceSpec,
    client_id: &str,
    manual_acks: bool,
) -> Result<(Client, EventLoop), MqttError> {
    let endpoint = Endpoint::parse(&spec.url)?;
    let password = password(spec.client.password_env.as_deref())?;
    let tls = if endpoint.tls {
        Some(tls_configuration(spec.client.ca_file.as_deref())?)
    } else {
        None
    };
    let keep_alive = Duration::from_millis(spec.keep_alive.as_millis().max(5_000) as u64);
    Ok(match spec.version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, endpoint.host, endpoint.port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(!spec.persistent_session)
                .set_manual_acks(manual_acks)
                .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                .set_request_channel_capacity(REQUEST_CAPACITY);
            if let Some(user) = &spec.client.username {
                o.set_credentials(user.clone(), password.unwrap_or_default());
            }
            if let Some(tls) = tls {
                o.set_transport(rumqttc::Transport::Tls(tls));
            }
            let (c, e) = rumqttc::AsyncClient::new(o, REQUEST_CAPACITY);
            (Client::V4(c), EventLoop::V4(Box::new(e)))
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, endpoint.host, endpoint.port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(!spec.persistent_session)
                .set_manual_acks(manual_acks)
                .set_max_packet_size(Some(MAX_PACKET as u32))
                .set_request_channel_capacity(REQUEST_CAPACITY);
            if spec.persistent_session {
                // MQTT 5 ends a session at disconnect unless it has an expiry interval
                o.set_session_expiry_interval(Some(u32::MAX));
            }
            if let Some(user) = &spec.client.username {
                o.set_credentials(user.clone(), password.unwrap_or_default());
            }
            if let Some(tls) = tls {
                o.set_transport(rumqttc::Transport::Tls(tls));
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, REQUEST_CAPACITY);
            (Client::V5(c), EventLoop::V5(Box::new(e)))
        }
    })
}

pub(super) fn normalize_v4(event: rumqttc::Event) -> Polled {
    use rumqttc::{ConnectReturnCode, Event, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(c)) => Polled::ConnAck {
            session_present: c.session_present,
            refused: (c.code != ConnectReturnCode::Success).then(|| format!("{:?}", c.code)),
        },
        Event::Incoming(Packet::Publish(p)) => Polled::Publish(Received {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            at_ms: clock::now_ms(),
        }),
        Event::Incoming(Packet::SubAck(_)) => Polled::SubAck,
        _ => Polled::Other,
    }
}

pub(super) fn normalize_v5(event: rumqttc::v5::Event) -> Polled {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(c)) => Polled::ConnAck {
            session_present: c.session_present,
            refused: (c.code != ConnectReturnCode::Success).then(|| format!("{:?}", c.code)),
        },
        Event::Incoming(Packet::Publish(p)) => Polled::Publish(Received {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            at_ms: clock::now_ms(),
        }),
        Event::Incoming(Packet::SubAck(_)) => Polled::SubAck,
        _ => Polled::Other,
    }
}

impl EventLoop {
    /// Lets rumqttc answer a PUBREL for any packet id with PUBCOMP.
    ///
    /// rumqttc forgets its incoming QoS 2 packet ids on every reconnect (and a restarted plume
    /// never had them), then treats the PUBREL the broker resends for a message we had already
    /// acknowledged (PUBREC) as unsolicited and drops the connection, again after every
    /// reconnect (rumqtt issue 664). A PUBREL only ever follows our PUBREC, which we send once
    /// the message is safe, so completing it is right (MQTT 5 says to answer an unknown PUBREL
    /// with PUBCOMP). rumqttc's state is only reachable through its public packet handler: feed
    /// it a QoS 2 publish per packet id (that is what marks an id as awaiting PUBREL) and drop
    /// the events that produced.
    pub(super) fn complete_any_pubrel(&mut self) {
        match self {
            EventLoop::V4(e) => {
                let keep = e.state.events.len();
                for pkid in 1..=u16::MAX {
                    let mut p = rumqttc::Publish::new("_", rumqttc::QoS::ExactlyOnce, Vec::new());
                    p.pkid = pkid;
                    let _ = e.state.handle_incoming_packet(rumqttc::Packet::Publish(p));
                }
                e.state.events.truncate(keep);
            }
            EventLoop::V5(e) => {
                let keep = e.state.events.len();
                for pkid in 1..=u16::MAX {
                    let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
                        "_",
                        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                        Vec::new(),
                        None,
                    );
                    p.pkid = pkid;
                    let _ = e
                        .state
                        .handle_incoming_packet(rumqttc::v5::mqttbytes::v5::Packet::Publish(p));
                }
                e.state.events.truncate(keep);
            }
        }
    }

    /// Polls once; then takes every event that poll already read (one network read gives many).
    pub(super) async fn poll_batch(&mut self, out: &mut Vec<Polled>) -> Result<(), String> {
        match self {
            EventLoop::V4(e) => {
                out.push(normalize_v4(e.poll().await.map_err(|e| e.to_string())?));
                while let Some(ev) = e.state.events.pop_front() {
                    out.push(normalize_v4(ev));
                }
            }
            EventLoop::V5(e) => {
                out.push(normalize_v5(e.poll().await.map_err(|e| e.to_string())?));
                while let Some(ev) = e.state.events.pop_front() {
                    out.push(normalize_v5(ev));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// the source
