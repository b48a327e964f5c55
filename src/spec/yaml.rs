//! A YAML document as a tree of nodes that remember their line and column.
//!
//! # Layout
//! - [`parse`]: `saphyr-parser` events into a [`Node`] tree. Maps keep their key nodes (with
//!   positions), scalars keep their style (plain or quoted), aliases are resolved by cloning the
//!   anchored node. A syntax error becomes a [`YamlError`] with the parser's position.
//! - [`interpolate`]: `${VAR}`, `${VAR:-default}` and `$$` inside scalar values (never keys), so
//!   every position stays exact. A plain scalar keeps its plain style and is typed after
//!   interpolation (`port: ${PORT:-1883}` is a number).
//! - [`Resolved`]: how a plain scalar reads under the YAML 1.2 core schema (null, bool, integer,
//!   float or text).
//! - [`duplicate_keys`]: the same key twice in one map.
//! - [`to_json`]: the document as JSON, scalars typed as the loader reads them.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

/// A line and column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub const START: Position = Position { line: 1, column: 1 };

    fn from_span(span: &Span) -> Position {
        Position {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// How a scalar was written: plain scalars are typed (`12` is a number), every other style
/// (quoted, block literal, folded) is text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
}

/// A scalar value.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub style: Style,
}

/// One entry of a map: the key node and the value node.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: Node,
    pub value: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    Mapping(Vec<Entry>),
}

/// A node of the document and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub position: Position,
    pub value: Value,
}

/// A plain scalar read under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved<'a> {
    Null,
    Bool(bool),
    Integer(i128),
    Float(f64),
    Text(&'a str),
}

impl Scalar {
    /// The scalar's value: a quoted scalar is always text.
    pub fn resolve(&self) -> Resolved<'_> {
        if self.style == Style::Quoted {
            return Resolved::Text(&self.text);
        }
        resolve_plain(&self.text)
    }
}

fn resolve_plain(text: &str) -> Resolved<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Resolved::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(i) = i128::from_str_radix(hex, 16) {
                return Resolved::Integer(i);
            }
        }
        return Resolved::Text(text);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            if let Ok(i) = i128::from_str_radix(oct, 8) {
                return Resolved::Integer(i);
            }
        }
        return Resolved::Text(text);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i128>() {
            return Resolved::Integer(i);
        }
    }
    if is_core_float(digits) {
        if let Ok(x) = text.parse::<f64>() {
            return Resolved::Float(x);
        }
    }
    Resolved::Text(text)
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (the sign is already stripped).
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - frac_start;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

impl Node {
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The text of a scalar node (plain or quoted), if it is one.
    pub fn as_text(&self) -> Option<&str> {
        self.as_scalar().map(|s| s.text.as_str())
    }

    pub fn as_mapping(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Sequence(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is a null scalar (`~`, `null` or nothing).
    pub fn is_null(&self) -> bool {
        matches!(self.as_scalar().map(Scalar::resolve), Some(Resolved::Null))
    }

    /// The entry of a map whose key is `key` (the first one if it is given twice).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_mapping()?.iter().find(|e| e.key.as_text() == Some(key))
    }

    /// The value under `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// Item `index` of a sequence.
    pub fn index(&self, index: usize) -> Option<&Node> {
        self.as_sequence()?.get(index)
    }

    /// What this node is, in words, for error messages: `the string `high``, `a list`, …
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Sequence(_) => "a list".to_string(),
            Value::Mapping(_) => "a map".to_string(),
            Value::Scalar(s) => describe_scalar(s),
        }
    }

    fn scalars_mut(&mut self, f: &mut impl FnMut(Position, &mut Scalar)) {
        match &mut self.value {
            Value::Scalar(s) => f(self.position, s),
            Value::Sequence(items) => items.iter_mut().for_each(|n| n.scalars_mut(f)),
            Value::Mapping(entries) => entries.iter_mut().for_each(|e| e.value.scalars_mut(f)),
        }
    }
}

/// The document as JSON, each scalar as the loader reads it (a plain scalar is null, a bool, a
/// number or text; a quoted one is text): what a JSON Schema validator checks.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as Json;
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Null => Json::Null,
            Resolved::Bool(b) => Json::Bool(b),
            Resolved::Integer(i) => match (u64::try_from(i), i64::try_from(i)) {
                (Ok(u), _) => Json::from(u),
                (_, Ok(v)) => Json::from(v),
                _ => Json::from(i as f64),
            },
            Resolved::Float(x) => {
                serde_json::Number::from_f64(x).map_or_else(|| Json::from(s.text.clone()), Json::Number)
            }
            Resolved::Text(t) => Json::from(t),
        },
        Value::Sequence(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Mapping(entries) => Json::Object(
            entries
                .iter()
                .map(|e| (e.key.as_text().unwrap_or_default().to_string(), to_json(&e.value)))
                .collect(),
        ),
    }
}

