//! Decoding raw payloads into readings, as `decode` in the pipeline file says.
//!
//! # Layout
//! - [`Decoder`]: compiled from [`DecodeSpec`]; `decode` turns one payload into a device id and
//!   a [`Reading`]; `device_of` finds only the device id (cheap: numbers are skipped, not
//!   converted), so that each shard fully decodes only the readings of its own devices.
//! - `json`: one JSON object per payload: a schema-driven byte scanner (`json::fast`) that reads
//!   only the declared keys, numbers straight to `f64`, for the flat ASCII objects producers
//!   write; a serde visitor straight into field slots for everything it declines.
//! - `influx`: one InfluxDB line protocol line per payload (tags, fields, timestamp).
//! - [`DecodeError`]: the reason a payload is a dead letter.

use std::borrow::Cow;

use crate::operators::{FieldSlot, Reading};
use crate::spec::{DecodeFormat, DecodeSpec, FieldSpec, FieldType, OutOfRange, OutsideTime, TimeSpec, TimeUnit};
pub use json::DifferingKeyOrders;

pub mod influx;
pub mod json;

/// Why a payload could not become a reading. The message is for people reading dead letters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not valid influx line protocol: {0}")]
    Influx(String),
    #[error("no device id: the payload has no `{0}`")]
    MissingDevice(String),
    #[error("no device id: the line has no tag `{0}`")]
    MissingTag(String),
    #[error("no device id: the topic did not capture `{{device}}`")]
    MissingTopicDevice,
    #[error("the device id is empty")]
    EmptyDevice,
    #[error("the device id is {length} bytes long, more than decode.max_device_id_bytes ({max})")]
    DeviceIdTooLong { length: usize, max: usize },
    #[error("the device id contains a control character (U+{code:04X}), which plume does not accept in ids")]
    DeviceIdControl { code: u32 },
    #[error("the payload holds more than decode.max_fields ({max}) entries: not decoded")]
    TooManyFields { max: usize },
    #[error(
        "event time {ts} ms is {} the source's time {reference} ms, more than decode.plausible_time.{} ({window_ms} ms)",
        if *ts > *reference { "ahead of" } else { "behind" },
        if *ts > *reference { "ahead" } else { "behind" }
    )]
    ImplausibleTime { ts: i64, reference: i64, window_ms: i64 },
    #[error("no event time: the payload has no `{0}`")]
    MissingTime(String),
    #[error("event time `{field}` is not valid: {reason}")]
    BadTime { field: String, reason: String },
    #[error("required field `{0}` is missing")]
    MissingField(String),
    #[error("field `{field}` should be {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: String,
    },
    #[error("field `{field}` is {value}, not a finite number")]
    NotFinite { field: String, value: f64 },
    #[error("field `{field}` is {value}, outside its range [{min}, {max}]")]
    OutOfRange {
        field: String,
        value: f64,
        min: f64,
        max: f64,
    },
}

/// A decoded payload: the device id (borrowed from the payload when possible) and the reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'a> {
    pub device: Cow<'a, str>,
    pub reading: Reading,
    /// The event time was outside `plausible_time` and moved to its edge (`outside: clamp`).
    pub time_clamped: bool,
    /// The payload's arrival time (`decode.arrival`), if the pipeline declares one.
    pub arrival: Option<i64>,
    /// Fields left out of the reading by `out_of_range: field_dead_letter`: (the field's index
    /// among the declared fields, its value). Each becomes a dead letter ([`Decoder::dropped_reason`]).
    pub dropped: DroppedFields,
}

impl Decoded<'_> {
    /// A decoded reading with nothing in it yet (`slots` absent values), for
    /// [`Decoder::decode_into`] to fill.
    pub fn empty(slots: usize) -> Self {
        Decoded {
            device: Cow::Borrowed(""),
            reading: Reading::new(0, slots),
            time_clamped: false,
            arrival: None,
            dropped: DroppedFields::new(),
        }
    }
}

