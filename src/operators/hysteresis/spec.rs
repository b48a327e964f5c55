//! The hysteresis operator in the pipeline file: its spec, checks, compile step and summary.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HysteresisConfig;
use crate::model::DurationSpec;
use crate::operators::context::positive;
use crate::operators::settings::Direction;
use crate::operators::{CompileContext, CompileError, SpecChecker};

/// Pollution events with enter/exit thresholds and debounce. Results: `event_start`,
/// `event_update` (the peak entered a higher `severity` band while open), `event_end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HysteresisSpec {
    /// Name for routes and output records; default: `hysteresis`.
    #[serde(default)]
    pub name: Option<String>,
    /// The field watched.
    pub field: String,
    /// An event opens when the value reaches this (`>=` above, `<=` below).
    pub enter: f64,
    /// An open event closes when the value reaches this; not above `enter` (direction above), not
    /// below it (below).
    pub exit: f64,
    /// `above`: high values are bad (PM2.5, CO2); `below`: low values are bad (humidity too low).
    #[serde(default)]
    pub direction: Direction,
    /// The enter condition must hold this long (event time) before the event opens.
    #[serde(default)]
    pub min_duration: Option<DurationSpec>,
    /// The exit condition must hold this long (event time) before the event closes.
    #[serde(default)]
    pub min_clear: Option<DurationSpec>,
    /// Severity bands by peak value: `{ moderate: 35, high: 55, severe: 150 }`.
    #[serde(default)]
    pub severity: BTreeMap<String, f64>,
    /// An event decided on a reading older than this when plume processed it (a gateway
    /// uploading hours of history, a replay) is marked `backfill: true` with its
    /// `backfill_lag_ms`; a route with `backfill: skip` keeps such events from pages.
    // (left out of the serialized spec when unset: the pipeline hash of files from before it
    // stays the same, and their checkpoints usable)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_after: Option<DurationSpec>,
    /// A more severe band is announced (`event_update`, reason `escalation`) once the value
    /// stayed in it this long (event time); default: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after: Option<DurationSpec>,
    /// A less severe band is announced (reason `de_escalation`) once the value stayed in it this
    /// long; default: an event keeps its worst band until it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub de_escalate_after: Option<DurationSpec>,
    /// While an event stays open, an `event_update` (reason `reminder`) this long (event time)
    /// after its last record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_every: Option<DurationSpec>,
    /// An open event whose device sends nothing for this long ends with `ended_by: silence`
    /// (the air was not seen to clear); default: it stays open until the device reports again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// A value an earlier operator doubts (a `health` flatline, a `calibrate` still learning):
    /// `use` it as any other (default), `mark` the events it decides (`suspect: true`), or
    /// `suppress` it (as if absent: no event opens on a stuck value).
    #[serde(default, skip_serializing_if = "Suspect::is_use")]
    pub suspect: Suspect,
}

/// See [`HysteresisSpec::suspect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Suspect {
    #[default]
    Use,
    Mark,
    Suppress,
}

impl Suspect {
    pub fn is_use(&self) -> bool {
        *self == Suspect::Use
    }
}

impl HysteresisSpec {
    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let h = self;
        let path = checker.path();
        checker.read_field(path.key("field"), &h.field);
        let enter_ok = checker.finite(path.key("enter"), "enter", h.enter);
        let exit_ok = checker.finite(path.key("exit"), "exit", h.exit);
        if enter_ok && exit_ok {
            match h.direction {
                Direction::Above if h.exit > h.enter => checker.report(
                    path.key("exit"),
                    format!(
                        "`exit` ({}) is above `enter` ({}): with direction above, an event opens when the value rises to \
                         `enter` and closes when it falls to `exit`, so `exit` must not be above `enter`",
                        h.exit, h.enter
                    ),
                ),
                Direction::Below if h.exit < h.enter => checker.report(
                    path.key("exit"),
                    format!(
                        "`exit` ({}) is below `enter` ({}): with direction below, an event opens when the value falls to \
                         `enter` and closes when it rises to `exit`, so `exit` must not be below `enter`",
                        h.exit, h.enter
                    ),
                ),
                _ => {}
            }
        }
        for (band, value) in &h.severity {
            checker.finite(path.key("severity").key(band), band, *value);
        }
        h.check_ladder(checker);
        for (key, d) in [
            ("min_duration", h.min_duration),
            ("min_clear", h.min_clear),
            ("backfill_after", h.backfill_after),
            ("de_escalate_after", h.de_escalate_after),
            ("remind_every", h.remind_every),
            ("timeout", h.timeout),
        ] {
            if d.is_some_and(|d| !positive(d)) {
                checker.report(
                    path.key(key),
                    format!("`{key}` must be longer than 0s (leave it out for none)"),
                );
            }
        }
    }

    pub(super) fn check_ladder<C: SpecChecker>(&self, checker: &mut C) {
        let path = checker.path();
        if self.severity.is_empty() {
            for (key, set) in [
                ("escalate_after", self.escalate_after.is_some()),
                ("de_escalate_after", self.de_escalate_after.is_some()),
            ] {
                if set {
                    checker.report(
                        path.key(key),
                        format!("`{key}` changes an event's severity band, but there are no `severity` bands"),
                    );
                }
            }
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<HysteresisConfig, CompileError> {
        let h = self;
        let slot = context.slot(&h.field)?;
        let mut severity: Vec<(String, f64)> = h.severity.iter().map(|(k, v)| (k.clone(), *v)).collect();
        severity.sort_by(|a, b| a.1.total_cmp(&b.1));
        if h.direction == Direction::Below {
            severity.reverse();
        }
        Ok(HysteresisConfig {
            index: context.index,
            name: context.name.clone(),
            slot,
            field: h.field.clone(),
            enter: h.enter,
            exit: h.exit,
            direction: h.direction,
            min_duration_ms: h.min_duration.map_or(0, |d| d.as_millis()),
            min_clear_ms: h.min_clear.map_or(0, |d| d.as_millis()),
            backfill_after_ms: h.backfill_after.map(|d| d.as_millis()),
            escalate_after_ms: h.escalate_after.map_or(0, |d| d.as_millis()),
            de_escalate_after_ms: h.de_escalate_after.map(|d| d.as_millis()),
            remind_every_ms: h.remind_every.map(|d| d.as_millis()),
            timeout_ms: h.timeout.map(|d| d.as_millis()),
            suspect: h.suspect,
            severity,
        })
    }

    pub(super) fn describe(&self, name: &str) -> String {
        let h = self;
        let (enter, exit) = match h.direction {
            Direction::Above => (">=", "<="),
            Direction::Below => ("<=", ">="),
        };
        let debounce = h
            .min_duration
            .map(|d| format!(", for at least {d}"))
            .unwrap_or_default();
        let mut bands: Vec<(&String, &f64)> = h.severity.iter().collect();
        bands.sort_by(|a, b| a.1.total_cmp(b.1));
        let bands = if bands.is_empty() {
            String::new()
        } else {
            format!(
                ", severity {}",
                bands
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "hysteresis `{name}`: {} {enter} {} opens, {exit} {} closes{debounce}{bands}",
            h.field, h.enter, h.exit
        )
    }
}
