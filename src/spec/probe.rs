//! Every key a pipeline file can hold, found by walking the config types themselves, so that
//! the loader's key lists, the reference in the README and the types cannot drift apart.
//!
//! # Layout
//! - [`keys`]: all key paths of [`PipelineSpec`] (`operators[].window.every`,
//!   `decode.fields.<name>.min`, …) with whether each is required, its default (as JSON), and
//!   the values of unit enums (`decode.format`: `json`, `influx`).
//! - [`children`], [`is_required`]: look-ups for the loader.
//! - `Probe`: a serde `Deserializer` that answers every request with a made-up value: a struct
//!   gets all its fields (serde's `FIELDS`), a list one item, a map one entry named `<name>`, an
//!   enum the variant chosen for its path (serde's `VARIANTS`). Each enum that has variants with
//!   content is walked once per variant. Leaving one key out and deserializing tells whether the
//!   key is required (serde reports it missing) or what its default is (serialize the result).
//!
//! Paths: `a.b` for a struct field, `a[]` for the items of a list, `a.<name>` for the entries of
//! a map whose keys the user chooses, `a.kind` for the variant `kind` of an externally tagged enum.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::PipelineSpec;

/// What a key path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A struct field: it has a name fixed by plume.
    Field,
    /// An entry of a map whose keys the user chooses (`decode.fields.<name>`).
    MapEntry,
    /// The variant of an externally tagged enum (`operators[].window`).
    Variant,
}

/// One key path.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub path: String,
    pub kind: KeyKind,
    /// Required struct field (no default).
    pub required: bool,
    /// The default as JSON (`None` for required fields, map entries and variants).
    pub default: Option<serde_json::Value>,
    /// The allowed values when the key's value is a plain name (`json`, `influx`).
    pub values: Vec<&'static str>,
}

impl KeyInfo {
    /// The path of the key that holds this one (`operators[].window` for
    /// `operators[].window.every`), with the list marker kept (`sources[]` for `sources[].file`).
    pub fn parent(&self) -> &str {
        parent_of(&self.path)
    }

    /// The last segment: the key as written in the file (`every`, `window`, `<name>`).
    pub fn name(&self) -> &str {
        let parent = self.parent();
        if parent.is_empty() {
            &self.path
        } else {
            &self.path[parent.len() + 1..]
        }
    }
}

fn parent_of(path: &str) -> &str {
    path.rfind('.').map_or("", |i| &path[..i])
}

/// All key paths, in the order the types declare them.
pub fn keys() -> &'static [KeyInfo] {
    static KEYS: OnceLock<Vec<KeyInfo>> = OnceLock::new();
    KEYS.get_or_init(walk)
}

/// The keys directly under `parent` (`""` is the top level, `outputs[]` a route).
pub fn children(parent: &str) -> Vec<&'static str> {
    keys()
        .iter()
        .filter(|k| k.parent() == parent)
        .map(|k| k.name())
        .collect()
}

/// Whether the key at `path` must be written.
pub fn is_required(path: &str) -> bool {
    keys().iter().any(|k| k.path == path && k.required)
}

type Choices = BTreeMap<String, usize>;

#[derive(Default)]
struct State {
    choices: Choices,
    skip: Option<String>,
    keys: Vec<(String, KeyKind)>,
    enums: Vec<(String, &'static [&'static str])>,
    unit_enums: BTreeSet<String>,
    values: BTreeMap<String, Vec<&'static str>>,
}

impl State {
    fn key(&mut self, path: &str, kind: KeyKind) {
        if !self.keys.iter().any(|(p, _)| p == path) {
            self.keys.push((path.to_string(), kind));
        }
    }
}