/// See [`Decoded::dropped`].
pub type DroppedFields = smallvec::SmallVec<[(u16, f64); 2]>;

/// One declared field, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldDecoder {
    pub name: String,
    pub slot: FieldSlot,
    pub spec: FieldSpec,
}

/// Compiled `decode` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoder {
    pub(crate) format: DecodeFormat,
    pub(crate) device_field: Option<String>,
    pub(crate) device_tag: Option<String>,
    pub(crate) device_from_topic: bool,
    /// JSON: `{"<device key>":"`, the way producers start a reading (see `json::device_of`);
    /// none when the key holds a byte that JSON would escape.
    pub(crate) device_prefix: Option<Box<[u8]>>,
    pub(crate) time_field: Option<String>,
    pub(crate) time_unit: TimeUnit,
    /// JSON: the key of the arrival time, and its unit (`decode.arrival`).
    pub(crate) arrival_field: Option<String>,
    pub(crate) arrival_unit: TimeUnit,
    pub(crate) fields: Vec<FieldDecoder>,
    pub(crate) slots: usize,
    pub max_dead_letter_bytes: usize,
    /// Longer payloads are dead letters, not decoded.
    pub max_payload_bytes: usize,
    /// Longer device ids are refused (each id is kept in memory, in the store and in topics).
    pub max_device_id_bytes: usize,
    /// More entries in one payload are refused (bounds the work per payload).
    pub max_fields: usize,
    /// Largest lead of an event time over the source's time (ms).
    pub(crate) ahead_ms: i64,
    /// Largest lag behind it (ms), if any.
    pub(crate) behind_ms: Option<i64>,
    pub(crate) outside_time: OutsideTime,
    /// JSON: the key order of the first reading the fast path read (a cache: see
    /// `json::fast::KeyOrder`).
    pub(crate) key_order: json::LearnedKeyOrder,
}

impl Decoder {
    /// `slots` is the total number of field slots (declared and derived).
    pub fn new(spec: &DecodeSpec, slots: usize) -> Self {
        Decoder {
            format: spec.format,
            device_field: spec.device.field.clone(),
            device_tag: spec.device.tag.clone(),
            device_from_topic: spec.device.topic,
            device_prefix: match (spec.format, &spec.device.field) {
                (DecodeFormat::Json, Some(key)) if crate::model::json_text::plain_json_string(key.as_bytes()) => {
                    Some(format!("{{\"{key}\":\"").into_bytes().into_boxed_slice())
                }
                _ => None,
            },
            time_field: match spec.format {
                DecodeFormat::Json => spec.time.as_ref().and_then(|t| t.field.clone()),
                // influx: the line's own timestamp
                DecodeFormat::Influx => None,
            },
            time_unit: match &spec.time {
                Some(t) => t.unit_for(spec.format),
                None => TimeSpec::default_unit(spec.format),
            },
            arrival_field: match spec.format {
                DecodeFormat::Json => spec.arrival.as_ref().and_then(|t| t.field.clone()),
                DecodeFormat::Influx => None,
            },
            arrival_unit: spec.arrival.as_ref().map_or(TimeUnit::Ms, |t| t.unit_for(spec.format)),
            fields: spec
                .fields
                .iter()
                .enumerate()
                .map(|(slot, (name, spec))| FieldDecoder {
                    name: name.clone(),
                    slot,
                    spec: spec.clone(),
                })
                .collect(),
            slots,
            max_dead_letter_bytes: spec.dead_letter_max_bytes,
            max_payload_bytes: spec.max_payload_bytes,
            max_device_id_bytes: spec.max_device_id_bytes,
            max_fields: spec.max_fields,
            ahead_ms: spec.plausible_time.ahead.as_millis(),
            behind_ms: spec.plausible_time.behind.map(|b| b.as_millis()),
            outside_time: spec.plausible_time.outside,
            key_order: Default::default(),
        }
    }

