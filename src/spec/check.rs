//! The positioned YAML tree checked against the pipeline file's JSON Schema (`schema`), and the
//! repair that lets the rest of a file with such errors still be read and validated.
//!
//! # Layout
//! - [`check`]: every structural problem at once, each with its path and position: unknown keys
//!   (at the key, with the nearest valid key and the list of valid keys), missing required keys
//!   (at the map that lacks them), wrong types (in words: "expected a number, found the string
//!   `high`"), unknown values and kinds (`unknown operator `windw`; did you mean `window`?`). The
//!   words are those of the deserializer (`de`), which stays the authority on what a value
//!   means: what the schema cannot say (a duration's grammar, which form of a list-or-map was
//!   meant) is left to it.
//! - [`Repair`]: a copy of the tree in which each broken part is made readable: an unknown key or
//!   a bad optional value is dropped (its default applies), a bad required value is replaced by a
//!   placeholder made from the schema. [`Repair::unit`] names the part whose semantic checks no
//!   longer make sense (the list item or named map entry the problem is in).
//! - [`path_at`]: the path of the node at a position, for the deserializer's errors.

use serde_json::Value;

use super::de::{describe_keys, enum_words, quoted_number_hint, suggest, unknown_key_message};
use super::schema::View;
use super::validate::{Path, Segment};
use super::yaml::{Entry, Node, Position, Resolved, Scalar, Style, Value as Tree};

/// A structural problem: where (path and position) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Path,
    pub position: Position,
    pub message: String,
}

/// Checks `root` against the pipeline schema; every problem is reported.
pub fn check(root: &Node) -> Vec<Problem> {
    let view = View::pipeline();
    let mut checker = Checker {
        view,
        problems: Vec::new(),
    };
    checker.node(root, view.root, &Path::root(), None);
    checker.problems
}

fn null_at(position: Position) -> Node {
    Node {
        position,
        value: Tree::Scalar(Scalar {
            text: String::new(),
            style: Style::Plain,
        }),
    }
}

fn expected(node: &Node, what: &str) -> String {
    let hint = node.as_scalar().map(quoted_number_hint).unwrap_or("");
    format!("expected {what}, found {}{hint}", node.describe())
}

/// The entries of a map, each key once (a second one is reported by `yaml::duplicate_keys`).
fn unique(entries: &[Entry]) -> impl Iterator<Item = &Entry> {
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| !entries[..*i].iter().any(|f| f.key.as_text() == e.key.as_text()))
        .map(|(_, e)| e)
}

/// The smallest and largest value of an integer schema (from the Rust type behind its `format`).
fn integer_range(schema: &Value) -> (i128, i128) {
    let by_format = match schema.get("format").and_then(Value::as_str) {
        Some("uint8") => Some((0, u8::MAX as i128)),
        Some("uint16") => Some((0, u16::MAX as i128)),
        Some("uint32") => Some((0, u32::MAX as i128)),
        Some("uint64" | "uint") => Some((0, u64::MAX as i128)),
        Some("int8") => Some((i8::MIN as i128, i8::MAX as i128)),
        Some("int16") => Some((i16::MIN as i128, i16::MAX as i128)),
        Some("int32") => Some((i32::MIN as i128, i32::MAX as i128)),
        Some("int64" | "int") => Some((i64::MIN as i128, i64::MAX as i128)),
        _ => None,
    };
    by_format.unwrap_or_else(|| {
        let bound = |key: &str, default: i128| schema.get(key).and_then(Value::as_i64).map_or(default, i128::from);
        (bound("minimum", i64::MIN as i128), bound("maximum", u64::MAX as i128))
    })
}