/// Why a probe run failed: only `Missing` is expected (a required key left out).
#[derive(Debug)]
enum ProbeError {
    Missing(&'static str),
    Other(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Missing(k) => write!(f, "missing field `{k}`"),
            ProbeError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError::Other(msg.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        ProbeError::Missing(field)
    }
}

fn run(choices: &Choices, skip: Option<&str>) -> (Result<PipelineSpec, ProbeError>, State) {
    let state = RefCell::new(State {
        choices: choices.clone(),
        skip: skip.map(str::to_string),
        ..State::default()
    });
    let result = de::Deserialize::deserialize(Probe {
        path: String::new(),
        state: &state,
    });
    (result, state.into_inner())
}

fn walk() -> Vec<KeyInfo> {
    let mut queue: VecDeque<Choices> = VecDeque::from([Choices::new()]);
    let mut expanded: BTreeSet<String> = BTreeSet::new();
    let mut found: Vec<(String, KeyKind, Choices)> = Vec::new();
    let mut values: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    while let Some(choices) = queue.pop_front() {
        let (result, state) = run(&choices, None);
        if let Err(e) = result {
            panic!("config probe: the config types did not accept made-up values: {e}");
        }
        for (path, kind) in state.keys {
            if !found.iter().any(|(p, _, _)| *p == path) {
                found.push((path, kind, choices.clone()));
            }
        }
        values.extend(state.values);
        for (path, variants) in state.enums {
            if state.unit_enums.contains(&path) || !expanded.insert(path.clone()) {
                continue;
            }
            for i in 1..variants.len() {
                let mut next = choices.clone();
                next.insert(path.clone(), i);
                queue.push_back(next);
            }
        }
    }
    found
        .into_iter()
        .map(|(path, kind, choices)| {
            let (required, default) = match kind {
                KeyKind::Field => match run(&choices, Some(&path)).0 {
                    Err(ProbeError::Missing(name)) if path.ends_with(name) => (true, None),
                    Err(e) => panic!("config probe: leaving out `{path}` failed: {e}"),
                    Ok(spec) => {
                        let json = serde_json::to_value(&spec).expect("a spec serializes to JSON");
                        (
                            false,
                            Some(lookup(&json, &path).cloned().unwrap_or(serde_json::Value::Null)),
                        )
                    }
                },
                KeyKind::MapEntry | KeyKind::Variant => (false, None),
            };
            let values = values.get(&path).cloned().unwrap_or_default();
            KeyInfo {
                path,
                kind,
                required,
                default,
                values,
            }
        })
        .collect()
}

/// The JSON value at a probe path (list markers read item 0).
fn lookup<'j>(json: &'j serde_json::Value, path: &str) -> Option<&'j serde_json::Value> {
    let mut at = json;
    for segment in path.split('.') {
        let (name, items) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        at = at.get(name)?;
        if items {
            at = at.get(0)?;
        }
    }
    Some(at)
}

const MADE_UP_TEXT: &str = "1s";
const MAP_ENTRY: &str = "<name>";

struct Probe<'s> {
    path: String,
    state: &'s RefCell<State>,
}

