//! Semantic checks on a pipeline: everything the schema alone cannot say. No IO, and every
//! problem is reported, each with the path of the node at fault (`operators[2].hysteresis.exit`)
//! that the loader turns into a line and column.
//!
//! # Layout
//! - [`Path`], [`Segment`]: where a problem is.
//! - [`Problem`]: a path and a sentence.
//! - [`Gaps`]: the parts of a file that could not be read as written (structural problems the
//!   loader already reported, repaired with defaults or placeholders): their checks are left
//!   out, and so are the judgments that depend on them (which fields exist, which operators).
//! - [`validate`], [`validate_spec`]: run every check on a typed [`PipelineSpec`].
//! - `Checker` (here: the top level, `decode`, sources, runtime), `operators` (the chain, the
//!   fields each operator reads and produces), `outputs` (routes and sinks), `rules` (URLs, topic
//!   names, times of day).

use std::collections::BTreeMap;

use super::yaml::is_env_name;
use super::{
    CURRENT_VERSION, DecodeFormat, FieldSpec, FieldType, KafkaClientSpec, KafkaDeviceFrom, KafkaTimeFrom,
    MqttClientSpec, PipelineSpec, SourceSpec, TimeUnit,
};

pub use crate::model::location::{Path, Segment};

mod ingress;
mod operators;
mod outputs;
mod rules;

pub use ingress::warnings;

use rules::plaintext_to_another_host;
use rules::{check_kafka_topic, check_subscribe_topic, check_url, is_name};

/// The most fields (declared and produced by operators) a pipeline can have.
pub const MAX_FIELDS: usize = 64;

/// Route names that are not operators.
pub const RESERVED_ROUTE_NAMES: [&str; 4] = ["all", "late", "dead_letters", "summary"];

/// Kinds of results a route can select with `events` (the output record types, and the short
/// `start` / `update` / `end` for `event_start` / `event_update` / `event_end`).
pub const EVENT_KINDS: [&str; 15] = [
    "window",
    "event_start",
    "event_update",
    "event_end",
    "start",
    "update",
    "end",
    "baseline",
    "deviation",
    "smoothed",
    "threshold",
    "health",
    "late",
    "dead_letter",
    "summary",
];

/// A semantic problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Path,
    pub message: String,
}

/// The parts of a file that could not be read as written: the paths of its structural problems
/// (already reported). Empty for a spec built in code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gaps {
    broken: Vec<Path>,
}

impl Gaps {
    /// Nothing is missing.
    pub fn none() -> Self {
        Gaps::default()
    }

    pub fn new(broken: Vec<Path>) -> Self {
        Gaps { broken }
    }

    /// Whether the value at `path` is unknown: it, or a part above it, is broken.
    pub fn covers(&self, path: &Path) -> bool {
        self.broken.iter().any(|b| path.starts_with(b))
    }

    /// Whether anything at, above or under `path` is broken.
    pub fn touches(&self, path: &Path) -> bool {
        self.broken.iter().any(|b| path.starts_with(b) || b.starts_with(path))
    }

    /// Whether the value at `path` itself is broken (not only a part of it): an item of unknown kind.
    pub fn at(&self, path: &Path) -> bool {
        self.broken.iter().any(|b| b == path)
    }
}

/// Every semantic problem of a spec built in code.
pub fn validate_spec(spec: &PipelineSpec) -> Vec<Problem> {
    validate(spec, &Gaps::none())
}

/// Every semantic problem of a spec, leaving out what depends on the `gaps` of its file.
pub fn validate(spec: &PipelineSpec, gaps: &Gaps) -> Vec<Problem> {
    let mut checker = Checker {
        problems: Vec::new(),
        spec,
        gaps,
    };
    checker.top_level();
    checker.decode();
    checker.sources();
    checker.operators();
    checker.outputs();
    checker.runtime();
    checker.ingress();
    checker.problems
}

struct Checker<'p> {
    problems: Vec<Problem>,
    spec: &'p PipelineSpec,
    gaps: &'p Gaps,
}

/// Fields available to an operator: declared ones and those produced by earlier operators.
struct Available {
    /// Field name → who provides it (`decode.fields`, or `operator `x``).
    fields: BTreeMap<String, String>,
    /// Whether some earlier part failed so that what is available is not known for sure.
    uncertain: bool,
}

