//! MQTT: the subscription source with manual acks ([`source`]), its protocol state without IO
//! ([`state`]) and its durable ingest log ([`ingest`]), the sink ([`sink`]), the embedded broker ([`broker`]),
//! and the keyed ingress of `plume ingest`, MQTT into a keyed Kafka topic ([`bridge`]).

pub mod bridge;
pub mod broker;
pub mod client;
pub mod ingest;
pub mod sink;
pub mod source;
pub mod state;
pub mod topic;
