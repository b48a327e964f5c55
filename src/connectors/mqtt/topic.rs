//! Topic templates (`sensors/{device}/air`): the subscription filter and the device id captured
//! from each received topic.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    Device,
}

/// A subscription topic with an optional `{device}` level (validated by the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

/// A received topic that does not fit the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMismatch;

impl TopicTemplate {
    pub fn parse(template: &str) -> Self {
        TopicTemplate {
            levels: template
                .split('/')
                .map(|l| match l {
                    "+" => Level::Plus,
                    "#" => Level::Hash,
                    "{device}" => Level::Device,
                    other => Level::Literal(other.to_string()),
                })
                .collect(),
        }
    }

    /// The MQTT subscription filter: `{device}` becomes `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Plus | Level::Device => "+",
                Level::Hash => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Matches a received topic: `Ok(Some(device))` with a `{device}` level, `Ok(None)` without.
    pub fn capture<'a>(&self, topic: &'a str) -> Result<Option<&'a str>, TopicMismatch> {
        let mut device = None;
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return Ok(device),
                _ => {
                    let part = parts.next().ok_or(TopicMismatch)?;
                    match level {
                        Level::Literal(s) if s != part => return Err(TopicMismatch),
                        Level::Device if part.is_empty() => return Err(TopicMismatch),
                        Level::Device => device = Some(part),
                        _ => {}
                    }
                }
            }
        }
        if parts.next().is_some() {
            return Err(TopicMismatch);
        }
        Ok(device)
    }
}

// ---------------------------------------------------------------------------------------------
// counters
