//! Kafka: the consumer-group source with checkpointed offsets and partition hand-offs
//! ([`source`]), the changelog that moves partition state between members on separate machines
//! ([`changelog`]), a table every member keeps a copy of through one compacted topic
//! ([`replicated`]: the push subscriptions), and the idempotent sink ([`sink`]).

pub mod changelog;
pub mod replicated;
pub mod sink;
pub mod source;
