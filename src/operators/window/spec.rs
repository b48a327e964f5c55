//! The window operator in the pipeline file: its spec, checks, compile step and summary.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WindowConfig;
use crate::model::DurationSpec;
use crate::model::location::Expecting;
use crate::operators::context::positive;
use crate::operators::settings::Aggregate;
use crate::operators::{CompileContext, CompileError, SpecChecker};

/// Event-time windows per device: tumbling (`every`) or sliding (`every` and `slide`). Results:
/// `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Name for routes and output records; default: the kind (`window`).
    #[serde(default)]
    pub name: Option<String>,
    /// Window length.
    pub every: DurationSpec,
    /// Hop between window starts (sliding windows, at most `every`, and at least `every` /
    /// 10,000: a reading falls in `every` / `slide` windows); absent: tumbling.
    #[serde(default)]
    pub slide: Option<DurationSpec>,
    /// Allowed lateness: the device's watermark is its largest event time minus this; later
    /// readings go to `late`.
    #[serde(default = "zero")]
    pub lateness: DurationSpec,
    /// The fields the list form of `aggregates` applies to.
    #[serde(default)]
    pub fields: Vec<String>,
    /// `[avg, max]` for every field in `fields`, or `{ pm25: [avg, max], co2: [avg] }` per field.
    /// `count` is always reported.
    pub aggregates: AggregatesSpec,
    /// Close a silent device's windows after this much processing time without readings.
    #[serde(default)]
    pub idle_flush: Option<DurationSpec>,
}

/// Aggregates of a window, for all fields or per field. Deserialized by hand (a list or a map)
/// so that an error inside either form keeps its position and says what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum AggregatesSpec {
    All(Vec<Aggregate>),
    PerField(BTreeMap<String, Vec<Aggregate>>),
}

impl<'de> Deserialize<'de> for AggregatesSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListOrMap;
        impl<'de> serde::de::Visitor<'de> for ListOrMap {
            type Value = AggregatesSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of aggregates such as `[avg, max]`, or a map of field to aggregates such as `{ pm25: [avg, max] }`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(AggregatesSpec::All)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                BTreeMap::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(AggregatesSpec::PerField)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the string `{v}`",
                    Expecting(&self)
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found the number {v}",
                    Expecting(&self)
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Err(E::custom(format!("expected {}, found `{v}`", Expecting(&self))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found nothing (null)",
                    Expecting(&self)
                )))
            }
        }
        deserializer.deserialize_any(ListOrMap)
    }
}

/// Most windows one reading may fall in (`every` / `slide`): each reading updates each of them,
/// and each device keeps them open, so the ratio bounds the work per reading and the memory per
/// device (a 24-hour window sliding every 10 s is 8,640).
pub const MAX_WINDOWS_PER_READING: i64 = 10_000;

fn windows_per_reading(every: DurationSpec, slide: DurationSpec) -> i64 {
    every.as_millis() / slide.as_millis().max(1)
}

fn zero() -> DurationSpec {
    DurationSpec::from_millis(0)
}

impl WindowSpec {
    pub(super) fn check<C: SpecChecker>(&self, checker: &mut C) {
        let w = self;
        let path = checker.path();
        checker.duration_positive(path.key("every"), "every", w.every);
        if let Some(slide) = w.slide {
            if !positive(slide) {
                checker.report(path.key("slide"), "`slide` must be longer than 0s");
            } else if slide > w.every {
                checker.report(
                    path.key("slide"),
                    format!("`slide` ({slide}) must not be longer than `every` ({})", w.every),
                );
            } else if windows_per_reading(w.every, slide) > MAX_WINDOWS_PER_READING {
                checker.report(
                    path.key("slide"),
                    format!(
                        "`slide` ({slide}) puts every reading in {} windows of `every` ({}); at most {MAX_WINDOWS_PER_READING}: \
                         make `slide` at least {}",
                        windows_per_reading(w.every, slide),
                        w.every,
                        DurationSpec::from_millis((w.every.as_millis() as u64).div_ceil(MAX_WINDOWS_PER_READING as u64))
                    ),
                );
            }
        }
        if let Some(idle) = w.idle_flush {
            checker.duration_positive(path.key("idle_flush"), "idle_flush", idle);
        }
        match &w.aggregates {
            AggregatesSpec::All(aggregates) => {
                if aggregates.is_empty() {
                    checker.report(
                        path.key("aggregates"),
                        "list at least one aggregate (such as `[avg, max]`)",
                    );
                }
                if w.fields.is_empty() {
                    checker.report(
                        path.key("aggregates"),
                        "the list form of `aggregates` applies to the fields in `fields`: add `fields: [pm25, …]`, \
                         or use the map form `aggregates: { pm25: [avg, max] }`",
                    );
                }
                for (j, field) in w.fields.iter().enumerate() {
                    checker.read_field(path.key("fields").index(j), field);
                }
            }
            AggregatesSpec::PerField(map) => {
                if !w.fields.is_empty() {
                    checker.report(
                        path.key("fields"),
                        "`fields` is used only with the list form of `aggregates`; with the map form, its keys are the fields",
                    );
                }
                if map.is_empty() {
                    checker.report(
                        path.key("aggregates"),
                        "name at least one field (such as `{ pm25: [avg, max] }`)",
                    );
                }
                for (field, aggregates) in map {
                    checker.read_field(path.key("aggregates").key_name(field), field);
                    if aggregates.is_empty() {
                        checker.report(
                            path.key("aggregates").key(field),
                            "list at least one aggregate (such as `[avg, max]`)",
                        );
                    }
                }
            }
        }
    }

    pub(super) fn compile(&self, context: &mut CompileContext<'_>) -> Result<WindowConfig, CompileError> {
        let w = self;
        let mut wanted = Vec::new();
        match &w.aggregates {
            AggregatesSpec::All(aggs) => {
                for f in &w.fields {
                    wanted.push((context.slot(f)?, f.clone(), aggs.clone()));
                }
            }
            AggregatesSpec::PerField(map) => {
                for (f, aggs) in map {
                    wanted.push((context.slot(f)?, f.clone(), aggs.clone()));
                }
            }
        }
        let size = w.every.as_millis();
        let slide = w.slide.map_or(size, |s| s.as_millis());
        if size <= 0 || slide <= 0 || slide > size {
            return Err(context.invalid("window `every` and `slide` must be positive and `slide` at most `every`"));
        }
        if size / slide > MAX_WINDOWS_PER_READING {
            return Err(context.invalid("a reading would fall in more than 10,000 sliding windows"));
        }
        Ok(WindowConfig::new(
            context.index,
            context.name.clone(),
            size,
            slide,
            w.lateness.as_millis(),
            w.idle_flush.map(|d| d.as_millis()),
            wanted,
        ))
    }

    pub(super) fn describe(&self, name: &str) -> String {
        let w = self;
        let aggregates = match &w.aggregates {
            AggregatesSpec::All(list) => format!(
                "{} of {}",
                list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("/"),
                w.fields.join(", ")
            ),
            AggregatesSpec::PerField(map) => map
                .iter()
                .map(|(f, list)| format!("{f} {}", list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("/")))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let slide = w.slide.map(|s| format!(" sliding by {s}")).unwrap_or_default();
        format!(
            "window `{name}`: every {}{slide}, lateness {}: {aggregates}",
            w.every, w.lateness
        )
    }
}
