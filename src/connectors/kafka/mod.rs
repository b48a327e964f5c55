//! Kafka: the consumer-group source with checkpointed offsets and partition hand-offs
//! ([`source`]), the changelog that moves partition state between members on separate machines
//! ([`changelog`]), and the idempotent sink ([`sink`]).

pub mod changelog;
pub mod sink;
pub mod source;
