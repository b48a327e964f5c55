//! The operator chain: names, the fields each operator reads and produces, and each operator's
//! own settings.

use std::collections::BTreeMap;

use super::rules::is_name;
use super::{Available, Checker, MAX_FIELDS, Path, RESERVED_ROUTE_NAMES};
use crate::operators::{Report, SpecChecker};
use crate::spec::OperatorSpec;
use crate::spec::check::PLACEHOLDER_TEXT;
use crate::spec::de::suggest;

/// What is known of an operator of the chain: all of it, unless its part of the file was broken.
pub(super) struct Identity<'p> {
    /// Its kind; `None` when the kind itself was unknown.
    pub kind: Option<&'static str>,
    /// Its name for routes; `None` when unknown.
    pub name: Option<&'p str>,
    /// Whether the name was written (`name:`), not taken from the kind.
    pub explicit: bool,
    /// The field it produces (`Some(None)`: none); `None` when unknown.
    pub produces: Option<Option<String>>,
    /// Whether its part of the file was broken (its own checks are left out).
    pub broken: bool,
}

impl<'p> Checker<'p> {
    /// What is known of operator `i`.
    pub(super) fn identity(&self, i: usize) -> Identity<'p> {
        let spec: &'p OperatorSpec = &self.spec.operators[i];
        let path = Path::root().key("operators").index(i);
        let broken = self.gaps.touches(&path);
        if self.gaps.at(&path) {
            return Identity {
                kind: None,
                name: None,
                explicit: false,
                produces: None,
                broken,
            };
        }
        let readable = |text: &str| !text.contains(PLACEHOLDER_TEXT);
        let produces = spec.derived_field();
        Identity {
            kind: Some(spec.kind()),
            name: Some(spec.name()).filter(|n| readable(n)),
            explicit: spec.explicit_name().is_some(),
            produces: match &produces {
                Some(field) if !readable(field) => None,
                _ => Some(produces),
            },
            broken,
        }
    }

    /// Whether some operator's name or produced field is unknown.
    pub(super) fn chain_uncertain(&self) -> bool {
        (0..self.spec.operators.len()).any(|i| {
            let known = self.identity(i);
            known.name.is_none() || known.produces.is_none()
        })
    }

    pub(super) fn operators(&mut self) {
        let spec = self.spec;
        let mut available = Available {
            fields: BTreeMap::new(),
            uncertain: !self.fields_known(),
        };
        if self.fields_known() {
            for name in spec.decode.fields.keys() {
                available.fields.insert(name.clone(), "decode.fields".to_string());
            }
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, op) in spec.operators.iter().enumerate() {
            let known = self.identity(i);
            let path = Path::root()
                .key("operators")
                .index(i)
                .key(known.kind.unwrap_or("operator"));
            if let Some(name) = known.name {
                let explicit = known.explicit;
                let name_path = if explicit { path.key("name") } else { path.clone() };
                if let Some(first) = names.get(name) {
                    let hint = if explicit { "" } else { "; give each one its own `name`" };
                    self.report(
                        name_path.clone(),
                        format!("operator name `{name}` is already used by operators[{first}]{hint}"),
                    );
                } else {
                    names.insert(name, i);
                }
                if RESERVED_ROUTE_NAMES.contains(&name) {
                    self.report(
                        name_path.clone(),
                        format!("`{name}` is reserved for output routes: give the operator another name"),
                    );
                } else if explicit && !is_name(name) {
                    self.report(
                        name_path,
                        format!("operator name `{name}` may contain only letters, digits, `-` and `_`"),
                    );
                }
            }
            if known.broken {
                match known.produces {
                    Some(Some(field)) => {
                        available.fields.insert(field, format!("operators[{i}]"));
                    }
                    Some(None) => {}
                    None => available.uncertain = true,
                }
                continue;
            }
            op.check(&mut OperatorChecker {
                checker: self,
                index: i,
                name: op.name().to_string(),
                path: path.clone(),
                available: &available,
            });
            if let (Some(field), Some(key)) = (op.derived_field(), op.derived_field_key()) {
                if let Some(by) = available.fields.get(&field) {
                    self.report(
                        path.key(key),
                        format!(
                            "this {} produces a field named `{field}`, which {by} already provides; give it \
                             another `{key}`",
                            op.kind()
                        ),
                    );
                } else {
                    available.fields.insert(field, format!("operator `{}`", op.name()));
                }
            }
        }
        let total = available.fields.len();
        if total > MAX_FIELDS {
            self.report(
                Path::root().key("decode").key("fields"),
                format!(
                    "a pipeline can have at most {MAX_FIELDS} fields (declared and produced by operators); this one has {total}"
                ),
            );
        }
    }

    /// Reports a field an operator reads that is not available at its place in the chain.
    fn read_field(&mut self, path: Path, index: usize, operator: &str, field: &str, available: &Available) {
        if available.fields.contains_key(field) || available.uncertain {
            return;
        }
        let later = (index + 1..self.spec.operators.len()).find_map(|j| {
            let known = self.identity(j);
            (known.produces == Some(Some(field.to_string()))).then(|| (j, known.name.unwrap_or_default().to_string()))
        });
        let message = match later {
            Some((j, producer)) => format!(
                "operator `{operator}` reads field `{field}`, which is produced only later, by `{producer}` \
                 (operators[{j}]): move `{producer}` before it"
            ),
            None => {
                let mut m = format!(
                    "operator `{operator}` reads field `{field}`, which is neither declared in decode.fields nor produced \
                     by an earlier operator"
                );
                if let Some(s) = suggest(field, available.fields.keys().map(String::as_str)) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m
            }
        };
        self.report(path, message);
    }

    /// Reports `name` unless it names an operator of kind `kind` before operator `i`.
    fn earlier_operator(&mut self, i: usize, path: Path, key: &str, name: &str, kind: &'static str) {
        let count = self.spec.operators.len();
        let found = (0..count)
            .map(|j| (j, self.identity(j)))
            .find(|(_, k)| k.name == Some(name));
        let me = self.identity(i).kind.unwrap_or("operator");
        let message = match found {
            Some((j, known)) if known.kind == Some(kind) && j < i => return,
            Some((j, known)) if known.kind == Some(kind) => {
                let _ = known;
                format!("{kind} `{name}` (operators[{j}]) comes after this {me}: move it before")
            }
            Some((j, known)) => {
                format!(
                    "`{name}` (operators[{j}]) is a {}, not a {kind}",
                    known.kind.unwrap_or("operator")
                )
            }
            None if self.chain_uncertain() => return,
            None => {
                let mut m = format!("`{key}` must name an earlier {kind} operator; there is no operator `{name}`");
                let candidates: Vec<&str> = (0..i)
                    .map(|j| self.identity(j))
                    .filter(|k| k.kind == Some(kind))
                    .filter_map(|k| k.name)
                    .collect();
                if let Some(s) = suggest(name, candidates) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m
            }
        };
        self.report(path, message);
    }
}

/// One operator's view of the checker: its own checks ([`OperatorSpec::check`]) report through
/// it, and ask it what the chain around the operator provides.
struct OperatorChecker<'c, 'p> {
    checker: &'c mut Checker<'p>,
    index: usize,
    name: String,
    path: Path,
    available: &'c Available,
}

impl Report for OperatorChecker<'_, '_> {
    fn report(&mut self, path: Path, message: impl Into<String>) {
        self.checker.report(path, message)
    }
}

impl SpecChecker for OperatorChecker<'_, '_> {
    fn path(&self) -> Path {
        self.path.clone()
    }

    fn read_field(&mut self, path: Path, field: &str) {
        self.checker
            .read_field(path, self.index, &self.name, field, self.available)
    }

    fn earlier_operator(&mut self, path: Path, key: &str, name: &str, kind: &'static str) {
        self.checker.earlier_operator(self.index, path, key, name, kind)
    }
}
