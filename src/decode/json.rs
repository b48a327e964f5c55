//! JSON payloads: one object, read straight into field slots (no intermediate `Value`). Keys
//! that the pipeline does not declare are skipped. Two paths: [`fast`], a schema-driven scan of
//! the flat ASCII objects producers write, and a serde visitor ([`decode_serde`]) for every
//! payload the fast path declines; both give the same reading, and errors always come from the
//! serde path.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::{DecodeError, Decoded, Decoder};
use crate::operators::Reading;
use crate::spec::FieldType;

mod fast;
pub use fast::DifferingKeyOrders;
pub(crate) use fast::{LearnedKeyOrder, learned_keys};

enum Key {
    Device,
    Time,
    Arrival,
    Field(usize),
    Other,
}

struct KeySeed<'d>(&'d Decoder);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    #[inline]
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        let dec = self.0;
        for (i, field) in dec.fields.iter().enumerate() {
            if field.name == key {
                return Ok(Key::Field(i));
            }
        }
        if dec.device_field.as_deref() == Some(key) {
            return Ok(Key::Device);
        }
        if dec.time_field.as_deref() == Some(key) {
            return Ok(Key::Time);
        }
        if dec.arrival_field.as_deref() == Some(key) {
            return Ok(Key::Arrival);
        }
        Ok(Key::Other)
    }
}

/// A string (or a number, written as text) that borrows from the payload when it can.
struct DeviceSeed;

impl<'de> DeserializeSeed<'de> for DeviceSeed {
    type Value = Result<Cow<'de, str>, String>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeviceSeed {
    type Value = Result<Cow<'de, str>, String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a device id")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Err(format!("the number {v}")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Err(format!("{v}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err("null".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err("an object".into()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("an array".into()))
    }
}

/// Any JSON value, classified.
enum Scalar<'de> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(Cow<'de, str>),
    Null,
    Other(&'static str),
}

impl Scalar<'_> {
    fn describe(&self) -> String {
        match self {
            Scalar::Int(i) => format!("the number {i}"),
            Scalar::Float(x) => format!("the number {x}"),
            Scalar::Bool(b) => format!("{b}"),
            Scalar::Text(s) => format!("the string {s:?}"),
            Scalar::Null => "null".into(),
            Scalar::Other(what) => (*what).into(),
        }
    }
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Float(v as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }
}

/// The object, decoded into slots. Decode errors (as opposed to syntax errors) are kept
/// aside so the whole object is still checked for syntax.
struct ObjectVisitor<'d, 'de> {
    dec: &'d Decoder,
    reading: &'d mut Reading,
    seen: &'d mut u64,
    device: &'d mut Option<Cow<'de, str>>,
    time: &'d mut Option<Result<i64, DecodeError>>,
    arrival: &'d mut Option<Result<i64, DecodeError>>,
    problem: &'d mut Option<DecodeError>,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let dec = self.dec;
        let mut entries = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed(dec))? {
            entries += 1;
            if entries > dec.max_fields {
                *self.problem = Some(DecodeError::TooManyFields { max: dec.max_fields });
                return Err(de::Error::custom("too many entries"));
            }
            match key {
                Key::Field(i) => {
                    let field = &dec.fields[i];
                    let value = map.next_value_seed(ScalarSeed)?;
                    let x = match (&value, field.spec.kind) {
                        (Scalar::Float(x), FieldType::Float | FieldType::Int) => Some(*x),
                        (Scalar::Int(i), FieldType::Float | FieldType::Int) => Some(*i as f64),
                        (Scalar::Bool(b), FieldType::Bool) => Some(if *b { 1.0 } else { 0.0 }),
                        (Scalar::Null, _) => None,
                        _ => {
                            if self.problem.is_none() {
                                *self.problem = Some(DecodeError::WrongType {
                                    field: field.name.clone(),
                                    expected: match field.spec.kind {
                                        FieldType::Float => "a number",
                                        FieldType::Int => "an integer",
                                        FieldType::Bool => "true or false",
                                    },
                                    found: value.describe(),
                                });
                            }
                            None
                        }
                    };
                    if let Some(x) = x {
                        self.reading.values[field.slot] = x;
                        *self.seen |= 1u64 << field.slot;
                    }
                }
                Key::Device => {
                    let value = map.next_value_seed(DeviceSeed)?;
                    match value {
                        Ok(id) => {
                            if self.device.is_some() && self.problem.is_none() {
                                *self.problem = Some(DecodeError::Json(format!(
                                    "the device id `{}` is given twice",
                                    dec.device_field.as_deref().unwrap_or("device")
                                )));
                            }
                            *self.device = Some(id);
                        }
                        Err(found) => {
                            if self.problem.is_none() {
                                *self.problem = Some(DecodeError::WrongType {
                                    field: dec.device_field.clone().unwrap_or_default(),
                                    expected: "a string",
                                    found,
                                });
                            }
                        }
                    }
                }
                Key::Time => {
                    let name = dec.time_field.as_deref().unwrap_or("");
                    let value = map.next_value_seed(ScalarSeed)?;
                    *self.time = Some(match value {
                        Scalar::Int(i) => dec.time_from_number(name, i as f64, Some(i)),
                        Scalar::Float(x) => dec.time_from_number(name, x, None),
                        Scalar::Text(t) => dec.time_from_text(name, &t),
                        other => Err(DecodeError::BadTime {
                            field: name.to_string(),
                            reason: format!("expected a number or text, found {}", other.describe()),
                        }),
                    });
                }
                Key::Arrival => {
                    let name = dec.arrival_field.as_deref().unwrap_or("");
                    let value = map.next_value_seed(ScalarSeed)?;
                    *self.arrival = Some(match value {
                        Scalar::Int(i) => dec.arrival_from(name, i as f64, Some(i), None),
                        Scalar::Float(x) => dec.arrival_from(name, x, None, None),
                        Scalar::Text(t) => dec.arrival_from(name, 0.0, None, Some(&t)),
                        other => Err(DecodeError::BadTime {
                            field: name.to_string(),
                            reason: format!("expected a number or text, found {}", other.describe()),
                        }),
                    });
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Decodes a JSON payload into `out`, whose reading is reused (nothing of it is moved on the
/// fast path): the fast path, or the general one for whatever it declines.
#[inline]
pub(super) fn decode_into<'a>(
    dec: &Decoder,
    payload: &'a [u8],
    topic_device: Option<&'a str>,
    arrival_ms: i64,
    out: &mut Decoded<'a>,
    differing: &mut DifferingKeyOrders,
) -> Result<(), DecodeError> {
    match fast::decode(dec, payload, &mut out.reading, differing) {
        Some(found) => finish_fast(dec, found, topic_device, arrival_ms, out),
        None => {
            *out = decode_serde(dec, payload, topic_device, arrival_ms)?;
            Ok(())
        }
    }
}

/// [`finish_into`] for what the fast path found (its values already in `out.reading`).
#[inline]
fn finish_fast<'a>(
    dec: &Decoder,
    found: fast::Fast<'a>,
    topic_device: Option<&'a str>,
    arrival_ms: i64,
    out: &mut Decoded<'a>,
) -> Result<(), DecodeError> {
    finish_into(
        dec,
        out,
        found.seen,
        found.device.map(Cow::Borrowed),
        found.time,
        found.arrival,
        topic_device,
        arrival_ms,
    )
}

/// What the object held, before the checks every payload gets.
pub(super) struct Found<'a> {
    pub reading: Reading,
    /// Bit `slot` set: the field was present (and not `null`).
    pub seen: u64,
    pub device: Option<Cow<'a, str>>,
    pub time: Option<Result<i64, DecodeError>>,
    pub arrival: Option<Result<i64, DecodeError>>,
}

/// The general path: serde_json's parser with a visitor that writes straight into the slots.
/// It takes every payload the fast path ([`fast::decode`]) declines, and says why a payload is
/// refused.
pub(super) fn decode_serde<'a>(
    dec: &Decoder,
    payload: &'a [u8],
    topic_device: Option<&'a str>,
    arrival_ms: i64,
) -> Result<Decoded<'a>, DecodeError> {
    let mut reading = Reading::new(0, dec.slots);
    let mut seen = 0u64;
    let mut device = None;
    let mut time = None;
    let mut arrival = None;
    let mut problem = None;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let visitor = ObjectVisitor {
        dec,
        reading: &mut reading,
        seen: &mut seen,
        device: &mut device,
        time: &mut time,
        arrival: &mut arrival,
        problem: &mut problem,
    };
    let parsed = de.deserialize_map(visitor).and_then(|()| de.end());
    if let Some(p @ DecodeError::TooManyFields { .. }) = problem {
        return Err(p);
    }
    parsed.map_err(|e| DecodeError::Json(e.to_string()))?;
    if let Some(p) = problem {
        return Err(p);
    }
    finish(
        dec,
        Found {
            reading,
            seen,
            device,
            time,
            arrival,
        },
        topic_device,
        arrival_ms,
    )
}

