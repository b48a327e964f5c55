//! Notification policy of one route's notifier: cooldown, quiet hours, severity, and the title
//! and body made from a small template.
//!
//! The policy runs on the **event time** of each record (an event's start for `event_start`,
//! its end for `event_end`, `ts` otherwise), not the wall clock: a replay of the same input makes
//! the same decisions, so the same deliveries (with the same ids) go into the outbox.
//!
//! - **Cooldown** `T`: an `event_start` of a device and operator within `T` of the last one that
//!   was notified is not notified, and neither is its `event_end`. Other records (health, …)
//!   are limited per device, operator and status.
//! - **Quiet hours** (`from`–`to` in a time zone): a notification whose time falls inside is held
//!   (unless its severity is listed in `critical`); held notifications are sent as one digest
//!   per target once a notification after the quiet hours arrives, or at the end of the run.
//! - **Templates**: `{device}`, `{operator}`, `{type}`, `{field}`, `{value}`, `{peak}`, `{mean}`,
//!   `{severity}`, `{status}`, `{start}`, `{end}`, `{time}` (local time in the quiet hours' zone,
//!   UTC otherwise), `{duration}`. An unknown `{name}` is left as written.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value;

use crate::spec::NotifyPolicySpec;

/// What to do with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Send,
    /// Quiet hours: hold until this event time (ms), then send in a digest.
    Hold {
        until_ms: i64,
    },
    /// Cooldown.
    Suppress,
}

/// The human-readable part of a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub title: String,
    pub body: String,
    pub severity: Option<String>,
    /// Event time of the record (ms).
    pub time_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("quiet hours: `{0}` is not HH:MM")]
    ClockTime(String),
    #[error("quiet hours: unknown time zone `{0}`")]
    TimeZone(String),
}

struct Quiet {
    from: u32,
    to: u32,
    tz: TimeZone,
    critical: Vec<String>,
}

pub struct Policy {
    cooldown_ms: Option<i64>,
    quiet: Option<Quiet>,
    title: Option<String>,
    body: Option<String>,
    /// Last notified time per (device, operator[, status]).
    last: HashMap<(String, String), i64>,
    /// Event starts not notified (cooldown), so their end is not notified either.
    suppressed: HashSet<(String, String, i64)>,
}

fn clock_minutes(s: &str) -> Result<u32, PolicyError> {
    let (h, m) = s.split_once(':').ok_or_else(|| PolicyError::ClockTime(s.into()))?;
    let h: u32 = h.parse().map_err(|_| PolicyError::ClockTime(s.into()))?;
    let m: u32 = m.parse().map_err(|_| PolicyError::ClockTime(s.into()))?;
    if h > 23 || m > 59 {
        return Err(PolicyError::ClockTime(s.into()));
    }
    Ok(h * 60 + m)
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn num_of(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// The event time of a record (ms).
pub fn event_time(record: &Value) -> i64 {
    let key = match str_of(record, "type") {
        Some("event_start") => "start_ts",
        Some("event_update") => "decided_ts",
        Some("event_end") => "end_ts",
        Some("window") => "window_end",
        _ => "ts",
    };
    record.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.1}")
    }
}

fn format_duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

impl Policy {
    pub fn new(spec: &NotifyPolicySpec) -> Result<Self, PolicyError> {
        let quiet = match &spec.quiet_hours {
            None => None,
            Some(q) => Some(Quiet {
                from: clock_minutes(&q.from)?,
                to: clock_minutes(&q.to)?,
                tz: TimeZone::get(&q.timezone).map_err(|_| PolicyError::TimeZone(q.timezone.clone()))?,
                critical: q.critical.clone(),
            }),
        };
        Ok(Policy {
            cooldown_ms: spec.cooldown.map(|d| d.as_millis() as i64),
            quiet,
            title: spec.title.clone(),
            body: spec.body.clone(),
            last: HashMap::new(),
            suppressed: HashSet::new(),
        })
    }

    fn tz(&self) -> TimeZone {
        self.quiet.as_ref().map_or(TimeZone::UTC, |q| q.tz.clone())
    }

    fn local(&self, ms: i64) -> String {
        match Timestamp::from_millisecond(ms) {
            Ok(t) => t.to_zoned(self.tz()).strftime("%Y-%m-%d %H:%M %Z").to_string(),
            Err(_) => ms.to_string(),
        }
    }

