//! A place in a pipeline file, as a path of keys and list indexes (`operators[2].hysteresis.exit`):
//! where a problem is. The loader turns it into a line and column.

use std::fmt;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    /// The value under a key.
    Key(String),
    /// The key itself (for problems with a name the user chose, such as a field name).
    KeyName(String),
    /// An item of a list.
    Index(usize),
}

/// Where in the file a problem is: `operators[2].hysteresis.exit`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path(pub Vec<Segment>);

impl Path {
    pub fn root() -> Path {
        Path(Vec::new())
    }

    pub fn key(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_string()));
        p
    }

    pub fn key_name(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::KeyName(key.to_string()));
        p
    }

    pub fn index(&self, index: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) | Segment::KeyName(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl Path {
    /// Whether `prefix` is this path or above it (a key and its name count as one step).
    pub fn starts_with(&self, prefix: &Path) -> bool {
        let same = |a: &Segment, b: &Segment| match (a, b) {
            (Segment::Key(x) | Segment::KeyName(x), Segment::Key(y) | Segment::KeyName(y)) => x == y,
            (Segment::Index(x), Segment::Index(y)) => x == y,
            _ => false,
        };
        prefix.0.len() <= self.0.len() && prefix.0.iter().zip(&self.0).all(|(a, b)| same(a, b))
    }
}

/// Whether `name` is a name plume accepts for pipelines, operators and fields: letters, digits,
/// `-` and `_`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A serde visitor's `expecting` text, for hand-written messages about a value in a pipeline
/// file (`expected a list of aggregates …, found the string `x``).
pub struct Expecting<'v, V>(pub &'v V);

impl<'de, V: serde::de::Visitor<'de>> std::fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
}