struct Checker {
    view: View<'static>,
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, path: Path, position: Position, message: String) {
        self.problems.push(Problem {
            path,
            position,
            message,
        });
    }

    /// `key`: the key the node is the value of (a list's items share their list's key), for
    /// messages (`unknown key `x` in window`); `None` at the top level.
    fn node(&mut self, node: &Node, schema: &'static Value, path: &Path, key: Option<&str>) {
        let view = self.view;
        let (schema, def) = view.resolve(schema);
        if node.is_null() && view.accepts_null(schema) {
            return;
        }
        if let Some(variants) = view.variants(schema) {
            return self.variant(node, &variants, def, path, key);
        }
        if let Some(values) = view.values(schema) {
            return self.value(node, &values, path, key);
        }
        if let Some(branches) = view.branches(schema) {
            let fits: Vec<&'static Value> = branches.iter().filter(|b| self.fits(b, node)).collect();
            if let [branch] = fits[..] {
                self.node(node, branch, path, key);
            }
            // otherwise the deserializer says which forms there are
            return;
        }
        let types = view.types(schema);
        let at = node.position;
        if types.contains(&"object") {
            self.map(node, schema, path, key);
        } else if types.contains(&"array") {
            match &node.value {
                Tree::Sequence(items) => {
                    static ANY: Value = Value::Bool(true);
                    let item_schema = schema.get("items").unwrap_or(&ANY);
                    for (i, item) in items.iter().enumerate() {
                        self.node(item, item_schema, &path.index(i), key);
                    }
                }
                _ if node.is_null() => {}
                _ => self.report(
                    path.clone(),
                    at,
                    expected(node, "a list (`[a, b]`, or one `- item` per line)"),
                ),
            }
        } else if types.contains(&"string") {
            if node.as_scalar().is_none() || node.is_null() {
                self.report(path.clone(), at, expected(node, "text"));
            }
        } else if types.contains(&"integer") {
            let (min, max) = integer_range(schema);
            let what = if min == 0 {
                "a whole number (0 or more)"
            } else {
                "a whole number"
            };
            match node.as_scalar().map(Scalar::resolve) {
                Some(Resolved::Integer(i)) if (min..=max).contains(&i) => {}
                Some(Resolved::Integer(i)) if !(min == 0 && i < 0) => self.report(
                    path.clone(),
                    at,
                    format!("expected a whole number from {min} to {max}, found {i}"),
                ),
                _ => self.report(path.clone(), at, expected(node, what)),
            }
        } else if types.contains(&"number") {
            if !matches!(
                node.as_scalar().map(Scalar::resolve),
                Some(Resolved::Integer(_) | Resolved::Float(_))
            ) {
                self.report(path.clone(), at, expected(node, "a number"));
            }
        } else if types.contains(&"boolean") {
            if !matches!(node.as_scalar().map(Scalar::resolve), Some(Resolved::Bool(_))) {
                self.report(path.clone(), at, expected(node, "true or false"));
            }
        } else if types == ["null"] && !node.is_null() {
            self.report(path.clone(), at, expected(node, "nothing (null)"));
        }
    }

    /// Whether `node` has the shape of a value of `schema` (map, list or scalar).
    fn fits(&self, schema: &'static Value, node: &Node) -> bool {
        let view = self.view;
        let (schema, _) = view.resolve(schema);
        let types = view.types(schema);
        match &node.value {
            Tree::Mapping(_) => view.is_map_like(schema),
            Tree::Sequence(_) => types.contains(&"array"),
            Tree::Scalar(_) if node.is_null() => view.accepts_null(schema),
            Tree::Scalar(_) => {
                view.values(schema).is_some()
                    || types
                        .iter()
                        .any(|t| matches!(*t, "string" | "number" | "integer" | "boolean"))
            }
        }
    }

    fn map(&mut self, node: &Node, schema: &'static Value, path: &Path, key: Option<&str>) {
        let entries: &[Entry] = match &node.value {
            Tree::Mapping(entries) => entries,
            _ if node.is_null() => &[],
            _ => {
                return self.report(path.clone(), node.position, expected(node, "a map of `key: value`"));
            }
        };
        let view = self.view;
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let within = match key {
            Some(key) => format!(" in {key}"),
            None => " at the top level".to_string(),
        };
        for entry in unique(entries) {
            let name = entry.key.as_text().unwrap_or_default();
            let entry_path = path.key(name);
            if let Some(sub) = properties.and_then(|p| p.get(name)) {
                self.node(&entry.value, sub, &entry_path, Some(name));
            } else if let Some(sub) = additional.filter(|a| a.is_object()) {
                self.node(&entry.value, sub, &entry_path, Some(name));
            } else if additional == Some(&Value::Bool(false)) {
                let message = unknown_key_message(name, &within, &view.keys(schema));
                self.report(entry_path, entry.key.position, message);
            }
        }
        for required in view.required(schema) {
            if !entries.iter().any(|e| e.key.as_text() == Some(required)) {
                self.report(
                    path.key(required),
                    node.position,
                    format!("missing required key `{required}`{within}"),
                );
            }
        }
    }

    /// A value of a plain-name enum (`format: json`).
    fn value(&mut self, node: &Node, values: &[String], path: &Path, key: Option<&str>) {
        match node.as_scalar() {
            Some(scalar) if !node.is_null() => {
                if values.contains(&scalar.text) {
                    return;
                }
                let mut m = format!("unknown value `{}`", scalar.text);
                if let Some(key) = key {
                    m.push_str(&format!(" for `{key}`"));
                }
                if let Some(s) = suggest(&scalar.text, values.iter().map(String::as_str)) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m.push_str(&format!(" (valid values: {})", values.join(", ")));
                self.report(path.clone(), node.position, m);
            }
            _ => self.report(
                path.clone(),
                node.position,
                format!("expected one of: {}; found {}", values.join(", "), node.describe()),
            ),
        }
    }

    /// An item of an externally tagged enum: `- window: { … }`, or a bare kind name `- stdin`.
    fn variant(
        &mut self,
        node: &Node,
        variants: &super::schema::Variants<'static>,
        def: Option<&str>,
        path: &Path,
        key: Option<&str>,
    ) {
        let names = variants.names();
        let words = def.and_then(enum_words);
        let (name_node, content) = match &node.value {
            Tree::Scalar(_) if !node.is_null() => (node, None),
            Tree::Mapping(entries) if entries.len() == 1 => (&entries[0].key, Some(&entries[0].value)),
            _ => {
                let message = match words {
                    Some((singular, _)) => format!(
                        "expected one {singular} kind as the only key (one of: {}), found {}",
                        names.join(", "),
                        describe_keys(node)
                    ),
                    None => format!("expected one of: {}; found {}", names.join(", "), node.describe()),
                };
                return self.report(path.clone(), node.position, message);
            }
        };
        let name = name_node.as_text().unwrap_or_default();
        match (variants.content(name), content) {
            (Some(schema), Some(content)) => self.node(content, schema, &path.key(name), Some(name)),
            (Some(schema), None) => self.node(&null_at(name_node.position), schema, &path.key(name), Some(name)),
            (None, content) if variants.bare.iter().any(|b| b == name) => {
                if let Some(content) = content.filter(|c| !c.is_null()) {
                    self.report(
                        path.key(name),
                        content.position,
                        format!("`{name}` takes no settings, found {}", content.describe()),
                    );
                }
            }
            (None, _) => {
                let (singular, plural) = words.unwrap_or(("value", "values"));
                let mut m = format!("unknown {singular} `{name}`");
                if let (Some(key), "value") = (key, singular) {
                    m.push_str(&format!(" for `{key}`"));
                }
                if let Some(s) = suggest(name, names.iter().copied()) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m.push_str(&format!(" (valid {plural}: {})", names.join(", ")));
                self.report(path.clone(), name_node.position, m);
            }
        }
    }
}

