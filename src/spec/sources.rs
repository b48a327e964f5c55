//! Sources: where readings come from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationSpec, KafkaClientSpec, MqttClientSpec, MqttVersion, Qos, defaults};

/// One input. Externally tagged: `- file: { path: … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceSpec {
    File(FileSourceSpec),
    Stdin(StdinSourceSpec),
    Simulator(SimulatorSourceSpec),
    Mqtt(MqttSourceSpec),
    Kafka(KafkaSourceSpec),
}

/// A JSON-lines (or influx line protocol) file, read to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    /// The file.
    pub path: String,
    /// `none`: as fast as possible; `event_time`: paced by the readings' event time.
    #[serde(default)]
    pub pace: Pace,
    /// With `pace: event_time`, how many times faster than real time.
    #[serde(default = "defaults::speed")]
    pub speed: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    #[default]
    None,
    EventTime,
}

/// Lines from standard input: `- stdin`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceSpec {}

/// A built-in fleet of simulated air-quality monitors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSourceSpec {
    /// Number of devices.
    #[serde(default = "defaults::sim_devices")]
    pub devices: u32,
    /// Time between two readings of one device, in simulated time.
    #[serde(default = "defaults::sim_interval")]
    pub interval: DurationSpec,
    /// Simulated seconds per wall-clock second (1 = real time).
    #[serde(default = "defaults::speed")]
    pub speed: f64,
    /// Chance per reading that a pollution episode starts.
    #[serde(default = "defaults::sim_episodes")]
    pub episodes: f64,
    /// Chance per reading of a sensor fault (stuck value, spike, dropout).
    #[serde(default = "defaults::sim_faults")]
    pub faults: f64,
    /// Stop after this much simulated time; absent: run until Ctrl-C.
    #[serde(default)]
    pub duration: Option<DurationSpec>,
    /// Seed of the random numbers: the same seed gives the same readings.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
}

/// Subscribe to an MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceSpec {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// `{device}` (a whole level, at most once) captures the device id, as in
    /// `sensors/{device}/air`; `+` and `#` are MQTT wildcards.
    pub topic: String,
    /// MQTT quality of service of the subscription.
    #[serde(default = "defaults::qos")]
    pub qos: Qos,
    /// Client id, credentials and TLS (shared with the MQTT sink).
    #[serde(flatten)]
    pub client: MqttClientSpec,
    /// MQTT protocol version.
    #[serde(default)]
    pub version: MqttVersion,
    /// Keep the session on the broker while plume is down (clean session off).
    #[serde(default = "defaults::yes")]
    pub persistent_session: bool,
    /// MQTT shared subscription group (`$share/<group>/<topic>`), for several plume nodes.
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Acknowledge a message only once it is synced to the ingest log in the data directory
    /// (replayed after a crash); `false`: once handed to the pipeline (a crash loses what is in
    /// flight). Needs checkpoints on.
    #[serde(default = "defaults::yes")]
    pub durable: bool,
    /// MQTT keep-alive interval.
    #[serde(default = "defaults::keep_alive")]
    pub keep_alive: DurationSpec,
}

/// Where a Kafka record's device id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KafkaDeviceFrom {
    /// The record key.
    #[default]
    Key,
    /// The payload field named in `decode.device`.
    Payload,
}

/// Where a Kafka record's event time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KafkaTimeFrom {
    /// The payload field named in `decode.time`.
    #[default]
    Payload,
    /// The record's timestamp.
    Record,
}

/// Consume Kafka topics in a consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id.
    #[serde(default = "defaults::kafka_group")]
    pub group: String,
    /// `key`: the record key is the device id; `payload`: the payload field `decode.device.field`.
    #[serde(default)]
    pub device_from: KafkaDeviceFrom,
    /// `payload`: the event time is `decode.time`; `record`: the record's timestamp.
    #[serde(default)]
    pub time_from: KafkaTimeFrom,
    /// librdkafka properties (shared with the Kafka sink).
    #[serde(flatten)]
    pub client: KafkaClientSpec,
    /// A directory shared by the group's members (the same disk, or a network mount) where a
    /// member leaves the device state and offset of each partition it gives up, for the next
    /// owner. Default: `kafka-handoff/<group>` beside the data directory.
    #[serde(default)]
    pub handoff_dir: Option<String>,
    /// How often a member refreshes the hand-off of each partition it reads, so that its
    /// partitions move with their state even when it dies without giving them up: at the first
    /// durable checkpoint this long after the previous refresh (`0s`: every checkpoint), for a
    /// partition read since. `null`: hand-offs only when a partition is given up.
    #[serde(default = "defaults::handoff_refresh")]
    pub handoff_refresh: Option<DurationSpec>,
    /// Keep each partition's device state in a compacted Kafka topic, so that members on
    /// separate machines (sharing nothing but Kafka) take partitions over with their state.
    /// Replaces the hand-off directory. A member's stop then leaves the group: its windows go
    /// on at the next owner, so nothing is flushed at the stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<KafkaChangelogSpec>,
}

/// The changelog of a Kafka source's partition state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaChangelogSpec {
    /// The changelog topic (created, compacted, with the input topic's partition count, when it
    /// does not exist). Default: `<pipeline>-changelog`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Warm copies of partition state: with 1 or more, a member keeps a copy of every partition
    /// of the changelog up to date by tailing it, so that a failover reads only what was
    /// written since (0: a new owner reads the partition's changelog from its start).
    #[serde(default)]
    pub standby_replicas: u32,
    /// The replication factor of the changelog topic when plume creates it (default: the
    /// broker's `default.replication.factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
}

impl KafkaChangelogSpec {
    /// The changelog topic of pipeline `pipeline`.
    pub fn topic_of(&self, pipeline: &str) -> String {
        self.topic.clone().unwrap_or_else(|| format!("{pipeline}-changelog"))
    }
}