fn describe_scalar(s: &Scalar) -> String {
    match s.resolve() {
        Resolved::Null => "nothing (null)".to_string(),
        Resolved::Bool(b) => format!("`{b}`"),
        Resolved::Integer(_) | Resolved::Float(_) => format!("the number {}", s.text),
        Resolved::Text(t) => format!("the string `{t}`"),
    }
}

/// A problem in the YAML text itself (syntax, interpolation, duplicate keys), with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub position: Position,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.position, self.message)
    }
}

fn scan_error(e: &ScanError) -> YamlError {
    let mark = e.marker();
    YamlError {
        position: Position {
            line: mark.line().max(1),
            column: mark.col() + 1,
        },
        message: format!("YAML syntax error: {}", e.info()),
    }
}

/// A collection being built.
/// (`before`: the values finished when it started, so a finished collection knows its size.)
enum Frame {
    Sequence {
        position: Position,
        anchor: usize,
        before: usize,
        items: Vec<Node>,
    },
    Mapping {
        position: Position,
        anchor: usize,
        before: usize,
        entries: Vec<Entry>,
        key: Option<Node>,
    },
}

/// The most values (scalars, lists and maps, aliases counted at their full size) a pipeline file
/// may hold: aliases copy their anchor, so a few lines could otherwise expand to billions
/// ("billion laughs").
pub const MAX_NODES: usize = 100_000;

/// The deepest nesting of lists and maps a pipeline file may have (every later step walks the
/// tree recursively).
pub const MAX_DEPTH: usize = 64;