/// Device, event time, arrival time and the field checks, whichever path read the object.
fn finish<'a>(
    dec: &Decoder,
    found: Found<'a>,
    topic_device: Option<&'a str>,
    arrival_ms: i64,
) -> Result<Decoded<'a>, DecodeError> {
    let Found {
        reading,
        seen,
        device,
        time,
        arrival,
    } = found;
    let mut out = Decoded::empty(0);
    out.reading = reading;
    finish_into(
        dec,
        &mut out,
        seen,
        device,
        time,
        arrival.and_then(Result::ok),
        topic_device,
        arrival_ms,
    )?;
    Ok(out)
}

/// The checks every payload gets, on what its object held (`out.reading` holds its values).
#[allow(clippy::too_many_arguments)]
#[inline]
fn finish_into<'a>(
    dec: &Decoder,
    out: &mut Decoded<'a>,
    seen: u64,
    device: Option<Cow<'a, str>>,
    time: Option<impl TimeFound>,
    arrival: Option<i64>,
    topic_device: Option<&'a str>,
    arrival_ms: i64,
) -> Result<(), DecodeError> {
    let device = if dec.device_from_topic && (topic_device.is_some() || dec.device_field.is_none()) {
        Cow::Borrowed(topic_device.ok_or(DecodeError::MissingTopicDevice)?)
    } else {
        device.ok_or_else(|| DecodeError::MissingDevice(dec.device_field.clone().unwrap_or_default()))?
    };
    out.reading.ts = match (&dec.time_field, time) {
        (None, _) => arrival_ms,
        (Some(_), Some(t)) => t.time()?,
        (Some(name), None) => return Err(DecodeError::MissingTime(name.clone())),
    };
    // a missing or broken arrival time is not a reason to lose the reading: the source's time
    // stands in for it
    out.arrival = match (&dec.arrival_field, arrival) {
        (Some(_), Some(t)) => Some(t),
        _ => None,
    };
    dec.check_fields(&mut out.reading, seen, &mut out.dropped)?;
    out.device = device;
    out.time_clamped = false;
    Ok(())
}

/// An event time as a path found it: the fast path's is always good (it declines what it
/// cannot convert), the serde path's may be an error. Generic so that the fast path's does not
/// travel as a `Result` (moving one through memory was 4 % of a run).
trait TimeFound {
    fn time(self) -> Result<i64, DecodeError>;
}

impl TimeFound for i64 {
    #[inline(always)]
    fn time(self) -> Result<i64, DecodeError> {
        Ok(self)
    }
}

impl TimeFound for Result<i64, DecodeError> {
    #[inline(always)]
    fn time(self) -> Result<i64, DecodeError> {
        self
    }
}

/// Finds the device id and stops reading there.
struct DeviceOnly<'d, 'de> {
    dec: &'d Decoder,
    found: &'d mut Option<Cow<'de, str>>,
}