impl<'s> Probe<'s> {
    fn child(&self, segment: &str, kind: KeyKind) -> Probe<'s> {
        let path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.path)
        };
        self.state.borrow_mut().key(&path, kind);
        Probe {
            path,
            state: self.state,
        }
    }

    fn items(&self) -> Probe<'s> {
        Probe {
            path: format!("{}[]", self.path),
            state: self.state,
        }
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        // Only the hand-written list-or-map types ask for "any": give them a one-item list.
        visitor.visit_seq(OneItem {
            item: Some(self.items()),
        })
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_bool(false)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_f64(1.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_f64(1.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_str(MADE_UP_TEXT)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_str(MADE_UP_TEXT)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_bytes(b"")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_bytes(b"")
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_seq(OneItem {
            item: Some(self.items()),
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        let value = self.child(MAP_ENTRY, KeyKind::MapEntry);
        visitor.visit_map(Fields {
            fields: vec![(MAP_ENTRY, value)].into_iter(),
            value: None,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let skip = self.state.borrow().skip.clone();
        let mut present = Vec::new();
        for field in fields {
            let probe = self.child(field, KeyKind::Field);
            if skip.as_deref() != Some(probe.path.as_str()) {
                present.push((*field, probe));
            }
        }
        visitor.visit_map(Fields {
            fields: present.into_iter(),
            value: None,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let choice = {
            let mut state = self.state.borrow_mut();
            if !state.enums.iter().any(|(p, _)| *p == self.path) {
                state.enums.push((self.path.clone(), variants));
            }
            state.choices.get(&self.path).copied().unwrap_or(0)
        };
        visitor.visit_enum(ProbeVariant {
            probe: self,
            variants,
            variant: variants[choice],
        })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_str(MADE_UP_TEXT)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }
}

struct OneItem<'s> {
    item: Option<Probe<'s>>,
}

impl<'de> de::SeqAccess<'de> for OneItem<'_> {
    type Error = ProbeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ProbeError> {
        match self.item.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

struct Fields<'s> {
    fields: std::vec::IntoIter<(&'static str, Probe<'s>)>,
    value: Option<Probe<'s>>,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ProbeError> {
        match self.fields.next() {
            Some((name, probe)) => {
                self.value = Some(probe);
                seed.deserialize(IntoDeserializer::<ProbeError>::into_deserializer(name))
                    .map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, ProbeError> {
        let probe = self
            .value
            .take()
            .ok_or_else(|| ProbeError::Other("value before key".into()))?;
        seed.deserialize(probe)
    }
}

struct ProbeVariant<'s> {
    probe: Probe<'s>,
    variants: &'static [&'static str],
    variant: &'static str,
}

impl<'de, 's> de::EnumAccess<'de> for ProbeVariant<'s> {
    type Error = ProbeError;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), ProbeError> {
        let value = seed.deserialize(IntoDeserializer::<ProbeError>::into_deserializer(self.variant))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for ProbeVariant<'_> {
    type Error = ProbeError;
    fn unit_variant(self) -> Result<(), ProbeError> {
        let mut state = self.probe.state.borrow_mut();
        state.unit_enums.insert(self.probe.path.clone());
        let key = self.probe.path.trim_end_matches("[]").to_string();
        state.values.insert(key, self.variants.to_vec());
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, ProbeError> {
        seed.deserialize(self.probe.child(self.variant, KeyKind::Variant))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, ProbeError> {
        de::Deserializer::deserialize_seq(self.probe.child(self.variant, KeyKind::Variant), visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        de::Deserializer::deserialize_struct(self.probe.child(self.variant, KeyKind::Variant), "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str) -> &'static KeyInfo {
        keys()
            .iter()
            .find(|k| k.path == path)
            .unwrap_or_else(|| panic!("no key {path}"))
    }

    #[test]
    fn finds_fields_variants_and_map_entries() {
        assert_eq!(
            children(""),
            [
                "version",
                "pipeline",
                "description",
                "sources",
                "decode",
                "operators",
                "outputs",
                "runtime",
                "checkpoint",
                "shutdown",
                "embedded_broker"
            ]
        );
        assert_eq!(
            children("operators[]"),
            [
                "window",
                "hysteresis",
                "baseline",
                "smooth",
                "threshold",
                "calibrate",
                "health"
            ]
        );
        assert_eq!(children("outputs[].to[].push"), ["fcm", "apns", "ntfy"]);
        assert_eq!(info("decode.fields.<name>").kind, KeyKind::MapEntry);
        assert!(
            keys()
                .iter()
                .any(|k| k.path == "outputs[].to[].push.ntfy.policy.quiet_hours.timezone")
        );
        assert!(keys().iter().any(|k| k.path == "decode.fields.<name>.type"));
    }

    #[test]
    fn knows_required_keys_and_defaults() {
        assert!(is_required("version"));
        assert!(is_required("decode"));
        assert!(is_required("operators[].window.every"));
        assert!(!is_required("operators[].window.lateness"));
        assert_eq!(info("runtime.key_groups").default, Some(serde_json::json!(256)));
        assert_eq!(
            info("operators[].window.lateness").default,
            Some(serde_json::json!("0s"))
        );
        assert_eq!(info("sources[].mqtt.qos").default, Some(serde_json::json!("1")));
        assert_eq!(
            info("decode.device").default,
            Some(serde_json::json!({"field": "device", "tag": null, "topic": false}))
        );
    }

    #[test]
    fn knows_the_values_of_plain_name_keys() {
        assert_eq!(info("decode.format").values, ["json", "influx"]);
        assert_eq!(
            info("operators[].window.aggregates").values,
            ["count", "sum", "avg", "min", "max", "last", "stddev"]
        );
        assert_eq!(info("sources[].mqtt.qos").values, ["0", "1", "2"]);
    }
}