    /// The end of the quiet hours that `ms` falls in, if it does.
    pub fn quiet_until(&self, ms: i64) -> Option<i64> {
        let q = self.quiet.as_ref()?;
        let zoned = Timestamp::from_millisecond(ms).ok()?.to_zoned(q.tz.clone());
        let tod = zoned.hour() as u32 * 60 + zoned.minute() as u32;
        let inside = if q.from < q.to {
            tod >= q.from && tod < q.to
        } else {
            tod >= q.from || tod < q.to
        };
        if !inside {
            return None;
        }
        let date = if tod < q.to {
            zoned.date()
        } else {
            zoned.date().tomorrow().ok()?
        };
        let end = date
            .at((q.to / 60) as i8, (q.to % 60) as i8, 0, 0)
            .to_zoned(q.tz.clone())
            .ok()?;
        Some(end.timestamp().as_millisecond())
    }

    /// Decides about one record and renders its text.
    pub fn decide(&mut self, record: &Value) -> (Decision, Rendered) {
        let kind = str_of(record, "type").unwrap_or("");
        let device = str_of(record, "device").unwrap_or("").to_string();
        let operator = str_of(record, "operator").unwrap_or("").to_string();
        let time_ms = event_time(record);
        let severity = str_of(record, "severity").map(str::to_string);
        let rendered = Rendered {
            title: self.render(self.title.as_deref().unwrap_or(default_title(kind)), record),
            body: self.render(self.body.as_deref().unwrap_or(default_body(kind)), record),
            severity: severity.clone(),
            time_ms,
        };
        if let Some(cooldown) = self.cooldown_ms {
            let start_ts = record.get("start_ts").and_then(Value::as_i64).unwrap_or(time_ms);
            match kind {
                "event_end" => {
                    if self.suppressed.remove(&(device.clone(), operator.clone(), start_ts)) {
                        return (Decision::Suppress, rendered);
                    }
                }
                _ => {
                    let mut key_op = operator.clone();
                    if kind != "event_start" {
                        key_op.push(':');
                        key_op.push_str(str_of(record, "status").unwrap_or(kind));
                    }
                    let key = (device.clone(), key_op);
                    match self.last.get(&key) {
                        Some(&last) if time_ms >= last && time_ms - last < cooldown => {
                            if kind == "event_start" {
                                self.suppressed.insert((device, operator, start_ts));
                            }
                            return (Decision::Suppress, rendered);
                        }
                        _ => {
                            self.last.insert(key, time_ms);
                        }
                    }
                }
            }
        }
        if let Some(until_ms) = self.quiet_until(time_ms) {
            let critical = self
                .quiet
                .as_ref()
                .is_some_and(|q| severity.as_ref().is_some_and(|s| q.critical.iter().any(|c| c == s)));
            if !critical {
                return (Decision::Hold { until_ms }, rendered);
            }
        }
        (Decision::Send, rendered)
    }

    /// Fills in a template from a record.
    pub fn render(&self, template: &str, record: &Value) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) if after[..close].chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    let name = &after[..close];
                    match self.value(name, record) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push('{');
                            out.push_str(name);
                            out.push('}');
                        }
                    }
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn value(&self, name: &str, r: &Value) -> Option<String> {
        let text = |k| Some(str_of(r, k).unwrap_or("").to_string());
        let number = |k| Some(num_of(r, k).map(format_number).unwrap_or_else(|| "-".into()));
        let time = |k| Some(r.get(k).and_then(Value::as_i64).map_or("-".into(), |ms| self.local(ms)));
        match name {
            "device" | "operator" | "field" | "status" => text(name),
            "severity" => Some(str_of(r, "severity").unwrap_or("none").to_string()),
            "type" => text("type"),
            "value" | "peak" | "mean" => number(name),
            "start" => time("start_ts"),
            "end" => time("end_ts"),
            "time" => Some(self.local(event_time(r))),
            "duration" => Some(
                r.get("duration_ms")
                    .and_then(Value::as_i64)
                    .map_or("-".into(), format_duration),
            ),
            _ => None,
        }
    }
}

