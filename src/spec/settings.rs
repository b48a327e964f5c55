//! Runtime, checkpoints, shutdown, the embedded broker, and the named defaults.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Shard threads; 0 = one per core.
    #[serde(default)]
    pub shards: u32,
    /// Fixed number of key groups (device id → stable hash → key group → shard).
    #[serde(default = "defaults::key_groups")]
    pub key_groups: u32,
    /// Passivate a device actor after this much processing time without readings.
    #[serde(default = "defaults::passivate_after")]
    pub passivate_after: DurationSpec,
    /// Bound on the results waiting for one sink before the devices are slowed down.
    #[serde(default = "defaults::sink_queue")]
    pub sink_queue: usize,
    /// Most devices held in memory (active or passivated), over all shards: a new device beyond
    /// it first makes room by dropping passivated devices whose state the store holds, and
    /// otherwise its readings are dead letters (and a warning is logged). Anyone who can publish
    /// can invent device ids; this bounds the memory they can take.
    #[serde(default = "defaults::max_devices", skip_serializing_if = "defaults::is_max_devices")]
    pub max_devices: u64,
    /// What time silence is measured in (`offline_after`, `idle_flush`, backfill ages):
    /// `processing` (the wall clock when a reading is handled; the default) or `event` (the
    /// fleet's clock: the latest arrival time, or event time, seen so far). With `event`, a
    /// replay at full speed decides exactly as the live run did.
    #[serde(default, skip_serializing_if = "DecisionClock::is_processing")]
    pub clock: DecisionClock,
}

/// See [`RuntimeSpec::clock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionClock {
    /// The wall clock when a reading is handled.
    #[default]
    Processing,
    /// The fleet's clock, from the readings themselves.
    Event,
}

impl DecisionClock {
    pub fn is_processing(&self) -> bool {
        *self == DecisionClock::Processing
    }

