//! A serde [`Deserializer`](serde::Deserializer) over the positioned YAML tree, so that every
//! error carries the line and column of the node at fault and says what was expected in words.
//!
//! # Layout
//! - [`from_node`]: deserialize any `T` from a node.
//! - [`Error`]: a message and (once known) a position. Unknown keys are reported at the key
//!   itself with the nearest valid key ([`suggest`]) and the list of valid keys; unknown enum
//!   variants likewise (`unknown operator `windw`; did you mean `window`?`).
//! - `NodeDeserializer`, `KeyDeserializer`, `Entries`, `Items`, `Variant`: the serde plumbing.
//!
//! Structs are maps; enums are externally tagged (a single-key map, or a plain string for a unit
//! variant); a `null` (or empty) value reads as an empty map or list where one is expected, so
//! `- stdin:` and `- stdout` need no `{}`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};

use super::yaml::{Entry, Node, Position, Resolved, Scalar, Style, Value};

/// What went wrong, before it is written as a sentence.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Message(String),
    UnknownKey {
        key: String,
        expected: &'static [&'static str],
    },
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
        enum_name: Option<&'static str>,
    },
    MissingKey {
        key: &'static str,
    },
}

/// A deserialization error with the position of the node at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    position: Option<Position>,
    kind: Kind,
    /// `in window`, `at the top level`: where an unknown or missing key was looked for.
    within: Option<String>,
    /// The key whose value is at fault, for unknown enum values (`for `unit``).
    key: Option<String>,
}

impl Error {
    fn new(position: Position, message: impl Into<String>) -> Self {
        Error {
            position: Some(position),
            kind: Kind::Message(message.into()),
            within: None,
            key: None,
        }
    }

    /// Where the error is, if known.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The sentence for people.
    pub fn message(&self) -> String {
        let within = self.within.as_deref().map(|w| format!(" {w}")).unwrap_or_default();
        match &self.kind {
            Kind::Message(m) => m.clone(),
            Kind::MissingKey { key } => format!("missing required key `{key}`{within}"),
            Kind::UnknownKey { key, expected } => unknown_key_message(key, &within, expected),
            Kind::UnknownVariant {
                variant,
                expected,
                enum_name,
            } => {
                let (singular, plural) = enum_name.and_then(enum_words).unwrap_or(("value", "values"));
                let mut m = format!("unknown {singular} `{variant}`");
                if singular == "value" {
                    if let Some(key) = &self.key {
                        m.push_str(&format!(" for `{key}`"));
                    }
                }
                if let Some(s) = suggest(variant, expected.iter().copied()) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m.push_str(&format!(" (valid {plural}: {})", expected.join(", ")));
                m
            }
        }
    }

    fn or_position(mut self, position: Position) -> Self {
        if self.position.is_none() {
            self.position = Some(position);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{p}: {}", self.message()),
            None => f.write_str(&self.message()),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            position: None,
            kind: Kind::Message(msg.to_string()),
            within: None,
            key: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Error {
            position: None,
            kind: Kind::UnknownKey {
                key: field.to_string(),
                expected,
            },
            within: None,
            key: None,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error {
            position: None,
            kind: Kind::UnknownVariant {
                variant: variant.to_string(),
                expected,
                enum_name: None,
            },
            within: None,
            key: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Error {
            position: None,
            kind: Kind::MissingKey { key: field },
            within: None,
            key: None,
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Error::custom(format!("key `{field}` is given twice"))
    }
}

/// `unknown key `x` in window; did you mean `y`? (valid keys: …)`. `within` starts with a space
/// (` in window`, ` at the top level`) or is empty.
pub fn unknown_key_message(key: &str, within: &str, expected: &[&str]) -> String {
    let mut m = format!("unknown key `{key}`{within}");
    if let Some(s) = suggest(key, expected.iter().copied()) {
        m.push_str(&format!("; did you mean `{s}`?"));
    }
    if expected.is_empty() {
        m.push_str(" (it takes no keys)");
    } else {
        m.push_str(&format!(" (valid keys: {})", expected.join(", ")));
    }
    m
}

/// Words for the externally tagged enums whose variants are kinds of things.
pub(crate) fn enum_words(enum_name: &str) -> Option<(&'static str, &'static str)> {
    Some(match enum_name {
        "OperatorSpec" => ("operator", "operators"),
        "SourceSpec" => ("source", "sources"),
        "SinkSpec" => ("sink", "sinks"),
        "PushSinkSpec" => ("push service", "push services"),
        _ => return None,
    })
}

/// The candidate closest to `word` (Jaro-Winkler, case-insensitive), if it is close enough to
/// be what was meant.
pub fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let mut best: Option<(&str, f64)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&lower, &candidate.to_lowercase());
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((candidate, score));
        }
    }
    best.filter(|(c, score)| *score >= 0.8 && *c != word).map(|(c, _)| c)
}

