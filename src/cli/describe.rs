//! What `plume validate` prints for a valid pipeline.

use plume::model::redact;
use plume::pipeline::CompiledPipeline;
use plume::spec::{self, SourceSpec};

/// The short summary `plume validate` prints for a valid pipeline: sources, fields, the
/// operator chain with its key parameters, and the routes.
pub fn describe_pipeline(file: &str, loaded: &spec::LoadedPipeline, compiled: &CompiledPipeline) -> String {
    use std::fmt::Write as _;

    use spec::{DecodeFormat, SinkSpec};

    let spec = &loaded.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{file}: ok: pipeline `{}` (hash {})",
        compiled.name,
        &loaded.hash[..16]
    );
    let sources: Vec<String> = spec
        .sources
        .iter()
        .map(|s| match s {
            SourceSpec::File(f) => format!("file {}", f.path),
            SourceSpec::Stdin(_) => "stdin".to_string(),
            SourceSpec::Simulator(s) => format!("simulator ({} devices, a reading every {})", s.devices, s.interval),
            SourceSpec::Mqtt(m) => format!("mqtt {} topic {} (qos {})", redact::url(&m.url), m.topic, m.qos.level()),
            SourceSpec::Kafka(k) => format!("kafka {} topics {} (group {})", k.brokers, k.topics.join(","), k.group),
        })
        .collect();
    let _ = writeln!(
        out,
        "  sources:   {}",
        if sources.is_empty() {
            "none (pass --input FILE)".to_string()
        } else {
            sources.join("; ")
        }
    );
    if let Some(ingress) = &spec.ingress {
        let m = &ingress.mqtt;
        let filter = match &m.shared_group {
            Some(group) => format!("$share/{group}/{}", m.topic),
            None => m.topic.clone(),
        };
        let _ = writeln!(
            out,
            "  ingress:   (plume ingest) mqtt {} topic {filter} (qos {}) -> kafka {} topic {} (key = device id), dead letters to {}",
            redact::url(&m.url),
            m.qos.level(),
            ingress.kafka.brokers,
            ingress.kafka.topic,
            ingress.kafka.dead_letter_topic
        );
    }
    let decode = &spec.decode;
    let device = match (&decode.device.field, &decode.device.tag, decode.device.topic) {
        (_, _, true) => "the topic's {device}".to_string(),
        (_, Some(tag), _) => format!("tag `{tag}`"),
        (Some(field), _, _) => format!("`{field}`"),
        _ => "?".to_string(),
    };
    let time = match (&decode.time, decode.format) {
        (None, DecodeFormat::Influx) => "the line's timestamp (ns)".to_string(),
        (None, DecodeFormat::Json) => "arrival time".to_string(),
        (Some(t), format) => format!(
            "{} ({})",
            t.field
                .as_deref()
                .map_or("the line's timestamp".to_string(), |f| format!("`{f}`")),
            wire_name(&t.unit_for(format))
        ),
    };
    let _ = writeln!(
        out,
        "  decode:    {}, device from {device}, event time from {time}",
        wire_name(&decode.format)
    );
    let declared: Vec<&str> = compiled
        .fields
        .iter()
        .filter(|f| f.declared)
        .map(|f| f.name.as_str())
        .collect();
    let derived: Vec<&str> = compiled
        .fields
        .iter()
        .filter(|f| !f.declared)
        .map(|f| f.name.as_str())
        .collect();
    let mut fields = declared.join(", ");
    if !derived.is_empty() {
        let _ = write!(fields, "; produced: {}", derived.join(", "));
    }
    let _ = writeln!(out, "  fields:    {fields}");
    for (i, op) in spec.operators.iter().enumerate() {
        let label = if i == 0 { "  operators: " } else { "             " };
        let text = op.describe();
        let _ = writeln!(out, "{label}{text}");
    }
    for (i, route) in spec.outputs.iter().enumerate() {
        let label = if i == 0 { "  routes:    " } else { "             " };
        let sinks: Vec<String> = route
            .to
            .iter()
            .map(|s| match s {
                SinkSpec::Stdout(o) => format!("stdout ({})", wire_name(&o.format)),
                SinkSpec::File(f) => format!("file {}", f.path),
                SinkSpec::Webhook(w) => format!("webhook {}", redact::url(&w.url)),
                SinkSpec::Push(p) => match p {
                    spec::PushSinkSpec::Fcm(_) => "push (fcm)".to_string(),
                    spec::PushSinkSpec::Apns(_) => "push (apns)".to_string(),
                    spec::PushSinkSpec::Ntfy(n) => format!("push (ntfy topic {})", n.topic),
                },
                SinkSpec::Mqtt(m) => format!("mqtt {} topic {}", redact::url(&m.url), m.topic),
                SinkSpec::Kafka(k) => format!("kafka topic {}", k.topic),
            })
            .collect();
        let events = if route.events.is_empty() {
            String::new()
        } else {
            format!(" ({})", route.events.join(", "))
        };
        let _ = writeln!(
            out,
            "{label}{}{events} -> {}",
            route.when.to_vec().join(", "),
            sinks.join(", ")
        );
    }
    out
}

/// A unit enum as the pipeline file writes it (`ewma`, `json`).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_string(),
    }
}