    /// Takes the device id from the source (an MQTT topic capture, a Kafka record key) when
    /// the source gives one; the payload's device field or tag otherwise (a file run of the
    /// same pipeline).
    pub fn with_device_from_source(mut self) -> Self {
        self.device_from_topic = true;
        self
    }

    pub fn format(&self) -> DecodeFormat {
        self.format
    }

    /// Decodes one payload. `topic_device` is the `{device}` capture of an MQTT topic;
    /// `arrival_ms` is the source's time when the payload arrived: the event time when the
    /// pipeline has no time field, and the centre of the `plausible_time` window otherwise.
    pub fn decode<'a>(
        &self,
        payload: &'a [u8],
        topic_device: Option<&'a str>,
        arrival_ms: i64,
    ) -> Result<Decoded<'a>, DecodeError> {
        let mut out = Decoded::empty(self.slots);
        self.decode_into(payload, topic_device, arrival_ms, &mut out)?;
        Ok(out)
    }

    /// [`Decoder::decode`] into `out`, reusing its reading: a loop that decodes into the same
    /// place every time moves nothing (the result is the same; on an error `out` holds nothing
    /// of use).
    #[inline]
    pub fn decode_into<'a>(
        &self,
        payload: &'a [u8],
        topic_device: Option<&'a str>,
        arrival_ms: i64,
        out: &mut Decoded<'a>,
    ) -> Result<(), DecodeError> {
        self.decode_into_learning(
            payload,
            topic_device,
            arrival_ms,
            out,
            &mut DifferingKeyOrders::default(),
        )
    }

    /// [`Decoder::decode_into`] for a caller that decodes payload after payload and keeps
    /// `differing` between them: when many readings in a row have their JSON keys in another
    /// order than the one the decoder learned from its first reading, it learns theirs (the
    /// fast path matches keys against a learned order; see `json::fast::KeyOrder`). The results
    /// are the same either way.
    #[inline]
    pub fn decode_into_learning<'a>(
        &self,
        payload: &'a [u8],
        topic_device: Option<&'a str>,
        arrival_ms: i64,
        out: &mut Decoded<'a>,
        differing: &mut DifferingKeyOrders,
    ) -> Result<(), DecodeError> {
        match self.format {
            DecodeFormat::Json => json::decode_into(self, payload, topic_device, arrival_ms, out, differing)?,
            DecodeFormat::Influx => *out = influx::decode(self, payload, topic_device, arrival_ms)?,
        }
        self.check_decoded(out, arrival_ms)
    }

    /// The JSON keys, in order, that the fast path matches readings against (learned from the
    /// first reading, and again after many readings in a row came in another order: see
    /// [`Decoder::decode_into_learning`]); none before the first reading. For tests and benches.
    #[doc(hidden)]
    pub fn learned_key_order(&self) -> Option<Vec<String>> {
        json::learned_keys(self)
    }

    /// [`Decoder::decode`] without the JSON fast path (every payload through serde_json's
    /// parser): for the benches, which compare the two.
    #[doc(hidden)]
    pub fn decode_general<'a>(
        &self,
        payload: &'a [u8],
        topic_device: Option<&'a str>,
        arrival_ms: i64,
    ) -> Result<Decoded<'a>, DecodeError> {
        let mut decoded = match self.format {
            DecodeFormat::Json => json::decode_serde(self, payload, topic_device, arrival_ms)?,
            DecodeFormat::Influx => influx::decode(self, payload, topic_device, arrival_ms)?,
        };
        self.check_decoded(&mut decoded, arrival_ms)?;
        Ok(decoded)
    }

    /// The checks every payload gets once decoded, whatever its format: the device id, and the
    /// event time against the `plausible_time` window.
    #[inline(always)]
    fn check_decoded(&self, decoded: &mut Decoded<'_>, arrival_ms: i64) -> Result<(), DecodeError> {
        check_device_id(&decoded.device, self.max_device_id_bytes)?;
        decoded.time_clamped = self.plausible_time(&mut decoded.reading.ts, arrival_ms)?;
        Ok(())
    }

    /// Checks an event time against the source's time `reference`: `Ok(true)` when it was
    /// outside and has been clamped to the window's edge.
    fn plausible_time(&self, ts: &mut i64, reference: i64) -> Result<bool, DecodeError> {
        let latest = reference.saturating_add(self.ahead_ms);
        let earliest = self.behind_ms.map_or(i64::MIN, |b| reference.saturating_sub(b));
        if (earliest..=latest).contains(ts) {
            return Ok(false);
        }
        match self.outside_time {
            OutsideTime::DeadLetter => Err(DecodeError::ImplausibleTime {
                ts: *ts,
                reference,
                window_ms: if *ts > latest {
                    self.ahead_ms
                } else {
                    self.behind_ms.unwrap_or_default()
                },
            }),
            OutsideTime::Clamp => {
                *ts = (*ts).clamp(earliest, latest);
                Ok(true)
            }
        }
    }

    /// Only the device id of a payload (for routing), or `None` if it has none.
    pub fn device_of<'a>(&self, payload: &'a [u8], topic_device: Option<&'a str>) -> Option<Cow<'a, str>> {
        if self.device_from_topic
            && (topic_device.is_some() || self.device_field.is_none() && self.device_tag.is_none())
        {
            return topic_device.map(Cow::Borrowed);
        }
        match self.format {
            DecodeFormat::Json => json::device_of(self, payload),
            DecodeFormat::Influx => influx::device_of(self, payload),
        }
    }

    /// Applies type, range and presence rules once all values are in; the fields left out
    /// (`out_of_range: field_dead_letter`) go into `dropped`, cleared first. (Written into the
    /// caller's list: returned with the result, both moved through memory on every reading.)
    #[inline(always)]
    pub(crate) fn check_fields(
        &self,
        reading: &mut Reading,
        seen: u64,
        dropped: &mut DroppedFields,
    ) -> Result<(), DecodeError> {
        dropped.clear();
        for (index, f) in self.fields.iter().enumerate() {
            let present = seen & (1u64 << f.slot) != 0;
            if !present {
                if f.spec.required {
                    return Err(DecodeError::MissingField(f.name.clone()));
                }
                continue;
            }
            let x = reading.values[f.slot];
            if !x.is_finite() {
                // (`1e999` in influx, `inf`): never kept, or it would poison every average and
                // baseline of the device for good
                match f.spec.out_of_range {
                    OutOfRange::DeadLetter => {
                        return Err(DecodeError::NotFinite {
                            field: f.name.clone(),
                            value: x,
                        });
                    }
                    OutOfRange::Flag | OutOfRange::Keep | OutOfRange::FieldDeadLetter => {
                        if f.spec.out_of_range == OutOfRange::FieldDeadLetter {
                            dropped.push((index as u16, x));
                        }
                        reading.out_of_range |= 1u64 << f.slot;
                        reading.values[f.slot] = crate::operators::ABSENT;
                        continue;
                    }
                }
            }
            if f.spec.kind == FieldType::Int && has_fraction(x) {
                return Err(DecodeError::WrongType {
                    field: f.name.clone(),
                    expected: "an integer",
                    found: format!("{x}"),
                });
            }
            let below = f.spec.min.is_some_and(|m| x < m);
            let above = f.spec.max.is_some_and(|m| x > m);
            if below || above {
                match f.spec.out_of_range {
                    OutOfRange::DeadLetter => {
                        return Err(DecodeError::OutOfRange {
                            field: f.name.clone(),
                            value: x,
                            min: f.spec.min.unwrap_or(f64::NEG_INFINITY),
                            max: f.spec.max.unwrap_or(f64::INFINITY),
                        });
                    }
                    OutOfRange::Flag => {
                        reading.out_of_range |= 1u64 << f.slot;
                        reading.values[f.slot] = crate::operators::ABSENT;
                    }
                    OutOfRange::FieldDeadLetter => {
                        dropped.push((index as u16, x));
                        reading.out_of_range |= 1u64 << f.slot;
                        reading.values[f.slot] = crate::operators::ABSENT;
                    }
                    OutOfRange::Keep => reading.out_of_range |= 1u64 << f.slot,
                }
            }
        }
        Ok(())
    }

    /// The dead letter reason of a field left out by `out_of_range: field_dead_letter`.
    pub fn dropped_reason(&self, field: u16, value: f64) -> String {
        let Some(f) = self.fields.get(field as usize) else {
            return format!("field #{field}: {value} left out of the reading");
        };
        let why = if value.is_finite() {
            format!(
                "{value} is outside its range [{}, {}]",
                f.spec.min.map_or("-inf".to_string(), |m| m.to_string()),
                f.spec.max.map_or("inf".to_string(), |m| m.to_string())
            )
        } else {
            format!("{value} is not a finite number")
        };
        format!(
            "field `{}`: {why}: left out of the reading (out_of_range: field_dead_letter), its other fields were used",
            f.name
        )
    }

    /// Converts an integer or float event time in the configured unit to epoch milliseconds.
    #[inline]
    pub(crate) fn time_from_number(&self, field: &str, x: f64, integer: Option<i64>) -> Result<i64, DecodeError> {
        // nearly always: integer milliseconds, taken as they are without a call
        if let (Some(ms), TimeUnit::Ms) = (integer, self.time_unit) {
            return Ok(ms);
        }
        Self::time_in_unit(self.time_unit, field, x, integer)
    }

    pub(crate) fn time_from_text(&self, field: &str, text: &str) -> Result<i64, DecodeError> {
        Self::text_time_in_unit(self.time_unit, field, text)
    }

    /// The arrival time (`decode.arrival`) from a number or a text.
    pub(crate) fn arrival_from(
        &self,
        field: &str,
        x: f64,
        integer: Option<i64>,
        text: Option<&str>,
    ) -> Result<i64, DecodeError> {
        match text {
            Some(t) => Self::text_time_in_unit(self.arrival_unit, field, t),
            None => Self::time_in_unit(self.arrival_unit, field, x, integer),
        }
    }

    fn time_in_unit(unit: TimeUnit, field: &str, x: f64, integer: Option<i64>) -> Result<i64, DecodeError> {
        let bad = |reason: &str| DecodeError::BadTime {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if let Some(i) = integer {
            return match unit {
                TimeUnit::S => i.checked_mul(1000).ok_or_else(|| bad("out of range")),
                TimeUnit::Ms => Ok(i),
                TimeUnit::Us => Ok(i.div_euclid(1000)),
                TimeUnit::Ns => Ok(i.div_euclid(1_000_000)),
                TimeUnit::Rfc3339 => Err(bad("expected an RFC 3339 string, found a number")),
            };
        }
        if !x.is_finite() {
            return Err(bad("not a finite number"));
        }
        let ms = match unit {
            TimeUnit::S => x * 1000.0,
            TimeUnit::Ms => x,
            TimeUnit::Us => x / 1000.0,
            TimeUnit::Ns => x / 1_000_000.0,
            TimeUnit::Rfc3339 => return Err(bad("expected an RFC 3339 string, found a number")),
        };
        if ms.abs() > 9.0e15 {
            return Err(bad("out of range"));
        }
        Ok(ms.floor() as i64)
    }

    fn text_time_in_unit(unit: TimeUnit, field: &str, text: &str) -> Result<i64, DecodeError> {
        let bad = |reason: String| DecodeError::BadTime {
            field: field.to_string(),
            reason,
        };
        match unit {
            TimeUnit::Rfc3339 => {
                let ts: jiff::Timestamp = text.parse().map_err(|e: jiff::Error| bad(format!("`{text}`: {e}")))?;
                Ok(ts.as_millisecond())
            }
            _ => Err(bad(format!(
                "expected a number of {}, found the string `{text}`",
                unit_name(unit)
            ))),
        }
    }
}

fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::S => "seconds",
        TimeUnit::Ms => "milliseconds",
        TimeUnit::Us => "microseconds",
        TimeUnit::Ns => "nanoseconds",
        TimeUnit::Rfc3339 => "RFC 3339 text",
    }
}

/// A device id plume keeps: not empty, at most `max` bytes, no control characters (ids end up
/// in store keys, output records, log lines and MQTT topics).
#[inline]
pub fn check_device_id(device: &str, max: usize) -> Result<(), DecodeError> {
    if device.is_empty() {
        return Err(DecodeError::EmptyDevice);
    }
    if device.len() > max {
        return Err(DecodeError::DeviceIdTooLong {
            length: device.len(),
            max,
        });
    }
    // printable ASCII, as ids nearly always are: no control character (a word test, where the
    // char-by-char search below was 1 % of a run, and a byte loop 83 instructions per reading)
    if printable_ascii(device.as_bytes()) {
        return Ok(());
    }
    if let Some(c) = device.chars().find(|c| c.is_control()) {
        return Err(DecodeError::DeviceIdControl { code: c as u32 });
    }
    Ok(())
}

/// Whether every byte is printable ASCII (`0x20..=0x7e`), eight bytes at a time.
#[inline]
pub(crate) fn printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // per byte, no carry between bytes: a byte under 0x80 plus 0x60 stays under 0x100, and
    // reaches 0x80 exactly when the byte is 0x20 or more; plus 1, exactly when it is 0x7f
    let printable = |w: u64| w & HIGH == 0 && (!(w + ONES * 0x60) | (w + ONES)) & HIGH == 0;
    crate::model::json_text::every_word(bytes, printable, |b| (0x20..0x7f).contains(&b))
}

