//! Outputs: routes and sinks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationSpec, Expecting, KafkaClientSpec, MqttClientSpec, Qos, RetrySpec, defaults};

/// A route: results of the named operators go to these sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRoute {
    /// Operator names, or `all`, `late`, `dead_letters`, `summary`.
    pub when: OneOrMany,
    /// Only these kinds of results (`window`, `event_start` or `start`, `event_update` or `update`, `event_end` or `end`,
    /// `baseline`, `deviation`, `smoothed`, `threshold`, `health`, `late`, `dead_letter`,
    /// `summary`); all if empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// Events marked `backfill` (decided on old data, see the hysteresis `backfill_after`):
    /// `include` them, `skip` them (a route to pagers), or take `only` them.
    #[serde(default, skip_serializing_if = "BackfillRoute::is_include")]
    pub backfill: BackfillRoute,
    /// Where the results go.
    pub to: Vec<SinkSpec>,
}

/// See [`OutputRoute::backfill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackfillRoute {
    #[default]
    Include,
    Skip,
    Only,
}

impl BackfillRoute {
    /// The default (left out of the pipeline hash, so older files keep theirs).
    pub fn is_include(&self) -> bool {
        *self == BackfillRoute::Include
    }
}

/// A string or a list of strings. Deserialized by hand so that errors keep their position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrList;
        impl<'de> serde::de::Visitor<'de> for OneOrList {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
                Err(serde::de::Error::custom(format!(
                    "expected {}, found a map",
                    Expecting(&self)
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Err(E::custom(format!("expected {}, found `{v}`", Expecting(&self))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found nothing (null)",
                    Expecting(&self)
                )))
            }
        }
        deserializer.deserialize_any(OneOrList)
    }
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One output target. Externally tagged: `- file: { path: out.jsonl }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SinkSpec {
    Stdout(StdoutSinkSpec),
    File(FileSinkSpec),
    Webhook(WebhookSinkSpec),
    Push(PushSinkSpec),
    Mqtt(MqttSinkSpec),
    Kafka(KafkaSinkSpec),
}

/// Standard output: `- stdout`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkSpec {
    /// `json`: one record per line; `text`: a line for people.
    #[serde(default)]
    pub format: StdoutFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    #[default]
    Json,
    Text,
}

/// JSON lines appended to a file; exactly-once across crashes when checkpoints are on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSpec {
    /// The file.
    pub path: String,
}

/// A signed webhook (Standard Webhooks); the event id travels as `webhook-id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkSpec {
    /// `http://` or `https://` endpoint.
    pub url: String,
    /// The variable that holds the `whsec_…` signing secret; during a rotation, the new and the
    /// old secret separated by a space (each request then carries a signature with each).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Delivery and retries.
    #[serde(flatten)]
    pub retry: RetrySpec,
    /// Cooldown, quiet hours and message template.
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

/// Mobile push: exactly one of `fcm`, `apns`, `ntfy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushSinkSpec {
    Fcm(FcmSpec),
    Apns(ApnsSpec),
    Ntfy(NtfySpec),
}

/// Firebase Cloud Messaging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FcmSpec {
    /// The variable that holds the service-account JSON (or a path to it).
    pub service_account_env: String,
    /// Override of the FCM endpoint (tests).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Override of the OAuth token endpoint (tests).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Runs without a data directory: JSON file of device tokens, `{"<device>": ["<token>", …],
    /// "*": […]}` (`*`: every device). With one, the store's subscriptions (`plume subscribers`).
    #[serde(default)]
    pub subscribers: Option<String>,
    /// Delivery and retries.
    #[serde(flatten)]
    pub retry: RetrySpec,
    /// Cooldown, quiet hours and message template.
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

/// Apple Push Notification service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApnsSpec {
    /// Apple developer team id.
    pub team_id: String,
    /// Id of the signing key.
    pub key_id: String,
    /// The variable that holds the `.p8` ES256 private key (PEM).
    pub key_env: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Override of the APNs endpoint (tests).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Runs without a data directory: JSON file of device tokens, `{"<device>": ["<token>", …],
    /// "*": […]}` (`*`: every device). With one, the store's subscriptions (`plume subscribers`).
    #[serde(default)]
    pub subscribers: Option<String>,
    /// Delivery and retries.
    #[serde(flatten)]
    pub retry: RetrySpec,
    /// Cooldown, quiet hours and message template.
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

/// ntfy.sh or a self-hosted ntfy server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NtfySpec {
    /// The ntfy server.
    #[serde(default = "defaults::ntfy_server")]
    pub server: String,
    /// The ntfy topic (letters, digits, `-`, `_`).
    pub topic: String,
    /// The variable that holds an access token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Delivery and retries.
    #[serde(flatten)]
    pub retry: RetrySpec,
    /// Cooldown, quiet hours and message template.
    #[serde(default)]
    pub policy: NotifyPolicySpec,
}

/// Cooldown, quiet hours and message template of a notifier.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyPolicySpec {
    /// At most one notification per device and operator in this time.
    #[serde(default)]
    pub cooldown: Option<DurationSpec>,
    /// Hold notifications back during these hours (except `critical` severities).
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSpec>,
    /// Title template of the notification.
    #[serde(default)]
    pub title: Option<String>,
    /// Body template of the notification.
    #[serde(default)]
    pub body: Option<String>,
    /// Which records this route notifies: `start`, `escalation`, `de_escalation`, `reminder`
    /// (the `reason` of an `event_update`; an update without one is an escalation), `end`, and
    /// `other` (records that are not an event's, such as a `health` offline report). Absent:
    /// every record the route takes. Present: only these; `[escalation]` pages when an open
    /// event gets worse and on nothing else, `[escalation, other]` also on offline reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_on: Option<Vec<NotifyOn>>,
    /// At most this many cooldown entries (last notification per device and operator, and event
    /// starts suppressed) are kept for this route; beyond it the oldest tenth is dropped and
    /// counted. Absent: 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
}

/// See [`NotifyPolicySpec::notify_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// `event_start`.
    Start,
    /// `event_update` with `reason: escalation` (or without a reason).
    Escalation,
    /// `event_update` with `reason: de_escalation`.
    DeEscalation,
    /// `event_update` with `reason: reminder`.
    Reminder,
    /// `event_end`.
    End,
    /// Every record that is not an event's (`health`, `threshold`, `deviation`, …).
    Other,
}

/// Hold notifications back during these hours (except `critical` severities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursSpec {
    /// Start of the quiet hours (`22:00`).
    pub from: String,
    /// End of the quiet hours (`07:00`).
    pub to: String,
    /// Time zone of `from` and `to` (`Europe/Zurich`).
    pub timezone: String,
    /// Severities delivered even in quiet hours.
    #[serde(default)]
    pub critical: Vec<String>,
}

/// Publish results to an MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkSpec {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Topic to publish to; `{device}` and `{operator}` are filled in.
    pub topic: String,
    /// MQTT quality of service.
    #[serde(default = "defaults::qos")]
    pub qos: Qos,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Client id, credentials and TLS (shared with the MQTT source).
    #[serde(flatten)]
    pub client: MqttClientSpec,
}

/// Produce results to a Kafka topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// librdkafka properties (shared with the Kafka source).
    #[serde(flatten)]
    pub client: KafkaClientSpec,
}
