//! Keyed ingress (`plume ingest`): an MQTT subscription, shared by any number of ingress
//! members, whose readings are produced to the keyed Kafka topic the pipeline's Kafka source
//! reads (key = the device id the `decode` settings find). Ingress keeps no per-device state.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationSpec, KafkaClientSpec, MqttClientSpec, MqttVersion, Qos, defaults};

/// What `plume ingest` runs: MQTT in, the keyed Kafka topic out. `plume run` leaves it alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressSpec {
    /// The MQTT subscription the ingress members share.
    pub mqtt: IngressMqttSpec,
    /// The keyed topic the readings go to, and the topic of the dead letters.
    pub kafka: IngressKafkaSpec,
}

/// The MQTT side of the ingress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressMqttSpec {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// `{device}` (a whole level, at most once) captures the device id (for `decode.device.topic`),
    /// as in `sensors/{device}/air`; `+` and `#` are MQTT wildcards.
    pub topic: String,
    /// MQTT quality of service of the subscription: with 1 or 2 a message is acknowledged only
    /// once Kafka acknowledged its record.
    #[serde(default = "defaults::qos")]
    pub qos: Qos,
    /// MQTT shared subscription group (`$share/<group>/<topic>`): every ingress member subscribes
    /// in it and the broker gives each message to one of them.
    #[serde(default = "defaults::ingress_group")]
    pub shared_group: Option<String>,
    /// Client id, credentials and TLS. Each member needs its own client id (`plume ingest
    /// --client-id`); absent: `plume-<pipeline>-ingress-<host name>`.
    #[serde(flatten)]
    pub client: MqttClientSpec,
    /// MQTT protocol version.
    #[serde(default = "defaults::ingress_mqtt_version")]
    pub version: MqttVersion,
    /// Keep the member's session on the broker while it is down: what the broker gave it and it
    /// had not acknowledged (and, with mosquitto, its share of what arrives meanwhile) is
    /// delivered when it comes back with the same client id.
    #[serde(default = "defaults::yes")]
    pub persistent_session: bool,
    /// MQTT keep-alive interval.
    #[serde(default = "defaults::keep_alive")]
    pub keep_alive: DurationSpec,
}

/// The Kafka side of the ingress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressKafkaSpec {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The keyed topic: one record per reading, key = device id, value = the MQTT payload as
    /// received, timestamp = when it arrived. A Kafka source of this pipeline reads it.
    pub topic: String,
    /// Where payloads without a usable device id go: a `dead_letter` record (JSON, the file
    /// output's schema) with the MQTT topic, the reason and the bounded raw bytes.
    pub dead_letter_topic: String,
    /// librdkafka properties of the producer (idempotent, `acks=all` unless overridden).
    #[serde(flatten)]
    pub client: KafkaClientSpec,
}
