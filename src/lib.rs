//! plume: an actor-based, stateful stream processor for sensor fleets.
//!
//! # Layout
//! Layers, lowest first; imports run one way (ARCHITECTURE.md, "Layers"; `tests/layers.rs`).
//! - [`model`]: the shared vocabulary: chunks and positions, output records and their kinds,
//!   source and sink ids, key groups. Imports nothing of plume.
//! - [`operators`]: the pure per-device state machines (windows, hysteresis, baselines, …)
//!   and the per-device chain with its versioned snapshot.
//! - [`spec`]: the pipeline file format (typed spec, YAML with positions, validation).
//! - [`decode`]: raw payloads (JSON, influx line protocol) into readings, or dead letters.
//! - [`pipeline`]: a validated spec compiled into field slots, operator configs and a decoder.
//! - [`output`]: output records (JSON lines, schema version 1) with deterministic ids.
//! - [`plain`]: the single-threaded loop: the correctness oracle and the speed ceiling.
//! - [`store`]: the RocksDB state store, retained checkpoints, export and import, typed tables.
//! - [`runtime`]: routers, shard supervisors hosting the device actors, the output hub,
//!   checkpoints, the run coordinator; [`runtime::ports`] is all connectors see of it.
//! - [`connectors`]: files, stdin, stdout, the simulator, MQTT (and the embedded broker), Kafka.
//! - [`notify`]: notifier sinks (signed webhooks, FCM, APNs, ntfy) with a durable outbox.
//! - [`app`]: assembling a run from a pipeline (`plume run`, `plume demo`).
//! - [`clock`]: processing time.
//! - [`trace`]: spans (checkpoints, restores, rebalances, events and deliveries) through
//!   OpenTelemetry's API; `app::otlp` exports them.
//! - [`workload`]: the aq1 reference workload generator (`plume generate aq1`).

pub mod app;
pub mod clock;
pub mod connectors;
pub mod decode;
pub mod model;
pub mod notify;
pub mod operators;
pub mod output;
pub mod pipeline;
pub mod plain;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod trace;
pub mod workload;
