//! The reference of every key of a pipeline file, for the README, generated from the JSON Schema
//! (`schema`), which is generated from the config types: the meanings are their doc comments, the
//! defaults and allowed values their serde defaults and enums. Nothing here names a key.
//!
//! # Layout
//! - [`reference_markdown`]: one table per map (key, type, default, meaning), in the order of
//!   the file (the top level, then each map under it); a map type used at several places (the
//!   notifiers' `policy`) is written once, under all its paths.
//! - [`replace_reference`], [`current_reference`]: the README block between [`START_MARKER`] and
//!   [`END_MARKER`].

use std::fmt::Write as _;

use serde_json::Value;

use super::de::enum_words;
use super::schema::{View, pipeline_schema};

/// The README markers around the generated reference.
pub const START_MARKER: &str = "<!-- reference:start -->";
pub const END_MARKER: &str = "<!-- reference:end -->";

fn render_json(value: &Value) -> String {
    match value {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(render_json).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}: {}", render_json(v)))
                .collect();
            if entries.is_empty() {
                "{}".to_string()
            } else {
                format!("{{ {} }}", entries.join(", "))
            }
        }
        other => other.to_string(),
    }
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// One table: the map at `paths` (several for a shared type) and its schema.
struct Table {
    paths: Vec<String>,
    schema: &'static Value,
    /// The definition's name, for a type that can be shared.
    def: Option<&'static str>,
    /// Whether the keys are kinds (`- window: {…}`), not settings.
    kinds: bool,
    /// A sentence under the heading (what one entry of a named map is).
    intro: Option<String>,
}

struct Walker {
    view: View<'static>,
    tables: Vec<Table>,
}

impl Walker {
    /// The description of a key: its own, or its type's.
    fn description(&self, schema: &'static Value) -> String {
        let own = schema.get("description").and_then(Value::as_str);
        let typed = || self.view.resolve(schema).0.get("description").and_then(Value::as_str);
        own.or_else(typed).unwrap_or_default().replace('\n', " ")
    }

