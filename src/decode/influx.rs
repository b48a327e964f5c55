//! InfluxDB line protocol payloads: one line per payload,
//! `measurement,tag=v,tag2=v field=1.0,other=2i 1700000000000000000`, parsed with the
//! `influxdb-line-protocol` crate (escapes, quoted strings, integer / unsigned / float / bool
//! values) and turned into a reading:
//! - the device id comes from the tag named in `decode.device.tag`, a (string or integer) field
//!   named in `decode.device.field`, or the MQTT topic's `{device}`;
//! - the event time is the line's timestamp in `decode.time.unit` (default `ns`, as influx
//!   writes it); a line without a timestamp gets the arrival time;
//! - declared fields are read by name; other fields and tags are ignored.

use std::borrow::Cow;

use influxdb_line_protocol::{EscapedStr, FieldValue, ParsedLine};

use super::{DecodeError, Decoded, Decoder, DroppedFields};
use crate::operators::Reading;
use crate::spec::FieldType;

/// Parses the one line of a payload, with reasons a person understands; at most `max_fields`
/// tags and fields together.
fn parse_one(payload: &[u8], max_fields: usize) -> Result<ParsedLine<'_>, DecodeError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| DecodeError::Influx(format!("the payload is not UTF-8 text ({e})")))?;
    let text = text.trim_end_matches(['\n', '\r']);
    let mut lines = influxdb_line_protocol::parse_lines(text);
    let line = match lines.next() {
        None => {
            return Err(DecodeError::Influx(
                "the payload holds no line (only blanks or comments)".into(),
            ));
        }
        Some(Err(e)) => return Err(DecodeError::Influx(explain(&e))),
        Some(Ok(line)) => line,
    };
    if lines.next().is_some() {
        return Err(DecodeError::Influx(
            "a payload holds exactly one line; this one holds several".into(),
        ));
    }
    let tags = line.series.tag_set.as_deref().unwrap_or_default();
    if tags.len() + line.field_set.len() > max_fields {
        return Err(DecodeError::TooManyFields { max: max_fields });
    }
    if let Some(key) = first_repeated(tags) {
        return Err(DecodeError::Influx(format!("tag `{key}` is given twice")));
    }
    if let Some(key) = first_repeated(&line.field_set) {
        return Err(DecodeError::Influx(format!("field `{key}` is given twice")));
    }
    Ok(line)
}

/// The first key that repeats an earlier one: pairwise for the few keys of a usual line, through
/// a hash set beyond that (linear in the keys of a hostile one).
fn first_repeated<'s, 'a, T>(pairs: &'s [(EscapedStr<'a>, T)]) -> Option<&'s EscapedStr<'a>> {
    if pairs.len() <= 16 {
        return pairs
            .iter()
            .enumerate()
            .find(|(i, (key, _))| pairs[..*i].iter().any(|(earlier, _)| earlier == key))
            .map(|(_, (key, _))| key);
    }
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    pairs.iter().map(|(key, _)| key).find(|key| !seen.insert(key.as_str()))
}

const SHAPE: &str = "`measurement[,tag=value…] field=value[,field=value…] [timestamp]`";

fn explain(e: &influxdb_line_protocol::Error) -> String {
    use influxdb_line_protocol::Error as E;
    match e {
        E::DuplicateTag { tag_key } => format!("tag `{tag_key}` is given twice"),
        E::MeasurementValueInvalid => format!("the line must start with a measurement name: {SHAPE}"),
        E::FieldSetMissing => format!("the line has no fields: {SHAPE}"),
        E::IntegerValueInvalid { value, .. } => format!("`{value}` is not a valid integer (integers end in `i`: 42i)"),
        E::UIntegerValueInvalid { value, .. } => {
            format!("`{value}` is not a valid unsigned integer (unsigned integers end in `u`: 42u)")
        }
        E::FloatValueInvalid { value, .. } => format!("`{value}` is not a valid number"),
        E::TimestampValueInvalid { value, .. } => format!("timestamp `{value}` is not a valid integer"),
        E::EndsWithBackslash => "a measurement, tag or field name ends with a backslash".to_string(),
        E::CannotParseEntireLine { trailing_content } => {
            format!("unexpected `{trailing_content}` after the fields and timestamp: {SHAPE}")
        }
        E::TagSetMalformed => {
            "the tags are malformed: write `,tag=value` pairs right after the measurement".to_string()
        }
        E::GenericParsingError { .. } => format!("expected {SHAPE}"),
        other => other.to_string(),
    }
}

