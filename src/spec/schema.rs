//! The JSON Schema of a pipeline file, generated from the config types with `schemars`: doc
//! comments become descriptions, `#[serde(default = …)]` the defaults, unit enums the allowed
//! values, `deny_unknown_fields` `additionalProperties: false`.
//!
//! # Layout
//! - [`pipeline_schema`], [`schema_text`]: the schema (draft 2020-12), built once; `plume schema`
//!   prints it, editors use it (`# yaml-language-server: $schema=…`).
//! - Two adjustments make it say what the loader accepts: a `null` (or empty) value reads as an
//!   empty map or list, so maps without required keys and lists also accept `null`; and an item
//!   of a kind whose settings may all be left out can be written as its bare name (`- stdin`,
//!   `to: [stdout]`).
//! - [`View`]: reading the schema (`$ref`s, types, allowed values, the kinds of an externally
//!   tagged enum), for the loader's structural check (`check`) and the README's key reference
//!   (`reference`).

use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::PipelineSpec;

/// The JSON Schema of a pipeline file.
pub fn pipeline_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(generate)
}

/// The schema as pretty-printed JSON (what `plume schema` prints).
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(pipeline_schema()).expect("a JSON value prints");
    text.push('\n');
    text
}

fn generate() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<PipelineSpec>().to_value();
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), Value::from("plume pipeline file"));
    }
    null_is_empty(&mut schema);
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    bare_kind_names(&mut schema, &defs);
    schema
}

/// Calls `f` on every subschema of `schema` (not on defaults, examples or allowed values), with
/// whether it is an alternative of an `anyOf` (an untagged enum, read as it is written).
fn for_each_subschema(schema: &mut Value, f: &mut dyn FnMut(&mut Value, bool)) {
    let Some(object) = schema.as_object_mut() else { return };
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "properties" | "$defs" => {
                if let Some(map) = value.as_object_mut() {
                    for sub in map.values_mut() {
                        f(sub, false);
                        for_each_subschema(sub, f);
                    }
                }
            }
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                let alternative = key == "anyOf";
                if let Some(items) = value.as_array_mut() {
                    for sub in items {
                        f(sub, alternative);
                        for_each_subschema(sub, f);
                    }
                }
            }
            "items" | "additionalProperties" => {
                f(value, false);
                for_each_subschema(value, f);
            }
            _ => {}
        }
    }
}

/// Maps without required keys and lists accept `null` (the loader reads it as empty), except as
/// a form of an untagged enum (`aggregates: [avg]` or a map; `null` is neither).
fn null_is_empty(schema: &mut Value) {
    let mut widen = |s: &mut Value, alternative: bool| {
        let Some(object) = s.as_object_mut().filter(|_| !alternative) else {
            return;
        };
        let no_required = object
            .get("required")
            .and_then(Value::as_array)
            .is_none_or(|r| r.is_empty());
        let widened = match object.get("type").and_then(Value::as_str) {
            Some("object") if no_required => "object",
            Some("array") => "array",
            _ => return,
        };
        object.insert("type".into(), serde_json::json!([widened, "null"]));
    };
    widen(schema, false);
    for_each_subschema(schema, &mut widen);
}

/// `- stdin` for `- stdin: {}`: in each externally tagged enum, the kinds whose settings accept
/// `null` may also be written as their bare name.
fn bare_kind_names(schema: &mut Value, defs: &Value) {
    let accepts_null = |content: &Value| View { root: defs }.accepts_null(content);
    let mut add = |s: &mut Value, _: bool| {
        let Some(branches) = s.get("oneOf").and_then(Value::as_array) else {
            return;
        };
        let names: Vec<Value> = branches
            .iter()
            .filter_map(variant_of)
            .filter(|(_, content)| accepts_null(content))
            .map(|(name, _)| Value::from(name))
            .collect();
        if !names.is_empty() {
            let mut bare = Map::new();
            bare.insert("description".into(), Value::from("A kind without settings, by name."));
            bare.insert("enum".into(), Value::Array(names));
            if let Some(branches) = s.get_mut("oneOf").and_then(Value::as_array_mut) {
                branches.push(Value::Object(bare));
            }
        }
    };
    add(schema, false);
    for_each_subschema(schema, &mut add);
}

/// `{ "type": "object", "properties": { K: S }, "required": [K] }`: the kind `K` of an externally
/// tagged enum, with its settings `S`.
fn variant_of(branch: &Value) -> Option<(&str, &Value)> {
    let properties = branch.get("properties")?.as_object()?;
    let required = branch.get("required")?.as_array()?;
    if properties.len() != 1 || required.len() != 1 {
        return None;
    }
    let (name, content) = properties.iter().next()?;
    (required[0].as_str() == Some(name.as_str())).then_some((name.as_str(), content))
}

/// The text a value of an `enum` is written as in YAML (`json`, `0`, `3.1.1`).
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reading the schema. `root` is the document whose `$defs` the `$ref`s point into (or the
/// `$defs` map itself).
#[derive(Clone, Copy)]
pub struct View<'s> {
    pub root: &'s Value,
}

