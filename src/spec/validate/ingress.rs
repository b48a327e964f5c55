//! Checks of the keyed ingress (`ingress:`, run by `plume ingest`), and the warnings about
//! pipelines whose members would split a device's state between them.

use super::rules::{check_kafka_topic, check_subscribe_topic};
use super::{Checker, Path, Problem};
use crate::operators::Report;
use crate::spec::{KafkaDeviceFrom, PipelineSpec, SourceSpec};

impl Checker<'_> {
    pub(super) fn ingress(&mut self) {
        let spec = self.spec;
        let Some(ingress) = &spec.ingress else {
            return;
        };
        let path = Path::root().key("ingress");
        if self.gaps.at(&path) {
            return;
        }
        let mqtt = path.key("mqtt");
        if !self.gaps.touches(&mqtt) {
            let m = &ingress.mqtt;
            self.mqtt_connection(&mqtt, &m.url, &m.client);
            if let Err(e) = check_subscribe_topic(&m.topic) {
                self.report(mqtt.key("topic"), e);
            }
            if let Some(group) = &m.shared_group
                && (group.is_empty() || group.contains(['/', '+', '#']))
            {
                self.report(
                    mqtt.key("shared_group"),
                    "`shared_group` is a group name: not empty, without `/`, `+` or `#`",
                );
            }
            let device = Path::root().key("decode").key("device");
            if spec.decode.device.topic && !self.gaps.touches(&device) && !m.topic.split('/').any(|l| l == "{device}") {
                self.report(
                    mqtt.key("topic"),
                    "`decode.device.topic` takes the device id from the topic: put a `{device}` level in the ingress topic",
                );
            }
        }
        let kafka = path.key("kafka");
        if self.gaps.touches(&kafka) {
            return;
        }
        let k = &ingress.kafka;
        self.kafka_brokers(kafka.key("brokers"), &k.brokers);
        for (key, topic) in [("topic", &k.topic), ("dead_letter_topic", &k.dead_letter_topic)] {
            if let Err(e) = check_kafka_topic(topic) {
                self.report(kafka.key(key), e);
            }
        }
        if k.topic == k.dead_letter_topic {
            self.report(
                kafka.key("dead_letter_topic"),
                "the dead letters need a topic of their own, not the readings' `topic`",
            );
        }
        self.kafka_client(&kafka, &k.client);
        if self.gaps.touches(&Path::root().key("sources")) {
            return;
        }
        // the stateful members: a Kafka source of this pipeline reads the keyed topic by its key
        let reader = spec.sources.iter().enumerate().find_map(|(i, s)| match s {
            SourceSpec::Kafka(source) if source.topics.contains(&k.topic) => Some((i, source)),
            _ => None,
        });
        match reader {
            None => self.report(
                kafka.key("topic"),
                format!(
                    "no Kafka source of this pipeline reads `{}`: the stateful members read the keyed topic \
                     (add `- kafka: {{ brokers: …, topics: [{}] }}` to `sources`)",
                    k.topic, k.topic
                ),
            ),
            Some((i, source)) if source.device_from != KafkaDeviceFrom::Key => self.report(
                Path::root().key("sources").index(i).key("kafka").key("device_from"),
                "the ingress keys each record by its device id: read the keyed topic with `device_from: key`",
            ),
            Some(_) => {}
        }
    }
}