fn escaped<'a>(s: &EscapedStr<'a>) -> Cow<'a, str> {
    match s {
        EscapedStr::SingleSlice(s) => Cow::Borrowed(s),
        EscapedStr::CopiedValue(s) => Cow::Owned(s.clone()),
    }
}

fn describe(value: &FieldValue<'_>) -> String {
    match value {
        FieldValue::I64(i) => format!("the integer {i}"),
        FieldValue::U64(u) => format!("the integer {u}"),
        FieldValue::F64(x) => format!("the number {x}"),
        FieldValue::String(s) => format!("the string {:?}", s.as_str()),
        FieldValue::Boolean(b) => format!("{b}"),
    }
}

/// The device id of a parsed line.
fn device<'a>(
    dec: &Decoder,
    line: &ParsedLine<'a>,
    topic_device: Option<&'a str>,
) -> Result<Cow<'a, str>, DecodeError> {
    if dec.device_from_topic && (topic_device.is_some() || dec.device_tag.is_none()) {
        return topic_device.map(Cow::Borrowed).ok_or(DecodeError::MissingTopicDevice);
    }
    if let Some(tag) = &dec.device_tag {
        let value = line
            .series
            .tag_set
            .iter()
            .flatten()
            .find(|(k, _)| k.as_str() == tag)
            .map(|(_, v)| escaped(v));
        return value.ok_or_else(|| DecodeError::MissingTag(tag.clone()));
    }
    let field = dec.device_field.as_deref().unwrap_or("device");
    match line.field_set.iter().find(|(k, _)| k.as_str() == field).map(|(_, v)| v) {
        Some(FieldValue::String(s)) => Ok(escaped(s)),
        Some(FieldValue::I64(i)) => Ok(Cow::Owned(i.to_string())),
        Some(FieldValue::U64(u)) => Ok(Cow::Owned(u.to_string())),
        Some(other) => Err(DecodeError::WrongType {
            field: field.to_string(),
            expected: "a string",
            found: describe(other),
        }),
        None => Err(DecodeError::MissingDevice(field.to_string())),
    }
}

pub(super) fn decode<'a>(
    dec: &Decoder,
    payload: &'a [u8],
    topic_device: Option<&'a str>,
    arrival_ms: i64,
) -> Result<Decoded<'a>, DecodeError> {
    let line = parse_one(payload, dec.max_fields)?;
    let device = device(dec, &line, topic_device)?;
    let ts = match line.timestamp {
        Some(ts) => dec.time_from_number("timestamp", ts as f64, Some(ts))?,
        None => arrival_ms,
    };
    let mut reading = Reading::new(ts, dec.slots);
    let mut seen = 0u64;
    for (key, value) in &line.field_set {
        let Some(field) = dec.fields.iter().find(|f| f.name == key.as_str()) else {
            continue;
        };
        let x = match (value, field.spec.kind) {
            (FieldValue::F64(x), FieldType::Float | FieldType::Int) => *x,
            (FieldValue::I64(i), FieldType::Float | FieldType::Int) => *i as f64,
            (FieldValue::U64(u), FieldType::Float | FieldType::Int) => *u as f64,
            (FieldValue::Boolean(b), FieldType::Bool) => f64::from(u8::from(*b)),
            (other, kind) => {
                return Err(DecodeError::WrongType {
                    field: field.name.clone(),
                    expected: match kind {
                        FieldType::Float => "a number",
                        FieldType::Int => "an integer",
                        FieldType::Bool => "true or false",
                    },
                    found: describe(other),
                });
            }
        };
        reading.values[field.slot] = x;
        seen |= 1u64 << field.slot;
    }
    let mut dropped = DroppedFields::new();
    dec.check_fields(&mut reading, seen, &mut dropped)?;
    Ok(Decoded {
        device,
        reading,
        time_clamped: false,
        arrival: None,
        dropped,
    })
}

