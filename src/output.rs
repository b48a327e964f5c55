//! Output records: what every sink receives, one JSON object per line.
//!
//! Schema version 1 (`"v":1` in every record). Every record has `type`; records about a device
//! have `device`, `operator` and a deterministic `id` (32 hex digits, a hash of the pipeline
//! name, device, operator, record type and what identifies the result: a window's start, an
//! event's sequence number and start), so a replay after a crash produces the same ids.
//!
//! | type | keys besides v, type, operator, device, id |
//! | --- | --- |
//! | `window` | `window_start`, `window_end` (epoch ms), `count`, `<field>_<aggregate>`… |
//! | `event_start` | `field`, `start_ts`, `decided_ts`, `decision_lag_ms`, `value` (first), `peak` (so far), `severity` (of `peak`, if bands are set) |
//! | `event_update` | `field`, `start_ts`, `decided_ts`, `peak`, `severity`, `previous_severity`, `reason`: `escalation` (a more severe band held), `de_escalation` (a less severe one held for `de_escalate_after`), `reminder` (still open, `remind_every`) |
//! | `event_end` | `field`, `start_ts`, `end_ts`, `duration_ms`, `decided_ts`, `decision_lag_ms`, `peak`, `mean`, `severity`; `ended_by: "silence"` when the device went silent for `timeout` (`end_ts` is then its last reading) |
//!
//! Event records decided on a reading older than the operator's `backfill_after` when it was
//! processed also have `backfill: true` and `backfill_lag_ms`; starts and updates decided on a
//! doubted value (`suspect: mark`) have `suspect: true`.
//!
//! An event's `start_ts` is its first reading beyond `enter` (back-dated over `min_duration`)
//! and its `end_ts` the first reading of the clearing run; `decided_ts` is the event time of
//! the reading on which plume decided (`min_duration` or `min_clear` reached), and
//! `decision_lag_ms` how far it lies behind `start_ts` (`end_ts` for an end).
//! | `baseline` | `field`, `ts`, `baseline` |
//! | `deviation` | `field`, `ts`, `value`, `mean`, `stddev`, `zscore` |
//! | `smoothed` | `field`, `ts`, `value`, `trend` (Holt) |
//! | `threshold` | `field`, `ts`, `value`, `limit`, `beyond` |
//! | `health` | `ts`, `status` (`offline`, `online`, `flatline`, `flatline_cleared`, `report`), … ; an `offline` one has `last_seen` (when the last reading arrived), `decided_ts` and `decision_lag_ms` (since `ts`, the last reading's event time) |
//! | `late` | `ts` |
//! | `dead_letter` | `source`, `position`, `reason`, `raw` (at most `decode.dead_letter_max_bytes`) — no `operator` |
//! | `summary` | `pipeline`, `readings`, `late`, `dead_letters`, `devices` — at the end of a run |
//!
//! Numbers that are not finite (an average of no values) are written as `null`.

use std::fmt::Write as _;

use xxhash_rust::xxh3::Xxh3;

pub use crate::model::{OutputRecord, RecordKind};
use crate::operators::{Emit, HealthEvent, OperatorConfig, UpdateReason};
use crate::pipeline::CompiledPipeline;

/// The output schema version written as `"v"`.
pub const OUTPUT_SCHEMA_VERSION: u32 = 1;

/// The shortest text that reads back as `x` (`null` when it is not finite), as ryu wrote it
/// before: zmij (2.3× faster: a window record's three averages were 5 % of a run's instructions)
/// gives the same digits and the same choice of notation, and writes a positive exponent as
/// `e+16` where ryu wrote `e16`, so the `+` is left out.
fn push_f64(buf: &mut String, x: f64) {
    if !x.is_finite() {
        buf.push_str("null");
        return;
    }
    let mut b = zmij::Buffer::new();
    let text = b.format_finite(x);
    // (only numbers from 1e16 up are written with an exponent above zero)
    if x.abs() >= 1e15
        && let Some(at) = text.find("e+")
    {
        buf.push_str(&text[..=at]);
        buf.push_str(&text[at + 2..]);
    } else {
        buf.push_str(text);
    }
}

