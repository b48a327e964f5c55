//! Semantic checks on a pipeline: everything the types alone cannot say. No IO, and every
//! problem is reported, each with the path of the node at fault (`operators[2].hysteresis.exit`)
//! that the loader turns into a line and column.
//!
//! # Layout
//! - [`Path`], [`Segment`]: where a problem is.
//! - [`Problem`]: a path and a sentence.
//! - [`PartialPipeline`]: the parts of a pipeline that deserialized (the loader deserializes each
//!   source, operator, route, sink, … on its own, so one bad part does not hide the others), or
//!   all of a [`PipelineSpec`] built in code ([`PartialPipeline::from_spec`]).
//! - [`validate`], [`validate_spec`]: run every check.
//! - `Checker`: the checks, one method per part.

use std::collections::BTreeMap;
use std::fmt;

use super::de::suggest;
use super::yaml::is_env_name;
use super::{
    AggregatesSpec, BaselineSpec, CURRENT_VERSION, CalibrateSpec, CheckpointSpec, Correction, DecodeFormat,
    DeviceIdSpec, Direction, DurationSpec, EmbeddedBrokerSpec, FieldSpec, FieldType, HealthSpec, HysteresisSpec,
    KafkaDeviceFrom, NotifyPolicySpec, OneOrMany, OperatorSpec, PipelineSpec, PushSinkSpec, RuntimeSpec, SinkSpec,
    SmoothMethod, SmoothSpec, SourceSpec, ThresholdSpec, TimeSpec, TimeUnit, WindowSpec,
};

/// The most fields (declared and produced by operators) a pipeline can have.
pub const MAX_FIELDS: usize = 64;

/// Route names that are not operators.
pub const RESERVED_ROUTE_NAMES: [&str; 4] = ["all", "late", "dead_letters", "summary"];

/// Kinds of results a route can select with `events` (the output record types, and the short
/// `start` / `end` for `event_start` / `event_end`).
pub const EVENT_KINDS: [&str; 13] = [
    "window",
    "event_start",
    "event_end",
    "start",
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

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    /// The value under a key.
    Key(String),
    /// The key itself (for problems with a name the user chose, such as a field name).
    KeyName(String),
    /// An item of a list.
    Index(usize),
}

/// Where in the file a problem is: `operators[2].hysteresis.exit`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path(pub Vec<Segment>);

impl Path {
    pub fn root() -> Path {
        Path(Vec::new())
    }

    pub fn key(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_string()));
        p
    }

    pub fn key_name(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::KeyName(key.to_string()));
        p
    }

    pub fn index(&self, index: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) | Segment::KeyName(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A semantic problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Path,
    pub message: String,
}

/// An operator as far as it deserialized. When it did not, the loader fills in what it could
/// read from the file (its kind, name and the field it produces) so that later checks do not
/// report follow-on errors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperatorPart {
    pub spec: Option<OperatorSpec>,
    /// The kind key as written (`window`), when the spec did not deserialize.
    pub kind: Option<String>,
    pub name: Option<String>,
    pub produces: Option<String>,
}

impl OperatorPart {
    fn name(&self) -> Option<&str> {
        match &self.spec {
            Some(spec) => Some(spec.name()),
            None => self.name.as_deref().or(self.kind.as_deref()),
        }
    }

    fn kind(&self) -> Option<&str> {
        match &self.spec {
            Some(spec) => Some(spec.kind()),
            None => self.kind.as_deref(),
        }
    }

    /// Whether a failed operator leaves unknown what it is called or produces.
    fn uncertain(&self) -> bool {
        self.spec.is_none()
            && match self.kind.as_deref() {
                Some("baseline") | Some("smooth") => self.produces.is_none(),
                Some(k) => !OPERATOR_KINDS.contains(&k),
                None => true,
            }
    }
}

const OPERATOR_KINDS: [&str; 7] = [
    "window",
    "hysteresis",
    "baseline",
    "smooth",
    "threshold",
    "calibrate",
    "health",
];

/// The field an operator adds to the readings for the operators after it.
pub fn produced_field(spec: &OperatorSpec) -> Option<String> {
    match spec {
        OperatorSpec::Baseline(b) => Some(b.name.clone().unwrap_or_else(|| "baseline".to_string())),
        OperatorSpec::Smooth(s) => Some(s.output.clone().unwrap_or_else(|| format!("{}_smooth", s.field))),
        _ => None,
    }
}

/// An output route as far as it deserialized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutePart {
    pub when: Option<OneOrMany>,
    pub events: Option<Vec<String>>,
    pub to: Vec<Option<SinkSpec>>,
}

/// `decode` as far as it deserialized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodePart {
    pub format: Option<DecodeFormat>,
    pub device: Option<DeviceIdSpec>,
    /// `Some(None)`: no `time` (arrival time); `None`: `time` did not deserialize.
    pub time: Option<Option<TimeSpec>>,
    /// The declared fields in file order (`None` when `decode.fields` is not a map); each spec is
    /// `None` when it did not deserialize.
    pub fields: Option<Vec<(String, Option<FieldSpec>)>>,
}