/// How a path step relates to its parent in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A key of a struct; `true` if required.
    Property(bool),
    /// An entry of a map whose keys the user names (`decode.fields.<name>`).
    Entry,
    /// An item of a list.
    Item,
    /// The settings of a kind (`window` in `- window: {…}`).
    Variant,
}

/// The schema of `segment` under `schema`, and what kind of step it is.
fn child(view: View<'static>, schema: &'static Value, segment: &Segment) -> Option<(&'static Value, Step)> {
    let (schema, _) = view.resolve(schema);
    let key = match segment {
        Segment::Key(k) | Segment::KeyName(k) => Some(k.as_str()),
        Segment::Index(_) => None,
    };
    if let Some(variants) = view.variants(schema) {
        return key.and_then(|k| variants.content(k)).map(|c| (c, Step::Variant));
    }
    if let Some(branches) = view.branches(schema) {
        return branches.iter().find_map(|b| child(view, b, segment));
    }
    match key {
        Some(k) => {
            if let Some(sub) = schema.get("properties").and_then(|p| p.get(k)) {
                Some((sub, Step::Property(view.required(schema).contains(&k))))
            } else {
                schema
                    .get("additionalProperties")
                    .filter(|a| a.is_object())
                    .map(|a| (a, Step::Entry))
            }
        }
        None => schema.get("items").map(|items| (items, Step::Item)),
    }
}