/// `x.fract() != 0.0` for a finite `x`, with casts: LLVM evaluated `fract` ahead of the test
/// that guards it (it counts as cheap), and without SSE4.1 it is a call to `trunc` — 1.5 % of a
/// run, on every float field of every reading.
#[inline]
fn has_fraction(x: f64) -> bool {
    // from 2^52 on, every f64 is an integer
    x.abs() < 4_503_599_627_370_496.0 && (x as i64) as f64 != x
}

/// Whether two short byte strings (keys, device ids) are equal, compared inline: a `memcmp`
/// call per comparison cost more than the comparison (the decoder's key matching, the routers'
/// scan and per-chunk grouping).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Why a payload longer than `max_payload_bytes` is not decoded (a dead letter's reason).
pub fn oversized_reason(length: u64, max: usize) -> String {
    format!("payload of {length} bytes is longer than decode.max_payload_bytes ({max} bytes): not decoded")
}

/// At most `max` bytes of a payload, for a dead letter.
pub fn bounded_raw(payload: &[u8], max: usize) -> &[u8] {
    &payload[..payload.len().min(max)]
}

#[cfg(test)]
mod tests {
    /// The word test says what a byte loop says (`check_word_test`: every byte value at every
    /// place of ids up to 24 bytes).
    #[test]
    fn printable_ascii_a_word_at_a_time_is_the_byte_test() {
        crate::model::json_text::check_word_test(printable_ascii, |b| (0x20..0x7f).contains(&b));
    }

    use super::*;

    #[test]
    fn has_fraction_is_fract_not_zero() {
        for x in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.5,
            1e-300,
            123_456.000_001,
            4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            -4_503_599_627_370_495.5,
            9.0e15,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            0.1 + 0.2,
        ] {
            assert_eq!(has_fraction(x), x.fract() != 0.0, "{x}");
        }
    }
}