    pub fn is_event(&self) -> bool {
        *self == DecisionClock::Event
    }
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            shards: 0,
            key_groups: defaults::key_groups(),
            passivate_after: defaults::passivate_after(),
            sink_queue: defaults::sink_queue(),
            max_devices: defaults::max_devices(),
            clock: DecisionClock::Processing,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Take a checkpoint this often; `null`: only at graceful shutdown.
    #[serde(default = "defaults::checkpoint_interval")]
    pub interval: Option<DurationSpec>,
    /// Where checkpoints live; default: `checkpoints/<pipeline>`.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// How many complete checkpoints to keep.
    #[serde(default = "defaults::retain")]
    pub retain: u32,
    /// `false` turns state persistence off entirely (in-memory run).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval: defaults::checkpoint_interval(),
            data_dir: None,
            retain: defaults::retain(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSpec {
    /// Emit still-open windows and final baselines on graceful shutdown and at the end of input.
    #[serde(default = "defaults::yes")]
    pub flush: bool,
    /// Longest wait for in-flight readings and deliveries on graceful shutdown.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: DurationSpec,
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        ShutdownSpec {
            flush: true,
            drain_timeout: defaults::drain_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerSpec {
    /// TCP port of the embedded MQTT broker.
    #[serde(default = "defaults::mqtt_port")]
    pub port: u16,
    /// Address the embedded broker listens on.
    #[serde(default = "defaults::loopback")]
    pub bind: String,
}

/// The admin endpoint: Prometheus metrics at `/metrics`, liveness at `/healthz`, readiness at
/// `/readyz`, all on one address. Off when the section is absent (`plume run --metrics ADDR`
/// turns it on; `plume demo` has it on 127.0.0.1:9464). Not part of the pipeline's hash: where
/// it is watched from does not change what it computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Address and port to listen on, such as `127.0.0.1:9464` (`0.0.0.0:9464` for every
    /// interface).
    pub listen: String,
}

/// Named defaults, one function each (serde's `default = "…"` needs functions).
pub mod defaults {
    use crate::spec::{DurationSpec, Qos};

    pub fn yes() -> bool {
        true
    }
    pub fn speed() -> f64 {
        1.0
    }
    pub fn seed() -> u64 {
        1
    }
    pub fn sim_devices() -> u32 {
        50
    }
    pub fn sim_interval() -> DurationSpec {
        DurationSpec::from_millis(10_000)
    }
    pub fn sim_episodes() -> f64 {
        0.002
    }
    pub fn sim_faults() -> f64 {
        0.0005
    }
    pub fn qos() -> Qos {
        Qos::AtLeastOnce
    }
    pub fn keep_alive() -> DurationSpec {
        DurationSpec::from_millis(30_000)
    }
    pub fn kafka_group() -> String {
        "plume".to_string()
    }
    /// The MQTT shared subscription group of `plume ingest` members.
    pub fn ingress_group() -> Option<String> {
        Some("plume-ingress".to_string())
    }
    /// `plume ingest` speaks MQTT 5 unless told otherwise (shared subscriptions are part of it).
    pub fn ingress_mqtt_version() -> crate::spec::MqttVersion {
        crate::spec::MqttVersion::V5
    }
    /// 1 MiB: a reading is a few hundred bytes.
    pub fn max_payload_bytes() -> usize {
        1 << 20
    }
    /// (Left out of the canonical JSON at its default, so the pipeline hash of files written
    /// before the setting existed does not change.)
    pub fn is_max_payload_bytes(n: &usize) -> bool {
        *n == max_payload_bytes()
    }
    pub fn max_device_id_bytes() -> usize {
        256
    }
    pub fn is_max_device_id_bytes(n: &usize) -> bool {
        *n == max_device_id_bytes()
    }
    /// A reading has a few fields; telegraf's widest lines have a few hundred.
    pub fn max_fields() -> usize {
        1000
    }
    pub fn is_max_fields(n: &usize) -> bool {
        *n == max_fields()
    }
    /// One hour: well beyond any drift of a device clock synchronised by NTP, well short of a
    /// clock set to the wrong day.
    pub fn plausible_ahead() -> DurationSpec {
        DurationSpec::from_millis(3600 * 1000)
    }
    pub fn dead_letter_bytes() -> usize {
        4096
    }
    pub fn http_timeout() -> DurationSpec {
        DurationSpec::from_millis(10_000)
    }
    pub fn max_age() -> DurationSpec {
        DurationSpec::from_millis(24 * 3600 * 1000)
    }
    pub fn concurrency() -> u32 {
        4
    }
    pub fn backoff() -> DurationSpec {
        DurationSpec::from_millis(1000)
    }
    pub fn breaker_open() -> DurationSpec {
        DurationSpec::from_millis(30_000)
    }
    pub fn ntfy_server() -> String {
        "https://ntfy.sh".to_string()
    }
    pub fn key_groups() -> u32 {
        256
    }
    pub fn passivate_after() -> DurationSpec {
        DurationSpec::from_millis(5 * 60 * 1000)
    }
    pub fn handoff_refresh() -> Option<DurationSpec> {
        Some(DurationSpec::from_millis(30_000))
    }
    pub fn sink_queue() -> usize {
        10_000
    }
    /// 500,000: a flood of new ids peaks at 650 MiB with the aq1 chain (tests/flood.rs), under
    /// the 1 GiB a small machine can give.
    pub fn max_devices() -> u64 {
        500_000
    }
    pub fn is_max_devices(n: &u64) -> bool {
        *n == max_devices()
    }
    pub fn checkpoint_interval() -> Option<DurationSpec> {
        Some(DurationSpec::from_millis(10_000))
    }
    pub fn retain() -> u32 {
        3
    }
    pub fn drain_timeout() -> DurationSpec {
        DurationSpec::from_millis(30_000)
    }
    pub fn mqtt_port() -> u16 {
        1883
    }
    pub fn loopback() -> String {
        "127.0.0.1".to_string()
    }
}