/// The schema at `path`, if the path follows the schema.
fn schema_at(view: View<'static>, path: &[Segment]) -> Option<&'static Value> {
    path.iter().try_fold(view.root, |schema, segment| {
        child(view, schema, segment).map(|(s, _)| s)
    })
}

/// A placeholder value of `schema`: its example, first allowed value, first kind, or the least
/// value of its type (`""` with a NUL, which is no valid name, for text).
fn placeholder(view: View<'static>, schema: &'static Value, position: Position) -> Node {
    let (schema, _) = view.resolve(schema);
    let scalar = |text: &str, style: Style| Node {
        position,
        value: Tree::Scalar(Scalar {
            text: text.to_string(),
            style,
        }),
    };
    if let Some(example) = schema.get("examples").and_then(|e| e.get(0)) {
        if let Some(text) = example.as_str() {
            return scalar(text, Style::Quoted);
        }
    }
    if let Some(variants) = view.variants(schema) {
        if let Some(bare) = variants.bare.first() {
            return scalar(bare, Style::Plain);
        }
        if let Some((name, content)) = variants.kinds.first() {
            return Node {
                position,
                value: Tree::Mapping(vec![Entry {
                    key: scalar(name, Style::Plain),
                    value: placeholder(view, content, position),
                }]),
            };
        }
    }
    if let Some(first) = view.values(schema).and_then(|v| v.into_iter().next()) {
        return scalar(&first, Style::Plain);
    }
    if let Some(branch) = view.branches(schema).and_then(|b| b.first()) {
        return placeholder(view, branch, position);
    }
    let types = view.types(schema);
    if types.contains(&"object") {
        let properties = schema.get("properties");
        let entries = view
            .required(schema)
            .into_iter()
            .filter_map(|k| Some((k, properties?.get(k)?)))
            .map(|(k, s)| Entry {
                key: scalar(k, Style::Plain),
                value: placeholder(view, s, position),
            })
            .collect();
        Node {
            position,
            value: Tree::Mapping(entries),
        }
    } else if types.contains(&"array") {
        Node {
            position,
            value: Tree::Sequence(Vec::new()),
        }
    } else if types.contains(&"string") {
        scalar(PLACEHOLDER_TEXT, Style::Quoted)
    } else if types.contains(&"integer") {
        let (min, _) = integer_range(schema);
        scalar(&min.max(0).to_string(), Style::Plain)
    } else if types.contains(&"number") {
        scalar("0", Style::Plain)
    } else if types.contains(&"boolean") {
        scalar("false", Style::Plain)
    } else {
        scalar("", Style::Plain)
    }
}

/// The text of a placeholder: never a valid name, so what is derived from it is recognizable.
pub const PLACEHOLDER_TEXT: &str = "\u{0}";

/// A copy of the tree being made readable, one broken path at a time.
pub struct Repair {
    view: View<'static>,
    pub tree: Node,
}

impl Repair {
    pub fn new(root: &Node) -> Self {
        Repair {
            view: View::pipeline(),
            tree: root.clone(),
        }
    }

    /// Makes the value at `path` readable; `false` if nothing could be done.
    pub fn fix(&mut self, path: &Path) -> bool {
        let Some((last, parent_path)) = path.0.split_last() else {
            self.tree = placeholder(self.view, self.view.root, self.tree.position);
            return true;
        };
        let view = self.view;
        let Some(parent_schema) = schema_at(view, parent_path) else {
            return false;
        };
        let step = child(view, parent_schema, last);
        let Some(parent) = node_at_mut(&mut self.tree, parent_path) else {
            return false;
        };
        let position = parent.position;
        match (last, &mut parent.value) {
            (Segment::Key(key) | Segment::KeyName(key), Tree::Mapping(entries)) => {
                let at = entries.iter().position(|e| e.key.as_text() == Some(key.as_str()));
                match (step, at) {
                    (None, Some(i)) | (Some((_, Step::Property(false))), Some(i)) => {
                        entries.remove(i);
                    }
                    (Some((schema, _)), Some(i)) => {
                        let at = entries[i].value.position;
                        entries[i].value = placeholder(view, schema, at);
                    }
                    (Some((schema, _)), None) => entries.push(Entry {
                        key: Node {
                            position,
                            value: Tree::Scalar(Scalar {
                                text: key.clone(),
                                style: Style::Plain,
                            }),
                        },
                        value: placeholder(view, schema, position),
                    }),
                    (None, None) => return false,
                }
            }
            (Segment::Index(i), Tree::Sequence(items)) if *i < items.len() => {
                let Some((schema, _)) = step else { return false };
                let at = items[*i].position;
                items[*i] = placeholder(view, schema, at);
            }
            _ => {
                // the parent is not a map or list: replace the parent as a whole
                let Some(schema) = schema_at(view, parent_path) else {
                    return false;
                };
                *parent = placeholder(view, schema, position);
            }
        }
        true
    }

    /// The part whose semantic checks no longer make sense when `path` is broken: the deepest
    /// list item or named map entry above it that holds settings (an operator, a source, a
    /// sink, a declared field), or the path itself.
    pub fn unit(&self, path: &Path) -> Path {
        let view = self.view;
        let mut schema = view.root;
        let mut unit = None;
        for (depth, segment) in path.0.iter().enumerate() {
            let Some((sub, step)) = child(view, schema, segment) else {
                break;
            };
            if matches!(step, Step::Item | Step::Entry) && view.is_map_like(sub) {
                unit = Some(depth + 1);
            }
            schema = sub;
        }
        match unit {
            Some(depth) => Path(path.0[..depth].to_vec()),
            None => path.clone(),
        }
    }
}

/// The node at `path`, making way: a bare kind name becomes `{name: null}`, a null a map or a list.
fn node_at_mut<'n>(node: &'n mut Node, path: &[Segment]) -> Option<&'n mut Node> {
    let Some((first, rest)) = path.split_first() else {
        return Some(node);
    };
    match first {
        Segment::Key(key) | Segment::KeyName(key) => {
            if node.is_null() {
                node.value = Tree::Mapping(Vec::new());
            } else if node.as_text() == Some(key.as_str()) {
                let position = node.position;
                let name = node.clone();
                node.value = Tree::Mapping(vec![Entry {
                    key: name,
                    value: null_at(position),
                }]);
            }
            let Tree::Mapping(entries) = &mut node.value else {
                return None;
            };
            let entry = entries.iter_mut().find(|e| e.key.as_text() == Some(key.as_str()))?;
            node_at_mut(&mut entry.value, rest)
        }
        Segment::Index(i) => {
            if node.is_null() {
                node.value = Tree::Sequence(Vec::new());
            }
            let Tree::Sequence(items) = &mut node.value else {
                return None;
            };
            node_at_mut(items.get_mut(*i)?, rest)
        }
    }
}