/// The parts of a pipeline that deserialized. `None` means "did not deserialize (already
/// reported)"; absent keys have their defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PartialPipeline {
    pub version: Option<u32>,
    pub pipeline: Option<String>,
    pub sources: Vec<Option<SourceSpec>>,
    pub decode: DecodePart,
    pub operators: Vec<OperatorPart>,
    pub outputs: Vec<RoutePart>,
    pub runtime: Option<RuntimeSpec>,
    pub checkpoint: Option<CheckpointSpec>,
    pub embedded_broker: Option<EmbeddedBrokerSpec>,
}

impl PartialPipeline {
    /// All of a spec (nothing failed).
    pub fn from_spec(spec: &PipelineSpec) -> Self {
        PartialPipeline {
            version: Some(spec.version),
            pipeline: Some(spec.pipeline.clone()),
            sources: spec.sources.iter().cloned().map(Some).collect(),
            decode: DecodePart {
                format: Some(spec.decode.format),
                device: Some(spec.decode.device.clone()),
                time: Some(spec.decode.time.clone()),
                fields: Some(
                    spec.decode
                        .fields
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect(),
                ),
            },
            operators: spec
                .operators
                .iter()
                .map(|op| OperatorPart {
                    spec: Some(op.clone()),
                    ..OperatorPart::default()
                })
                .collect(),
            outputs: spec
                .outputs
                .iter()
                .map(|r| RoutePart {
                    when: Some(r.when.clone()),
                    events: Some(r.events.clone()),
                    to: r.to.iter().cloned().map(Some).collect(),
                })
                .collect(),
            runtime: Some(spec.runtime.clone()),
            checkpoint: Some(spec.checkpoint.clone()),
            embedded_broker: spec.embedded_broker.clone(),
        }
    }
}

/// Every semantic problem of a spec built in code.
pub fn validate_spec(spec: &PipelineSpec) -> Vec<Problem> {
    validate(&PartialPipeline::from_spec(spec))
}

/// Every semantic problem of the parts that deserialized.
pub fn validate(pipeline: &PartialPipeline) -> Vec<Problem> {
    let mut checker = Checker {
        problems: Vec::new(),
        pipeline,
    };
    checker.top_level();
    checker.decode();
    checker.sources();
    checker.operators();
    checker.outputs();
    checker.runtime();
    checker.problems
}

struct Checker<'p> {
    problems: Vec<Problem>,
    pipeline: &'p PartialPipeline,
}

