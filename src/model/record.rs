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
    pub device: Option<RecordText>,
    /// The whole record as one line of JSON, without the newline.
    pub json: RecordText,
    /// An event decided on old data (`backfill: true` in the record): routes can leave it out.
    pub backfill: bool,
}

impl OutputRecord {
    /// The id as written in outputs and webhook headers.
    pub fn id_hex(&self) -> String {
        format!("{:032x}", self.id)
    }
}

/// A record's text (its JSON line, its device id): a string of its own, or a part of the
/// buffer a shard formatted a chunk's records into ([`RecordTexts`]). A shard's records
/// share one buffer, so a record costs no allocation of its own (BENCHMARKS.md, issue 18).
/// Reads as a `&str`.
#[derive(Clone)]
pub struct RecordText(TextRepr);

#[derive(Clone)]
enum TextRepr {
    Own(Box<str>),
    /// `lines[start..end]` of the buffer, or `ids[start..end]` (`id`).
    Part {
        texts: std::sync::Arc<RecordTexts>,
        id: bool,
        start: u32,
        end: u32,
    },
}

impl RecordText {
    /// Where this text is a line of a shared buffer: the buffer, and the line's bounds there
    /// (a `\n` follows it in the buffer).
    #[cfg(test)]
    fn line_of_buffer(&self) -> Option<(&std::sync::Arc<RecordTexts>, usize, usize)> {
        match &self.0 {
            TextRepr::Part {
                texts,
                id: false,
                start,
                end,
            } => Some((texts, *start as usize, *end as usize)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            TextRepr::Own(text) => text,
            TextRepr::Part { texts, id, start, end } => {
                let all = if *id { &texts.ids } else { &texts.lines };
                &all[*start as usize..*end as usize]
            }
        }
    }
}

impl std::ops::Deref for RecordText {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for RecordText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RecordText {}

impl From<String> for RecordText {
    fn from(text: String) -> Self {
        RecordText(TextRepr::Own(text.into_boxed_str()))
    }
}

impl From<&str> for RecordText {
    fn from(text: &str) -> Self {
        RecordText(TextRepr::Own(text.into()))
    }
}

/// The records a shard formatted for a chunk, as text: their JSON lines one after the other,
/// each followed by `\n`, and their devices' ids. Records point into it ([`RecordText`]); when
/// the last is dropped (after the sinks wrote them) the two strings go back to a small pool
/// for the next chunk's records, so the shards do not fault fresh memory in for every chunk.
#[derive(Default)]
pub struct RecordTexts {
    pub lines: String,
    pub ids: String,
}

impl Drop for RecordTexts {
    fn drop(&mut self) {
        text_pool::give_back(std::mem::take(&mut self.lines), std::mem::take(&mut self.ids));
    }
}

/// A record's place in a [`RecordBatchBuilder`], until the batch is made.
#[derive(Debug, Clone, Copy)]
struct PendingRecord {
    op: Option<OpIndex>,
    kind: RecordKind,
    id: u128,
    backfill: bool,
    line: (u32, u32),
    /// `(0, 0)` with `has_device` false: no device.
    device: (u32, u32),
    has_device: bool,
}

/// Collects records as text into one buffer ([`RecordTexts`]), then makes the records that
/// point into it ([`RecordBatchBuilder::finish`]). A shard's output for a chunk.
#[derive(Default)]
pub struct RecordBatchBuilder {
    lines: String,
    ids: String,
    pending: Vec<PendingRecord>,
    /// The device the last ids entry is (a device's records of a chunk mostly come together).
    last_device: Option<(u32, u32)>,
}

impl RecordBatchBuilder {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// The bytes of record text collected so far.
    pub fn text_bytes(&self) -> usize {
        self.lines.len()
    }

    /// Adds a record whose JSON `write` appends to the buffer (without a newline); `write`
    /// returns the record's operator, kind, id and backfill flag.
    #[inline]
    pub fn add_with(
        &mut self,
        device: Option<&str>,
        write: impl FnOnce(&mut String) -> (Option<OpIndex>, RecordKind, u128, bool),
    ) {
        if self.lines.capacity() == 0 {
            let (lines, ids) = text_pool::take();
            self.lines = lines;
            self.ids = ids;
        }
        let start = self.lines.len();
        let (op, kind, id, backfill) = write(&mut self.lines);
        let end = self.lines.len();
        self.lines.push('\n');
        let device_range = match device {
            Some(device) => {
                let same = self
                    .last_device
                    .is_some_and(|(s, e)| &self.ids[s as usize..e as usize] == device);
                if !same {
                    let s = self.ids.len() as u32;
                    self.ids.push_str(device);
                    self.last_device = Some((s, self.ids.len() as u32));
                }
                self.last_device.expect("set")
            }
            None => (0, 0),
        };
        self.pending.push(PendingRecord {
            op,
            kind,
            id,
            backfill,
            line: (start as u32, end as u32),
            device: device_range,
            has_device: device.is_some(),
        });
    }

