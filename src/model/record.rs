//! Output records: what operators, dead letters and the summary produce on the way to sinks.

use std::fmt;

/// Index of an operator in a pipeline's chain.
pub type OpIndex = u16;

/// The kind of an output record: the `type` key of its JSON, and what routes filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Window,
    EventStart,
    EventEnd,
    Baseline,
    Deviation,
    Smoothed,
    Threshold,
    Health,
    Late,
    DeadLetter,
    Summary,
    /// A notifier's digest of deliveries it folded together.
    Digest,
    /// An open event got worse: its peak reached a higher severity band.
    EventUpdate,
}

impl RecordKind {
    /// Every kind, in the order the output schema lists them.
    pub const ALL: [RecordKind; 13] = [
        RecordKind::Window,
        RecordKind::EventStart,
        RecordKind::EventEnd,
        RecordKind::Baseline,
        RecordKind::Deviation,
        RecordKind::Smoothed,
        RecordKind::Threshold,
        RecordKind::Health,
        RecordKind::Late,
        RecordKind::DeadLetter,
        RecordKind::Summary,
        RecordKind::Digest,
        RecordKind::EventUpdate,
    ];

    /// The name written as the record's `type` (`window`, `event_start`, …).
    /// Its place in [`RecordKind::ALL`] (declared in that order; a test holds them together).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            RecordKind::Window => "window",
            RecordKind::EventStart => "event_start",
            RecordKind::EventEnd => "event_end",
            RecordKind::Baseline => "baseline",
            RecordKind::Deviation => "deviation",
            RecordKind::Smoothed => "smoothed",
            RecordKind::Threshold => "threshold",
            RecordKind::Health => "health",
            RecordKind::Late => "late",
            RecordKind::DeadLetter => "dead_letter",
            RecordKind::Summary => "summary",
            RecordKind::Digest => "digest",
            RecordKind::EventUpdate => "event_update",
        }
    }

    /// The kind a `type` names (as written by [`RecordKind::as_str`]).
    pub fn parse(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind an `events:` entry of a route stands for: a type name, or the short forms
    /// `start`, `end` and `dead_letters`.
    pub fn from_event_name(event: &str) -> Option<RecordKind> {
        match event {
            "start" => Some(RecordKind::EventStart),
            "end" => Some(RecordKind::EventEnd),
            "update" => Some(RecordKind::EventUpdate),
            "dead_letters" => Some(RecordKind::DeadLetter),
            "digest" => None,
            other => RecordKind::parse(other),
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record on its way to the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// The operator that produced it (`None`: dead letters and summaries).
    pub op: Option<OpIndex>,
    /// `window`, `event_start`, … (the `type` key).
    pub kind: RecordKind,
    /// Deterministic id (the `id` key as a number).
    pub id: u128,
    /// The device, if the record is about one.
    pub device: Option<Box<str>>,
    /// The whole record as one line of JSON, without the newline.
    pub json: String,
    /// An event decided on old data (`backfill: true` in the record): routes can leave it out.
    pub backfill: bool,
}

impl OutputRecord {
    /// The id as written in outputs and webhook headers.
    pub fn id_hex(&self) -> String {
        format!("{:032x}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_the_place_in_all() {
        for (i, kind) in RecordKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
        }
    }

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(RecordKind::from_event_name("start"), Some(RecordKind::EventStart));
        assert_eq!(
            RecordKind::from_event_name("dead_letters"),
            Some(RecordKind::DeadLetter)
        );
        assert_eq!(RecordKind::from_event_name("nonsense"), None);
    }
}
