//! The dedup operator in the pipeline file: its spec, checks, compile step and summary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DedupConfig;
use crate::model::DurationSpec;
use crate::operators::{CompileContext, CompileError, SpecChecker};

/// Drops readings a device already sent: at-least-once gateways and brokers send some twice.
/// Put it first, so no later operator counts a reading twice. No results of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupSpec {
    /// Name for routes and output records; default: `dedup`.
    #[serde(default)]
    pub name: Option<String>,
    /// What makes a duplicate: `content` (the same event time and the same values) or `time`
    /// (the same event time, whatever the values).
    #[serde(default)]
    pub by: DedupBy,
    /// How far back (event time, behind the device's newest reading) duplicates are looked for.
    #[serde(default = "default_horizon")]
    pub horizon: DurationSpec,
    /// At most this many recent readings are remembered per device (the oldest are forgotten
    /// first), whatever the horizon: memory per device stays bounded.
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
}

/// See [`DedupSpec::by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DedupBy {
    #[default]
    Content,
    Time,
}

fn default_horizon() -> DurationSpec {
    DurationSpec::from_millis(10 * 60_000)
}

fn default_max_entries() -> u32 {
    128
}

/// The most readings remembered per device.
pub const MAX_ENTRIES: u32 = 4096;

impl DedupSpec {
    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let path = checker.path();
        checker.duration_positive(path.key("horizon"), "horizon", self.horizon);
        if self.max_entries == 0 || self.max_entries > MAX_ENTRIES {
            checker.report(
                path.key("max_entries"),
                format!("`max_entries` must be between 1 and {MAX_ENTRIES}"),
            );
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<DedupConfig, CompileError> {
        Ok(DedupConfig {
            index: context.index,
            name: context.name.clone(),
            by_content: self.by == DedupBy::Content,
            horizon_ms: self.horizon.as_millis(),
            max_entries: self.max_entries.clamp(1, MAX_ENTRIES) as usize,
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        let by = match self.by {
            DedupBy::Content => "event time and values",
            DedupBy::Time => "event time",
        };
        format!(
            "dedup `{name}`: drops a device's repeated readings (same {by}) within {} ms, at most {} remembered",
            self.horizon.as_millis(),
            self.max_entries
        )
    }
}
