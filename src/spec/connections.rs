//! What sources and sinks of one kind share, declared once and flattened into each spec (the
//! keys stay where they are in the file): the MQTT client settings, the Kafka client properties,
//! and the retry settings of every notifier.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::{DurationSpec, defaults};

/// MQTT quality of service: `0`, `1` or `2` (written as a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Qos {
    #[serde(rename = "0")]
    AtMostOnce,
    #[serde(rename = "1")]
    AtLeastOnce,
    #[serde(rename = "2")]
    ExactlyOnce,
}

impl Qos {
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

impl JsonSchema for Qos {
    fn schema_name() -> Cow<'static, str> {
        "Qos".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "MQTT quality of service.",
            "enum": [0, 1, 2]
        })
    }
}

/// MQTT protocol version: `3.1.1` or `5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

impl JsonSchema for MqttVersion {
    fn schema_name() -> Cow<'static, str> {
        "MqttVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "MQTT protocol version.",
            "enum": ["3.1.1", 5]
        })
    }
}

/// The MQTT client settings that an MQTT source and an MQTT sink share: client id, credentials
/// and TLS.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct MqttClientSpec {
    /// MQTT client id; absent: one is made up from the pipeline's name
    /// (`plume-<pipeline>-…`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name for the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file with the CA that signed the broker's certificate (`mqtts://`).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Allow credentials over a connection without TLS to a host other than this machine (or TLS
    /// checks switched off). plume refuses that otherwise, and warns at start when it is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,
}

/// The librdkafka properties that a Kafka source and a Kafka sink share.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct KafkaClientSpec {
    /// librdkafka properties passed through (`security.protocol`, `sasl.mechanism`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables (`sasl.password:
    /// KAFKA_PASSWORD`): the name of the variable, never the secret.
    #[serde(default)]
    pub secret_properties_env: BTreeMap<String, String>,
    /// Allow credentials over a connection without TLS to a host other than this machine (or TLS
    /// checks switched off). plume refuses that otherwise, and warns at start when it is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,
}

/// How every notifier (webhook, FCM, APNs, ntfy) delivers and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetrySpec {
    /// Timeout of one delivery attempt.
    #[serde(default = "defaults::http_timeout")]
    pub timeout: DurationSpec,
    /// After this long without success a notification goes to dead letters.
    #[serde(default = "defaults::max_age")]
    pub max_age: DurationSpec,
    /// Deliveries in flight at once.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// First retry delay; doubled per attempt (at most 5m), with jitter, never before
    /// `Retry-After`.
    #[serde(default = "defaults::backoff")]
    pub backoff: DurationSpec,
    /// After 5 failures in a row the endpoint gets one probe request per this long.
    #[serde(default = "defaults::breaker_open")]
    pub breaker_open: DurationSpec,
    /// Allow credentials over a connection without TLS to a host other than this machine (or TLS
    /// checks switched off). plume refuses that otherwise, and warns at start when it is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            timeout: defaults::http_timeout(),
            max_age: defaults::max_age(),
            concurrency: defaults::concurrency(),
            backoff: defaults::backoff(),
            breaker_open: defaults::breaker_open(),
            allow_insecure: false,
        }
    }
}