/// Deserializes a `T` from `node`. `key` names the key the node is the value of (used in
/// messages: `unknown key `x` in window`); `None` is the top level of the file.
pub fn from_node<'a, T: de::Deserialize<'a>>(node: &'a Node, key: Option<&'a str>) -> Result<T, Error> {
    T::deserialize(NodeDeserializer {
        node,
        position: node.position,
        key,
    })
}

static NULL: Node = Node {
    position: Position { line: 0, column: 0 },
    value: Value::Scalar(Scalar {
        text: String::new(),
        style: Style::Plain,
    }),
};

struct NodeDeserializer<'a> {
    node: &'a Node,
    /// Usually `node.position`; for the implicit empty value of `- stdin`, the variant's position.
    position: Position,
    key: Option<&'a str>,
}

pub(crate) fn quoted_number_hint(scalar: &Scalar) -> &'static str {
    if scalar.style == Style::Quoted && scalar.text.trim().parse::<f64>().is_ok() {
        " (remove the quotes to make it a number)"
    } else {
        ""
    }
}

impl<'a> NodeDeserializer<'a> {
    fn found(&self) -> String {
        self.node.describe()
    }

    fn expected(&self, what: &str) -> Error {
        let hint = self.node.as_scalar().map(quoted_number_hint).unwrap_or("");
        Error::new(self.position, format!("expected {what}, found {}{hint}", self.found()))
    }

    fn plain(&self) -> Option<Resolved<'a>> {
        self.node.as_scalar().map(Scalar::resolve)
    }

    fn integer(&self, min: i128, max: i128) -> Result<i128, Error> {
        let what = if min == 0 {
            "a whole number (0 or more)".to_string()
        } else {
            "a whole number".to_string()
        };
        match self.plain() {
            Some(Resolved::Integer(i)) if (min..=max).contains(&i) => Ok(i),
            Some(Resolved::Integer(i)) if min == 0 && i < 0 => Err(self.expected(&what)),
            Some(Resolved::Integer(i)) => Err(Error::new(
                self.position,
                format!("expected a whole number from {min} to {max}, found {i}"),
            )),
            _ => Err(self.expected(&what)),
        }
    }

    fn float(&self) -> Result<f64, Error> {
        match self.plain() {
            Some(Resolved::Integer(i)) => Ok(i as f64),
            Some(Resolved::Float(x)) => Ok(x),
            _ => Err(self.expected("a number")),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.plain(), Some(Resolved::Null))
    }

    fn with_position<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| e.or_position(self.position))
    }

    fn entries(&self) -> Option<&'a [Entry]> {
        match &self.node.value {
            Value::Mapping(entries) => Some(entries),
            _ if self.is_null() => Some(&[]),
            _ => None,
        }
    }

    fn items(&self) -> Option<&'a [Node]> {
        match &self.node.value {
            Value::Sequence(items) => Some(items),
            _ if self.is_null() => Some(&[]),
            _ => None,
        }
    }
}

macro_rules! integer_methods {
    ($($method:ident => $ty:ty, $visit:ident, $as:ty;)*) => {
        $(
            fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
                let i = self.integer(<$ty>::MIN as i128, <$ty>::MAX as i128)?;
                self.with_position(visitor.$visit(i as $as))
            }
        )*
    };
}

