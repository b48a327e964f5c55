//! Strict durations for pipeline files: a whole number followed by a unit, optionally
//! several of them (`500ms`, `60s`, `5m`, `1h`, `7d`, `1m30s`). `5 minutes` or `60` are errors
//! that say what is expected.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(Duration);

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

impl DurationSpec {
    pub const fn from_millis(ms: u64) -> Self {
        DurationSpec(Duration::from_millis(ms))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        self.0.as_millis() as i64
    }

    /// Parses `500ms`, `60s`, `5m`, `1h`, `7d`, `1m30s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let explain = || {
            format!(
                "`{text}` is not a duration: write a whole number and a unit without spaces, \
                 such as 500ms, 60s, 5m, 1h or 7d (units: ms, s, m, h, d; combined: 1m30s)"
            )
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(explain());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{s}` has no unit: write it with one, such as {s}s or {s}ms"));
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut total: u64 = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(explain());
            }
            let number: u64 = s[start..i].parse().map_err(|_| explain())?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &s[unit_start..i];
            let factor = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, f)| *f)
                .ok_or_else(explain)?;
            total = number
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        }
        Ok(DurationSpec(Duration::from_millis(total)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return write!(f, "0s");
        }
        for (name, factor) in UNITS.iter().rev() {
            if ms >= *factor && (*name != "ms" || ms > 0) {
                let n = ms / factor;
                if n > 0 {
                    write!(f, "{n}{name}")?;
                    ms -= n * factor;
                }
            }
        }
        Ok(())
    }
}

/// In the JSON Schema a duration is a string with a pattern (editors check it as you type);
/// the loader's own parser says what is wrong with one that does not fit.
impl schemars::JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A whole number and a unit without spaces: `500ms`, `60s`, `5m`, `1h`, `7d`, or combined, `1m30s`.",
            "pattern": "^\\s*([0-9]+(ms|s|m|h|d))+\\s*$",
            "examples": ["60s"]
        })
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 60s, 5m, 1h or 7d")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                DurationSpec::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write it with one, such as {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write it with one, such as {v}s or {v}ms"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration: write a whole number and a unit, such as 500ms or 2s"
                )))
            }
        }
        // Asked for as text: a plain `60` in YAML arrives as the text `60` and gets the
        // "has no unit" message; other formats that only have numbers reach `visit_u64`.
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(DurationSpec::parse("500ms").unwrap().as_millis(), 500);
        assert_eq!(DurationSpec::parse("60s").unwrap().as_millis(), 60_000);
        assert_eq!(DurationSpec::parse("5m").unwrap().as_millis(), 300_000);
        assert_eq!(DurationSpec::parse("1h").unwrap().as_millis(), 3_600_000);
        assert_eq!(DurationSpec::parse("7d").unwrap().as_millis(), 7 * 86_400_000);
        assert_eq!(DurationSpec::parse("1m30s").unwrap().as_millis(), 90_000);
    }

    #[test]
    fn rejects_words_spaces_and_bare_numbers() {
        for bad in ["5 minutes", "5minutes", "s", "", "1.5s", "-1s", "10 s"] {
            let err = DurationSpec::parse(bad).unwrap_err();
            assert!(err.contains("not a duration"), "{bad}: {err}");
        }
        assert_eq!(
            DurationSpec::parse("60").unwrap_err(),
            "`60` has no unit: write it with one, such as 60s or 60ms"
        );
    }

    #[test]
    fn display_round_trips() {
        for text in ["500ms", "60s", "5m", "1h", "7d", "1m30s", "0s", "1d1h1m1s1ms"] {
            let d = DurationSpec::parse(text).unwrap();
            assert_eq!(DurationSpec::parse(&d.to_string()).unwrap(), d, "{text}");
        }
        assert_eq!(DurationSpec::parse("90s").unwrap().to_string(), "1m30s");
    }
}