use crate::operators::Report;

impl Report for Checker<'_> {
    fn report(&mut self, path: Path, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }
}

impl Checker<'_> {
    fn env_name(&mut self, path: Path, name: &str) {
        if !is_env_name(name) {
            self.report(
                path,
                format!(
                    "`{name}` is not a valid environment variable name (letters, digits and `_`, not starting \
                     with a digit): give the variable's name here, not its value"
                ),
            );
        }
    }

    fn not_empty(&mut self, path: Path, what: &str, value: &str) {
        if value.trim().is_empty() {
            self.report(path, format!("{what} must not be empty"));
        }
    }

    // -----------------------------------------------------------------------------------------

    fn top_level(&mut self) {
        let spec = self.spec;
        let version = Path::root().key("version");
        if spec.version != CURRENT_VERSION && !self.gaps.covers(&version) {
            self.report(
                version,
                format!(
                    "version {} is not supported: this plume reads pipeline files of version {CURRENT_VERSION} \
                     (write `version: {CURRENT_VERSION}`)",
                    spec.version
                ),
            );
        }
        let name = &spec.pipeline;
        let pipeline = Path::root().key("pipeline");
        if !is_name(name) && !self.gaps.covers(&pipeline) {
            self.report(
                pipeline,
                format!(
                    "pipeline name `{name}` may contain only letters, digits, `-` and `_` (it names the data \
                     directory and the checkpoints)"
                ),
            );
        }
    }

    /// Whether the declared fields are known (`decode.fields` was read as written).
    fn fields_known(&self) -> bool {
        !self.gaps.covers(&Path::root().key("decode").key("fields"))
    }

    fn decode(&mut self) {
        let decode = &self.spec.decode;
        let gaps = self.gaps;
        let path = Path::root().key("decode");
        let format = (!gaps.covers(&path.key("format"))).then_some(decode.format);
        if self.fields_known() {
            if decode.fields.is_empty() {
                self.report(
                    path.key("fields"),
                    "declare at least one field in `decode.fields` (such as `pm25: {}`)",
                );
            }
            for (name, spec) in &decode.fields {
                let field_path = path.key("fields").key(name);
                if name.trim().is_empty() {
                    self.report(path.key("fields").key_name(name), "a field name must not be empty");
                } else if !is_name(name) {
                    // (field names become keys of output records and parts of derived names)
                    self.report(
                        path.key("fields").key_name(name),
                        format!("field name `{name}` may contain only letters, digits, `-` and `_`"),
                    );
                }
                if !gaps.touches(&field_path) {
                    self.field_spec(&field_path, spec);
                }
            }
        }
        for (key, value, low, high) in [
            ("max_payload_bytes", decode.max_payload_bytes, 64, 64 << 20),
            ("max_device_id_bytes", decode.max_device_id_bytes, 1, 4096),
            ("max_fields", decode.max_fields, 1, 100_000),
        ] {
            if !(low..=high).contains(&value) && !gaps.covers(&path.key(key)) {
                self.report(
                    path.key(key),
                    format!("`{key}` must be from {low} to {high}, found {value}"),
                );
            }
        }
        let time_path = path.key("plausible_time");
        if !gaps.touches(&time_path) {
            let window = &decode.plausible_time;
            self.duration_positive(time_path.key("ahead"), "ahead", window.ahead);
            if let Some(behind) = window.behind {
                self.duration_positive(time_path.key("behind"), "behind", behind);
            }
        }
        let device_path = path.key("device");
        if !gaps.touches(&device_path) {
            let device = &decode.device;
            let given =
                usize::from(device.field.is_some()) + usize::from(device.tag.is_some()) + usize::from(device.topic);
            if given == 0 {
                self.report(
                    device_path.clone(),
                    "`decode.device` needs one of `field` (a payload key), `tag` (an influx tag) or `topic: true` \
                     (the MQTT topic's `{device}`)",
                );
            } else if given > 1 {
                self.report(
                    device_path.clone(),
                    "give only one of `field`, `tag` and `topic: true` in `decode.device`",
                );
            }
            if let (Some(_), Some(DecodeFormat::Json)) = (&device.tag, format) {
                self.report(
                    device_path.key("tag"),
                    "`tag` applies to influx line protocol; a JSON payload has keys: use `field`",
                );
            }
            if let Some(field) = &device.field {
                self.not_empty(device_path.key("field"), "the device id field", field);
                if self.declared(field) {
                    self.report(
                        device_path.key("field"),
                        format!("`{field}` is both the device id and a measured field in `decode.fields`"),
                    );
                }
            }
            if device.topic {
                self.topic_device(&device_path.key("topic"));
            }
        }
        let time_path = path.key("time");
        if let (Some(time), false) = (&decode.time, gaps.touches(&time_path)) {
            match format {
                Some(DecodeFormat::Json) => match &time.field {
                    None => self.report(
                        time_path.clone(),
                        "`decode.time` needs `field`: the payload key that holds the event time",
                    ),
                    Some(field) => {
                        self.not_empty(time_path.key("field"), "the time field", field);
                        if self.declared(field) {
                            self.report(
                                time_path.key("field"),
                                format!("`{field}` is both the event time and a measured field in `decode.fields`"),
                            );
                        }
                    }
                },
                Some(DecodeFormat::Influx) => {
                    if time.field.is_some() {
                        self.report(
                            time_path.key("field"),
                            "with influx line protocol the event time is the line's timestamp: remove `field` \
                             (and give its `unit` if it is not nanoseconds)",
                        );
                    }
                    if time.unit == Some(TimeUnit::Rfc3339) {
                        self.report(
                            time_path.key("unit"),
                            "influx line protocol timestamps are integers: use s, ms, us or ns",
                        );
                    }
                }
                None => {}
            }
        }
        let arrival_path = path.key("arrival");
        if let (Some(arrival), false) = (&decode.arrival, gaps.touches(&arrival_path)) {
            match format {
                Some(DecodeFormat::Json) => match &arrival.field {
                    None => self.report(
                        arrival_path.clone(),
                        "`decode.arrival` needs `field`: the payload key that holds the arrival time",
                    ),
                    Some(field) => {
                        self.not_empty(arrival_path.key("field"), "the arrival time field", field);
                        if self.declared(field) {
                            self.report(
                                arrival_path.key("field"),
                                format!("`{field}` is both the arrival time and a measured field in `decode.fields`"),
                            );
                        }
                        if decode.time.as_ref().and_then(|t| t.field.as_ref()) == Some(field) {
                            self.report(
                                arrival_path.key("field"),
                                format!("`{field}` is both the event time and the arrival time"),
                            );
                        }
                    }
                },
                Some(DecodeFormat::Influx) => self.report(
                    arrival_path.clone(),
                    "`decode.arrival` takes the arrival time from a JSON payload key; with influx line \
                     protocol the arrival time is the source's time",
                ),
                None => {}
            }
        }
    }

    fn declared(&self, name: &str) -> bool {
        self.fields_known() && self.spec.decode.fields.contains_key(name)
    }

    fn field_spec(&mut self, path: &Path, spec: &FieldSpec) {
        let min_ok = spec.min.is_none_or(|m| self.finite(path.key("min"), "min", m));
        let max_ok = spec.max.is_none_or(|m| self.finite(path.key("max"), "max", m));
        if let (Some(min), Some(max), true, true) = (spec.min, spec.max, min_ok, max_ok) {
            if min >= max {
                self.report(path.key("max"), format!("`max` ({max}) must be above `min` ({min})"));
            }
        }
        if spec.kind == FieldType::Bool && (spec.min.is_some() || spec.max.is_some()) {
            let key = if spec.min.is_some() { "min" } else { "max" };
            self.report(path.key(key), "a bool field has no range: remove `min` and `max`");
        }
    }

    /// `decode.device.topic: true` needs MQTT sources whose topic captures `{device}`.
    fn topic_device(&mut self, path: &Path) {
        let mut mqtt_sources = 0;
        let mut unknown = false;
        let mut problems = Vec::new();
        for (i, source) in self.spec.sources.iter().enumerate() {
            let source_path = Path::root().key("sources").index(i);
            if self.gaps.touches(&source_path) {
                unknown = true;
                continue;
            }
            if let SourceSpec::Mqtt(m) = source {
                mqtt_sources += 1;
                if !m.topic.split('/').any(|level| level == "{device}") {
                    problems.push(Problem {
                        path: source_path.key("mqtt").key("topic"),
                        message: format!(
                            "`decode.device.topic` is true, so this topic needs a `{{device}}` level (such as \
                             `sensors/{{device}}/air`), found `{}`",
                            m.topic
                        ),
                    });
                }
            }
        }
        if mqtt_sources == 0 && !unknown {
            self.report(
                path.clone(),
                "`topic: true` takes the device id from an MQTT topic's `{device}`, but the pipeline has no mqtt source",
            );
        }
        self.problems.extend(problems);
    }

    // -----------------------------------------------------------------------------------------

    fn sources(&mut self) {
        let spec = self.spec;
        for (i, source) in spec.sources.iter().enumerate() {
            let path = Path::root().key("sources").index(i);
            if self.gaps.touches(&path) {
                continue;
            }
            match source {
                SourceSpec::File(f) => {
                    let path = path.key("file");
                    self.not_empty(path.key("path"), "`path`", &f.path);
                    if self.finite(path.key("speed"), "speed", f.speed) && f.speed <= 0.0 {
                        self.report(path.key("speed"), format!("`speed` must be above 0, found {}", f.speed));
                    }
                }
                SourceSpec::Stdin(_) => {}
                SourceSpec::Simulator(s) => {
                    let path = path.key("simulator");
                    if s.devices == 0 {
                        self.report(path.key("devices"), "`devices` must be at least 1");
                    }
                    self.duration_positive(path.key("interval"), "interval", s.interval);
                    if self.finite(path.key("speed"), "speed", s.speed) && s.speed <= 0.0 {
                        self.report(path.key("speed"), format!("`speed` must be above 0, found {}", s.speed));
                    }
                    for (key, p) in [("episodes", s.episodes), ("faults", s.faults)] {
                        if !(0.0..=1.0).contains(&p) {
                            self.report(
                                path.key(key),
                                format!("`{key}` is a chance per reading: from 0 to 1, found {p}"),
                            );
                        }
                    }
                    if let Some(d) = s.duration {
                        self.duration_positive(path.key("duration"), "duration", d);
                    }
                }
                SourceSpec::Mqtt(m) => {
                    let path = path.key("mqtt");
                    self.mqtt_connection(&path, &m.url, &m.client);
                    if let Err(e) = check_subscribe_topic(&m.topic) {
                        self.report(path.key("topic"), e);
                    }
                    if let Some(group) = &m.shared_group {
                        if group.is_empty() || group.contains(['/', '+', '#']) {
                            self.report(
                                path.key("shared_group"),
                                "`shared_group` is a group name: not empty, without `/`, `+` or `#`",
                            );
                        }
                    }
                }
                SourceSpec::Kafka(k) => {
                    let path = path.key("kafka");
                    self.kafka_brokers(path.key("brokers"), &k.brokers);
                    if k.topics.is_empty() {
                        self.report(path.key("topics"), "list at least one topic in `topics`");
                    }
                    for (j, topic) in k.topics.iter().enumerate() {
                        if let Err(e) = check_kafka_topic(topic) {
                            self.report(path.key("topics").index(j), e);
                        }
                    }
                    self.not_empty(path.key("group"), "`group`", &k.group);
                    self.kafka_client(&path, &k.client);
                    if let Some(changelog) = &k.changelog {
                        let earlier = spec.sources[..i]
                            .iter()
                            .any(|s| matches!(s, SourceSpec::Kafka(k) if k.changelog.is_some()));
                        if earlier {
                            self.report(
                                path.key("changelog"),
                                "only one Kafka source of a pipeline can have a changelog (the sources share one store, and each changelog publishes what the store's checkpoints changed): read the topics with one source per pipeline",
                            );
                        }
                        if k.topics.len() > 1 {
                            self.report(
                                path.key("changelog"),
                                "a changelog follows the partitions of one input topic: list one topic in `topics`, or use one source per topic",
                            );
                        }
                        let topic = changelog.topic_of(&spec.pipeline);
                        if let Err(e) = check_kafka_topic(&topic) {
                            self.report(path.key("changelog").key("topic"), e);
                        }
                        if k.topics.contains(&topic) {
                            self.report(
                                path.key("changelog").key("topic"),
                                format!("`{topic}` is also an input topic: the changelog needs a topic of its own"),
                            );
                        }
                    }
                    let decode = &spec.decode;
                    let decode_path = Path::root().key("decode");
                    if k.time_from == KafkaTimeFrom::Record
                        && !self.gaps.touches(&decode_path.key("time"))
                        && decode.time.as_ref().is_some_and(|t| t.field.is_some())
                    {
                        self.report(
                            path.key("time_from"),
                            "`time_from: record` uses the record timestamp, but `decode.time.field` takes the time from the payload: remove one of them",
                        );
                    }
                    if k.device_from == KafkaDeviceFrom::Payload
                        && !self.gaps.touches(&decode_path.key("device"))
                        && decode.device.field.is_none()
                    {
                        self.report(
                            path.key("device_from"),
                            "`device_from: payload` reads the device id from the payload: set `decode.device.field`",
                        );
                    }
                }
            }
        }
    }

    /// The connection settings an MQTT source and sink share: the url, and the client's id,
    /// credentials and TLS CA.
    fn mqtt_connection(&mut self, path: &Path, url: &str, client: &MqttClientSpec) {
        if let Err(e) = check_url(url, &["mqtt", "mqtts"], false) {
            self.report(path.key("url"), e);
        }
        if let Some(name) = &client.password_env {
            self.env_name(path.key("password_env"), name);
        }
        if client.password_env.is_some() && client.username.is_none() {
            self.report(path.key("password_env"), "`password_env` needs `username`");
        }
        if client.password_env.is_some()
            && !client.allow_insecure
            && !self.gaps.touches(&path.key("url"))
            && plaintext_to_another_host(url)
        {
            self.report(
                path.key("password_env"),
                "the password would cross the network in clear over `mqtt://`: use `mqtts://`, or set \
                 `allow_insecure: true` to accept that",
            );
        }
        if client.ca_file.is_some() && !url.starts_with("mqtts://") {
            self.report(path.key("ca_file"), "`ca_file` is used only with an `mqtts://` url");
        }
        if let Some(id) = &client.client_id {
            self.not_empty(path.key("client_id"), "`client_id`", id);
        }
    }

    fn kafka_brokers(&mut self, path: Path, brokers: &str) {
        if brokers.split(',').any(|b| b.trim().is_empty()) {
            self.report(
                path,
                "`brokers` is a list of `host:port`, separated by commas, none of them empty",
            );
        }
    }

    /// The librdkafka properties a Kafka source and sink share.
    fn kafka_client(&mut self, path: &Path, client: &KafkaClientSpec) {
        if !client.allow_insecure {
            let property = |name: &str| client.properties.get(name).map(|v| v.to_ascii_lowercase());
            if property("enable.ssl.certificate.verification").as_deref() == Some("false") {
                self.report(
                    path.key("properties").key("enable.ssl.certificate.verification"),
                    "this switches off the check of the brokers' certificates: remove it, or set \
                     `allow_insecure: true` to accept that",
                );
            }
            let has_password = client.properties.contains_key("sasl.password")
                || client.secret_properties_env.contains_key("sasl.password");
            if has_password && property("security.protocol").as_deref() == Some("sasl_plaintext") {
                self.report(
                    path.key("properties").key("security.protocol"),
                    "`SASL_PLAINTEXT` sends the SASL password without TLS: use `SASL_SSL`, or set \
                     `allow_insecure: true` to accept that",
                );
            }
        }
        for (property, variable) in &client.secret_properties_env {
            self.env_name(path.key("secret_properties_env").key(property), variable);
            if client.properties.contains_key(property) {
                self.report(
                    path.key("secret_properties_env").key_name(property),
                    format!("`{property}` is given both in `properties` and in `secret_properties_env`"),
                );
            }
        }
    }

    fn runtime(&mut self) {
        let spec = self.spec;
        let path = Path::root().key("runtime");
        if !self.gaps.touches(&path) {
            let runtime = &spec.runtime;
            if runtime.key_groups == 0 {
                self.report(path.key("key_groups"), "`key_groups` must be at least 1");
            } else if runtime.shards > runtime.key_groups {
                self.report(
                    path.key("shards"),
                    format!(
                        "`shards` ({}) must not exceed `key_groups` ({}): each shard owns at least one key group",
                        runtime.shards, runtime.key_groups
                    ),
                );
            }
            self.duration_positive(path.key("passivate_after"), "passivate_after", runtime.passivate_after);
            if runtime.sink_queue == 0 {
                self.report(path.key("sink_queue"), "`sink_queue` must be at least 1");
            }
            if runtime.max_devices == 0 {
                self.report(path.key("max_devices"), "`max_devices` must be at least 1");
            }
        }
        let path = Path::root().key("checkpoint");
        if !self.gaps.touches(&path) {
            let checkpoint = &spec.checkpoint;
            if let Some(interval) = checkpoint.interval {
                self.duration_positive(path.key("interval"), "interval", interval);
            }
            if checkpoint.retain == 0 {
                self.report(
                    path.key("retain"),
                    "`retain` must be at least 1 (the newest complete checkpoint)",
                );
            }
            if let Some(dir) = &checkpoint.data_dir {
                self.not_empty(path.key("data_dir"), "`data_dir`", dir);
            }
        }
        let path = Path::root().key("metrics");
        if let (Some(metrics), false) = (&spec.metrics, self.gaps.touches(&path))
            && metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            self.report(
                path.key("listen"),
                format!(
                    "`listen` must be an address and a port (such as 127.0.0.1:9464), found `{}`",
                    metrics.listen
                ),
            );
        }
        let path = Path::root().key("embedded_broker");
        if let (Some(broker), false) = (&spec.embedded_broker, self.gaps.touches(&path)) {
            if broker.bind.parse::<std::net::IpAddr>().is_err() {
                self.report(
                    path.key("bind"),
                    format!(
                        "`bind` must be an IP address (such as 127.0.0.1 or 0.0.0.0), found `{}`",
                        broker.bind
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::OperatorSpec;

    #[test]
    fn specs_built_in_code_are_checked_too() {
        let text = "version: 1\npipeline: t\ndecode: { fields: { pm25: {} } }\noperators:\n  - hysteresis: { field: pm25, enter: 35, exit: 25 }\n";
        let mut spec = crate::spec::parse_pipeline("t.yaml", text, &|_| None).unwrap();
        assert_eq!(validate_spec(&spec), []);
        if let OperatorSpec::Hysteresis(h) = &mut spec.operators[0] {
            h.exit = 40.0;
        }
        spec.version = 3;
        spec.pipeline = "a b".to_string();
        let paths: Vec<String> = validate_spec(&spec).iter().map(|p| p.path.to_string()).collect();
        assert_eq!(paths, ["version", "pipeline", "operators[0].hysteresis.exit"]);
    }

    #[test]
    fn a_reading_falls_in_at_most_10000_sliding_windows() {
        let file = |slide: &str| {
            format!(
                "version: 1\npipeline: t\ndecode: {{ fields: {{ pm25: {{}} }} }}\noperators:\n  \
                 - window: {{ every: 1d, slide: {slide}, aggregates: [avg], fields: [pm25] }}\n"
            )
        };
        // a day sliding every 10 s: 8,640 windows per reading
        assert!(crate::spec::parse_pipeline("t.yaml", &file("10s"), &|_| None).is_ok());
        let errors = crate::spec::parse_pipeline("t.yaml", &file("1ms"), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("t.yaml:5:33: `slide` (1ms) puts every reading in 86400000 windows of `every` (1d); at most 10000: make `slide` at least 8s640ms"),
            "{errors}"
        );
    }

    #[test]
    fn field_names_and_input_limits_are_checked() {
        let text = "version: 1\npipeline: t\ndecode: { fields: { \"pm2.5\": {}, co2: {} }, max_payload_bytes: 10, max_device_id_bytes: 0, max_fields: 0, plausible_time: { ahead: 0s, behind: 0s } }\n";
        let errors = crate::spec::parse_pipeline("t.yaml", text, &|_| None)
            .unwrap_err()
            .to_string();
        for expected in [
            "field name `pm2.5` may contain only letters, digits, `-` and `_`",
            "`max_payload_bytes` must be from 64 to 67108864, found 10",
            "`max_device_id_bytes` must be from 1 to 4096, found 0",
            "`max_fields` must be from 1 to 100000, found 0",
            "`ahead` must be longer than 0s",
            "`behind` must be longer than 0s",
        ] {
            assert!(errors.contains(expected), "{expected}: {errors}");
        }
    }

    #[test]
    fn a_changelog_follows_one_input_topic_and_has_a_topic_of_its_own() {
        let file = |topics: &str, changelog: &str| {
            format!(
                "version: 1\npipeline: t\n\
                 sources:\n  - kafka: {{ brokers: \"127.0.0.1:9092\", topics: [{topics}], changelog: {changelog} }}\n\
                 decode: {{ device: {{ field: device }}, fields: {{ pm25: {{}} }} }}\n"
            )
        };
        let errors = |topics: &str, changelog: &str| {
            crate::spec::parse_pipeline("t.yaml", &file(topics, changelog), &|_| None)
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        assert_eq!(errors("aq1", "{}"), "");
        assert_eq!(errors("aq1", "{ topic: state, standby_replicas: 1 }"), "");
        let two = errors("a, b", "{}");
        assert!(
            two.contains("t.yaml:4:") && two.contains("a changelog follows the partitions of one input topic"),
            "{two}"
        );
        let same = errors("aq1", "{ topic: aq1 }");
        assert!(same.contains("`aq1` is also an input topic"), "{same}");
        let second = crate::spec::parse_pipeline(
            "t.yaml",
            &file("a", "{}").replace(
                "decode:",
                "  - kafka: { brokers: \"127.0.0.1:9092\", topics: [b], changelog: { topic: b-state } }\ndecode:",
            ),
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            second.contains("only one Kafka source of a pipeline can have a changelog"),
            "{second}"
        );
        let bad = errors("aq1", "{ topic: \"no spaces\" }");
        assert!(bad.contains("`no spaces` is not a valid Kafka topic name"), "{bad}");
    }

    #[test]
    fn credentials_in_clear_to_another_host_are_refused_unless_allowed() {
        let file = |insecure: &str, host: &str| {
            format!(
                "version: 1\npipeline: t\n\
                 sources:\n  - mqtt: {{ url: \"mqtt://{host}:1883\", topic: \"s/{{device}}/air\", username: u, password_env: P{insecure} }}\n  \
                 - kafka: {{ brokers: \"{host}:9092\", topics: [t], group: g, device_from: key, properties: {{ security.protocol: SASL_PLAINTEXT, enable.ssl.certificate.verification: \"false\" }}, secret_properties_env: {{ sasl.password: KP }}{insecure} }}\n\
                 decode: {{ fields: {{ pm25: {{}} }} }}\n\
                 outputs:\n  - when: all\n    to:\n      \
                 - push: {{ apns: {{ team_id: T, key_id: K, key_env: AK, topic: app, endpoint: \"http://{host}:8443\"{insecure} }} }}\n      \
                 - push: {{ ntfy: {{ server: \"http://{host}\", topic: t, token_env: NT{insecure} }} }}\n      \
                 - push: {{ fcm: {{ service_account_env: SA, endpoint: \"http://{host}\"{insecure} }} }}\n"
            )
        };
        let errors = crate::spec::parse_pipeline("t.yaml", &file("", "broker.lan"), &|_| None)
            .unwrap_err()
            .to_string();
        for expected in [
            "the password would cross the network in clear over `mqtt://`",
            "this switches off the check of the brokers' certificates",
            "`SASL_PLAINTEXT` sends the SASL password without TLS",
            "the APNs provider token would cross the network in clear",
            "the ntfy access token would cross the network in clear",
            "the FCM access token would cross the network in clear",
        ] {
            assert!(errors.contains(expected), "{expected}: {errors}");
        }
        // allowed, or to this machine only: accepted
        crate::spec::parse_pipeline("t.yaml", &file(", allow_insecure: true", "broker.lan"), &|_| None).unwrap();
        let local = crate::spec::parse_pipeline("t.yaml", &file("", "127.0.0.1"), &|_| None)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(!local.contains("in clear"), "{local}");
    }

    #[test]
    fn paths_display_like_the_file() {
        let p = Path::root().key("operators").index(2).key("hysteresis").key("exit");
        assert_eq!(p.to_string(), "operators[2].hysteresis.exit");
    }
}
