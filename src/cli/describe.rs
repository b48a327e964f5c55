//! What `plume validate` prints for a valid pipeline.

use plume::pipeline::CompiledPipeline;
use plume::spec::{self, SourceSpec};

/// The short summary `plume validate` prints for a valid pipeline: sources, fields, the
/// operator chain with its key parameters, and the routes.
pub fn describe_pipeline(file: &str, loaded: &spec::LoadedPipeline, compiled: &CompiledPipeline) -> String {
    use std::fmt::Write as _;

    use spec::{AggregatesSpec, DecodeFormat, OperatorSpec, SinkSpec};

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
            SourceSpec::Mqtt(m) => format!("mqtt {} topic {} (qos {})", m.url, m.topic, m.qos.level()),
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
        let text = match op {
            OperatorSpec::Window(w) => {
                let aggregates = match &w.aggregates {
                    AggregatesSpec::All(list) => format!(
                        "{} of {}",
                        list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("/"),
                        w.fields.join(", ")
                    ),
                    AggregatesSpec::PerField(map) => map
                        .iter()
                        .map(|(f, list)| {
                            format!("{f} {}", list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("/"))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let slide = w.slide.map(|s| format!(" sliding by {s}")).unwrap_or_default();
                format!(
                    "window `{}`: every {}{slide}, lateness {}: {aggregates}",
                    op.name(),
                    w.every,
                    w.lateness
                )
            }
            OperatorSpec::Hysteresis(h) => {
                let (enter, exit) = match h.direction {
                    spec::Direction::Above => (">=", "<="),
                    spec::Direction::Below => ("<=", ">="),
                };
                let debounce = h
                    .min_duration
                    .map(|d| format!(", for at least {d}"))
                    .unwrap_or_default();
                let mut bands: Vec<(&String, &f64)> = h.severity.iter().collect();
                bands.sort_by(|a, b| a.1.total_cmp(b.1));
                let bands = if bands.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", severity {}",
                        bands
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!(
                    "hysteresis `{}`: {} {enter} {} opens, {exit} {} closes{debounce}{bands}",
                    op.name(),
                    h.field,
                    h.enter,
                    h.exit
                )
            }
            OperatorSpec::Baseline(b) => {
                format!(
                    "baseline `{}`: {} of {}, alpha {}",
                    op.name(),
                    wire_name(&b.method),
                    b.field,
                    b.alpha
                )
            }
            OperatorSpec::Smooth(s) => format!("smooth `{}`: {} of {}", op.name(), wire_name(&s.method), s.field),
            OperatorSpec::Threshold(t) => format!("threshold `{}` on {}", op.name(), t.field),
            OperatorSpec::Calibrate(c) => format!("calibrate `{}` of {}", op.name(), c.field),
            OperatorSpec::Health(_) => format!("health `{}`", op.name()),
        };
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
                SinkSpec::Webhook(w) => format!("webhook {}", w.url),
                SinkSpec::Push(p) => match p {
                    spec::PushSinkSpec::Fcm(_) => "push (fcm)".to_string(),
                    spec::PushSinkSpec::Apns(_) => "push (apns)".to_string(),
                    spec::PushSinkSpec::Ntfy(n) => format!("push (ntfy topic {})", n.topic),
                },
                SinkSpec::Mqtt(m) => format!("mqtt {} topic {}", m.url, m.topic),
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