    /// Adds a record made elsewhere (a dead letter), copying its text.
    pub fn add_record(&mut self, record: &OutputRecord) {
        self.add_with(record.device.as_deref(), |lines| {
            lines.push_str(&record.json);
            (record.op, record.kind, record.id, record.backfill)
        });
    }

    /// Whether the buffer is too large for 32-bit offsets after `more` bytes.
    pub fn near_full(&self, more: usize) -> bool {
        self.lines.len() + more >= (u32::MAX / 2) as usize || self.ids.len() + more >= (u32::MAX / 2) as usize
    }

    /// The records collected, appended to `out` in order; the builder is empty after.
    pub fn finish(&mut self, out: &mut Vec<OutputRecord>) {
        if self.pending.is_empty() {
            return;
        }
        self.last_device = None;
        let texts = std::sync::Arc::new(RecordTexts {
            lines: std::mem::take(&mut self.lines),
            ids: std::mem::take(&mut self.ids),
        });
        out.reserve(self.pending.len());
        for p in self.pending.drain(..) {
            out.push(OutputRecord {
                op: p.op,
                kind: p.kind,
                id: p.id,
                device: p.has_device.then(|| {
                    RecordText(TextRepr::Part {
                        texts: texts.clone(),
                        id: true,
                        start: p.device.0,
                        end: p.device.1,
                    })
                }),
                json: RecordText(TextRepr::Part {
                    texts: texts.clone(),
                    id: false,
                    start: p.line.0,
                    end: p.line.1,
                }),
                backfill: p.backfill,
            });
        }
    }
}

/// Emptied [`RecordTexts`] strings, for the next chunks (at most [`text_pool::KEPT`] pairs).
pub mod text_pool {
    use std::sync::Mutex;

    pub const KEPT: usize = 16;
    /// Strings larger than this are freed, not kept (a burst must not stay in memory).
    pub const KEPT_BYTES: usize = 16 << 20;

    static SPARE: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    pub fn take() -> (String, String) {
        SPARE.lock().ok().and_then(|mut spare| spare.pop()).unwrap_or_default()
    }

    pub fn give_back(mut lines: String, mut ids: String) {
        if lines.capacity() == 0 || lines.capacity() > KEPT_BYTES || ids.capacity() > KEPT_BYTES {
            return;
        }
        lines.clear();
        ids.clear();
        if let Ok(mut spare) = SPARE.lock()
            && spare.len() < KEPT
        {
            spare.push((lines, ids));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(device: Option<&str>, json: &str) -> OutputRecord {
        OutputRecord {
            op: Some(1),
            kind: RecordKind::Window,
            id: json.len() as u128,
            device: device.map(RecordText::from),
            json: json.into(),
            backfill: false,
        }
    }

    #[test]
    fn records_built_in_one_buffer_read_as_their_own_text() {
        let mut builder = RecordBatchBuilder::default();
        let mut records = Vec::new();
        let texts = [
            (Some("dev-1"), r#"{"a":1}"#),
            (Some("dev-1"), r#"{"b":"x\ny"}"#),
            (None, r#"{"dead":true}"#),
            (Some("dev-é"), r#"{"c":3.5}"#),
        ];
        for (device, json) in texts {
            builder.add_with(device, |line| {
                line.push_str(json);
                (Some(1), RecordKind::Window, json.len() as u128, false)
            });
        }
        assert_eq!(builder.len(), 4);
        // a record made elsewhere (a dead letter) is copied in, in order
        builder.add_record(&record(Some("dev-2"), r#"{"e":5}"#));
        builder.finish(&mut records);
        assert!(builder.is_empty());
        let expected: Vec<OutputRecord> = texts
            .iter()
            .map(|(d, j)| record(*d, j))
            .chain([record(Some("dev-2"), r#"{"e":5}"#)])
            .collect();
        assert_eq!(records, expected, "each record reads as its own text");
        // the buffer holds every line, each followed by a newline, and the device ids once
        // per run of the same device
        let (texts, start, end) = records[0].json.line_of_buffer().expect("in the buffer");
        let joined: String = expected.iter().map(|r| format!("{}\n", r.json)).collect();
        assert_eq!((start, end), (0, expected[0].json.len()));
        assert_eq!(texts.lines, joined);
        assert_eq!(texts.ids, "dev-1dev-édev-2");
        assert!(records[2].device.is_none());
        // the builder starts again, into a buffer of its own
        let mut second = Vec::new();
        builder.add_with(Some("d"), |line| {
            line.push_str("{\"z\":0}");
            (None, RecordKind::Late, 0, true)
        });
        builder.finish(&mut second);
        let (texts2, ..) = second[0].json.line_of_buffer().expect("in a buffer");
        assert!(!std::sync::Arc::ptr_eq(texts, texts2));
        assert_eq!(second[0].json.as_str(), "{\"z\":0}");
        assert_eq!(second[0].device.as_deref(), Some("d"));
        assert!(
            record(None, "{}").json.line_of_buffer().is_none(),
            "a record of its own"
        );
        assert!(second[0].backfill && second[0].op.is_none() && second[0].kind == RecordKind::Late);
    }

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