/// Fields available to an operator: declared ones and those produced by earlier operators.
struct Available {
    /// Field name → who provides it (`decode.fields`, or `operator `x``).
    fields: BTreeMap<String, String>,
    /// Whether some earlier part failed so that what is available is not known for sure.
    uncertain: bool,
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn positive(d: DurationSpec) -> bool {
    d.as_millis() > 0
}

impl Checker<'_> {
    fn report(&mut self, path: Path, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

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

    fn finite(&mut self, path: Path, key: &str, value: f64) -> bool {
        if value.is_finite() {
            true
        } else {
            self.report(path, format!("`{key}` must be a finite number, found {value}"));
            false
        }
    }

    fn fraction(&mut self, path: Path, key: &str, value: f64) {
        if !(value > 0.0 && value <= 1.0) {
            self.report(path, format!("`{key}` must be above 0 and at most 1, found {value}"));
        }
    }

    fn duration_positive(&mut self, path: Path, key: &str, value: DurationSpec) {
        if !positive(value) {
            self.report(path, format!("`{key}` must be longer than 0s"));
        }
    }

    // -----------------------------------------------------------------------------------------

    fn top_level(&mut self) {
        if let Some(version) = self.pipeline.version {
            if version != CURRENT_VERSION {
                self.report(
                    Path::root().key("version"),
                    format!(
                        "version {version} is not supported: this plume reads pipeline files of version {CURRENT_VERSION} \
                         (write `version: {CURRENT_VERSION}`)"
                    ),
                );
            }
        }
        if let Some(name) = &self.pipeline.pipeline {
            if !is_name(name) {
                self.report(
                    Path::root().key("pipeline"),
                    format!(
                        "pipeline name `{name}` may contain only letters, digits, `-` and `_` (it names the data \
                         directory and the checkpoints)"
                    ),
                );
            }
        }
    }

    fn decode(&mut self) {
        let decode = &self.pipeline.decode;
        let path = Path::root().key("decode");
        let format = decode.format;
        if let Some(fields) = &decode.fields {
            if fields.is_empty() {
                self.report(
                    path.key("fields"),
                    "declare at least one field in `decode.fields` (such as `pm25: {}`)",
                );
            }
            for (name, spec) in fields {
                let field_path = path.key("fields").key(name);
                if name.trim().is_empty() {
                    self.report(path.key("fields").key_name(name), "a field name must not be empty");
                }
                let Some(spec) = spec else { continue };
                self.field_spec(&field_path, spec);
            }
        }
        if let Some(device) = &decode.device {
            let device_path = path.key("device");
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
        if let Some(Some(time)) = &decode.time {
            let time_path = path.key("time");
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
    }

    fn declared(&self, name: &str) -> bool {
        self.pipeline
            .decode
            .fields
            .as_ref()
            .is_some_and(|f| f.iter().any(|(n, _)| n == name))
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
        let mut problems = Vec::new();
        for (i, source) in self.pipeline.sources.iter().enumerate() {
            if let Some(SourceSpec::Mqtt(m)) = source {
                mqtt_sources += 1;
                if !m.topic.split('/').any(|level| level == "{device}") {
                    problems.push(Problem {
                        path: Path::root().key("sources").index(i).key("mqtt").key("topic"),
                        message: format!(
                            "`decode.device.topic` is true, so this topic needs a `{{device}}` level (such as \
                             `sensors/{{device}}/air`), found `{}`",
                            m.topic
                        ),
                    });
                }
            }
        }
        let unknown = self.pipeline.sources.iter().any(Option::is_none);
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
        let sources = &self.pipeline.sources;
        for (i, source) in sources.iter().enumerate() {
            let Some(source) = source else { continue };
            let path = Path::root().key("sources").index(i);
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
                    self.mqtt_connection(&path, &m.url, &m.username, &m.password_env, &m.ca_file, &m.client_id);
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
                    self.kafka_secrets(&path, &k.properties, &k.secret_properties_env);
                    if k.time_from == crate::spec::KafkaTimeFrom::Record
                        && matches!(&self.pipeline.decode.time, Some(Some(t)) if t.field.is_some())
                    {
                        self.report(
                            path.key("time_from"),
                            "`time_from: record` uses the record timestamp, but `decode.time.field` takes the time from the payload: remove one of them",
                        );
                    }
                    let device_field = self.pipeline.decode.device.as_ref().and_then(|d| d.field.as_ref());
                    if k.device_from == KafkaDeviceFrom::Payload
                        && self.pipeline.decode.device.is_some()
                        && device_field.is_none()
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

    /// What an MQTT source and sink share: url, credentials, TLS CA, client id.
    fn mqtt_connection(
        &mut self,
        path: &Path,
        url: &str,
        username: &Option<String>,
        password_env: &Option<String>,
        ca_file: &Option<String>,
        client_id: &Option<String>,
    ) {
        if let Err(e) = check_url(url, &["mqtt", "mqtts"], false) {
            self.report(path.key("url"), e);
        }
        if let Some(name) = password_env {
            self.env_name(path.key("password_env"), name);
        }
        if password_env.is_some() && username.is_none() {
            self.report(path.key("password_env"), "`password_env` needs `username`");
        }
        if ca_file.is_some() && !url.starts_with("mqtts://") {
            self.report(path.key("ca_file"), "`ca_file` is used only with an `mqtts://` url");
        }
        if let Some(id) = client_id {
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

    fn kafka_secrets(
        &mut self,
        path: &Path,
        properties: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) {
        for (property, variable) in secrets {
            self.env_name(path.key("secret_properties_env").key(property), variable);
            if properties.contains_key(property) {
                self.report(
                    path.key("secret_properties_env").key_name(property),
                    format!("`{property}` is given both in `properties` and in `secret_properties_env`"),
                );
            }
        }
    }

    // -----------------------------------------------------------------------------------------

    fn operators(&mut self) {
        let operators = &self.pipeline.operators;
        let mut available = Available {
            fields: BTreeMap::new(),
            uncertain: self.pipeline.decode.fields.is_none(),
        };
        for (name, _) in self.pipeline.decode.fields.iter().flatten() {
            available.fields.insert(name.clone(), "decode.fields".to_string());
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, part) in operators.iter().enumerate() {
            let kind = part.kind().unwrap_or("operator");
            let path = Path::root().key("operators").index(i).key(kind);
            if let Some(name) = part.name() {
                let explicit = match &part.spec {
                    Some(spec) => operator_explicit_name(spec).is_some(),
                    None => part.name.is_some(),
                };
                let name_path = if explicit { path.key("name") } else { path.clone() };
                if let Some(first) = names.get(name) {
                    let hint = if explicit { "" } else { "; give each one its own `name`" };
                    self.report(
                        name_path.clone(),
                        format!("operator name `{name}` is already used by operators[{first}]{hint}"),
                    );
                } else {
                    names.insert(name, i);
                }
                if RESERVED_ROUTE_NAMES.contains(&name) {
                    self.report(
                        name_path.clone(),
                        format!("`{name}` is reserved for output routes: give the operator another name"),
                    );
                } else if explicit && !is_name(name) {
                    self.report(
                        name_path,
                        format!("operator name `{name}` may contain only letters, digits, `-` and `_`"),
                    );
                }
            }
            match &part.spec {
                Some(spec) => {
                    self.operator(i, &path, spec, &available);
                    if let Some(field) = produced_field(spec) {
                        let key = match spec {
                            OperatorSpec::Smooth(s) if s.output.is_some() => "output",
                            _ => "name",
                        };
                        if let Some(by) = available.fields.get(&field) {
                            self.report(
                                path.key(key),
                                format!(
                                    "this {} produces a field named `{field}`, which {by} already provides; give it \
                                     another `{key}`",
                                    spec.kind()
                                ),
                            );
                        } else {
                            available.fields.insert(field, format!("operator `{}`", spec.name()));
                        }
                    }
                }
                None => {
                    if let Some(field) = &part.produces {
                        available.fields.insert(field.clone(), format!("operators[{i}]"));
                    }
                    available.uncertain |= part.uncertain();
                }
            }
        }
        let total = available.fields.len();
        if total > MAX_FIELDS {
            self.report(
                Path::root().key("decode").key("fields"),
                format!(
                    "a pipeline can have at most {MAX_FIELDS} fields (declared and produced by operators); this one has {total}"
                ),
            );
        }
    }

    /// Reports a field an operator reads that is not available at its place in the chain.
    fn read_field(&mut self, path: Path, index: usize, operator: &str, field: &str, available: &Available) {
        if available.fields.contains_key(field) || available.uncertain {
            return;
        }
        let later = self.pipeline.operators[index + 1..]
            .iter()
            .enumerate()
            .find_map(|(j, part)| {
                let spec = part.spec.as_ref()?;
                (produced_field(spec).as_deref() == Some(field)).then(|| (index + 1 + j, spec.name().to_string()))
            });
        let message = match later {
            Some((j, producer)) => format!(
                "operator `{operator}` reads field `{field}`, which is produced only later, by `{producer}` \
                 (operators[{j}]): move `{producer}` before it"
            ),
            None => {
                let mut m = format!(
                    "operator `{operator}` reads field `{field}`, which is neither declared in decode.fields nor produced \
                     by an earlier operator"
                );
                if let Some(s) = suggest(field, available.fields.keys().map(String::as_str)) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m
            }
        };
        self.report(path, message);
    }

    fn operator(&mut self, i: usize, path: &Path, spec: &OperatorSpec, available: &Available) {
        let name = spec.name().to_string();
        match spec {
            OperatorSpec::Window(w) => self.window(i, path, &name, w, available),
            OperatorSpec::Hysteresis(h) => self.hysteresis(i, path, &name, h, available),
            OperatorSpec::Baseline(b) => self.baseline(i, path, &name, b, available),
            OperatorSpec::Smooth(s) => self.smooth(i, path, &name, s, available),
            OperatorSpec::Threshold(t) => self.threshold(i, path, &name, t, available),
            OperatorSpec::Calibrate(c) => self.calibrate(i, path, &name, c, available),
            OperatorSpec::Health(h) => self.health(i, path, &name, h, available),
        }
    }

    fn window(&mut self, i: usize, path: &Path, name: &str, w: &WindowSpec, available: &Available) {
        self.duration_positive(path.key("every"), "every", w.every);
        if let Some(slide) = w.slide {
            if !positive(slide) {
                self.report(path.key("slide"), "`slide` must be longer than 0s");
            } else if slide > w.every {
                self.report(
                    path.key("slide"),
                    format!("`slide` ({slide}) must not be longer than `every` ({})", w.every),
                );
            }
        }
        if let Some(idle) = w.idle_flush {
            self.duration_positive(path.key("idle_flush"), "idle_flush", idle);
        }
        match &w.aggregates {
            AggregatesSpec::All(aggregates) => {
                if aggregates.is_empty() {
                    self.report(
                        path.key("aggregates"),
                        "list at least one aggregate (such as `[avg, max]`)",
                    );
                }
                if w.fields.is_empty() {
                    self.report(
                        path.key("aggregates"),
                        "the list form of `aggregates` applies to the fields in `fields`: add `fields: [pm25, …]`, \
                         or use the map form `aggregates: { pm25: [avg, max] }`",
                    );
                }
                for (j, field) in w.fields.iter().enumerate() {
                    self.read_field(path.key("fields").index(j), i, name, field, available);
                }
            }
            AggregatesSpec::PerField(map) => {
                if !w.fields.is_empty() {
                    self.report(
                        path.key("fields"),
                        "`fields` is used only with the list form of `aggregates`; with the map form, its keys are the fields",
                    );
                }
                if map.is_empty() {
                    self.report(
                        path.key("aggregates"),
                        "name at least one field (such as `{ pm25: [avg, max] }`)",
                    );
                }
                for (field, aggregates) in map {
                    self.read_field(path.key("aggregates").key_name(field), i, name, field, available);
                    if aggregates.is_empty() {
                        self.report(
                            path.key("aggregates").key(field),
                            "list at least one aggregate (such as `[avg, max]`)",
                        );
                    }
                }
            }
        }
    }

    fn hysteresis(&mut self, i: usize, path: &Path, name: &str, h: &HysteresisSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &h.field, available);
        let enter_ok = self.finite(path.key("enter"), "enter", h.enter);
        let exit_ok = self.finite(path.key("exit"), "exit", h.exit);
        if enter_ok && exit_ok {
            match h.direction {
                Direction::Above if h.exit > h.enter => self.report(
                    path.key("exit"),
                    format!(
                        "`exit` ({}) is above `enter` ({}): with direction above, an event opens when the value rises to \
                         `enter` and closes when it falls to `exit`, so `exit` must not be above `enter`",
                        h.exit, h.enter
                    ),
                ),
                Direction::Below if h.exit < h.enter => self.report(
                    path.key("exit"),
                    format!(
                        "`exit` ({}) is below `enter` ({}): with direction below, an event opens when the value falls to \
                         `enter` and closes when it rises to `exit`, so `exit` must not be below `enter`",
                        h.exit, h.enter
                    ),
                ),
                _ => {}
            }
        }
        for (band, value) in &h.severity {
            self.finite(path.key("severity").key(band), band, *value);
        }
        for (key, d) in [("min_duration", h.min_duration), ("min_clear", h.min_clear)] {
            if d.is_some_and(|d| !positive(d)) {
                self.report(
                    path.key(key),
                    format!("`{key}` must be longer than 0s (leave it out for none)"),
                );
            }
        }
    }

    fn baseline(&mut self, i: usize, path: &Path, name: &str, b: &BaselineSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &b.field, available);
        self.fraction(path.key("alpha"), "alpha", b.alpha);
        if b.days < 1 {
            self.report(path.key("days"), "`days` must be at least 1");
        }
        if !(b.zscore.is_finite() && b.zscore > 0.0) {
            self.report(
                path.key("zscore"),
                format!("`zscore` must be a number above 0, found {}", b.zscore),
            );
        }
        if !(-12..=14).contains(&b.utc_offset_hours) {
            self.report(
                path.key("utc_offset_hours"),
                format!(
                    "`utc_offset_hours` must be from -12 to 14, found {}",
                    b.utc_offset_hours
                ),
            );
        }
    }

    fn smooth(&mut self, i: usize, path: &Path, name: &str, s: &SmoothSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &s.field, available);
        if s.n < 1 {
            self.report(path.key("n"), "`n` must be at least 1");
        }
        if matches!(s.method, SmoothMethod::Ewma | SmoothMethod::Holt) {
            self.fraction(path.key("alpha"), "alpha", s.alpha);
        }
        if s.method == SmoothMethod::Holt {
            self.fraction(path.key("beta"), "beta", s.beta);
        }
        if let Some(output) = &s.output {
            if !is_name(output) {
                self.report(
                    path.key("output"),
                    format!("field name `{output}` may contain only letters, digits, `-` and `_`"),
                );
            }
        }
    }

    fn threshold(&mut self, i: usize, path: &Path, name: &str, t: &ThresholdSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &t.field, available);
        match (t.above, t.below) {
            (Some(_), Some(_)) => self.report(path.key("below"), "give either `above` or `below`, not both"),
            (None, None) => self.report(path.clone(), "a threshold needs `above` or `below`"),
            (Some(x), None) => {
                self.finite(path.key("above"), "above", x);
            }
            (None, Some(x)) => {
                self.finite(path.key("below"), "below", x);
            }
        }
        if let Some(other) = &t.relative_to {
            self.read_field(path.key("relative_to"), i, name, other, available);
        }
        if self.finite(path.key("factor"), "factor", t.factor) && t.relative_to.is_none() && t.factor != 1.0 {
            self.report(path.key("factor"), "`factor` is used only with `relative_to`");
        }
    }

    fn calibrate(&mut self, i: usize, path: &Path, name: &str, c: &CalibrateSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &c.field, available);
        for (device, correction) in &c.table {
            self.correction(&path.key("table").key(device), correction);
        }
        self.correction(&path.key("default"), &c.default);
        match (&c.baseline, c.reference) {
            (Some(baseline), reference) => {
                self.calibrate_baseline(i, path, baseline);
                match reference {
                    None => self.report(
                        path.key("baseline"),
                        "with `baseline`, give `reference`: the value the baseline should read (such as 420 for \
                         outdoor CO2)",
                    ),
                    Some(r) => {
                        self.finite(path.key("reference"), "reference", r);
                    }
                }
            }
            (None, Some(_)) => self.report(path.key("reference"), "`reference` is used only with `baseline`"),
            (None, None) => {}
        }
    }

    fn calibrate_baseline(&mut self, i: usize, path: &Path, baseline: &str) {
        let operators = &self.pipeline.operators;
        let found = operators.iter().enumerate().find(|(_, p)| p.name() == Some(baseline));
        let message = match found {
            Some((j, part)) if part.kind() == Some("baseline") && j < i => return,
            Some((j, part)) if part.kind() == Some("baseline") => {
                let _ = part;
                format!("baseline `{baseline}` (operators[{j}]) comes after this calibrate: move it before")
            }
            Some((_, part)) if part.spec.is_none() && part.kind().is_none() => return,
            Some((j, part)) => {
                format!(
                    "`{baseline}` (operators[{j}]) is a {}, not a baseline",
                    part.kind().unwrap_or("operator")
                )
            }
            None if operators.iter().any(OperatorPart::uncertain) => return,
            None => {
                let mut m =
                    format!("`baseline` must name an earlier baseline operator; there is no operator `{baseline}`");
                let candidates = operators[..i]
                    .iter()
                    .filter(|p| p.kind() == Some("baseline"))
                    .filter_map(OperatorPart::name);
                if let Some(s) = suggest(baseline, candidates) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m
            }
        };
        self.report(path.key("baseline"), message);
    }

    fn correction(&mut self, path: &Path, c: &Correction) {
        self.finite(path.key("offset"), "offset", c.offset);
        if self.finite(path.key("gain"), "gain", c.gain) && c.gain == 0.0 {
            self.report(path.key("gain"), "`gain` must not be 0");
        }
    }

    fn health(&mut self, i: usize, path: &Path, name: &str, h: &HealthSpec, available: &Available) {
        if let Some(d) = h.offline_after {
            self.duration_positive(path.key("offline_after"), "offline_after", d);
        }
        for (j, flatline) in h.flatline.iter().enumerate() {
            let p = path.key("flatline").index(j);
            self.read_field(p.key("field"), i, name, &flatline.field, available);
            if flatline.readings < 2 {
                self.report(
                    p.key("readings"),
                    format!("`readings` must be at least 2, found {}", flatline.readings),
                );
            }
        }
        if h.report_every == Some(0) {
            self.report(path.key("report_every"), "`report_every` must be at least 1");
        }
    }

    // -----------------------------------------------------------------------------------------

    fn outputs(&mut self) {
        let operators = &self.pipeline.operators;
        let names: Vec<&str> = operators.iter().filter_map(OperatorPart::name).collect();
        let uncertain = operators.iter().any(OperatorPart::uncertain);
        for (i, route) in self.pipeline.outputs.iter().enumerate() {
            let path = Path::root().key("outputs").index(i);
            if let Some(when) = &route.when {
                let (list, many) = match when {
                    OneOrMany::One(one) => (vec![one.clone()], false),
                    OneOrMany::Many(many) => (many.clone(), true),
                };
                if list.is_empty() {
                    self.report(path.key("when"), "name at least one operator (or `all`)");
                }
                for (j, name) in list.iter().enumerate() {
                    if names.contains(&name.as_str()) || RESERVED_ROUTE_NAMES.contains(&name.as_str()) || uncertain {
                        continue;
                    }
                    let at = if many {
                        path.key("when").index(j)
                    } else {
                        path.key("when")
                    };
                    let mut m = format!("`when` names `{name}`, which is no operator");
                    let candidates = names.iter().copied().chain(RESERVED_ROUTE_NAMES);
                    if let Some(s) = suggest(name, candidates) {
                        m.push_str(&format!("; did you mean `{s}`?"));
                    }
                    m.push_str(&format!(
                        " (operators: {}; or one of {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        },
                        RESERVED_ROUTE_NAMES.join(", ")
                    ));
                    self.report(at, m);
                }
            }
            for (j, event) in route.events.iter().flatten().enumerate() {
                if !EVENT_KINDS.contains(&event.as_str()) {
                    let mut m = format!("unknown kind of result `{event}`");
                    if let Some(s) = suggest(event, EVENT_KINDS) {
                        m.push_str(&format!("; did you mean `{s}`?"));
                    }
                    m.push_str(&format!(" (valid: {})", EVENT_KINDS.join(", ")));
                    self.report(path.key("events").index(j), m);
                }
            }
            if route.to.is_empty() {
                self.report(path.key("to"), "a route needs at least one sink in `to`");
            }
            for (j, sink) in route.to.iter().enumerate() {
                if let Some(sink) = sink {
                    self.sink(&path.key("to").index(j), sink);
                }
            }
        }
    }

    /// The retry settings every notifier has.
    fn delivery(&mut self, path: &Path, timeout: DurationSpec, max_age: DurationSpec, concurrency: u32) {
        self.duration_positive(path.key("timeout"), "timeout", timeout);
        self.duration_positive(path.key("max_age"), "max_age", max_age);
        if concurrency == 0 {
            self.report(path.key("concurrency"), "`concurrency` must be at least 1");
        }
    }

    fn sink(&mut self, path: &Path, sink: &SinkSpec) {
        match sink {
            SinkSpec::Stdout(_) => {}
            SinkSpec::File(f) => self.not_empty(path.key("file").key("path"), "`path`", &f.path),
            SinkSpec::Webhook(w) => {
                let path = path.key("webhook");
                if let Err(e) = check_url(&w.url, &["http", "https"], true) {
                    self.report(path.key("url"), e);
                }
                if let Some(name) = &w.secret_env {
                    self.env_name(path.key("secret_env"), name);
                }
                self.delivery(&path, w.timeout, w.max_age, w.concurrency);
                self.policy(&path.key("policy"), &w.policy);
            }
            SinkSpec::Push(push) => {
                let path = path.key("push");
                match push {
                    PushSinkSpec::Fcm(f) => {
                        let path = path.key("fcm");
                        self.env_name(path.key("service_account_env"), &f.service_account_env);
                        for (key, url) in [("endpoint", &f.endpoint), ("token_endpoint", &f.token_endpoint)] {
                            if let Some(Err(e)) = url.as_deref().map(|u| check_url(u, &["http", "https"], true)) {
                                self.report(path.key(key), e);
                            }
                        }
                        self.delivery(&path, f.timeout, f.max_age, f.concurrency);
                        self.policy(&path.key("policy"), &f.policy);
                    }
                    PushSinkSpec::Apns(a) => {
                        let path = path.key("apns");
                        self.not_empty(path.key("team_id"), "`team_id`", &a.team_id);
                        self.not_empty(path.key("key_id"), "`key_id`", &a.key_id);
                        self.env_name(path.key("key_env"), &a.key_env);
                        self.not_empty(path.key("topic"), "`topic` (the app's bundle id)", &a.topic);
                        if let Some(Err(e)) = a.endpoint.as_deref().map(|u| check_url(u, &["http", "https"], true)) {
                            self.report(path.key("endpoint"), e);
                        }
                        self.delivery(&path, a.timeout, a.max_age, a.concurrency);
                        self.policy(&path.key("policy"), &a.policy);
                    }
                    PushSinkSpec::Ntfy(n) => {
                        let path = path.key("ntfy");
                        if let Err(e) = check_url(&n.server, &["http", "https"], true) {
                            self.report(path.key("server"), e);
                        }
                        let topic_ok = !n.topic.is_empty()
                            && n.topic.len() <= 64
                            && n.topic
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                        if !topic_ok {
                            self.report(
                                path.key("topic"),
                                format!("ntfy topic `{}` must be 1 to 64 letters, digits, `-` or `_`", n.topic),
                            );
                        }
                        if let Some(name) = &n.token_env {
                            self.env_name(path.key("token_env"), name);
                        }
                        self.delivery(&path, n.timeout, n.max_age, n.concurrency);
                        self.policy(&path.key("policy"), &n.policy);
                    }
                }
            }
            SinkSpec::Mqtt(m) => {
                let path = path.key("mqtt");
                self.mqtt_connection(&path, &m.url, &m.username, &m.password_env, &m.ca_file, &m.client_id);
                if let Err(e) = check_publish_topic(&m.topic) {
                    self.report(path.key("topic"), e);
                }
            }
            SinkSpec::Kafka(k) => {
                let path = path.key("kafka");
                self.kafka_brokers(path.key("brokers"), &k.brokers);
                if let Err(e) = check_kafka_topic(&k.topic) {
                    self.report(path.key("topic"), e);
                }
                self.kafka_secrets(&path, &k.properties, &k.secret_properties_env);
            }
        }
    }

    fn policy(&mut self, path: &Path, policy: &NotifyPolicySpec) {
        if let Some(cooldown) = policy.cooldown {
            self.duration_positive(path.key("cooldown"), "cooldown", cooldown);
        }
        if let Some(quiet) = &policy.quiet_hours {
            let path = path.key("quiet_hours");
            for (key, value) in [("from", &quiet.from), ("to", &quiet.to)] {
                if !is_clock_time(value) {
                    self.report(
                        path.key(key),
                        format!("`{key}` must be a time of day as HH:MM (such as 22:00), found `{value}`"),
                    );
                }
            }
            if quiet.from == quiet.to && is_clock_time(&quiet.from) {
                self.report(path.key("to"), "quiet hours from and to the same time would be empty");
            }
            if let Err(e) = jiff::tz::TimeZone::get(&quiet.timezone) {
                let _ = e;
                self.report(
                    path.key("timezone"),
                    format!(
                        "`{}` is not a known IANA time zone (such as Europe/Zurich or America/New_York)",
                        quiet.timezone
                    ),
                );
            }
        }
    }

    fn runtime(&mut self) {
        if let Some(runtime) = &self.pipeline.runtime {
            let path = Path::root().key("runtime");
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
        }
        if let Some(checkpoint) = &self.pipeline.checkpoint {
            let path = Path::root().key("checkpoint");
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
        if let Some(broker) = &self.pipeline.embedded_broker {
            if broker.bind.parse::<std::net::IpAddr>().is_err() {
                self.report(
                    Path::root().key("embedded_broker").key("bind"),
                    format!(
                        "`bind` must be an IP address (such as 127.0.0.1 or 0.0.0.0), found `{}`",
                        broker.bind
                    ),
                );
            }
        }
    }
}

fn operator_explicit_name(spec: &OperatorSpec) -> Option<&str> {
    match spec {
        OperatorSpec::Window(s) => s.name.as_deref(),
        OperatorSpec::Hysteresis(s) => s.name.as_deref(),
        OperatorSpec::Baseline(s) => s.name.as_deref(),
        OperatorSpec::Smooth(s) => s.name.as_deref(),
        OperatorSpec::Threshold(s) => s.name.as_deref(),
        OperatorSpec::Calibrate(s) => s.name.as_deref(),
        OperatorSpec::Health(s) => s.name.as_deref(),
    }
}

/// `HH:MM`, 00:00 to 23:59.
fn is_clock_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit)
        && text[..2].parse::<u8>().is_ok_and(|h| h < 24)
        && text[3..].parse::<u8>().is_ok_and(|m| m < 60)
}

/// Checks `scheme://host[:port][/path]`. `path_allowed`: whether anything may follow the host.
fn check_url(url: &str, schemes: &[&str], path_allowed: bool) -> Result<(), String> {
    let wanted = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("`{url}` is not a URL: it must start with {wanted}"));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("`{url}` must start with {wanted}, not {scheme}://"));
    }
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !path_allowed && !(tail.is_empty() || tail == "/") {
        return Err(format!("`{url}` must be only {wanted}host:port, without a path"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}` holds credentials: give them with the username / secret keys (`*_env`), not in the URL"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(format!("`{url}` has an unclosed `[` in its host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{url}` has no valid host"));
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("`{url}` has an invalid port `{port}` (1 to 65535)"));
        }
    }
    Ok(())
}