fn default_title(kind: &str) -> &'static str {
    match kind {
        "event_start" => "{device}: {field} is high ({peak})",
        "event_end" => "{device}: {field} back to normal",
        "health" => "{device}: sensor {status}",
        _ => "{device}: {operator} {type}",
    }
}

fn default_body(kind: &str) -> &'static str {
    match kind {
        "event_start" => "{field} reached {peak} at {start} (severity {severity}).",
        "event_end" => "{field} event over after {duration}: peak {peak}, mean {mean}.",
        "health" => "{device} reported {status} at {time}.",
        _ => "{type} from {operator} at {time}.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DurationSpec, QuietHoursSpec};
    use serde_json::json;

    fn start(device: &str, start_ts: i64, severity: Option<&str>) -> Value {
        let mut v = json!({"v":1,"type":"event_start","operator":"pm25_event","device":device,
            "field":"pm25","start_ts":start_ts,"value":40.0,"peak":52.5});
        if let Some(s) = severity {
            v["severity"] = json!(s);
        }
        v
    }

    fn end(device: &str, start_ts: i64, end_ts: i64) -> Value {
        json!({"v":1,"type":"event_end","operator":"pm25_event","device":device,"field":"pm25",
            "start_ts":start_ts,"end_ts":end_ts,"duration_ms":end_ts-start_ts,"peak":52.5,"mean":41.25})
    }

    #[test]
    fn cooldown_suppresses_a_restart_and_its_end() {
        let mut p = Policy::new(&NotifyPolicySpec {
            cooldown: Some(DurationSpec::from_millis(600_000)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.decide(&start("a", 0, None)).0, Decision::Send);
        assert_eq!(p.decide(&end("a", 0, 60_000)).0, Decision::Send);
        assert_eq!(p.decide(&start("a", 120_000, None)).0, Decision::Suppress);
        assert_eq!(p.decide(&start("b", 120_000, None)).0, Decision::Send, "other device");
        assert_eq!(p.decide(&end("a", 120_000, 180_000)).0, Decision::Suppress);
        assert_eq!(p.decide(&start("a", 600_000, None)).0, Decision::Send);
    }

    #[test]
    fn quiet_hours_hold_until_the_local_morning_except_critical() {
        let mut p = Policy::new(&NotifyPolicySpec {
            quiet_hours: Some(QuietHoursSpec {
                from: "22:00".into(),
                to: "07:00".into(),
                timezone: "Europe/Zurich".into(),
                critical: vec!["hazardous".into()],
            }),
            ..Default::default()
        })
        .unwrap();
        // 2024-01-15 23:30 in Zurich (UTC+1) = 22:30 UTC
        let t = Timestamp::from_second(1_705_357_800).unwrap().as_millisecond();
        let morning = jiff::civil::date(2024, 1, 16)
            .at(7, 0, 0, 0)
            .to_zoned(TimeZone::get("Europe/Zurich").unwrap())
            .unwrap()
            .timestamp()
            .as_millisecond();
        assert_eq!(p.decide(&start("a", t, None)).0, Decision::Hold { until_ms: morning });
        assert_eq!(p.decide(&start("b", t, Some("hazardous"))).0, Decision::Send);
        // 12:00 local: not quiet
        assert_eq!(
            p.decide(&start("c", t + 12 * 3_600_000 + 30 * 60_000, None)).0,
            Decision::Send
        );
        // 02:00 local the next night: until 07:00 the same day
        let (d, _) = p.decide(&start("d", morning - 5 * 3_600_000, None));
        assert_eq!(d, Decision::Hold { until_ms: morning });
    }

    #[test]
    fn templates_fill_in_the_record() {
        let p = Policy::new(&NotifyPolicySpec::default()).unwrap();
        let (_, r) = Policy::new(&NotifyPolicySpec::default())
            .unwrap()
            .decide(&end("lab-3", 0, 754_000));
        assert_eq!(r.title, "lab-3: pm25 back to normal");
        assert_eq!(r.body, "pm25 event over after 12m 34s: peak 52.5, mean 41.2.");
        assert_eq!(
            p.render("{device} {nope} {peak", &start("x", 0, Some("high"))),
            "x {nope} {peak"
        );
        assert_eq!(p.render("{severity}", &start("x", 0, Some("high"))), "high");
    }
}