fn push_i64(buf: &mut String, x: i64) {
    let mut b = itoa::Buffer::new();
    buf.push_str(b.format(x));
}

/// Appends `s` as a JSON string.
pub fn push_json_str(buf: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // nearly always: nothing to escape, so the whole string in one copy (a byte loop was 23
    // instructions a byte, 1.6 % of a two-shard run's instructions)
    if crate::model::json_text::plain_json_string(bytes) {
        buf.reserve(bytes.len() + 2);
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
        return;
    }
    buf.push('"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        buf.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(buf, "\\u{:04x}", b);
        } else {
            buf.push_str(escape);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Appends the id as a JSON string of 32 lowercase hex digits (what `{:032x}` writes, without
/// the formatting machinery).
fn push_id(buf: &mut String, id: u128) {
    // the two digits of each byte from a table (a shift of the whole `u128` per digit, and a
    // UTF-8 check of the result, were 400 instructions a record: 1.5 % of a two-shard run's)
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            pairs[byte] = [HEX[byte >> 4], HEX[byte & 15]];
            byte += 1;
        }
        pairs
    };
    let mut text = [b'"'; 34];
    for (k, byte) in id.to_be_bytes().iter().enumerate() {
        text[1 + 2 * k..3 + 2 * k].copy_from_slice(&PAIRS[*byte as usize]);
    }
    // SAFETY: `text` holds quotes and hex digits only, which are ASCII, and ASCII is UTF-8.
    buf.push_str(unsafe { std::str::from_utf8_unchecked(&text) });
}

/// A record id through the streaming hasher (each part after its length, then `a` and `b`):
/// what `RecordFormatter::id` hashes in one go when the bytes fit on the stack; the digest is
/// the same either way.
fn streamed_id(parts: [&[u8]; 4], a: i64, b: u64) -> u128 {
    let mut h = Xxh3::new();
    for part in parts {
        h.update(&(part.len() as u32).to_le_bytes());
        h.update(part);
    }
    h.update(&a.to_le_bytes());
    h.update(&b.to_le_bytes());
    h.digest128()
}

/// What a record is besides its JSON ([`RecordFormatter::format_into`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordHead {
    pub op: crate::operators::OpIndex,
    pub kind: RecordKind,
    pub id: u128,
    pub backfill: bool,
}