    /// The type of a value in words: `duration`, `list of operators`, `map of text`.
    fn label(&self, schema: &'static Value) -> String {
        let view = self.view;
        let (resolved, def) = view.resolve(schema);
        if def == Some("Duration") {
            return "duration".to_string();
        }
        if view.variants(resolved).is_some() {
            return "map".to_string();
        }
        if let Some(values) = view.values(resolved) {
            let is_name = |v: &String| {
                v.starts_with(|c: char| c.is_ascii_alphabetic())
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            let names = values.iter().all(is_name);
            return if names { "name" } else { "value" }.to_string();
        }
        if let Some(branches) = view.branches(resolved) {
            let labels: Vec<String> = branches
                .iter()
                .filter(|b| !(view.types(b) == ["null"]))
                .map(|b| self.label(b))
                .collect();
            return labels.join(" or ");
        }
        let types = view.types(resolved);
        if types.contains(&"array") {
            static NONE: Value = Value::Null;
            let items = resolved.get("items").unwrap_or(&NONE);
            let words = view.resolve(items).1.and_then(enum_words);
            return match words {
                Some((_, plural)) => format!("list of {plural}"),
                None => format!("list of {}", plural(&self.item_label(items))),
            };
        }
        if types.contains(&"object") {
            return match resolved.get("additionalProperties").filter(|a| a.is_object()) {
                Some(values) if resolved.get("properties").is_none() => {
                    format!("map of {}", plural(&self.item_label(values)))
                }
                _ => "map".to_string(),
            };
        }
        match types.iter().find(|t| **t != "null").copied() {
            Some("string") => "text",
            Some("integer") => "integer",
            Some("number") => "number",
            Some("boolean") => "true/false",
            _ => "value",
        }
        .to_string()
    }

    /// The type of the items of a list or map: a struct by its name (`output route`).
    fn item_label(&self, schema: &'static Value) -> String {
        match self.view.resolve(schema) {
            (resolved, Some(def)) if resolved.get("properties").is_some() => noun(def),
            _ => self.label(schema),
        }
    }

    /// Adds the tables of the maps under `schema` at `path`.
    fn walk(&mut self, path: &str, schema: &'static Value, intro: Option<String>) {
        let view = self.view;
        let (resolved, def) = view.resolve(schema);
        if let Some(variants) = view.variants(resolved) {
            if !self.shared(path, resolved, def) {
                self.tables.push(Table {
                    paths: vec![path.to_string()],
                    schema: resolved,
                    def,
                    kinds: true,
                    intro,
                });
                for (name, content) in &variants.kinds {
                    self.walk(&format!("{path}.{name}"), content, None);
                }
            }
            return;
        }
        if let Some(branches) = view.branches(resolved) {
            for branch in branches.iter().filter(|b| view.types(b) != ["null"]) {
                self.walk(path, branch, intro.clone());
            }
            return;
        }
        if let Some(properties) = resolved.get("properties").and_then(Value::as_object) {
            if properties.is_empty() || self.shared(path, resolved, def) {
                return;
            }
            self.tables.push(Table {
                paths: vec![path.to_string()],
                schema: resolved,
                def,
                kinds: false,
                intro,
            });
            for key in view.keys(resolved) {
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                self.walk(&child, &properties[key], None);
            }
            return;
        }
        if let Some(items) = resolved.get("items") {
            self.walk(&format!("{path}[]"), items, None);
        } else if let Some(values) = resolved.get("additionalProperties").filter(|a| a.is_object()) {
            if view.is_map_like(values) {
                let intro = Some(self.description(values)).filter(|d| !d.is_empty());
                self.walk(&format!("{path}.<name>"), values, intro);
            }
        }
    }

    /// Whether the type `def` already has a table; if so, `path` is added to its paths.
    fn shared(&mut self, path: &str, schema: &'static Value, def: Option<&str>) -> bool {
        let Some(def) = def else { return false };
        match self
            .tables
            .iter_mut()
            .find(|t| t.def == Some(def) && std::ptr::eq(t.schema, schema))
        {
            Some(table) => {
                table.paths.push(path.to_string());
                true
            }
            None => false,
        }
    }

    fn render(&self, table: &Table, out: &mut String) {
        let view = self.view;
        let title = match table.paths.as_slice() {
            [only] if only.is_empty() => "Top level".to_string(),
            paths => paths.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "),
        };
        let _ = write!(out, "\n#### {title}\n\n");
        if let Some(intro) = &table.intro {
            let _ = write!(out, "{}\n\n", escape_cell(intro));
        }
        out.push_str("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
        let rows: Vec<(String, String, String, String)> = if table.kinds {
            let variants = view.variants(table.schema).unwrap_or_default();
            let mut rows: Vec<(String, String, String, String)> = variants
                .kinds
                .iter()
                .map(|(name, content)| {
                    let mut meaning = self.description(content);
                    if variants.bare.iter().any(|b| b == name) {
                        let _ = write!(meaning, " Without settings: `{name}`.");
                    }
                    (name.to_string(), self.label(content), String::new(), meaning)
                })
                .collect();
            for bare in variants.bare.iter().filter(|b| variants.content(b).is_none()) {
                rows.push((bare.clone(), "name".to_string(), String::new(), String::new()));
            }
            rows
        } else {
            let properties = &table.schema["properties"];
            let required = view.required(table.schema);
            view.keys(table.schema)
                .into_iter()
                .map(|key| {
                    let schema = &properties[key];
                    let default = if required.contains(&key) {
                        "**required**".to_string()
                    } else {
                        schema
                            .get("default")
                            .map(|d| format!("`{}`", render_json(d)))
                            .unwrap_or_default()
                    };
                    let mut meaning = self.description(schema);
                    if let Some(values) = view.values(schema) {
                        let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                        let _ = write!(meaning, " One of: {}.", values.join(", "));
                    }
                    (key.to_string(), self.label(schema), default, meaning)
                })
                .collect()
        };
        for (key, label, default, meaning) in rows {
            let _ = writeln!(
                out,
                "| `{key}` | {} | {} | {} |",
                escape_cell(&label),
                escape_cell(&default),
                escape_cell(meaning.trim())
            );
        }
    }
}

fn plural(label: &str) -> String {
    let invariable = ["text", "true/false", "map"].contains(&label)
        || label.contains(" or ")
        || label.starts_with("list of")
        || label.starts_with("map of");
    if invariable {
        label.to_string()
    } else {
        format!("{label}s")
    }
}

/// A struct's name in words, for the values of a list or map: `OutputRoute` → `output route`.
fn noun(def: &str) -> String {
    let name = def.strip_suffix("Spec").unwrap_or(def);
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// The reference as Markdown: one table per map, in the order of the file.
pub fn reference_markdown() -> String {
    let mut walker = Walker {
        view: View::pipeline(),
        tables: Vec::new(),
    };
    walker.walk("", pipeline_schema(), None);
    let mut out = String::new();
    out.push_str(
        "Generated from the config types and their doc comments, through the JSON Schema that `plume schema` \
         prints (`cargo test` checks that it is current; \
         `PLUME_UPDATE_README=1 cargo test --release --test pipeline_files` rewrites it). \
         `a[]` stands for each item of the list `a`, `<name>` for a key you choose, \
         and `a.kind` for the kind `kind` of an item (`- window: {…}`). Required keys come first, then the \
         others in alphabetical order.\n",
    );
    for table in &walker.tables {
        walker.render(table, &mut out);
    }
    out
}

/// `readme` with its reference block replaced by `reference`; `None` if the markers are missing.
pub fn replace_reference(readme: &str, reference: &str) -> Option<String> {
    let start = readme.find(START_MARKER)? + START_MARKER.len();
    let end = start + readme[start..].find(END_MARKER)?;
    Some(format!(
        "{}\n{}\n{}",
        &readme[..start],
        reference.trim_end(),
        &readme[end..]
    ))
}

/// The reference block currently in `readme`.
pub fn current_reference(readme: &str) -> Option<&str> {
    let start = readme.find(START_MARKER)? + START_MARKER.len();
    let end = start + readme[start..].find(END_MARKER)?;
    Some(readme[start..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_has_defaults_values_meanings_and_shared_tables_once() {
        let md = reference_markdown();
        assert!(
            md.contains("| `key_groups` | integer | `256` | Fixed number of key groups"),
            "{md}"
        );
        assert!(
            md.contains("| `every` | duration | **required** | Window length. |"),
            "{md}"
        );
        assert!(md.contains("One of: `json`, `influx`."), "{md}");
        assert!(md.contains("| `operators` | list of operators | `[]` |"), "{md}");
        assert_eq!(md.matches("| `cooldown` |").count(), 1, "{md}");
        assert!(
            md.contains("`outputs[].to[].webhook.policy`, `outputs[].to[].push.fcm.policy`"),
            "{md}"
        );
        // the shared connection settings appear under the source, the sink and the ingress
        assert_eq!(md.matches("| `password_env` |").count(), 3, "{md}");
        assert_eq!(md.matches("| `breaker_open` |").count(), 4, "{md}");
    }

    #[test]
    fn every_key_has_a_meaning() {
        let md = reference_markdown();
        let empty: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| `") && l.ends_with("|  |"))
            .collect();
        assert!(empty.is_empty(), "keys without a doc comment:\n{}", empty.join("\n"));
    }

    #[test]
    fn replaces_the_block_between_the_markers() {
        let readme = format!("# x\n{START_MARKER}\nold\n{END_MARKER}\ntail\n");
        let new = replace_reference(&readme, "new\n").unwrap();
        assert_eq!(new, format!("# x\n{START_MARKER}\nnew\n{END_MARKER}\ntail\n"));
        assert_eq!(current_reference(&new), Some("new"));
    }
}