/// A subscription topic template: levels split by `/`; `{device}` at most once and as a whole
/// level; `+` a whole level; `#` a whole level and the last one.
fn check_subscribe_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic must not be empty".to_string());
    }
    if topic.starts_with("$share/") {
        return Err("write the shared subscription group in `shared_group`, and the plain topic here".to_string());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let mut devices = 0;
    for (i, level) in levels.iter().enumerate() {
        if level.contains("{device}") {
            devices += 1;
            if *level != "{device}" {
                return Err(format!(
                    "`{{device}}` must be a whole topic level (such as `sensors/{{device}}/air`), found `{level}` in `{topic}`"
                ));
            }
            continue;
        }
        if let Some(start) = level.find('{') {
            let placeholder = &level[start..level[start..].find('}').map_or(level.len(), |e| start + e + 1)];
            return Err(format!(
                "unknown placeholder `{placeholder}` in `{topic}`: only `{{device}}` is filled in"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` must be a whole topic level, found `{level}` in `{topic}`"));
        }
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`#` must be the whole last topic level, in `{topic}`"));
        }
    }
    if devices > 1 {
        return Err(format!("`{{device}}` may appear only once in `{topic}`"));
    }
    Ok(())
}

/// A publish topic: no wildcards; `{device}` and `{operator}` are filled in.
fn check_publish_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic must not be empty".to_string());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` is a topic to publish to: it cannot hold the wildcards `+` or `#`"
        ));
    }
    let mut rest = topic;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .map(|e| start + e + 1)
            .ok_or_else(|| format!("unclosed `{{` in `{topic}`"))?;
        let placeholder = &rest[start..end];
        if placeholder != "{device}" && placeholder != "{operator}" {
            return Err(format!(
                "unknown placeholder `{placeholder}` in `{topic}`: only `{{device}}` and `{{operator}}` are filled in"
            ));
        }
        rest = &rest[end..];
    }
    Ok(())
}

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`.
fn check_kafka_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && topic != "."
        && topic != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{topic}` is not a valid Kafka topic name (1 to 249 letters, digits, `.`, `_` or `-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("mqtt://localhost:1883", &["mqtt", "mqtts"], false).is_ok());
        assert!(check_url("mqtts://[::1]:8883", &["mqtt", "mqtts"], false).is_ok());
        assert!(check_url("mqtt://broker", &["mqtt", "mqtts"], false).is_ok());
        assert!(
            check_url("tcp://broker:1883", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("must start with mqtt:// or mqtts://")
        );
        assert!(
            check_url("localhost:1883", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(
            check_url("mqtt://broker:99999", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            check_url("mqtt://u:p@broker", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            check_url("mqtt://broker/x", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("without a path")
        );
        assert!(check_url("https://example.com/hooks/1?x=1", &["http", "https"], true).is_ok());
        assert!(check_url("ftp://example.com", &["http", "https"], true).is_err());
    }

    #[test]
    fn topics() {
        assert!(check_subscribe_topic("sensors/{device}/air").is_ok());
        assert!(check_subscribe_topic("sensors/+/{device}/#").is_ok());
        assert!(
            check_subscribe_topic("sensors/dev-{device}/air")
                .unwrap_err()
                .contains("whole topic level")
        );
        assert!(
            check_subscribe_topic("a/{device}/{device}")
                .unwrap_err()
                .contains("only once")
        );
        assert!(check_subscribe_topic("a/#/b").unwrap_err().contains("last"));
        assert!(
            check_subscribe_topic("a/x+/b")
                .unwrap_err()
                .contains("whole topic level")
        );
        assert!(
            check_subscribe_topic("a/{room}/b")
                .unwrap_err()
                .contains("unknown placeholder `{room}`")
        );
        assert!(check_publish_topic("plume/{device}/{operator}").is_ok());
        assert!(check_publish_topic("plume/+/x").is_err());
        assert!(check_publish_topic("plume/{room}").unwrap_err().contains("{room}"));
        assert!(check_kafka_topic("air.aggregates-1").is_ok());
        assert!(check_kafka_topic("air aggregates").is_err());
    }

    #[test]
    fn clock_times() {
        assert!(is_clock_time("22:00"));
        assert!(is_clock_time("07:30"));
        assert!(!is_clock_time("7:30"));
        assert!(!is_clock_time("24:00"));
        assert!(!is_clock_time("22:60"));
    }

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
    fn paths_display_like_the_file() {
        let p = Path::root().key("operators").index(2).key("hysteresis").key("exit");
        assert_eq!(p.to_string(), "operators[2].hysteresis.exit");
    }
}