impl<'a> de::Deserializer<'a> for NodeDeserializer<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.value {
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Integer(i) => {
                    if let Ok(u) = u64::try_from(i) {
                        visitor.visit_u64(u)
                    } else if let Ok(v) = i64::try_from(i) {
                        visitor.visit_i64(v)
                    } else {
                        visitor.visit_f64(i as f64)
                    }
                }
                Resolved::Float(x) => visitor.visit_f64(x),
                Resolved::Text(t) => visitor.visit_borrowed_str(t),
            },
            Value::Sequence(items) => visitor.visit_seq(Items {
                items: items.iter(),
                key: self.key,
            }),
            Value::Mapping(entries) => visitor.visit_map(Entries::new(entries, self.key)),
        };
        self.with_position(result)
    }

    integer_methods! {
        deserialize_i8 => i8, visit_i64, i64;
        deserialize_i16 => i16, visit_i64, i64;
        deserialize_i32 => i32, visit_i64, i64;
        deserialize_i64 => i64, visit_i64, i64;
        deserialize_u8 => u8, visit_u64, u64;
        deserialize_u16 => u16, visit_u64, u64;
        deserialize_u32 => u32, visit_u64, u64;
        deserialize_u64 => u64, visit_u64, u64;
    }

    fn deserialize_i128<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let i = self.integer(i128::MIN, i128::MAX)?;
        self.with_position(visitor.visit_i128(i))
    }

    fn deserialize_u128<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let i = self.integer(0, i128::MAX)?;
        self.with_position(visitor.visit_u128(i as u128))
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let x = self.float()?;
        self.with_position(visitor.visit_f32(x as f32))
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let x = self.float()?;
        self.with_position(visitor.visit_f64(x))
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.plain() {
            Some(Resolved::Bool(b)) => self.with_position(visitor.visit_bool(b)),
            _ => Err(self.expected("true or false")),
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.as_text() {
            Some(t) if t.chars().count() == 1 => {
                self.with_position(visitor.visit_char(t.chars().next().unwrap_or(' ')))
            }
            _ => Err(self.expected("a single character")),
        }
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.as_scalar() {
            Some(s) if !self.is_null() => self.with_position(visitor.visit_borrowed_str(&s.text)),
            _ => Err(self.expected("text")),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let position = self.position;
        let result = if self.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        };
        result.map_err(|e| e.or_position(position))
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.is_null() {
            self.with_position(visitor.visit_unit())
        } else {
            Err(self.expected("nothing (null)"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        let position = self.position;
        visitor.visit_newtype_struct(self).map_err(|e| e.or_position(position))
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.items() {
            Some(items) => self.with_position(visitor.visit_seq(Items {
                items: items.iter(),
                key: self.key,
            })),
            None => Err(self.expected("a list (`[a, b]`, or one `- item` per line)")),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.entries() {
            Some(entries) => self.with_position(visitor.visit_map(Entries::new(entries, self.key))),
            None => Err(self.expected("a map of `key: value`")),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Some(entries) = self.entries() else {
            return Err(self.expected("a map of `key: value`"));
        };
        let within = match self.key {
            Some(key) => format!("in {key}"),
            None => "at the top level".to_string(),
        };
        visitor.visit_map(Entries::new(entries, self.key)).map_err(|mut e| {
            if e.within.is_none() && matches!(e.kind, Kind::UnknownKey { .. } | Kind::MissingKey { .. }) {
                e.within = Some(within);
            }
            e.or_position(self.position)
        })
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (variant, content) = match &self.node.value {
            Value::Scalar(_) if !self.is_null() => (self.node, None),
            Value::Mapping(entries) if entries.len() == 1 => (&entries[0].key, Some(&entries[0].value)),
            _ => {
                let message = match enum_words(name) {
                    Some((singular, _)) => format!(
                        "expected one {singular} kind as the only key (one of: {}), found {}",
                        variants.join(", "),
                        describe_keys(self.node)
                    ),
                    None => format!("expected one of: {}; found {}", variants.join(", "), self.found()),
                };
                return Err(Error::new(self.position, message));
            }
        };
        let key = self.key;
        visitor.visit_enum(Variant { variant, content }).map_err(|mut e| {
            if let Kind::UnknownVariant { enum_name, .. } = &mut e.kind {
                if enum_name.is_none() {
                    *enum_name = Some(name);
                    e.key = key.map(str::to_string);
                }
            }
            e.or_position(variant.position)
        })
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

pub(crate) fn describe_keys(node: &Node) -> String {
    match node.as_mapping() {
        Some([]) => "an empty map".to_string(),
        Some(entries) => {
            let keys: Vec<String> = entries
                .iter()
                .map(|e| format!("`{}`", e.key.as_text().unwrap_or_default()))
                .collect();
            format!("{} keys: {}", keys.len(), keys.join(", "))
        }
        None => node.describe(),
    }
}

/// A map key: always text.
struct KeyDeserializer<'de> {
    node: &'de Node,
}

impl<'de> de::Deserializer<'de> for KeyDeserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.node.as_text().unwrap_or_default();
        visitor
            .visit_borrowed_str(text)
            .map_err(|e: Error| e.or_position(self.node.position))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The entries of a map; a key given twice is read once (the duplicate is reported separately).
struct Entries<'a> {
    entries: &'a [Entry],
    next: usize,
    value: Option<&'a Node>,
    value_key: Option<&'a str>,
    parent_key: Option<&'a str>,
}

impl<'a> Entries<'a> {
    fn new(entries: &'a [Entry], parent_key: Option<&'a str>) -> Self {
        Entries {
            entries,
            next: 0,
            value: None,
            value_key: None,
            parent_key,
        }
    }
}

impl<'a> de::MapAccess<'a> for Entries<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        while let Some(entry) = self.entries.get(self.next) {
            self.next += 1;
            let key = entry.key.as_text();
            if self.entries[..self.next - 1].iter().any(|e| e.key.as_text() == key) {
                continue;
            }
            self.value = Some(&entry.value);
            self.value_key = key;
            return seed.deserialize(KeyDeserializer { node: &entry.key }).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'a>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let node = self.value.take().unwrap_or(&NULL);
        let key = self.value_key.or(self.parent_key);
        // errors a seed makes after our deserializer returned (untagged enums) get the value's position
        seed.deserialize(NodeDeserializer {
            node,
            position: node.position,
            key,
        })
        .map_err(|e| e.or_position(node.position))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

/// The items of a list.
struct Items<'a> {
    items: std::slice::Iter<'a, Node>,
    key: Option<&'a str>,
}

impl<'a> de::SeqAccess<'a> for Items<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDeserializer {
                    node,
                    position: node.position,
                    key: self.key,
                })
                .map(Some)
                .map_err(|e| e.or_position(node.position)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// An externally tagged enum: the variant's name node and its content, if written.
struct Variant<'a> {
    variant: &'a Node,
    content: Option<&'a Node>,
}

impl<'a> de::EnumAccess<'a> for Variant<'a> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'a>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let value = seed.deserialize(KeyDeserializer { node: self.variant })?;
        Ok((value, self))
    }
}

impl<'a> de::VariantAccess<'a> for Variant<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            Some(content) if !content.is_null() => Err(Error::new(
                content.position,
                format!(
                    "`{}` takes no settings, found {}",
                    self.variant.as_text().unwrap_or_default(),
                    content.describe()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, Error> {
        let (node, position) = match self.content {
            Some(content) => (content, content.position),
            None => (&NULL, self.variant.position),
        };
        seed.deserialize(NodeDeserializer {
            node,
            position,
            key: self.variant.as_text(),
        })
        .map_err(|e| e.or_position(position))
    }

    fn tuple_variant<V: Visitor<'a>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let (node, position) = match self.content {
            Some(content) => (content, content.position),
            None => (&NULL, self.variant.position),
        };
        de::Deserializer::deserialize_tuple(
            NodeDeserializer {
                node,
                position,
                key: self.variant.as_text(),
            },
            len,
            visitor,
        )
    }

    fn struct_variant<V: Visitor<'a>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        let (node, position) = match self.content {
            Some(content) => (content, content.position),
            None => (&NULL, self.variant.position),
        };
        de::Deserializer::deserialize_struct(
            NodeDeserializer {
                node,
                position,
                key: self.variant.as_text(),
            },
            "",
            fields,
            visitor,
        )
    }
}

#[cfg(test)]
#[path = "de_tests.rs"]
mod tests;
