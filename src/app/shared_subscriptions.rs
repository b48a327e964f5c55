//! Push subscriptions shared by a cluster's members. With a Kafka source that has a changelog
//! (and an FCM or APNs sink: only they use subscriptions), every change `plume subscribers add|remove` queues on one member is applied there and
//! written to the compacted topic `<pipeline>-subscriptions`; every member applies every change
//! of that topic (from its start, its own included) to its own store. So a device's tokens are
//! known to whichever member owns the device's partition now or later, wherever they were
//! registered, and only that member sends to them (it is the one that gets the device's
//! records).
//!
//! Record: key `provider NUL device NUL token`, value the change as JSON (a
//! [`SubscriberRequest`]); changes are idempotent, so applying one twice is harmless. The topic
//! holds tokens: it is as secret as the brokers that keep it.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::connectors::kafka::replicated::ReplicatedTopic;
use crate::notify::SubscriberStore;
use crate::notify::subscribers::SubscriberRequest;
use crate::pipeline::CompiledPipeline;
use crate::spec::SourceSpec;

/// The subscriptions topic of pipeline `pipeline`.
pub fn topic_of(pipeline: &str) -> String {
    format!("{pipeline}-subscriptions")
}

/// Starts sharing `subscribers` through the pipeline's subscriptions topic, when the pipeline
/// has a Kafka source with a changelog and an FCM or APNs sink (`None` otherwise, or when the
/// topic cannot be used: then subscriptions stay with the member they were registered on, and
/// that is logged).
pub fn start(pipeline: &CompiledPipeline, subscribers: Arc<SubscriberStore>) -> Option<Arc<ReplicatedTopic>> {
    let push = pipeline
        .spec
        .outputs
        .iter()
        .flat_map(|route| route.to.iter())
        .any(|sink| {
            matches!(
                sink,
                crate::spec::SinkSpec::Push(crate::spec::PushSinkSpec::Fcm(_) | crate::spec::PushSinkSpec::Apns(_))
            )
        });
    if !push {
        return None;
    }
    let (name, spec, changelog) = pipeline.spec.sources.iter().find_map(|s| match s {
        SourceSpec::Kafka(k) => k
            .changelog
            .as_ref()
            .map(|c| (format!("kafka:{}", k.topics.join(",")), k, c)),
        _ => None,
    })?;
    let topic = topic_of(&pipeline.name);
    let configs =
        crate::connectors::kafka::source::side_configs(&name, spec, &format!("plume-{}-subscriptions", pipeline.name));
    let (reader, writer) = match configs {
        Ok(c) => c,
        Err(e) => {
            error!(topic = %topic, error = %e, "push subscriptions are not shared between members");
            return None;
        }
    };
    let apply = move |_key: &[u8], value: Option<&[u8]>| {
        let Some(value) = value else { return };
        match serde_json::from_slice::<SubscriberRequest>(value) {
            Ok(request) => {
                if let Err(e) = subscribers.apply(&request) {
                    warn!(error = %e, "a shared subscription change could not be applied");
                }
            }
            // never the record itself: it holds a token
            Err(e) => warn!(error = %e, "a shared subscription change that does not parse is skipped"),
        }
    };
    match ReplicatedTopic::start(&reader, writer, &topic, changelog.replication_factor, apply) {
        Ok(t) => {
            info!(topic = %topic, "push subscriptions shared between members");
            Some(Arc::new(t))
        }
        Err(e) => {
            error!(topic = %topic, error = %e, "push subscriptions are not shared between members");
            None
        }
    }
}

/// Writes a change applied on this member to the subscriptions topic.
pub fn publish(topic: &ReplicatedTopic, request: &SubscriberRequest) {
    let key = format!("{}\0{}\0{}", request.provider, request.device, request.token);
    let value = serde_json::to_vec(request).expect("a subscription change serializes");
    if let Err(e) = topic.publish(key.as_bytes(), Some(&value)) {
        error!(error = %e, device = %request.device, "a subscription change could not be shared with the other members: it holds on this member only");
    }
}