/// What is valid but probably not meant, each with the path it is about: today, a stateful
/// pipeline (one with operators, which keep each device's state) reading an MQTT shared
/// subscription, where every member would get part of each device's readings and hold part of
/// its windows, events and baselines.
pub fn warnings(spec: &PipelineSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if spec.operators.is_empty() {
        return out;
    }
    for (i, source) in spec.sources.iter().enumerate() {
        if let SourceSpec::Mqtt(m) = source
            && let Some(group) = &m.shared_group
        {
            out.push(Problem {
                path: Path::root().key("sources").index(i).key("mqtt").key("shared_group"),
                message: format!(
                    "a stateful pipeline reads the MQTT shared subscription `$share/{group}/…`: the broker \
                     gives each member part of every device's readings, so each member would hold part of a \
                     device's windows, events and baselines. For several members, run `plume ingest` \
                     (`ingress:`) into a keyed Kafka topic and read that with a Kafka source (README, \
                     \"MQTT fleets through Kafka\")"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::spec::parse_pipeline;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const BASE: &str = r#"
version: 1
pipeline: t
sources:
  - kafka: { brokers: "127.0.0.1:9092", topics: [readings] }
decode:
  device: { field: device }
  time: { field: ts }
  fields: { pm25: {} }
operators:
  - window: { every: 60s, aggregates: { pm25: [avg] } }
"#;

    fn problems(text: &str) -> Vec<String> {
        match parse_pipeline("p.yaml", text, &no_env) {
            Ok(_) => Vec::new(),
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_valid_ingress() {
        let text = format!(
            "{BASE}ingress:\n  mqtt: {{ url: \"mqtt://127.0.0.1:1883\", topic: \"aq/{{device}}\" }}\n  kafka: {{ brokers: \"127.0.0.1:9092\", topic: readings, dead_letter_topic: readings-dead }}\n"
        );
        assert_eq!(problems(&text), Vec::<String>::new());
        let spec = parse_pipeline("p.yaml", &text, &no_env).unwrap();
        let ingress = spec.ingress.as_ref().unwrap();
        assert_eq!(ingress.mqtt.shared_group.as_deref(), Some("plume-ingress"));
        assert_eq!(ingress.mqtt.version, crate::spec::MqttVersion::V5);
        // the ingress does not change the pipeline's hash (its checkpoints stay usable)
        let without = parse_pipeline("p.yaml", BASE, &no_env).unwrap();
        assert_eq!(crate::spec::pipeline_hash(&spec), crate::spec::pipeline_hash(&without));
    }

    #[test]
    fn every_ingress_problem_at_once() {
        let text = format!(
            "{BASE}ingress:\n  mqtt: {{ url: \"http://x\", topic: \"aq/#/x\", shared_group: \"a/b\" }}\n  kafka: {{ brokers: \"127.0.0.1:9092\", topic: other, dead_letter_topic: other }}\n"
        );
        let p = problems(&text);
        let text = p.join("\n");
        assert!(text.contains("p.yaml:13:"), "{text}");
        for wanted in [
            "mqtt://",
            "shared_group",
            "topic of their own",
            "no Kafka source of this pipeline reads `other`",
        ] {
            assert!(text.contains(wanted), "{wanted} not in:\n{text}");
        }
    }

    #[test]
    fn the_keyed_topic_is_read_by_key() {
        let text = BASE.replace("topics: [readings]", "topics: [readings], device_from: payload")
            + "ingress:\n  mqtt: { url: \"mqtt://127.0.0.1:1883\", topic: \"aq/+\" }\n  kafka: { brokers: \"127.0.0.1:9092\", topic: readings, dead_letter_topic: dl }\n";
        let p = problems(&text).join("\n");
        assert!(p.contains("p.yaml:5:") && p.contains("device_from: key"), "{p}");
    }

    #[test]
    fn a_stateful_pipeline_on_a_shared_subscription_is_warned_about() {
        let text = BASE.replace(
            "  - kafka: { brokers: \"127.0.0.1:9092\", topics: [readings] }",
            "  - mqtt: { url: \"mqtt://127.0.0.1:1883\", topic: \"aq/+\", shared_group: g }",
        );
        let spec = parse_pipeline("p.yaml", &text, &no_env).unwrap();
        let w = super::warnings(&spec);
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("$share/g/"), "{}", w[0].message);
        assert_eq!(w[0].path.to_string(), "sources[0].mqtt.shared_group");
        // without operators there is no device state to split
        let mut stateless = spec.clone();
        stateless.operators.clear();
        assert!(super::warnings(&stateless).is_empty());
    }
}