impl<'s> View<'s> {
    /// The view of the pipeline schema.
    pub fn pipeline() -> View<'static> {
        View {
            root: pipeline_schema(),
        }
    }

    /// `schema` with its `$ref` followed; the name of the definition, if it was one.
    pub fn resolve(&self, schema: &'s Value) -> (&'s Value, Option<&'s str>) {
        let mut schema = schema;
        let mut name = None;
        for _ in 0..16 {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(def) = reference.strip_prefix("#/$defs/") else {
                break;
            };
            let defs = self.root.get("$defs").unwrap_or(self.root);
            match defs.get(def) {
                Some(target) => {
                    schema = target;
                    name = Some(def);
                }
                None => break,
            }
        }
        (schema, name)
    }

    /// The `type` keyword as a list (`["object", "null"]`).
    pub fn types(&self, schema: &'s Value) -> Vec<&'s str> {
        match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The alternatives of `anyOf` / `oneOf`.
    pub fn branches(&self, schema: &'s Value) -> Option<&'s [Value]> {
        schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
    }

    fn is_null_only(&self, schema: &'s Value) -> bool {
        let (schema, _) = self.resolve(schema);
        self.types(schema) == ["null"] || schema.get("const") == Some(&Value::Null)
    }

    /// Whether `null` is a valid value.
    pub fn accepts_null(&self, schema: &'s Value) -> bool {
        let (schema, _) = self.resolve(schema);
        self.types(schema).contains(&"null")
            || schema.get("const") == Some(&Value::Null)
            || schema
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|v| v.contains(&Value::Null))
            || self
                .branches(schema)
                .is_some_and(|b| b.iter().any(|s| self.accepts_null(s)))
    }

    /// The allowed values of a plain-name enum (`enum`, `const`, or alternatives of those).
    pub fn values(&self, schema: &'s Value) -> Option<Vec<String>> {
        let (schema, _) = self.resolve(schema);
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return Some(values.iter().filter_map(value_text).collect());
        }
        if let Some(value) = schema.get("const") {
            return Some(value_text(value).into_iter().collect());
        }
        let branches = self.branches(schema)?;
        let mut all = Vec::new();
        for branch in branches.iter().filter(|b| !self.is_null_only(b)) {
            all.extend(self.values(branch)?);
        }
        (!all.is_empty()).then_some(all)
    }

    /// The kinds of an externally tagged enum, with their settings, and the kinds written by
    /// name alone; `None` when `schema` is no such enum.
    pub fn variants(&self, schema: &'s Value) -> Option<Variants<'s>> {
        let (schema, _) = self.resolve(schema);
        let branches = self.branches(schema)?;
        let mut variants = Variants::default();
        for branch in branches.iter().filter(|b| !self.is_null_only(b)) {
            // a kind is written inline; a `$ref` is a type of its own (`Option<T>`)
            if let Some((name, content)) = variant_of(branch) {
                variants.kinds.push((name, content));
            } else {
                variants.bare.extend(self.values(branch)?);
            }
        }
        (!variants.kinds.is_empty()).then_some(variants)
    }

    /// Whether a value of this schema is written as a map (settings, not a plain value).
    pub fn is_map_like(&self, schema: &'s Value) -> bool {
        let (schema, _) = self.resolve(schema);
        schema.get("properties").is_some()
            || self.variants(schema).is_some()
            || self.types(schema).contains(&"object")
            || self
                .branches(schema)
                .is_some_and(|b| b.iter().any(|s| !self.is_null_only(s) && self.is_map_like(s)))
    }

    /// The keys of a map's schema in the order people read them: required keys in the order the
    /// type declares them, then the others alphabetically.
    pub fn keys(&self, schema: &'s Value) -> Vec<&'s str> {
        let (schema, _) = self.resolve(schema);
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return Vec::new();
        };
        let required = self.required(schema);
        let mut keys: Vec<&str> = required.clone();
        keys.extend(properties.keys().map(String::as_str).filter(|k| !required.contains(k)));
        keys
    }

    /// The required keys of a map's schema, in declaration order.
    pub fn required(&self, schema: &'s Value) -> Vec<&'s str> {
        schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// The kinds of an externally tagged enum (`window`, `hysteresis`, …).
#[derive(Debug, Default)]
pub struct Variants<'s> {
    /// Kinds with settings: `- window: { … }`.
    pub kinds: Vec<(&'s str, &'s Value)>,
    /// Names that may be written alone: `- stdin`.
    pub bare: Vec<String>,
}

impl<'s> Variants<'s> {
    /// Every kind's name, once, in declaration order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.kinds.iter().map(|(n, _)| *n).collect();
        for bare in &self.bare {
            if !names.contains(&bare.as_str()) {
                names.push(bare);
            }
        }
        names
    }

    /// The settings of kind `name`.
    pub fn content(&self, name: &str) -> Option<&'s Value> {
        self.kinds.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_comes_from_the_types() {
        let schema = pipeline_schema();
        let view = View::pipeline();
        assert_eq!(view.required(schema), ["version", "pipeline", "decode"]);
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        let (decode, name) = view.resolve(&schema["properties"]["decode"]);
        assert_eq!(name, Some("DecodeSpec"));
        assert_eq!(
            view.values(&decode["properties"]["format"]).unwrap(),
            ["json", "influx"]
        );
        let runtime = view.resolve(&schema["properties"]["runtime"]).0;
        assert_eq!(runtime["properties"]["key_groups"]["default"], 256);
        assert!(
            schema["properties"]["version"]["description"]
                .as_str()
                .unwrap()
                .starts_with("Format version of the file")
        );
    }

    #[test]
    fn bare_kind_names_and_null_for_empty_maps() {
        let view = View::pipeline();
        let sources = &pipeline_schema()["properties"]["sources"];
        assert!(view.accepts_null(sources), "`sources:` alone is an empty list");
        let source = view.variants(&sources["items"]).unwrap();
        assert_eq!(source.names(), ["file", "stdin", "simulator", "mqtt", "kafka"]);
        assert_eq!(source.bare, ["stdin", "simulator"]);
        // an untagged enum is read as written: `aggregates: ~` is neither a list nor a map
        let aggregates = &pipeline_schema()["$defs"]["AggregatesSpec"];
        assert!(!view.accepts_null(aggregates));
    }
}