thread_local! {
    /// The buffer records are formatted in, kept between records: a record's own text is then
    /// allocated once, at its final length (formatting into a fresh `String` grew it once or
    /// twice per record).
    static SCRATCH: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

fn key(buf: &mut String, k: &str) {
    buf.push_str(",\"");
    buf.push_str(k);
    buf.push_str("\":");
}

/// A dead-letter record (the schema of every dead letter, whoever refused the payload): its id
/// is derived from the pipeline, `source` and `position`; `extra` appends fields of its own
/// (each written as `,"name":value`, see [`push_field`]).
/// Longest reason a dead letter carries: a reason quotes the offending value, which can be as
/// long as the payload; the raw bytes (bounded by `decode.dead_letter_max_bytes`) are beside it.
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason`, cut at `MAX_REASON_BYTES` (on a character boundary) with the length it had.
fn bounded_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_REASON_BYTES {
        return std::borrow::Cow::Borrowed(reason);
    }
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… (reason cut, {} bytes in all)",
        &reason[..cut],
        reason.len()
    ))
}

pub fn dead_letter_record(
    pipeline: &str,
    source: &str,
    position: &str,
    reason: &str,
    raw: &[u8],
    extra: impl FnOnce(&mut String),
) -> OutputRecord {
    let mut h = Xxh3::new();
    h.update(pipeline.as_bytes());
    h.update(source.as_bytes());
    h.update(position.as_bytes());
    let id = h.digest128();
    let mut j = String::with_capacity(160 + raw.len());
    j.push_str("{\"v\":1,\"type\":\"dead_letter\"");
    key(&mut j, "id");
    push_id(&mut j, id);
    key(&mut j, "source");
    push_json_str(&mut j, source);
    key(&mut j, "position");
    push_json_str(&mut j, position);
    key(&mut j, "reason");
    push_json_str(&mut j, &bounded_reason(reason));
    key(&mut j, "raw");
    push_json_str(&mut j, &String::from_utf8_lossy(raw));
    extra(&mut j);
    j.push('}');
    OutputRecord {
        op: None,
        kind: RecordKind::DeadLetter,
        id,
        device: None,
        json: j.into(),
        backfill: false,
    }
}

/// Writes `,"name":` and the JSON string `value` (a field of a record being built).
pub fn push_field(buf: &mut String, name: &str, value: &str) {
    key(buf, name);
    push_json_str(buf, value);
}

/// Turns operator results into records; holds the names it needs.
#[derive(Debug, Clone)]
pub struct RecordFormatter {
    pipeline: String,
    operators: Vec<OperatorConfig>,
    field_names: Vec<String>,
}

impl RecordFormatter {
    pub fn new(pipeline: &CompiledPipeline) -> Self {
        RecordFormatter {
            pipeline: pipeline.name.clone(),
            operators: pipeline.operators.clone(),
            field_names: pipeline.fields.iter().map(|f| f.name.clone()).collect(),
        }
    }

    fn id(&self, device: &str, op: &str, kind: &str, a: i64, b: u64) -> u128 {
        let parts = [
            self.pipeline.as_bytes(),
            device.as_bytes(),
            op.as_bytes(),
            kind.as_bytes(),
        ];
        // each part after its length, then `a` and `b`: hashed in one go from the stack (the
        // streaming hasher's state costs more to set up than the hash of these few bytes), and
        // streamed when they do not fit; both give the same digest
        const ON_STACK: usize = 256;
        let length: usize = parts.iter().map(|p| 4 + p.len()).sum::<usize>() + 16;
        if length > ON_STACK {
            return streamed_id(parts, a, b);
        }
        let mut bytes = [0u8; ON_STACK];
        let mut at = 0;
        let mut put = |piece: &[u8]| {
            bytes[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        };
        for part in parts {
            put(&(part.len() as u32).to_le_bytes());
            put(part);
        }
        put(&a.to_le_bytes());
        put(&b.to_le_bytes());
        xxhash_rust::xxh3::xxh3_128(&bytes[..at])
    }

    /// One record for one result of one device.
    pub fn format(&self, device: &str, emit: &Emit) -> OutputRecord {
        let mut j = SCRATCH.take();
        j.clear();
        let head = self.format_into(device, emit, &mut j);
        let json = String::from(j.as_str());
        SCRATCH.set(j);
        OutputRecord {
            op: Some(head.op),
            kind: head.kind,
            id: head.id,
            device: Some(device.into()),
            json: json.into(),
            backfill: head.backfill,
        }
    }

    /// [`RecordFormatter::format`]'s JSON line (without the newline), appended to `j`, and the
    /// rest of the record: for a caller that only writes records out, and so keeps one buffer
    /// for all of them instead of a `String` and a device id allocated per record.
    pub fn format_into(&self, device: &str, emit: &Emit, j: &mut String) -> RecordHead {
        let op_index = emit.op();
        let config = &self.operators[op_index as usize];
        let op_name = config.name();
        let kind = emit.kind();
        let (a, b) = match emit {
            Emit::Window { start, .. } => (*start, 0),
            Emit::EventStart { start_ts, seq, .. } | Emit::EventEnd { start_ts, seq, .. } => (*start_ts, *seq),
            // one update per band an event reaches
            Emit::EventUpdate {
                start_ts,
                seq,
                severity,
                reason: UpdateReason::Escalation,
                ..
            } => (
                *start_ts,
                seq.wrapping_mul(256).wrapping_add(severity.map_or(0, |s| s as u64 + 1)),
            ),
            // de-escalations and reminders: one per time they were decided at
            Emit::EventUpdate {
                seq,
                decided_ts,
                reason,
                ..
            } => (*decided_ts, seq.wrapping_mul(4).wrapping_add(*reason as u64)),
            Emit::Health { ts, event, .. } => (*ts, health_discriminant(event)),
            Emit::Baseline { ts, .. }
            | Emit::Deviation { ts, .. }
            | Emit::Smoothed { ts, .. }
            | Emit::Threshold { ts, .. }
            | Emit::Late { ts, .. } => (*ts, 0),
        };
        let id = self.id(device, op_name, kind.as_str(), a, b);
        j.push_str("{\"v\":1,\"type\":\"");
        j.push_str(kind.as_str());
        j.push('"');
        key(j, "operator");
        push_json_str(j, op_name);
        key(j, "device");
        push_json_str(j, device);
        key(j, "id");
        push_id(j, id);
        fn severity_name(config: &OperatorConfig, sev: Option<u8>) -> Option<&str> {
            match (config, sev) {
                (OperatorConfig::Hysteresis(c), Some(i)) => c.severity.get(i as usize).map(|(n, _)| n.as_str()),
                _ => None,
            }
        }
        match emit {
            Emit::Window {
                start,
                end,
                count,
                values,
                ..
            } => {
                key(j, "window_start");
                push_i64(j, *start);
                key(j, "window_end");
                push_i64(j, *end);
                key(j, "count");
                push_i64(j, *count as i64);
                if let OperatorConfig::Window(c) = config {
                    for (name, v) in c.value_names.iter().zip(values) {
                        key(j, name);
                        push_f64(j, *v);
                    }
                }
            }
            Emit::EventStart {
                start_ts,
                value,
                peak,
                severity,
                decided_ts,
                ..
            } => {
                event_head(j, config, *start_ts);
                int_key(j, "decided_ts", *decided_ts);
                int_key(j, "decision_lag_ms", decided_ts.saturating_sub(*start_ts));
                num_key(j, "value", *value);
                num_key(j, "peak", *peak);
                severity_key(j, "severity", severity_name(config, *severity));
            }
            Emit::EventEnd {
                start_ts,
                end_ts,
                peak,
                mean,
                severity,
                decided_ts,
                silence,
                ..
            } => {
                event_head(j, config, *start_ts);
                int_key(j, "end_ts", *end_ts);
                int_key(j, "duration_ms", end_ts.saturating_sub(*start_ts));
                int_key(j, "decided_ts", *decided_ts);
                int_key(j, "decision_lag_ms", decided_ts.saturating_sub(*end_ts));
                num_key(j, "peak", *peak);
                num_key(j, "mean", *mean);
                severity_key(j, "severity", severity_name(config, *severity));
                if *silence {
                    key(j, "ended_by");
                    j.push_str("\"silence\"");
                }
            }
            Emit::EventUpdate {
                start_ts,
                decided_ts,
                peak,
                previous,
                severity,
                reason,
                ..
            } => {
                event_head(j, config, *start_ts);
                int_key(j, "decided_ts", *decided_ts);
                num_key(j, "peak", *peak);
                severity_key(j, "severity", severity_name(config, *severity));
                severity_key(j, "previous_severity", severity_name(config, *previous));
                key(j, "reason");
                push_json_str(j, reason.as_str());
            }
            Emit::Baseline { ts, value, .. } => {
                field_at(j, config, "ts", *ts);
                num_key(j, "baseline", *value);
            }
            Emit::Deviation {
                ts,
                value,
                mean,
                stddev,
                zscore,
                ..
            } => {
                field_at(j, config, "ts", *ts);
                num_key(j, "value", *value);
                num_key(j, "mean", *mean);
                num_key(j, "stddev", *stddev);
                num_key(j, "zscore", *zscore);
            }
            Emit::Smoothed { ts, value, trend, .. } => {
                field_at(j, config, "ts", *ts);
                num_key(j, "value", *value);
                if let Some(t) = trend {
                    num_key(j, "trend", *t);
                }
            }
            Emit::Threshold {
                ts,
                value,
                limit,
                beyond,
                ..
            } => {
                field_at(j, config, "ts", *ts);
                num_key(j, "value", *value);
                num_key(j, "limit", *limit);
                key(j, "beyond");
                j.push_str(if *beyond { "true" } else { "false" });
            }
            Emit::Health { ts, event, .. } => {
                key(j, "ts");
                push_i64(j, *ts);
                key(j, "status");
                match event {
                    HealthEvent::Offline { last_seen, decided } => {
                        j.push_str("\"offline\"");
                        key(j, "last_seen");
                        push_i64(j, *last_seen);
                        key(j, "decided_ts");
                        push_i64(j, *decided);
                        key(j, "decision_lag_ms");
                        push_i64(j, decided.saturating_sub(*ts));
                    }
                    HealthEvent::Online => j.push_str("\"online\""),
                    HealthEvent::Flatline { field, value, readings } => {
                        j.push_str("\"flatline\"");
                        key(j, "field");
                        push_json_str(j, self.field_name(*field));
                        key(j, "value");
                        push_f64(j, *value);
                        key(j, "readings");
                        push_i64(j, *readings as i64);
                    }
                    HealthEvent::FlatlineCleared { field } => {
                        j.push_str("\"flatline_cleared\"");
                        key(j, "field");
                        push_json_str(j, self.field_name(*field));
                    }
                    HealthEvent::Report { out_of_range } => {
                        j.push_str("\"report\"");
                        key(j, "out_of_range");
                        j.push('{');
                        for (i, (slot, n)) in out_of_range.iter().enumerate() {
                            if i > 0 {
                                j.push(',');
                            }
                            push_json_str(j, self.field_name(*slot));
                            j.push(':');
                            push_i64(j, *n as i64);
                        }
                        j.push('}');
                    }
                }
            }
            Emit::Late { ts, .. } => {
                key(j, "ts");
                push_i64(j, *ts);
            }
        }
        let backfill = match emit {
            Emit::EventStart { backfill_lag_ms, .. }
            | Emit::EventUpdate { backfill_lag_ms, .. }
            | Emit::EventEnd { backfill_lag_ms, .. } => *backfill_lag_ms,
            _ => None,
        };
        if let Some(lag) = backfill {
            key(j, "backfill");
            j.push_str("true");
            key(j, "backfill_lag_ms");
            push_i64(j, lag);
        }
        if let Emit::EventStart { suspect: true, .. } | Emit::EventUpdate { suspect: true, .. } = emit {
            key(j, "suspect");
            j.push_str("true");
        }
        j.push('}');
        RecordHead {
            op: op_index,
            kind,
            id,
            backfill: backfill.is_some(),
        }
    }

    fn field_name(&self, slot: usize) -> &str {
        self.field_names.get(slot).map_or("?", |s| s.as_str())
    }

    /// A dead letter: where the payload came from, why it was refused, and (a bounded part of)
    /// the payload itself.
    pub fn dead_letter(&self, source: &str, position: &str, reason: &str, raw: &[u8]) -> OutputRecord {
        dead_letter_record(&self.pipeline, source, position, reason, raw, |_| {})
    }

    /// The end-of-run summary.
    pub fn summary(&self, totals: &RunTotals) -> OutputRecord {
        let mut j = String::with_capacity(128);
        j.push_str("{\"v\":1,\"type\":\"summary\"");
        key(&mut j, "pipeline");
        push_json_str(&mut j, &self.pipeline);
        key(&mut j, "readings");
        push_i64(&mut j, totals.readings as i64);
        key(&mut j, "late");
        push_i64(&mut j, totals.late as i64);
        key(&mut j, "dead_letters");
        push_i64(&mut j, totals.dead_letters as i64);
        key(&mut j, "devices");
        push_i64(&mut j, totals.devices as i64);
        j.push('}');
        OutputRecord {
            op: None,
            kind: RecordKind::Summary,
            id: 0,
            device: None,
            json: j.into(),
            backfill: false,
        }
    }
}

/// Tells apart the health results of one reading in the record id: the status, the field of a
/// flatline, the processing time of an offline, the total count of a report (counts only grow,
/// so two reports with the same id say the same).
fn health_discriminant(event: &HealthEvent) -> u64 {
    match event {
        HealthEvent::Offline { last_seen, .. } => 1 | ((*last_seen as u64) << 3),
        HealthEvent::Online => 2,
        HealthEvent::Flatline { field, .. } => 3 | ((*field as u64) << 3),
        HealthEvent::FlatlineCleared { field } => 4 | ((*field as u64) << 3),
        HealthEvent::Report { out_of_range } => 5 | (out_of_range.iter().map(|(_, n)| *n).sum::<u64>() << 3),
    }
}

/// Totals of a run, as the `summary` record reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub readings: u64,
    pub late: u64,
    pub dead_letters: u64,
    pub devices: u64,
}

/// `,"field":"<watched>","start_ts":<start>`: how every event record begins.
fn event_head(j: &mut String, config: &OperatorConfig, start_ts: i64) {
    field_at(j, config, "start_ts", start_ts);
}

/// `,"field":…,"<time_key>":…`: the head of a record about the operator's field at one time.
fn field_at(j: &mut String, config: &OperatorConfig, time_key: &str, ts: i64) {
    key(j, "field");
    push_json_str(j, config.watched_field());
    int_key(j, time_key, ts);
}

fn int_key(j: &mut String, name: &str, v: i64) {
    key(j, name);
    push_i64(j, v);
}

fn num_key(j: &mut String, name: &str, v: f64) {
    key(j, name);
    push_f64(j, v);
}

/// A severity band's name, when there is one.
fn severity_key(j: &mut String, name: &str, band: Option<&str>) {
    if let Some(band) = band {
        key(j, name);
        push_json_str(j, band);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_written_as_32_hex_digits() {
        let mut ids = vec![0u128, 1, 0xabc, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        // every digit value at every place
        for place in 0..32 {
            for digit in 0..16u128 {
                ids.push(digit << (4 * place));
                ids.push(!(digit << (4 * place)));
            }
        }
        for id in ids {
            let mut text = String::from("x");
            push_id(&mut text, id);
            assert_eq!(text, format!("x\"{id:032x}\""));
        }
    }

    /// The record ids, hashed from the stack or streamed, are the ids the streaming hasher gave
    /// every earlier version (ids are how outputs are deduplicated across runs and members).
    #[test]
    fn record_ids_are_the_streamed_hash_of_their_parts() {
        // one id written by an earlier version: pipeline aq1, device d-1, operator pm, event_start
        let aq1 = RecordFormatter {
            pipeline: "aq1".into(),
            operators: Vec::new(),
            field_names: Vec::new(),
        };
        let id = aq1.id("d-1", "pm", "event_start", 30_000, 1);
        assert_eq!(id, streamed_id([b"aq1", b"d-1", b"pm", b"event_start"], 30_000, 1));
        assert_eq!(format!("{id:032x}"), "458e4eb8ba243ec9882a44e72fda384d");
        // and one too long for the stack (a 300-byte pipeline name): streamed
        let long = RecordFormatter {
            pipeline: "p".repeat(300),
            operators: Vec::new(),
            field_names: Vec::new(),
        };
        let id = long.id("d-1", "pm", "event_start", 30_000, 1);
        assert_eq!(format!("{id:032x}"), "cfc23cad4a0f71f1f644ceb87b008c13");
        for pipeline_len in [0, 1, 3, 17, 100, 200, 240, 300] {
            let pipeline = "p".repeat(pipeline_len);
            let f = RecordFormatter {
                pipeline: pipeline.clone(),
                operators: Vec::new(),
                field_names: Vec::new(),
            };
            for device in ["", "d", "device-with-a-longer-name-0042", &"x".repeat(90)] {
                for (a, b) in [(0, 0), (-1, u64::MAX), (1_700_000_000_000, 7)] {
                    assert_eq!(
                        f.id(device, "window", "window", a, b),
                        streamed_id([pipeline.as_bytes(), device.as_bytes(), b"window", b"window"], a, b),
                        "pipeline of {pipeline_len} bytes, device {device:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn event_records_say_when_they_were_decided() {
        let text = "version: 1\npipeline: t\ndecode:\n  fields:\n    pm25: {}\noperators:\n  - hysteresis: { name: pm, field: pm25, enter: 35, exit: 25, min_duration: 30s }\n";
        let pipeline =
            CompiledPipeline::compile(crate::spec::parse_pipeline("t.yaml", text, &|_| None).unwrap()).unwrap();
        let f = RecordFormatter::new(&pipeline);
        let v = |emit: &Emit| serde_json::from_str::<serde_json::Value>(&f.format("d", emit).json).unwrap();
        let start = v(&Emit::EventStart {
            op: 0,
            seq: 1,
            start_ts: 30_000,
            value: 40.0,
            peak: 45.0,
            severity: None,
            decided_ts: 60_000,
            backfill_lag_ms: None,
            suspect: false,
        });
        assert_eq!(
            (start["start_ts"].as_i64(), start["decided_ts"].as_i64()),
            (Some(30_000), Some(60_000))
        );
        assert_eq!(start["decision_lag_ms"].as_i64(), Some(30_000));
        let end = v(&Emit::EventEnd {
            op: 0,
            seq: 1,
            start_ts: 30_000,
            end_ts: 90_000,
            peak: 45.0,
            mean: 41.0,
            severity: None,
            decided_ts: 110_000,
            backfill_lag_ms: Some(7_200_000),
            silence: false,
        });
        assert_eq!(end["decided_ts"].as_i64(), Some(110_000));
        assert_eq!(end["decision_lag_ms"].as_i64(), Some(20_000), "behind end_ts");
        assert_eq!(
            (end["backfill"].as_bool(), end["backfill_lag_ms"].as_i64()),
            (Some(true), Some(7_200_000))
        );
        assert!(start.get("backfill").is_none(), "only backfill is marked");
        // the id does not depend on when the event was decided (a replay gives the same ids)
        let started = |decided_ts| {
            f.format(
                "d",
                &Emit::EventStart {
                    op: 0,
                    seq: 1,
                    start_ts: 30_000,
                    value: 40.0,
                    peak: 45.0,
                    severity: None,
                    decided_ts,
                    backfill_lag_ms: None,
                    suspect: false,
                },
            )
            .id
        };
        assert_eq!(started(60_000), started(70_000));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
        // plain strings are copied whole: a character that needs an escape, or one that does
        // not, at every place of strings up to 24 bytes, read back as they were
        for len in 0..24usize {
            let plain: String = (0..len).map(|k| (b'#' + (k * 7 % 57) as u8) as char).collect();
            for at in 0..len {
                for c in ['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é', '~'] {
                    let mut text: String = plain.clone();
                    text.replace_range(at..at + 1, &c.to_string());
                    let mut out = String::from("x");
                    push_json_str(&mut out, &text);
                    let back: String = serde_json::from_str(&out[1..]).unwrap();
                    assert_eq!(back, text);
                    let escaped = matches!(c, '"' | '\\' | '\n' | '\u{0}' | '\u{1f}');
                    assert_eq!(out.len() > text.len() + 3, escaped, "{out}");
                }
            }
        }
    }

    /// The output's floats are what ryu wrote before zmij: random bit patterns, values like
    /// readings and their averages, and every power of ten with a few mantissas.
    #[test]
    fn floats_are_written_as_ryu_wrote_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(18);
        let mut values: Vec<f64> = (0..300_000).map(|_| f64::from_bits(rng.random())).collect();
        for _ in 0..100_000 {
            let r: u64 = rng.random();
            let x = (r % 2_000_000) as f64 / 10f64.powi((r >> 40) as i32 % 8);
            values.extend([x, -x, x / 3.0, x / 6.0 * 5.0, x * 1e12, x * 1e-9]);
        }
        for e in -330..310 {
            for m in [1.0, 1.5, 9.999, 2.2250738585072014, 4.9] {
                values.push(m * 10f64.powi(e));
            }
        }
        values.extend([
            0.0,
            -0.0,
            1e15,
            1e16,
            1e21,
            1e22,
            1e-5,
            1e-7,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
        ]);
        let mut written = String::new();
        for x in values.into_iter().filter(|x| x.is_finite()) {
            written.clear();
            push_f64(&mut written, x);
            assert_eq!(written, ryu::Buffer::new().format_finite(x), "{x:e}");
        }
    }

    #[test]
    fn floats_round_trip_and_non_finite_is_null() {
        let mut s = String::new();
        push_f64(&mut s, 589.4000000000001);
        assert_eq!(s.parse::<f64>().unwrap(), 589.4000000000001);
        s.clear();
        push_f64(&mut s, f64::NAN);
        assert_eq!(s, "null");
    }
}