/// The path of the shallowest value at `position` (or of the entry whose key is there).
pub fn path_at(root: &Node, position: Position) -> Option<Path> {
    let mut level: Vec<(&Node, Path)> = vec![(root, Path::root())];
    let mut keys: Option<Path> = None;
    while !level.is_empty() {
        if let Some((_, path)) = level.iter().find(|(n, _)| n.position == position) {
            return Some(path.clone());
        }
        let mut next = Vec::new();
        for (node, path) in level {
            match &node.value {
                Tree::Mapping(entries) => {
                    for entry in unique(entries) {
                        let name = entry.key.as_text().unwrap_or_default();
                        if keys.is_none() && entry.key.position == position {
                            keys = Some(path.key(name));
                        }
                        next.push((&entry.value, path.key(name)));
                    }
                }
                Tree::Sequence(items) => {
                    next.extend(items.iter().enumerate().map(|(i, item)| (item, path.index(i))));
                }
                Tree::Scalar(_) => {}
            }
        }
        level = next;
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::yaml::parse;

    fn problems(text: &str) -> Vec<String> {
        let root = parse(text).unwrap();
        check(&root)
            .into_iter()
            .map(|p| format!("{} {}: {}", p.position, p.path, p.message))
            .collect()
    }

    #[test]
    fn every_structural_problem_at_once() {
        let got = problems(
            "version: one\npipline: x\ndecode:\n  format: jsn\n  fields: { pm25: { min: \"0\", required: yes } }\n\
             operators:\n  - windw: {}\n  - window: { every: 1m, aggregates: [avg, median] }\n",
        );
        assert_eq!(
            got,
            [
                "1:10 version: expected a whole number (0 or more), found the string `one`",
                "2:1 pipline: unknown key `pipline` at the top level; did you mean `pipeline`? (valid keys: version, \
                 pipeline, decode, checkpoint, description, embedded_broker, ingress, metrics, operators, outputs, runtime, shutdown, sources)",
                "4:11 decode.format: unknown value `jsn` for `format`; did you mean `json`? (valid values: json, influx)",
                "5:26 decode.fields.pm25.min: expected a number, found the string `0` (remove the quotes to make it a number)",
                "5:41 decode.fields.pm25.required: expected true or false, found the string `yes`",
                "7:5 operators[0]: unknown operator `windw`; did you mean `window`? (valid operators: window, hysteresis, \
                 baseline, smooth, threshold, calibrate, health, dedup)",
                "8:44 operators[1].window.aggregates[1]: unknown value `median` for `aggregates` (valid values: count, sum, \
                 avg, min, max, last, stddev)",
                "1:1 pipeline: missing required key `pipeline` at the top level",
            ]
        );
    }

    #[test]
    fn bare_kind_names_and_missing_settings() {
        let got = problems("version: 1\npipeline: p\ndecode: { fields: {} }\nsources: [stdin, file]\n");
        assert_eq!(got, ["4:18 sources[1].file.path: missing required key `path` in file"]);
    }

    #[test]
    fn repairs_make_the_tree_readable_and_name_the_broken_part() {
        let text = "version: 1\npipeline: p\ndecode: { fields: { pm25: { mni: 0 } } }\n\
                    operators:\n  - hysteresis: { field: pm25, enter: high }\n  - windw: {}\n";
        let root = parse(text).unwrap();
        let mut repair = Repair::new(&root);
        for problem in check(&root) {
            assert!(repair.fix(&problem.path), "{problem:?}");
            let unit = repair.unit(&problem.path).to_string();
            assert!(
                ["decode.fields.pm25", "operators[0]", "operators[1]"].contains(&unit.as_str()),
                "{unit}"
            );
        }
        let spec: crate::spec::PipelineSpec = crate::spec::de::from_node(&repair.tree, None).unwrap();
        assert_eq!(spec.operators.len(), 2);
        assert!(spec.decode.fields.contains_key("pm25"));
    }

    #[test]
    fn positions_lead_back_to_paths() {
        let root = parse("a:\n  b: [x, { c: 1 }]\n").unwrap();
        assert_eq!(
            path_at(&root, Position { line: 2, column: 15 }).unwrap().to_string(),
            "a.b[1].c"
        );
        assert_eq!(
            path_at(&root, Position { line: 2, column: 3 }).unwrap().to_string(),
            "a"
        );
    }
}
