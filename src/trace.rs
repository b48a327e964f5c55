//! Spans of plume's work, through OpenTelemetry's API: checkpoints with their phases, restores,
//! Kafka rebalances, events and their notifier deliveries.
//!
//! # Layout
//! - Everything here goes to OpenTelemetry's global tracer provider. Without one (no OTLP
//!   endpoint configured, see `app::otlp`) the calls cost a few branches and export nothing.
//! - [`finished`] records a span whose start and end are already known (a checkpoint's phases
//!   are measured by different actors and put together when it completes); [`start`] opens one
//!   that ends when dropped.
//! - An event's trace id is the event record's id ([`event_context`]): the span of the event
//!   and the spans of every delivery it caused (in any process, after any restart) share one
//!   trace, found by the id a receiver sees in the `webhook-id` header or the record's `id`.
//! - [`current_ids`] gives the trace and span ids of the span a log line is written in.
//! - [`log_filter`] gives the directives of the log lines (`PLUME_LOG`, `warn` by default).

use std::time::SystemTime;

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{KeyValue, global};

pub use opentelemetry::Context;
pub use opentelemetry::KeyValue as Attribute;
pub use opentelemetry::trace::SpanKind as Kind;

/// The name plume's spans are recorded under (the instrumentation scope).
pub const SCOPE: &str = "plume";

fn tracer() -> global::BoxedTracer {
    global::tracer(SCOPE)
}

/// A span that ends when dropped (or at [`OpenSpan::end`]).
pub struct OpenSpan {
    context: Context,
}

impl OpenSpan {
    /// Its context, as the parent of other spans.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Makes it the current span of this thread until the guard is dropped (log lines then
    /// carry its ids).
    pub fn enter(&self) -> opentelemetry::ContextGuard {
        self.context.clone().attach()
    }

    /// Adds a span event (a retry, a failed attempt).
    pub fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.context.span().add_event(name, attributes);
    }

    pub fn set(&self, attribute: KeyValue) {
        self.context.span().set_attribute(attribute);
    }

    /// Marks it failed with `message`.
    pub fn fail(&self, message: impl Into<String>) {
        self.context.span().set_status(Status::error(message.into()));
    }

    pub fn end(self) {
        self.context.span().end();
    }
}

/// Opens a span now, as a child of `parent` (or of the current span when `None`).
pub fn start(name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>, parent: Option<&Context>) -> OpenSpan {
    let tracer = tracer();
    let builder = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
    let parent = parent.cloned().unwrap_or_else(Context::current);
    let span = tracer.build_with_context(builder, &parent);
    OpenSpan {
        context: parent.with_span(span),
    }
}

/// The context of no span: the parent of a new trace.
pub fn root() -> Context {
    Context::new()
}

/// What a span that already happened is made of.
pub struct Finished {
    pub name: &'static str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// `Some(message)`: it failed.
    pub error: Option<String>,
}

/// Records a span that already happened, as a child of `parent`; returns its context (for its
/// children, which may be recorded after it).
pub fn finished(span: Finished, parent: &Context) -> Context {
    let tracer = tracer();
    let builder = tracer
        .span_builder(span.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(span.start)
        .with_attributes(span.attributes);
    let mut s = tracer.build_with_context(builder, parent);
    if let Some(message) = span.error {
        s.set_status(Status::error(message));
    }
    let context = parent.with_span(s);
    context.span().end_with_timestamp(span.end.max(span.start));
    context
}

/// The trace id of an event record: the record's id (never zero: a zero id is invalid).
pub fn event_trace_id(record_id: u128) -> TraceId {
    TraceId::from(record_id.max(1))
}

/// The span id of an event record's span.
pub fn event_span_id(record_id: u128) -> SpanId {
    let folded = (record_id as u64) ^ ((record_id >> 64) as u64);
    SpanId::from(folded.max(1))
}

/// The context of an event record's span: the parent of its deliveries, wherever and whenever
/// they happen.
pub fn event_context(record_id: u128) -> Context {
    let context = SpanContext::new(
        event_trace_id(record_id),
        event_span_id(record_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(context)
}

/// Records the span of an event record (its trace id and span id from the record's id), from
/// `start` to now.
pub fn event(
    name: &'static str,
    record_id: u128,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    notes: Vec<&'static str>,
) {
    let tracer = tracer();
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Producer)
        .with_trace_id(event_trace_id(record_id))
        .with_span_id(event_span_id(record_id))
        .with_start_time(start)
        .with_attributes(attributes);
    let mut span = tracer.build_with_context(builder, &Context::new());
    for note in notes {
        span.add_event(note, Vec::new());
    }
    span.end();
}

/// The trace and span ids of the current span of this thread (or task), if it has one.
pub fn current_ids() -> Option<(TraceId, SpanId)> {
    let context = Context::current();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

/// The log lines' filter directives (`tracing_subscriber::EnvFilter` syntax) from `PLUME_LOG`
/// (`None`: not set): `warn` by default, and the embedded broker (rumqttd) silent unless a
/// directive names it. rumqttd opens an error-level span for every message it routes (with the
/// topic formatted into it); with `rumqttd` at `warn` or below those spans cost the broker's
/// thread about a tenth of its time (BENCHMARKS.md, "The embedded broker's durable path, looked
/// at again"), and nothing of them is written unless one of rumqttd's own events is.
pub fn log_filter(plume_log: Option<&str>) -> String {
    let directives = plume_log.map(str::trim).filter(|d| !d.is_empty()).unwrap_or("warn");
    let names_rumqttd = directives.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or("").trim();
        target == "rumqttd" || target.starts_with("rumqttd::")
    });
    if names_rumqttd {
        directives.to_string()
    } else {
        format!("{directives},rumqttd=off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_broker_logs_only_when_a_directive_names_it() {
        assert_eq!(log_filter(None), "warn,rumqttd=off");
        assert_eq!(log_filter(Some("")), "warn,rumqttd=off");
        assert_eq!(
            log_filter(Some("info,plume::connectors=debug")),
            "info,plume::connectors=debug,rumqttd=off"
        );
        assert_eq!(log_filter(Some("debug,rumqttd=warn")), "debug,rumqttd=warn");
        assert_eq!(
            log_filter(Some("warn,rumqttd::router=info")),
            "warn,rumqttd::router=info"
        );
        // a crate whose name only starts with rumqttd is not the broker
        assert_eq!(log_filter(Some("rumqttdx=info")), "rumqttdx=info,rumqttd=off");
        // every result is a filter tracing accepts
        for spec in [
            None,
            Some("debug"),
            Some("debug,rumqttd=warn"),
            Some("plume[checkpoint]=info"),
        ] {
            tracing_subscriber::EnvFilter::try_new(log_filter(spec)).expect("a valid filter");
        }
    }

    #[test]
    fn an_event_trace_is_named_by_its_record_id() {
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        assert_eq!(event_trace_id(id).to_string(), "0123456789abcdef0011223344556677");
        let cx = event_context(id);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_sampled());
        assert_eq!(sc.trace_id(), event_trace_id(id));
        assert_eq!(sc.span_id(), event_span_id(id));
        // zero ids are invalid in OpenTelemetry: never produced
        assert!(event_context(0).span().span_context().is_valid());
    }
}