/// Only the device id (for routing), or `None` if the line has none or does not parse.
pub(super) fn device_of<'a>(dec: &Decoder, payload: &'a [u8]) -> Option<Cow<'a, str>> {
    let line = parse_one(payload, dec.max_fields).ok()?;
    device(dec, &line, None).ok().filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{
        DecodeFormat, DecodeSpec, DeviceIdSpec, FieldSpec, OutOfRange, PlausibleTimeSpec, TimeSpec, TimeUnit,
    };

    fn decoder(device: DeviceIdSpec, time: Option<TimeSpec>) -> Decoder {
        let mut fields = BTreeMap::new();
        fields.insert("co2".to_string(), FieldSpec::default());
        fields.insert(
            "pm25".to_string(),
            FieldSpec {
                required: true,
                ..FieldSpec::default()
            },
        );
        fields.insert(
            "window_open".to_string(),
            FieldSpec {
                kind: FieldType::Bool,
                ..FieldSpec::default()
            },
        );
        let spec = DecodeSpec {
            format: DecodeFormat::Influx,
            arrival: None,
            device,
            time,
            fields,
            dead_letter_max_bytes: 64,
            max_payload_bytes: 1 << 20,
            max_device_id_bytes: 256,
            max_fields: 1000,
            plausible_time: PlausibleTimeSpec::default(),
        };
        Decoder::new(&spec, 3)
    }

    /// The source's time in these tests: a day after the lines' timestamps.
    const NOW: i64 = 1_767_312_000_000;

    fn by_tag() -> Decoder {
        decoder(
            DeviceIdSpec {
                field: None,
                tag: Some("room".into()),
                topic: false,
            },
            None,
        )
    }

    #[test]
    fn reads_tags_fields_and_the_nanosecond_timestamp() {
        let dec = by_tag();
        let d = dec
            .decode(
                b"air,site=zurich,room=b12 pm25=12.5,co2=612i,window_open=t,label=\"x\" 1767225600123456789\n",
                None,
                NOW,
            )
            .unwrap();
        assert_eq!(d.device, "b12");
        assert_eq!(d.reading.ts, 1_767_225_600_123);
        assert_eq!(d.reading.values.as_slice(), &[612.0, 12.5, 1.0]);
    }

    #[test]
    fn a_value_that_is_not_finite_is_never_kept() {
        // `1e999` parses as +inf: kept, it would make every later average and baseline inf
        let mut dec = by_tag();
        let d = dec
            .decode(b"air,room=b12 pm25=1e999,co2=612i 1767225600123456789", None, NOW)
            .unwrap();
        assert!(d.reading.values[1].is_nan(), "dropped: {:?}", d.reading.values);
        assert_eq!(d.reading.out_of_range, 0b10, "and counted as out of range");
        assert_eq!(d.reading.values[0], 612.0, "the other fields are used");
        dec.fields[1].spec.out_of_range = OutOfRange::Keep;
        assert!(dec.decode(b"air,room=b12 pm25=-1e999", None, 0).unwrap().reading.values[1].is_nan());
        dec.fields[1].spec.out_of_range = OutOfRange::DeadLetter;
        let e = dec.decode(b"air,room=b12 pm25=1e999", None, 0).unwrap_err();
        assert_eq!(e.to_string(), "field `pm25` is inf, not a finite number");
    }

    #[test]
    fn escapes_in_names_and_values() {
        let dec = by_tag();
        let d = dec.decode(br"air\,q,room=b\ 12\,west pm25=1", None, 0).unwrap();
        assert_eq!(d.device, "b 12,west");
        let dec = decoder(
            DeviceIdSpec {
                field: Some("id".into()),
                tag: None,
                topic: false,
            },
            None,
        );
        let d = dec.decode(br#"air id="dev \"7\"",pm25=2u"#, None, 0).unwrap();
        assert_eq!(d.device, "dev \"7\"");
        assert_eq!(d.reading.values[1], 2.0);
    }

    #[test]
    fn without_timestamp_the_arrival_time_and_units_per_decode_time() {
        let dec = by_tag();
        assert_eq!(dec.decode(b"air,room=a pm25=1", None, 42).unwrap().reading.ts, 42);
        let seconds = decoder(
            DeviceIdSpec {
                field: None,
                tag: Some("room".into()),
                topic: false,
            },
            Some(TimeSpec {
                field: None,
                unit: Some(TimeUnit::S),
            }),
        );
        assert_eq!(
            seconds
                .decode(b"air,room=a pm25=1 1767225600", None, NOW)
                .unwrap()
                .reading
                .ts,
            1_767_225_600_000
        );
    }

    #[test]
    fn device_from_the_topic_and_device_of_agrees() {
        let dec = decoder(
            DeviceIdSpec {
                field: None,
                tag: None,
                topic: true,
            },
            None,
        );
        assert_eq!(dec.decode(b"air pm25=1", Some("t-1"), 0).unwrap().device, "t-1");
        let dec = by_tag();
        assert_eq!(dec.device_of(b"air,room=r9 pm25=1 1", None).as_deref(), Some("r9"));
        assert_eq!(dec.device_of(b"air pm25=1", None), None);
        assert_eq!(dec.device_of(b"garbage", None), None);
    }

    #[test]
    fn repeated_keys_are_found_among_many_and_entries_are_bounded() {
        let dec = by_tag();
        // past the pairwise check's 16 keys: the hash-set path
        let mut line = String::from("air,room=a ");
        for i in 0..40 {
            line.push_str(&format!("f{i}=1,"));
        }
        line.push_str("pm25=1,f17=2");
        let e = dec.decode(line.as_bytes(), None, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not valid influx line protocol: field `f17` is given twice"
        );
        let tags: String = (0..20).map(|i| format!(",t{i}=x")).collect();
        let e = dec
            .decode(format!("air,room=a{tags},t3=y pm25=1").as_bytes(), None, 0)
            .unwrap_err();
        assert!(e.to_string().contains("tag `t3` is given twice"), "{e}");
        // tags and fields count together against max_fields
        let mut small = by_tag();
        small.max_fields = 4;
        assert!(small.decode(b"air,room=a,x=1 pm25=1,co2=2", None, 0).is_ok());
        let e = small.decode(b"air,room=a,x=1,y=2 pm25=1,co2=2", None, 0).unwrap_err();
        assert_eq!(e, DecodeError::TooManyFields { max: 4 });
        assert_eq!(
            e.to_string(),
            "the payload holds more than decode.max_fields (4) entries: not decoded"
        );
        assert_eq!(small.device_of(b"air,room=a,x=1,y=2 pm25=1,co2=2", None), None);
    }

    #[test]
    fn bad_lines_say_why() {
        let dec = by_tag();
        let err = |p: &[u8]| dec.decode(p, None, 0).unwrap_err().to_string();
        assert!(
            err(b"air,room=a").contains("expected `measurement"),
            "{}",
            err(b"air,room=a")
        );
        assert!(
            err(b"air,room=a pm25=abc").contains("not valid influx line protocol"),
            "{}",
            err(b"air,room=a pm25=abc")
        );
        assert!(err(b"air,room=a,room=b pm25=1").contains("tag `room` is given twice"));
        assert!(err(b"air,room=a pm25=1,pm25=2").contains("field `pm25` is given twice"));
        assert!(
            err(b"air,room=a pm25=1 12x").contains("not valid influx"),
            "{}",
            err(b"air,room=a pm25=1 12x")
        );
        assert!(err(b"air,site=z pm25=1").contains("no tag `room`"));
        assert!(err(b"air,room=a co2=1").contains("required field `pm25`"));
        assert!(err(b"air,room=a pm25=\"high\"").contains("should be a number, found the string \"high\""));
        assert!(err(b"air,room=a window_open=1,pm25=1").contains("should be true or false"));
        assert!(err(b"air,room=a pm25=1\nair,room=b pm25=2").contains("exactly one line"));
        assert!(err(b"\xff\xfe").contains("not UTF-8"));
        assert!(err(b"# only a comment").contains("no line"));
        assert!(err(b"air,room= pm25=1").contains("influx"));
    }
}