/// The largest pipeline file plume reads, in bytes.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Parses one YAML document into a node tree. An empty document is an error; so are more than
/// [`MAX_NODES`] values and nesting deeper than [`MAX_DEPTH`].
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // each anchor with the number of values it holds
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    // values finished so far (an alias counts all the values it copies)
    let mut nodes = 0usize;
    let too_many = |position| YamlError {
        position,
        message: format!(
            "the file holds more than {MAX_NODES} values (aliases count as many values as they copy): \
             a pipeline file is much smaller"
        ),
    };
    let mut root: Option<Node> = None;
    let mut documents = 0;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| scan_error(&e))?;
        let position = Position::from_span(&span);
        // a finished node, its anchor (0: none) and the values it holds (itself included)
        let finished: Option<(Node, usize, usize)> = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => None,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        position,
                        message: "a pipeline file holds one YAML document; a second one starts here".to_string(),
                    });
                }
                None
            }
            Event::Alias(id) => {
                let (node, size) = anchors.get(&id).ok_or_else(|| YamlError {
                    position,
                    message: "YAML alias to an anchor that is not complete yet".to_string(),
                })?;
                nodes = nodes.saturating_add(*size);
                if nodes > MAX_NODES {
                    return Err(too_many(position));
                }
                Some((node.clone(), 0, *size))
            }
            Event::Scalar(value, style, anchor, tag) => {
                let mut style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    _ => Style::Quoted,
                };
                if let Some(tag) = tag {
                    match (tag.is_yaml_core_schema(), tag.suffix.as_str()) {
                        (true, "str") => style = Style::Quoted,
                        (true, "int" | "float" | "bool" | "null") => {}
                        _ => {
                            return Err(YamlError {
                                position,
                                message: format!("YAML tag `{tag}` is not supported in pipeline files"),
                            });
                        }
                    }
                }
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(too_many(position));
                }
                Some((
                    Node {
                        position,
                        value: Value::Scalar(Scalar {
                            text: value.into_owned(),
                            style,
                        }),
                    },
                    anchor,
                    1,
                ))
            }
            Event::SequenceStart(anchor, tag) => {
                reject_collection_tag(position, tag.as_deref())?;
                too_deep(position, stack.len())?;
                stack.push(Frame::Sequence {
                    position,
                    anchor,
                    before: nodes,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                reject_collection_tag(position, tag.as_deref())?;
                too_deep(position, stack.len())?;
                stack.push(Frame::Mapping {
                    position,
                    anchor,
                    before: nodes,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            end @ (Event::SequenceEnd | Event::MappingEnd) => {
                let (position, anchor, before, value) = match (stack.pop(), end) {
                    (
                        Some(Frame::Sequence {
                            position,
                            anchor,
                            before,
                            items,
                        }),
                        Event::SequenceEnd,
                    ) => (position, anchor, before, Value::Sequence(items)),
                    (
                        Some(Frame::Mapping {
                            position,
                            anchor,
                            before,
                            entries,
                            ..
                        }),
                        Event::MappingEnd,
                    ) => (position, anchor, before, Value::Mapping(entries)),
                    (_, end) => {
                        let what = if matches!(end, Event::SequenceEnd) {
                            "sequence"
                        } else {
                            "mapping"
                        };
                        return Err(YamlError {
                            position,
                            message: format!("YAML syntax error: unbalanced {what}"),
                        });
                    }
                };
                let size = nodes - before + 1;
                nodes += 1;
                Some((Node { position, value }, anchor, size))
            }
        };
        let Some((node, anchor, size)) = finished else { continue };
        if anchor > 0 {
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => {
                    if node.as_scalar().is_none() {
                        return Err(YamlError {
                            position: node.position,
                            message: "a key must be plain text, not a list or a map".to_string(),
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push(Entry { key: k, value: node }),
            },
        }
    }
    root.ok_or(YamlError {
        position: Position::START,
        message: "the file is empty: a pipeline needs at least `version`, `pipeline` and `decode`".to_string(),
    })
}

fn too_deep(position: Position, open: usize) -> Result<(), YamlError> {
    if open >= MAX_DEPTH {
        return Err(YamlError {
            position,
            message: format!("lists and maps are nested more than {MAX_DEPTH} levels deep here"),
        });
    }
    Ok(())
}

fn reject_collection_tag(position: Position, tag: Option<&saphyr_parser::Tag>) -> Result<(), YamlError> {
    match tag {
        Some(tag) if !(tag.is_yaml_core_schema() && matches!(tag.suffix.as_str(), "map" | "seq")) => Err(YamlError {
            position,
            message: format!("YAML tag `{tag}` is not supported in pipeline files"),
        }),
        _ => Ok(()),
    }
}

/// Every key that appears twice in the same map (the second occurrence is reported).
pub fn duplicate_keys(node: &Node) -> Vec<YamlError> {
    let mut errors = Vec::new();
    collect_duplicates(node, &mut errors);
    errors
}

fn collect_duplicates(node: &Node, errors: &mut Vec<YamlError>) {
    match &node.value {
        Value::Scalar(_) => {}
        Value::Sequence(items) => items.iter().for_each(|n| collect_duplicates(n, errors)),
        Value::Mapping(entries) => {
            // (a map of the first position of each key: linear in the number of keys)
            let mut first_at: HashMap<&str, Position> = HashMap::with_capacity(entries.len());
            for entry in entries {
                let key = entry.key.as_text().unwrap_or_default();
                match first_at.get(key) {
                    Some(first) => errors.push(YamlError {
                        position: entry.key.position,
                        message: format!("key `{key}` is given twice (first at line {})", first.line),
                    }),
                    None => {
                        first_at.insert(key, entry.key.position);
                    }
                }
                collect_duplicates(&entry.value, errors);
            }
        }
    }
}

/// Whether `name` is a valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces `${VAR}`, `${VAR:-default}` and `$$` in `text`. A `$` followed by anything else
/// stays as it is (`$share/…`, `$SYS/…`). `${VAR:-default}` uses the default when the variable
/// is unset or empty, as a shell does.
pub fn interpolate_text(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner_and_tail) = after.strip_prefix('{') {
            let Some(close) = inner_and_tail.find('}') else {
                return Err(format!("`${{` without its closing `}}` in `{text}`"));
            };
            let inner = &inner_and_tail[..close];
            let (name, default) = match inner.find(":-") {
                Some(i) => (&inner[..i], Some(&inner[i + 2..])),
                None => (inner, None),
            };
            if !is_env_name(name) {
                return Err(format!(
                    "`${{{inner}}}` is not a valid reference: write `${{NAME}}` or `${{NAME:-default}}` \
                     (letters, digits and `_`; write `$$` for a literal `$`)"
                ));
            }
            match (env(name).filter(|v| !(default.is_some() && v.is_empty())), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (set it, or give a default: `${{{name}:-value}}`)"
                    ));
                }
            }
            rest = &inner_and_tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every scalar value of the tree (keys are left alone). A scalar that fails is
/// left as written and reported; the positions of failed scalars are returned with the errors
/// so that later stages do not report them a second time.
pub fn interpolate(node: &mut Node, env: &dyn Fn(&str) -> Option<String>) -> Vec<YamlError> {
    let mut errors = Vec::new();
    node.scalars_mut(&mut |position, scalar| match interpolate_text(&scalar.text, env) {
        Ok(text) => scalar.text = text,
        Err(message) => errors.push(YamlError { position, message }),
    });
    errors
}

#[cfg(test)]
#[path = "yaml_tests.rs"]
mod tests;
