//! Kafka: the consumer-group source with checkpointed offsets and partition hand-offs
//! ([`source`]), and the idempotent sink ([`sink`]).

pub mod sink;
pub mod source;