const FOUND: &str = "plume: device found";

impl<'de> Visitor<'de> for DeviceOnly<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let wanted = self.dec.device_field.as_deref().unwrap_or("");
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == wanted {
                if let Ok(id) = map.next_value_seed(DeviceSeed)? {
                    *self.found = Some(id);
                    return Err(de::Error::custom(FOUND));
                }
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

pub(super) fn device_of<'a>(dec: &Decoder, payload: &'a [u8]) -> Option<Cow<'a, str>> {
    // `{"device":"` exactly, as producers write it: the id right after (a tenth of the
    // instructions of a router's scan went to matching the key token by token)
    let after_prefix = dec
        .device_prefix
        .as_deref()
        .filter(|prefix| starts_with_bytes(payload, prefix))
        .map(|prefix| plain_id_at(payload, prefix.len()));
    let id = match after_prefix {
        Some(id) => id,
        // (a device key JSON would escape has no prefix, and no fast path)
        None => dec
            .device_prefix
            .as_ref()
            .and(dec.device_field.as_deref())
            .and_then(|key| device_at_start(key, payload)),
    };
    if let Some(id) = id {
        return Some(Cow::Borrowed(id));
    }
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let _ = de.deserialize_map(DeviceOnly { dec, found: &mut found });
    found
}

/// The fast path of [`device_of`], for the way producers write readings: the object starts with
/// the device key and its value is a string without escapes (`{"device":"dev-1",…`, any JSON
/// whitespace between the tokens). Anything else (another first key, an escape, a number, a
/// control character, invalid UTF-8) gives `None` and the full scan decides. The value found
/// is the one the full scan and [`decode`] find: the first device key's, unescaped. `key` must
/// need no escaping in JSON (checked once, in `Decoder::new`: see `Decoder::device_prefix`).
#[inline]
fn device_at_start<'a>(key: &str, payload: &'a [u8]) -> Option<&'a str> {
    #[inline]
    fn skip_ws(p: &[u8], mut i: usize) -> usize {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = p.get(i) {
            i += 1;
        }
        i
    }
    let key = key.as_bytes();
    let mut i = skip_ws(payload, 0);
    if payload.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(payload, i + 1);
    // (compared inline: the key is short, and a `memcmp` call per line per router cost 2 % of
    // a run)
    let same_key = payload
        .get(i + 1..i + 1 + key.len())
        .is_some_and(|k| crate::decode::same_bytes(k, key));
    if payload.get(i) != Some(&b'"') || !same_key {
        return None;
    }
    i += 1 + key.len();
    if payload.get(i) != Some(&b'"') {
        return None;
    }
    i = skip_ws(payload, i + 1);
    if payload.get(i) != Some(&b':') {
        return None;
    }
    i = skip_ws(payload, i + 1);
    if payload.get(i) != Some(&b'"') {
        return None;
    }
    plain_id_at(payload, i + 1)
}

/// Whether `payload` starts with `prefix` (short: two overlapping words when it is 8 to 16
/// bytes long, as `{"device":"` is).
#[inline]
fn starts_with_bytes(payload: &[u8], prefix: &[u8]) -> bool {
    let n = prefix.len();
    if payload.len() < n {
        return false;
    }
    if (8..=16).contains(&n) {
        let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
        return word(payload, 0) == word(prefix, 0) && word(payload, n - 8) == word(prefix, n - 8);
    }
    crate::decode::same_bytes(&payload[..n], prefix)
}

