//! plume: an actor-based, stateful stream processor for sensor fleets.
//!
//! # Layout
//! - [`config`]: the pipeline file format (typed config, YAML with positions, validation).
//! - [`pipeline`]: a validated config compiled into field slots, operator configs and a decoder.
//! - [`decode`]: raw payloads (JSON, influx line protocol) into readings, or dead letters.
//! - [`operators`]: the pure per-device state machines (windows, hysteresis, baselines, …)
//!   and the per-device chain with its versioned snapshot.
//! - [`output`]: output records (JSON lines, schema version 1) with deterministic ids.
//! - [`plain`]: the single-threaded loop: the correctness oracle and the speed ceiling.
//! - [`actors`]: device actors, shard supervisors, routers, the output hub, the run coordinator.
//! - [`engine`]: assembling the runtime for a pipeline and running it (`plume run`).
//! - [`sources`]: files, stdin, the simulator (each on its own thread, broadcasting chunks).
//! - [`sinks`]: stdout and JSON-lines files behind bounded queues; output routes.
//! - [`broker`]: the embedded MQTT broker (rumqttd).
//! - [`notify`]: notifier sinks (signed webhooks, FCM, APNs, ntfy) with a durable outbox.
//! - [`store`]: the RocksDB state store, retained checkpoints, export and import.
//! - [`clock`]: processing time.
//! - [`workload`]: the aq1 reference workload generator (`plume generate aq1`).

pub mod app;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod decode;
pub mod model;
pub mod notify;
pub mod operators;
pub mod output;
pub mod pipeline;
pub mod plain;
pub mod runtime;
pub mod store;
pub mod workload;
