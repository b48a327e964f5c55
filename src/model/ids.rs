//! Names of sources and sinks. They reach disk (checkpoints record source positions and sink
//! lengths by name; notifier outboxes are namespaced by sink), so they are built and read in one
//! place: [`SourceId`] and [`SinkId`] write them with `Display` and read them back with `parse`.

use std::fmt;

/// A source of readings, as dead letters and checkpoints name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceId {
    /// `file:<path>`
    File(String),
    /// `stdin`
    Stdin,
    /// `simulator`
    Simulator,
    /// `mqtt:<topic template>`
    Mqtt(String),
    /// `kafka:<topic>,<topic>…`
    Kafka(Vec<String>),
    /// `notify:<sink>`: a notifier, for the dead letters of its deliveries.
    Notifier(SinkId),
}

impl SourceId {
    /// Reads a name written by `Display`.
    pub fn parse(name: &str) -> Option<SourceId> {
        Some(match name {
            "stdin" => SourceId::Stdin,
            "simulator" => SourceId::Simulator,
            _ => {
                let (kind, rest) = name.split_once(':')?;
                match kind {
                    "file" => SourceId::File(rest.to_string()),
                    "mqtt" => SourceId::Mqtt(rest.to_string()),
                    "kafka" => SourceId::Kafka(rest.split(',').map(str::to_string).collect()),
                    "notify" => SourceId::Notifier(SinkId::parse(rest)?),
                    _ => return None,
                }
            }
        })
    }

    /// Whether this names a notifier (its dead letters are not notified again).
    pub fn is_notifier(&self) -> bool {
        matches!(self, SourceId::Notifier(_))
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceId::File(path) => write!(f, "file:{path}"),
            SourceId::Stdin => f.write_str("stdin"),
            SourceId::Simulator => f.write_str("simulator"),
            SourceId::Mqtt(topic) => write!(f, "mqtt:{topic}"),
            SourceId::Kafka(topics) => write!(f, "kafka:{}", topics.join(",")),
            SourceId::Notifier(sink) => write!(f, "notify:{sink}"),
        }
    }
}

/// The kinds of notifier sinks; with their index among the pipeline's sinks of that kind they
/// name a notifier's outbox, so a changed URL keeps its pending deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifierKind {
    Webhook,
    Fcm,
    Apns,
    Ntfy,
}

impl NotifierKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            NotifierKind::Webhook => "webhook",
            NotifierKind::Fcm => "fcm",
            NotifierKind::Apns => "apns",
            NotifierKind::Ntfy => "ntfy",
        }
    }

    pub fn parse(name: &str) -> Option<NotifierKind> {
        [
            NotifierKind::Webhook,
            NotifierKind::Fcm,
            NotifierKind::Apns,
            NotifierKind::Ntfy,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// A sink, as checkpoints (its length) and outboxes (its namespace) name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SinkId {
    /// `file:<path>`
    File(String),
    /// `stdout`
    Stdout,
    /// `mqtt:<topic template>`
    Mqtt(String),
    /// `kafka:<topic>`
    Kafka(String),
    /// `<kind>:<n>`: the n-th notifier of its kind in the order the outputs list them.
    Notifier(NotifierKind, usize),
}

impl SinkId {
    /// Reads a name written by `Display`.
    pub fn parse(name: &str) -> Option<SinkId> {
        if name == "stdout" {
            return Some(SinkId::Stdout);
        }
        let (kind, rest) = name.split_once(':')?;
        Some(match kind {
            "file" => SinkId::File(rest.to_string()),
            "mqtt" => SinkId::Mqtt(rest.to_string()),
            "kafka" => SinkId::Kafka(rest.to_string()),
            other => SinkId::Notifier(NotifierKind::parse(other)?, rest.parse().ok()?),
        })
    }
}

impl fmt::Display for SinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkId::File(path) => write!(f, "file:{path}"),
            SinkId::Stdout => f.write_str("stdout"),
            SinkId::Mqtt(topic) => write!(f, "mqtt:{topic}"),
            SinkId::Kafka(topic) => write!(f, "kafka:{topic}"),
            SinkId::Notifier(kind, n) => write!(f, "{}:{n}", kind.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_they_were_written() {
        let sources = [
            SourceId::File("in/a:b.jsonl".into()),
            SourceId::Stdin,
            SourceId::Simulator,
            SourceId::Mqtt("sensors/{device}/air".into()),
            SourceId::Kafka(vec!["a".into(), "b".into()]),
            SourceId::Notifier(SinkId::Notifier(NotifierKind::Webhook, 2)),
        ];
        for id in sources {
            assert_eq!(SourceId::parse(&id.to_string()), Some(id.clone()), "{id}");
        }
        let sinks = [
            SinkId::File("out.jsonl".into()),
            SinkId::Stdout,
            SinkId::Mqtt("out/{device}".into()),
            SinkId::Kafka("results".into()),
            SinkId::Notifier(NotifierKind::Apns, 0),
        ];
        for id in sinks {
            assert_eq!(SinkId::parse(&id.to_string()), Some(id.clone()), "{id}");
        }
        // the stored forms do not change
        assert_eq!(SinkId::Notifier(NotifierKind::Fcm, 1).to_string(), "fcm:1");
        assert_eq!(SourceId::File("x".into()).to_string(), "file:x");
        assert!(SourceId::parse("notify:webhook:0").unwrap().is_notifier());
        assert!(!SourceId::parse("file:notify:webhook:0").unwrap().is_notifier());
    }
}