/// The string value that starts at `start` (after its opening quote), if it is plain ASCII
/// without escapes or control characters and closed; else `None` (the full scan decides).
#[inline]
fn plain_id_at(payload: &[u8], start: usize) -> Option<&str> {
    // eight bytes at a time past plain ASCII (a `memchr` call cost more than a byte loop), then
    // a byte loop from the first byte that may be special
    let mut end = fast::past_plain_words(payload, start, true);
    loop {
        match *payload.get(end)? {
            b'"' => break,
            // (non-ASCII: the full scan decides)
            b'\\' | 0..0x20 | 0x80.. => return None,
            _ => end += 1,
        }
    }
    let id = &payload[start..end];
    debug_assert!(id.is_ascii());
    // SAFETY: every byte of `id` was checked to be ASCII just above, and ASCII is UTF-8 (a
    // `from_utf8` call per line per router was 3–4 % of a 2-shard run).
    Some(unsafe { std::str::from_utf8_unchecked(id) })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{
        DecodeSpec, DeviceIdSpec, FieldSpec, OutOfRange, OutsideTime, PlausibleTimeSpec, TimeSpec, TimeUnit,
    };

    fn decoder(unit: TimeUnit) -> Decoder {
        decoder_keyed(unit, "device")
    }

    /// [`decoder`] with another device key.
    fn decoder_keyed(unit: TimeUnit, device_key: &str) -> Decoder {
        let mut fields = BTreeMap::new();
        fields.insert(
            "co2".to_string(),
            FieldSpec {
                required: true,
                ..Default::default()
            },
        );
        fields.insert(
            "pm25".to_string(),
            FieldSpec {
                min: Some(0.0),
                max: Some(1000.0),
                required: true,
                ..Default::default()
            },
        );
        let spec = DecodeSpec {
            format: Default::default(),
            arrival: None,
            device: DeviceIdSpec {
                field: Some(device_key.to_string()),
                ..DeviceIdSpec::default()
            },
            time: Some(TimeSpec {
                field: Some("ts".into()),
                unit: Some(unit),
            }),
            fields,
            dead_letter_max_bytes: 64,
            max_payload_bytes: 1 << 20,
            max_device_id_bytes: 256,
            max_fields: 1000,
            plausible_time: PlausibleTimeSpec::default(),
        };
        Decoder::new(&spec, 2)
    }

    #[test]
    fn decodes_any_field_order_escapes_integers_and_exponents() {
        let dec = decoder(TimeUnit::Ms);
        let d = dec
            .decode(
                br#"{"co2": 612, "ts": -1, "device": "b\"q", "hum":1,"pm25": 1e2}"#,
                None,
                0,
            )
            .unwrap();
        assert_eq!(d.device, "b\"q");
        assert_eq!(d.reading.ts, -1);
        assert_eq!(d.reading.values.as_slice(), &[612.0, 100.0]);
        let d = dec
            .decode(
                "{\"device\":\"dev\\u00e9\",\"ts\":5,\"pm25\":1,\"co2\":2}".as_bytes(),
                None,
                0,
            )
            .unwrap();
        assert_eq!(d.device, "devé");
    }

    #[test]
    fn floats_are_correctly_rounded() {
        let dec = decoder(TimeUnit::Ms);
        let d = dec
            .decode(
                br#"{"device":"a","ts":1,"pm25":25.0000001,"co2":1000.0500000000001}"#,
                None,
                0,
            )
            .unwrap();
        assert_eq!(d.reading.values[1], "25.0000001".parse::<f64>().unwrap());
        assert_eq!(d.reading.values[0], "1000.0500000000001".parse::<f64>().unwrap());
    }

    /// The device id the full scan (serde_json, stopping at the device key) finds: what every
    /// fast path must agree with.
    fn full_scan<'a>(dec: &Decoder, payload: &'a [u8]) -> Option<Cow<'a, str>> {
        let mut found = None;
        let mut de = serde_json::Deserializer::from_slice(payload);
        let _ = de.deserialize_map(DeviceOnly { dec, found: &mut found });
        found
    }

    /// `device_of` finds what the full scan finds.
    fn assert_device_of_agrees(dec: &Decoder, payload: &[u8]) {
        let fast = dec.device_of(payload, None);
        assert_eq!(fast, full_scan(dec, payload), "{}", String::from_utf8_lossy(payload));
    }

    #[test]
    fn device_of_stops_at_the_device_and_agrees_with_decode() {
        let dec = decoder(TimeUnit::Ms);
        assert_eq!(
            dec.device_of(br#"{"ts":1,"device":"x\ty","pm25":}"#, None).as_deref(),
            Some("x\ty")
        );
        assert_eq!(dec.device_of(br#"{"ts":1}"#, None), None);
        // the fast path (device key first) and the full scan agree
        for payload in [
            &br#"{"device":"dev-1","ts":1}"#[..],
            br#" { "device" : "dev-1" ,"ts":1}"#,
            br#"{"device":"d\u00e9v","ts":1}"#,
            br#"{"device":"a\"b","ts":1}"#,
            br#"{"device":"","ts":1}"#,
            br#"{"device":12,"ts":1}"#,
            br#"{"device":"tab	in","ts":1}"#,
            br#"{"devices":"x","device":"y"}"#,
            br#"{"device":"x","device":"y"}"#,
            br#"{"device":"unterminated"#,
            "{\"device\":\"d\u{e9}v\",\"ts\":1}".as_bytes(),
            b"{\"device\":\"\xff\",\"ts\":1}",
        ] {
            assert_device_of_agrees(&dec, payload);
            if let Ok(d) = dec.decode(payload, None, 0) {
                assert_eq!(dec.device_of(payload, None), Some(d.device));
            }
        }
        assert_eq!(dec.device_of(b"not json", None), None);
        // `{"device":"` matched as a whole: payloads shorter than it, or that differ from it in
        // any one byte, take the token-by-token path or the full scan, and agree with it
        assert_eq!(dec.device_prefix.as_deref(), Some(&br#"{"device":""#[..]));
        let whole = br#"{"device":"dev-1","ts":1}"#;
        for cut in 0..whole.len() {
            assert_device_of_agrees(&dec, &whole[..cut]);
        }
        for at in 0..11 {
            let mut payload = whole.to_vec();
            payload[at] = b' ';
            assert_device_of_agrees(&dec, &payload);
        }
        // keys of other lengths (the prefix compared byte by byte), and one JSON would escape
        // (no prefix: the token-by-token path)
        for key in ["d", "device_identifier_of_the_sensor", "de\"v"] {
            let dec = decoder_keyed(TimeUnit::Ms, key);
            assert_eq!(dec.device_prefix.is_some(), !key.contains('"'), "{key}");
            let escaped = serde_json::to_string(key).unwrap();
            for payload in [
                format!(r#"{{{escaped}:"id-7","ts":1,"pm25":3}}"#),
                format!(r#"{{ {escaped} : "id-7","ts":1,"pm25":3}}"#),
                format!(r#"{{{escaped}:"id\"7","ts":1,"pm25":3}}"#),
                format!(r#"{{"ts":1,{escaped}:"id-7","pm25":3}}"#),
                format!(r#"{{{escaped}:"id-7""#),
            ] {
                assert_device_of_agrees(&dec, payload.as_bytes());
                let expected = full_scan(&dec, payload.as_bytes());
                let whole = serde_json::from_str::<serde_json::Value>(&payload).ok();
                if let Some(id) = whole.as_ref().and_then(|v| v[key].as_str()) {
                    assert_eq!(expected.as_deref(), Some(id), "{payload}");
                }
            }
        }
        // ids read eight bytes at a time: an escape, a tab, non-ASCII or the end of the input
        // at every position of a 20-byte id
        let id = b"dev-0123456789abcdef";
        for at in 0..=id.len() {
            for special in [&b"\\\""[..], b"\t", "\u{e9}".as_bytes(), b"\xff", b"\\u0041", b""] {
                let mut payload = br#"{"device":""#.to_vec();
                payload.extend_from_slice(&id[..at]);
                payload.extend_from_slice(special);
                payload.extend_from_slice(&id[at..]);
                for tail in [&br#"","ts":1,"pm25":1,"co2":2}"#[..], b""] {
                    let mut payload = payload.clone();
                    payload.extend_from_slice(tail);
                    assert_device_of_agrees(&dec, &payload);
                    let found = full_scan(&dec, &payload);
                    let fast = device_at_start("device", &payload);
                    if let Some(fast) = fast {
                        assert_eq!(Some(fast), found.as_deref(), "{}", String::from_utf8_lossy(&payload));
                        assert!(
                            special.is_empty() && !tail.is_empty(),
                            "{}",
                            String::from_utf8_lossy(&payload)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_payloads_say_why() {
        let dec = decoder(TimeUnit::Ms);
        let err = |p: &str| dec.decode(p.as_bytes(), None, 0).unwrap_err().to_string();
        assert!(err("{\"device\":\"a\",\"ts\":1,\"pm25\":1").contains("not valid JSON"));
        assert!(err(r#"{"ts":1,"pm25":1,"co2":1}"#).contains("no device id"));
        assert!(err(r#"{"device":"a","pm25":1,"co2":1}"#).contains("no event time"));
        assert!(err(r#"{"device":"a","ts":1,"co2":1}"#).contains("required field `pm25`"));
        assert!(err(r#"{"device":"a","ts":1,"pm25":"high","co2":1}"#).contains("should be a number"));
        assert!(err(r#"{"device":"a","ts":"yesterday","pm25":1,"co2":1}"#).contains("event time `ts`"));
        assert!(err(r#"{"device":"","ts":1,"pm25":1,"co2":1}"#).contains("empty"));
        assert!(err(r#"[1,2]"#).contains("not valid JSON"));
    }

    #[test]
    fn out_of_range_is_flagged_not_silently_dropped() {
        let dec = decoder(TimeUnit::Ms);
        let d = dec
            .decode(br#"{"device":"a","ts":1,"pm25":5000,"co2":1}"#, None, 0)
            .unwrap();
        assert!(d.reading.values[1].is_nan());
        assert_eq!(d.reading.out_of_range, 0b10);
        assert!(d.dropped.is_empty(), "flag: counted, no dead letter");
        // field_dead_letter: left out and reported, the rest of the reading kept
        let mut per_field = decoder(TimeUnit::Ms);
        per_field.fields[1].spec.out_of_range = OutOfRange::FieldDeadLetter;
        let d = per_field
            .decode(br#"{"device":"a","ts":1,"pm25":5000,"co2":700}"#, None, 0)
            .unwrap();
        assert!(d.reading.values[1].is_nan());
        assert_eq!(d.reading.values[0], 700.0);
        assert_eq!(d.dropped.as_slice(), &[(1, 5000.0)]);
        let reason = per_field.dropped_reason(1, 5000.0);
        assert!(
            reason.starts_with("field `pm25`: 5000 is outside its range"),
            "{reason}"
        );
        let mut strict = decoder(TimeUnit::Ms);
        strict.fields[1].spec.out_of_range = OutOfRange::DeadLetter;
        assert!(
            strict
                .decode(br#"{"device":"a","ts":1,"pm25":5000,"co2":1}"#, None, 0)
                .is_err()
        );
    }

    #[test]
    fn time_units() {
        let s = decoder(TimeUnit::S);
        assert_eq!(
            s.decode(br#"{"device":"a","ts":1.5,"pm25":1,"co2":1}"#, None, 0)
                .unwrap()
                .reading
                .ts,
            1500
        );
        let rfc = decoder(TimeUnit::Rfc3339);
        let d = rfc
            .decode(
                br#"{"device":"a","ts":"2026-01-01T00:00:00.123Z","pm25":1,"co2":1}"#,
                None,
                1_767_312_000_000,
            )
            .unwrap();
        assert_eq!(d.reading.ts, 1767225600123);
        let ns = decoder(TimeUnit::Ns);
        assert_eq!(
            ns.decode(
                br#"{"device":"a","ts":1767225600123456789,"pm25":1,"co2":1}"#,
                None,
                1_767_312_000_000
            )
            .unwrap()
            .reading
            .ts,
            1767225600123
        );
    }

    #[test]
    fn event_times_outside_the_plausible_window_are_refused_or_clamped() {
        const NOW: i64 = 1_767_312_000_000;
        let payload = |ts: i64| format!(r#"{{"device":"a","ts":{ts},"pm25":1,"co2":1}}"#);
        let dec = decoder(TimeUnit::Ms);
        // within an hour ahead, and any age behind (replays): believed
        assert_eq!(
            dec.decode(payload(NOW + 3_600_000).as_bytes(), None, NOW)
                .unwrap()
                .reading
                .ts,
            NOW + 3_600_000
        );
        assert_eq!(dec.decode(payload(0).as_bytes(), None, NOW).unwrap().reading.ts, 0);
        // a clock a day ahead (or in the year 2100): a dead letter that says both times
        let e = dec.decode(payload(NOW + 86_400_000).as_bytes(), None, NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            "event time 1767398400000 ms is ahead of the source's time 1767312000000 ms, \
             more than decode.plausible_time.ahead (3600000 ms)"
        );
        assert!(dec.decode(payload(4_102_444_800_000).as_bytes(), None, NOW).is_err());
        // with `behind`, a clock reset to 1970 is refused too
        let mut bounded = decoder(TimeUnit::Ms);
        bounded.behind_ms = Some(7 * 86_400_000);
        let e = bounded.decode(payload(5).as_bytes(), None, NOW).unwrap_err();
        assert!(e.to_string().contains("is behind the source's time"), "{e}");
        assert!(
            e.to_string().contains("decode.plausible_time.behind (604800000 ms)"),
            "{e}"
        );
        // `outside: clamp`: moved to the window's edge, and said so
        bounded.outside_time = OutsideTime::Clamp;
        let clamped = |ts: i64| {
            let text = payload(ts);
            let d = bounded.decode(text.as_bytes(), None, NOW).unwrap();
            (d.reading.ts, d.time_clamped)
        };
        assert_eq!(clamped(NOW + 86_400_000), (NOW + 3_600_000, true));
        assert_eq!(clamped(5), (NOW - 7 * 86_400_000, true));
        assert_eq!(clamped(NOW), (NOW, false));
        // no overflow at the ends of the range
        assert!(dec.decode(payload(i64::MAX).as_bytes(), None, i64::MAX - 1).is_ok());
        assert!(bounded.decode(payload(i64::MIN).as_bytes(), None, i64::MIN + 5).is_ok());
    }

    /// The fast path reads what the serde path reads, or declines: compared on hand-written
    /// payloads (all edge cases of numbers, strings, keys and syntax) and on mutations of them.
    #[test]
    fn the_fast_path_agrees_with_the_serde_path() {
        let mut dec = decoder(TimeUnit::Ms);
        dec.arrival_field = Some("received".into());
        let payloads: Vec<Vec<u8>> = [
            r#"{"device":"dev-1","ts":1767225600123,"pm25":12.3,"co2":456.7}"#,
            r#"{"device":"dev-000042","ts":1767225600123,"pm25":12.3,"co2":456.7,"voc":88.1,"temp":21.5,"hum":40.2}"#,
            r#" { "co2" : 1e2 , "ts" : -5 , "device" : "x" , "pm25" : 0.000123 , "s":"t", "b":true, "n":null, "f": false } "#,
            r#"{"device":"a","ts":1,"pm25":25.0000001,"co2":1000.0500000000001}"#,
            r#"{"device":"a","ts":1,"pm25":12345678901234567890123,"co2":-0}"#,
            r#"{"device":"a","ts":1,"pm25":1.7976931348623157e308,"co2":5e-324}"#,
            r#"{"device":"a","ts":1,"pm25":1e999,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":1,"co2":1,"x":1e999}"#,
            r#"{"device":"a","ts":1,"pm25":0.1e1,"co2":123456789012345678}"#,
            r#"{"device":"a","ts":1,"pm25":9007199254740993,"co2":0.30000000000000004}"#,
            r#"{"device":"a","ts":1,"pm25":2.2250738585072011e-308,"co2":1E+2}"#,
            r#"{"device":"a","ts":1,"pm25":00,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":1.,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":.5,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":-,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":1e,"co2":1}"#,
            r#"{"device":"a","ts":-0,"pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":1.5,"pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":"2026-01-01T00:00:00Z","pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":99999999999999999999,"pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":1,"received":2,"pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":1,"received":"soon","pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":null,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":"1","co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":true,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":1,"pm25":2,"co2":1}"#,
            r#"{"device":"a","device":"b","ts":1,"pm25":1,"co2":1}"#,
            r#"{"device":7,"ts":1,"pm25":1,"co2":1}"#,
            r#"{"device":"a\"b","ts":1,"pm25":1,"co2":1}"#,
            r#"{"device":"a","ts":1,"pm25":1,"co2":1,"nested":{"a":[1,2]}}"#,
            r#"{"device":"a","ts":1,"pm25":1,"co2":1,}"#,
            r#"{"device":"a","ts":1,"pm25":1,"co2":1}x"#,
            r#"{"device":"a","ts":1,"pm25":1,"co2":1"#,
            r#"{}"#,
            r#"[]"#,
            "{\"device\":\"d\u{e9}v\",\"ts\":1,\"pm25\":1,\"co2\":1}",
            "{\"device\":\"tab\tin\",\"ts\":1,\"pm25\":1,\"co2\":1}",
            // strings read eight bytes at a time: exactly 8, longer, and an escape, a control
            // character or the quote at different places in a word
            r#"{"device":"abcdefgh","ts":1,"pm25":1,"co2":1}"#,
            r#"{"device":"abcdefghijklmnopqrstu","ts":1,"pm25":1,"co2":1,"note":"0123456789abcdefghij"}"#,
            r#"{"device":"abcdefghijklmno\"p","ts":1,"pm25":1,"co2":1}"#,
            r#"{"device":"abcdefghi\\","ts":1,"pm25":1,"co2":1}"#,
            "{\"device\":\"abcdefghijk\tl\",\"ts\":1,\"pm25\":1,\"co2\":1}",
            "{\"device\":\"abcdefgh\u{1f}\",\"ts\":1,\"pm25\":1,\"co2\":1}",
            "{\"device\":\"abcdefg\u{7f}x\",\"ts\":1,\"pm25\":1,\"co2\":1}",
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let agree = |payload: &[u8]| {
            let mut reading = Reading::new(0, dec.slots);
            let fast = fast::decode(&dec, payload, &mut reading, &mut Default::default()).map(|found| {
                let mut out = Decoded::empty(0);
                out.reading = reading;
                finish_fast(&dec, found, None, 0, &mut out).map(|()| out)
            });
            let serde = decode_serde(&dec, payload, None, 0);
            if let Some(fast) = fast {
                assert_eq!(bits(&fast), bits(&serde), "{}", String::from_utf8_lossy(payload));
                true
            } else {
                false
            }
        };
        let mut taken = 0;
        for p in &payloads {
            taken += agree(p) as usize;
        }
        assert!(taken >= 12, "the fast path took {taken} of the hand-written payloads");
        assert!(
            agree(payloads[1].as_slice()),
            "a generated aq1 line takes the fast path"
        );
        for p in mutations(&payloads, 40_000) {
            agree(&p);
        }
    }

    /// A decode's result as comparable values (NaN, an absent value, is not equal to itself:
    /// the bits are compared).
    fn bits(r: &Result<Decoded, DecodeError>) -> Result<(String, i64, Option<i64>, u64, Vec<u64>), String> {
        r.as_ref()
            .map(|d| {
                (
                    d.device.to_string(),
                    d.reading.ts,
                    d.arrival,
                    d.reading.out_of_range,
                    d.reading.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                )
            })
            .map_err(|e| e.to_string())
    }

    /// `rounds` mutations of `payloads` (taken in turn): one to three bytes replaced, deleted or
    /// inserted, by a seeded xorshift.
    fn mutations(payloads: &[Vec<u8>], rounds: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
        };
        const BYTES: &[u8] = b"0123456789-+.eE\"\\{}[],: \tntf\x01";
        (0..rounds).map(move |round| {
            let mut p = payloads[round % payloads.len()].clone();
            for _ in 0..1 + next(3) {
                let len = p.len();
                let i = next(len.max(1));
                let byte = BYTES[next(BYTES.len())];
                match next(3) {
                    0 if len > 0 => p[i.min(len - 1)] = byte,
                    1 if len > 0 => {
                        p.remove(i.min(len - 1));
                    }
                    _ => p.insert(i.min(len), byte),
                }
            }
            p
        })
    }

    /// A decoder that has learned a key order from its first reading (see `fast::KeyOrder`)
    /// reads every payload as a decoder that has learned nothing: readings in the learned order
    /// and in others, with space around a colon, keys that share a prefix with a learned one or
    /// are escaped, too few bytes left for a word, entries given twice, and mutations of all of
    /// them. Each first reading also teaches exactly the keys expected.
    #[test]
    fn a_learned_key_order_changes_no_result() {
        // the readings' own time, well inside the plausible window
        const ARRIVAL: i64 = 1_767_225_600_000;
        let mut unlearned = decoder(TimeUnit::Ms);
        unlearned.arrival_field = Some("received".into());
        let aq1 =
            r#"{"device":"dev-000042","ts":1767225600123,"pm25":12.3,"co2":456.7,"voc":88.1,"temp":21.5,"hum":40.2}"#;
        let firsts: [(&str, &[&str]); 5] = [
            (aq1, &["device", "ts", "pm25", "co2", "voc", "temp", "hum"]),
            (
                r#"{"co2":1,"device":"x","pm25":2,"ts":5}"#,
                &["co2", "device", "pm25", "ts"],
            ),
            // up to the first key with space before its colon
            (r#"{ "device":"x", "ts":5 ,"pm25" :2,"co2":1}"#, &["device", "ts"]),
            // up to the first key too long for two words
            (
                r#"{"device":"x","a_long_key_here":1,"ts":5,"pm25":2,"co2":1}"#,
                &["device"],
            ),
            (
                r#"{"device":"x","ts":5,"received":7,"pm25":2,"co2":1,"":0}"#,
                &["device", "ts", "received", "pm25", "co2", ""],
            ),
        ];
        let payloads: Vec<Vec<u8>> = [
            aq1,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2,"voc":3,"temp":4,"hum":5}"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2}"#,
            r#"{"co2":2,"device":"d","pm25":1,"ts":1}"#,
            r#"{"device":"d","ts":1,"pm25":1,"pm25":9,"co2":2}"#,
            r#"{"device":"d","ts":1,"pm2":1,"pm25":1,"co2":2}"#,
            r#"{"device":"d","ts":1,"pm255":1,"pm25":1,"co2":2}"#,
            r#"{"device":"d","ts":1,"pm25" :1,"co2":2}"#,
            r#"{"device":"d","ts":1,"pm25": 1,"co2":2}"#,
            r#"{"device":"d","ts":1,"pm\u0032\u0035":1,"co2":2}"#,
            r#"{"device":"d","ts":1,"co2":2,"pm25":1}"#,
            r#"{"device":"d","ts":1,"co2":2,"pm25":1,"ts":1}"#,
            r#"{"device":"d","ts":1,"received":3,"pm25":1,"co2":2}"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2,"":0}"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2,"hum":5}"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2,"hum"}"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2,"hu"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2":2,"#,
            r#"{"device":"d","ts":1,"pm25":1,"co2"#,
            r#"{"device":"d""#,
            r#"{"device""#,
            r#"{"dev"#,
            r#"{}"#,
            r#"{"ts":1,"pm25":1,"co2":2}"#,
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let mut orders_learned_again = 0;
        for (first, keys) in firsts {
            let learned = unlearned.clone();
            assert!(learned.decode(first.as_bytes(), None, ARRIVAL).is_ok(), "{first}");
            let want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            assert_eq!(fast::learned_keys(&learned), Some(want.clone()), "learned from {first}");
            // the same, decoded by a caller that keeps count (it learns orders again)
            let relearning = learned.clone();
            let mut differing = DifferingKeyOrders::default();
            let mut read = 0;
            for p in payloads.iter().cloned().chain(mutations(&payloads, 20_000)) {
                let got = bits(&learned.decode(&p, None, ARRIVAL));
                let want_bits = bits(&unlearned.clone().decode(&p, None, ARRIVAL));
                assert_eq!(
                    got,
                    want_bits,
                    "{} after learning from {first}",
                    String::from_utf8_lossy(&p)
                );
                let mut out = Decoded::empty(relearning.slots);
                let relearned = relearning
                    .decode_into_learning(&p, None, ARRIVAL, &mut out, &mut differing)
                    .map(|()| out);
                assert_eq!(
                    bits(&relearned),
                    want_bits,
                    "{} after learning from {first} and again since",
                    String::from_utf8_lossy(&p)
                );
                read += got.is_ok() as usize;
            }
            // 15 of the hand-written payloads are readings, and some of their mutations are too
            assert!(read > 500, "{read} of the payloads were readings");
            // `decode` keeps no count: learned once, the later readings changed nothing
            assert_eq!(fast::learned_keys(&learned), Some(want), "learned from {first}");
            orders_learned_again += fast::orders_learned(&relearning) - 1;
        }
        // (so the comparison above covered orders learned from later payloads too)
        assert!(orders_learned_again > 0, "no order was learned again");
    }

    /// The aq1 keys, in the order of the readings after the first in the tests below.
    const AQ1_KEYS: [&str; 7] = ["device", "ts", "pm25", "co2", "voc", "temp", "hum"];

    /// An aq1 reading, its keys in aq1's order or with `ts` first and `co2` before `pm25`.
    fn aq1_reading(n: usize, moved: bool) -> String {
        let (device, ts, pm25, co2) = (format!("dev-{:06}", n % 50), 1_767_225_600_000 + n, 10.5, 400.25);
        if moved {
            format!(r#"{{"ts":{ts},"device":"{device}","co2":{co2},"pm25":{pm25},"voc":1.5,"temp":20.5,"hum":40.5}}"#)
        } else {
            format!(r#"{{"device":"{device}","ts":{ts},"pm25":{pm25},"co2":{co2},"voc":1.5,"temp":20.5,"hum":40.5}}"#)
        }
    }

    /// Decodes `reading` as a caller that keeps count does, checking the result against a
    /// decoder that has learned nothing.
    fn decode_counting(dec: &Decoder, reading: &str, differing: &mut DifferingKeyOrders) {
        const ARRIVAL: i64 = 1_767_225_600_000;
        let mut out = Decoded::empty(dec.slots);
        let got = dec
            .decode_into_learning(reading.as_bytes(), None, ARRIVAL, &mut out, differing)
            .map(|()| out);
        assert!(got.is_ok(), "{reading}: {:?}", got.err());
        assert_eq!(
            bits(&got),
            bits(&decoder(TimeUnit::Ms).decode(reading.as_bytes(), None, ARRIVAL)),
            "{reading}"
        );
    }

    /// A first reading whose keys came in another order than the readings after it: the
    /// decoder learns their order once that many of them in a row have been decoded by a caller
    /// that keeps count, and not before; `decode` (which keeps none) never learns again.
    #[test]
    fn a_decoder_learns_the_key_order_of_many_readings_in_a_row_in_another() {
        let moved: Vec<String> = ["ts", "device", "co2", "pm25", "voc", "temp", "hum"]
            .iter()
            .map(|k| k.to_string())
            .collect();
        let aq1: Vec<String> = AQ1_KEYS.iter().map(|k| k.to_string()).collect();
        let dec = decoder(TimeUnit::Ms);
        let mut differing = DifferingKeyOrders::default();
        decode_counting(&dec, &aq1_reading(0, true), &mut differing);
        assert_eq!(fast::learned_keys(&dec), Some(moved.clone()));
        // `decode` keeps no count
        for n in 1..=2 * fast::RELEARN_AFTER as usize {
            assert!(
                dec.decode(aq1_reading(n, false).as_bytes(), None, 1_767_225_600_000)
                    .is_ok()
            );
        }
        assert_eq!(
            fast::learned_keys(&dec),
            Some(moved.clone()),
            "learned again by `decode`"
        );
        for n in 1..fast::RELEARN_AFTER as usize {
            decode_counting(&dec, &aq1_reading(n, false), &mut differing);
        }
        assert_eq!(
            fast::learned_keys(&dec),
            Some(moved.clone()),
            "learned again after {} readings",
            fast::RELEARN_AFTER - 1
        );
        decode_counting(&dec, &aq1_reading(0, false), &mut differing);
        assert_eq!(fast::learned_keys(&dec), Some(aq1.clone()), "not learned again");
        assert_eq!(fast::orders_learned(&dec), 2);
        // a copy of the decoder starts from the order in use
        assert_eq!(fast::learned_keys(&dec.clone()), Some(aq1));
    }

    /// Two shapes of reading mixed, never as many of the other in a row: the first reading's
    /// order stays. Readings whose keys come in a new order every time: at most
    /// `MAX_KEY_ORDERS` orders are ever learned, and every result is the same.
    #[test]
    fn mixed_shapes_keep_the_first_order_and_orders_learned_are_bounded() {
        let aq1: Vec<String> = AQ1_KEYS.iter().map(|k| k.to_string()).collect();
        let dec = decoder(TimeUnit::Ms);
        let mut differing = DifferingKeyOrders::default();
        for n in 0..20 * fast::RELEARN_AFTER as usize {
            // one in RELEARN_AFTER in aq1's order, the others moved
            let moved = n % fast::RELEARN_AFTER as usize != 0;
            decode_counting(&dec, &aq1_reading(n, moved), &mut differing);
        }
        assert_eq!(fast::learned_keys(&dec), Some(aq1), "the first reading's order");
        assert_eq!(fast::orders_learned(&dec), 1);

        let dec = decoder(TimeUnit::Ms);
        let mut differing = DifferingKeyOrders::default();
        let mut keys = AQ1_KEYS;
        let mut state = 7u64;
        for n in 0..40 * fast::RELEARN_AFTER as usize {
            // a new order of the same keys each time (Fisher–Yates, xorshift)
            for i in (1..keys.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                keys.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let entries: Vec<String> = keys
                .iter()
                .map(|k| match *k {
                    "device" => format!(r#""device":"dev-{:06}""#, n % 50),
                    "ts" => format!(r#""ts":{}"#, 1_767_225_600_000 + n),
                    other => format!(r#""{other}":{}.5"#, n % 90),
                })
                .collect();
            decode_counting(&dec, &format!("{{{}}}", entries.join(",")), &mut differing);
        }
        assert_eq!(fast::orders_learned(&dec), fast::MAX_KEY_ORDERS);
    }

    #[test]
    fn objects_with_more_entries_than_max_fields_are_refused() {
        let mut dec = decoder(TimeUnit::Ms);
        dec.max_fields = 5;
        let ok = br#"{"device":"a","ts":1,"pm25":1,"co2":1,"x":0}"#;
        assert!(dec.decode(ok, None, 0).is_ok());
        let many = br#"{"device":"a","ts":1,"pm25":1,"co2":1,"x":0,"y":[1,2]}"#;
        assert_eq!(
            dec.decode(many, None, 0).unwrap_err(),
            DecodeError::TooManyFields { max: 5 }
        );
        // also when the payload's syntax breaks after the limit
        assert_eq!(
            dec.decode(br#"{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"#, None, 0)
                .unwrap_err(),
            DecodeError::TooManyFields { max: 5 }
        );
    }
}
