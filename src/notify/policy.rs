//! Notification policy of one route's notifier: which records it notifies, cooldown, quiet
//! hours, severity, and the title and body made from a small template.
//!
//! The policy runs on the **event time** of each record (an event's start for `event_start`,
//! its end for `event_end`, `decided_ts` for `event_update`, `ts` otherwise), not the wall
//! clock: a replay of the same input makes the same decisions, so the same deliveries (with the
//! same ids) go into the outbox.
//!
//! - **Which records** (`notify_on`; `other` stands for every record that is not an event's,
//!   such as an offline report): absent, every record the route takes; present, only the
//!   listed kinds of event records: `start`, `end`, and the `reason` of an `event_update`
//!   (`escalation`, `de_escalation`, `reminder`; an update without a reason is an escalation).
//!   A record left out is [`Decision::Filtered`] before anything else: it starts no cooldown.
//! - **Cooldown** `T`: an `event_start` of a device and operator within `T` of the last one that
//!   was notified is not notified, and neither is its `event_end`. Other records (health, …)
//!   are limited per device, operator and status. Suppressed records are counted
//!   ([`PolicyState::suppressed_total`], the `plume_notifier_suppressed` metric).
//! - **Quiet hours** (`from`–`to` in a time zone): a notification whose time falls inside is held
//!   (unless its severity is listed in `critical`); held notifications are sent as one digest
//!   per target once a notification after the quiet hours arrives, or at the end of the run.
//! - **Templates**: `{device}`, `{operator}`, `{type}`, `{field}`, `{value}`, `{peak}`, `{mean}`,
//!   `{severity}`, `{status}`, `{start}`, `{end}`, `{time}` (local time in the quiet hours' zone,
//!   UTC otherwise), `{duration}`. An unknown `{name}` is left as written.
//!
//! # State, bounds and checkpoints
//! The cooldown's memory is [`PolicyState`]: the last notified time per (device, operator[,
//! status]), the event starts it suppressed (so their ends are suppressed too), the newest event
//! time seen, and counters. The notifier saves it with every checkpoint (as of the checkpoint's
//! input position: the hub flushes a sink for a checkpoint after the checkpoint's records and
//! before any later one) and restores it at start, so the replay after a crash decides exactly as
//! the run before it did: a cooldown begun before a restart still holds after it. The bytes are
//! [`encode_state`]: the store's envelope around [`POLICY_STATE_VERSION`] and bincode.
//!
//! It is bounded, on event time: every half cooldown of event time (at least a second), entries
//! whose cooldown has passed by more than [`LAG_ALLOWANCE_MS`] relative to the newest event
//! time the route saw are dropped, and so are suppressed starts older than
//! [`SUPPRESSED_START_HORIZON_MS`] (their end never came). Beyond `max_entries` (default
//! [`DEFAULT_MAX_ENTRIES`]) entries in all, the oldest tenth is evicted and counted
//! ([`PolicyState::evicted_total`]). The newest time is the route's, not the device's, and the
//! records of several shards reach the notifier interleaved as they come, so one device may be
//! behind another. The allowance keeps a device's entry while the device is less than that far
//! behind. Only a device further behind, or an entry the cap evicted, can be notified again
//! inside its cooldown; the decision then also depends on the interleaving, which a replay may
//! not repeat.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{NotifyOn, NotifyPolicySpec};

/// Cooldown entries a route keeps at most, unless its policy sets `max_entries`.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// How far (event time) a device may be behind the newest record of its route while its
/// cooldown entry is kept after its cooldown passed for the route: the shards' records
/// interleave at the notifier, and devices' clocks differ.
pub const LAG_ALLOWANCE_MS: i64 = 3_600_000;

/// A suppressed event start is forgotten when it is this much older (event time) than the newest
/// record: its end is then notified if it ever comes.
pub const SUPPRESSED_START_HORIZON_MS: i64 = 7 * 24 * 3600 * 1000;

/// The version of the stored [`PolicyState`], inside the store's envelope: bump it, and read the
/// old one, when its layout changes.
pub const POLICY_STATE_VERSION: u8 = 1;

/// What to do with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Send,
    /// Not among the policy's `notify_on`.
    Filtered,
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
    #[error("stored policy state: {0}")]
    StoredState(String),
}

/// The policy's memory, as saved with a checkpoint. Entries are sorted, so equal states encode
/// to equal bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// `(device, operator[:status], event time ms)` of the last notification of each key.
    pub last: Vec<(String, String, i64)>,
    /// `(device, operator, start_ts)` of event starts the cooldown suppressed.
    pub suppressed: Vec<(String, String, i64)>,
    /// The newest event time seen (`i64::MIN`: none yet).
    pub newest_ms: i64,
    /// When (event time) the entries are next checked against the cooldown.
    pub next_sweep_ms: i64,
    /// Records the cooldown suppressed, over the state's life.
    pub suppressed_total: u64,
    /// Entries evicted by `max_entries`, over the state's life.
    pub evicted_total: u64,
    /// The notifier's: when (event time) the notifications held by quiet hours are released as a
    /// digest (`i64::MAX`: none held).
    pub release_at_ms: i64,
}

impl Default for PolicyState {
    fn default() -> Self {
        PolicyState {
            last: Vec::new(),
            suppressed: Vec::new(),
            newest_ms: i64::MIN,
            next_sweep_ms: i64::MIN,
            suppressed_total: 0,
            evicted_total: 0,
            release_at_ms: i64::MAX,
        }
    }
}

/// The stored bytes of `state`: the store's envelope around [`POLICY_STATE_VERSION`] and bincode.
pub fn encode_state(state: &PolicyState) -> Vec<u8> {
    let mut payload = vec![POLICY_STATE_VERSION];
    payload.extend(
        bincode::serde::encode_to_vec(state, bincode::config::standard()).expect("encoding to a Vec cannot fail"),
    );
    crate::store::seal(&payload)
}

/// Reads what [`encode_state`] wrote (damage and forged lengths are errors, not panics).
pub fn decode_state(bytes: &[u8]) -> Result<PolicyState, PolicyError> {
    let payload = crate::store::unseal(bytes).map_err(PolicyError::StoredState)?;
    match payload.split_first() {
        Some((&POLICY_STATE_VERSION, rest)) => crate::model::codec::bincode_decode(rest)
            .map(|(state, _)| state)
            .map_err(|e| PolicyError::StoredState(e.to_string())),
        Some((v, _)) => Err(PolicyError::StoredState(format!(
            "version {v}, this plume reads version {POLICY_STATE_VERSION}"
        ))),
        None => Err(PolicyError::StoredState("empty".into())),
    }
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
    /// Only these kinds of event records (`None`: every record).
    notify_on: Option<Vec<NotifyOn>>,
    max_entries: usize,
    /// Last notified time per (device, operator[, status]).
    last: HashMap<(String, String), i64>,
    /// Event starts not notified (cooldown), so their end is not notified either.
    suppressed: HashSet<(String, String, i64)>,
    newest_ms: i64,
    next_sweep_ms: i64,
    suppressed_total: u64,
    evicted_total: u64,
    /// Whether anything above changed since [`Policy::mark_saved`].
    changed: bool,
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
            notify_on: spec.notify_on.clone(),
            max_entries: spec.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES).max(1) as usize,
            last: HashMap::new(),
            suppressed: HashSet::new(),
            newest_ms: i64::MIN,
            next_sweep_ms: i64::MIN,
            suppressed_total: 0,
            evicted_total: 0,
            changed: false,
        })
    }

    /// The memory to save with a checkpoint (`release_at_ms` left at "none held": the notifier
    /// fills it in).
    pub fn state(&self) -> PolicyState {
        let mut last: Vec<(String, String, i64)> =
            self.last.iter().map(|((d, k), t)| (d.clone(), k.clone(), *t)).collect();
        last.sort_unstable();
        let mut suppressed: Vec<(String, String, i64)> = self.suppressed.iter().cloned().collect();
        suppressed.sort_unstable();
        PolicyState {
            last,
            suppressed,
            newest_ms: self.newest_ms,
            next_sweep_ms: self.next_sweep_ms,
            suppressed_total: self.suppressed_total,
            evicted_total: self.evicted_total,
            release_at_ms: i64::MAX,
        }
    }

    /// Continues from a saved state (a restart): the same records get the same decisions as
    /// they would have before it.
    pub fn restore(&mut self, state: PolicyState) {
        self.last = state.last.into_iter().map(|(d, k, t)| ((d, k), t)).collect();
        self.suppressed = state.suppressed.into_iter().collect();
        self.newest_ms = state.newest_ms;
        self.next_sweep_ms = state.next_sweep_ms;
        self.suppressed_total = state.suppressed_total;
        self.evicted_total = state.evicted_total;
        self.changed = false;
        self.enforce_cap();
    }

    /// Adds the entries another member's policy had for devices whose partitions this member
    /// took over (`last`: the newer time of a key wins), so that a move changes no decision.
    pub fn merge(&mut self, last: Vec<(String, String, i64)>, suppressed: Vec<(String, String, i64)>) {
        for (device, key, t) in last {
            let entry = self.last.entry((device, key)).or_insert(i64::MIN);
            if t > *entry {
                *entry = t;
                self.changed = true;
            }
        }
        for s in suppressed {
            if self.suppressed.insert(s) {
                self.changed = true;
            }
        }
        self.enforce_cap();
    }

    /// Whether the state changed since [`Policy::mark_saved`] (then it needs saving again).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The state as it is now was saved.
    pub fn mark_saved(&mut self) {
        self.changed = false;
    }

    /// Cooldown entries held now.
    pub fn entries(&self) -> usize {
        self.last.len() + self.suppressed.len()
    }

    /// Records the cooldown suppressed, over the state's life (restored with it).
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }

    /// Entries evicted by `max_entries`, over the state's life.
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total
    }

    /// Whether `notify_on` takes `record`.
    fn wanted(&self, record: &Value) -> bool {
        let Some(notify_on) = &self.notify_on else {
            return true;
        };
        let kind = match str_of(record, "type") {
            Some("event_start") => NotifyOn::Start,
            Some("event_end") => NotifyOn::End,
            Some("event_update") => match str_of(record, "reason") {
                None | Some("escalation") => NotifyOn::Escalation,
                Some("de_escalation") => NotifyOn::DeEscalation,
                Some("reminder") => NotifyOn::Reminder,
                Some(_) => return false,
            },
            _ => NotifyOn::Other,
        };
        notify_on.contains(&kind)
    }

    /// Moves the newest event time on and drops what the cooldown no longer needs.
    fn observe(&mut self, time_ms: i64, cooldown: i64) {
        if time_ms > self.newest_ms {
            self.newest_ms = time_ms;
            self.changed = true;
        }
        if self.newest_ms < self.next_sweep_ms {
            return;
        }
        let newest = self.newest_ms;
        self.last
            .retain(|_, t| t.saturating_add(cooldown).saturating_add(LAG_ALLOWANCE_MS) > newest);
        self.suppressed
            .retain(|(_, _, start)| start.saturating_add(SUPPRESSED_START_HORIZON_MS) > newest);
        self.next_sweep_ms = newest.saturating_add((cooldown / 2).max(1000));
        self.changed = true;
    }

    /// Beyond `max_entries`: evicts the oldest tenth (by event time), counted.
    fn enforce_cap(&mut self) {
        let total = self.entries();
        if total <= self.max_entries {
            return;
        }
        let keep = self.max_entries - (self.max_entries / 10).max(1).min(self.max_entries - 1);
        let evict = total - keep;
        let mut times: Vec<i64> = self
            .last
            .values()
            .copied()
            .chain(self.suppressed.iter().map(|(_, _, t)| *t))
            .collect();
        let (_, &mut cut, _) = times.select_nth_unstable(evict - 1);
        // everything older than the cut goes, then entries at the cut in key order (not the
        // hash maps' order, which differs between processes) until `evict` are gone
        let at_cut = evict - times.iter().filter(|&&t| t < cut).count();
        self.last.retain(|_, t| *t >= cut);
        self.suppressed.retain(|(_, _, t)| *t >= cut);
        let mut tied_last: Vec<(String, String)> = self
            .last
            .iter()
            .filter(|(_, t)| **t == cut)
            .map(|(k, _)| k.clone())
            .collect();
        tied_last.sort_unstable();
        let mut tied_suppressed: Vec<(String, String, i64)> =
            self.suppressed.iter().filter(|(_, _, t)| *t == cut).cloned().collect();
        tied_suppressed.sort_unstable();
        for key in tied_last.iter().take(at_cut) {
            self.last.remove(key);
        }
        for key in tied_suppressed.iter().take(at_cut.saturating_sub(tied_last.len())) {
            self.suppressed.remove(key);
        }
        self.evicted_total += (total - self.entries()) as u64;
        self.changed = true;
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
        if !self.wanted(record) {
            return (Decision::Filtered, rendered);
        }
        if let Some(cooldown) = self.cooldown_ms {
            self.observe(time_ms, cooldown);
            let start_ts = record.get("start_ts").and_then(Value::as_i64).unwrap_or(time_ms);
            match kind {
                "event_end" => {
                    if self.suppressed.remove(&(device.clone(), operator.clone(), start_ts)) {
                        self.suppressed_total += 1;
                        self.changed = true;
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
                    self.changed = true;
                    match self.last.get(&key) {
                        Some(&last) if time_ms >= last && time_ms - last < cooldown => {
                            self.suppressed_total += 1;
                            if kind == "event_start" {
                                self.suppressed.insert((device, operator, start_ts));
                                self.enforce_cap();
                            }
                            return (Decision::Suppress, rendered);
                        }
                        _ => {
                            self.last.insert(key, time_ms);
                            self.enforce_cap();
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

    fn update(device: &str, start_ts: i64, decided_ts: i64, reason: Option<&str>) -> Value {
        let mut v = json!({"v":1,"type":"event_update","operator":"pm25_event","device":device,
            "field":"pm25","start_ts":start_ts,"decided_ts":decided_ts,"peak":80.0,"severity":"high"});
        if let Some(r) = reason {
            v["reason"] = json!(r);
        }
        v
    }

    fn health(device: &str, ts: i64) -> Value {
        json!({"v":1,"type":"health","operator":"sensor","device":device,"status":"offline","ts":ts})
    }

    fn policy(cooldown_ms: Option<i64>, notify_on: Option<Vec<NotifyOn>>, max_entries: Option<u64>) -> Policy {
        Policy::new(&NotifyPolicySpec {
            cooldown: cooldown_ms.map(|ms| DurationSpec::from_millis(ms as u64)),
            notify_on,
            max_entries,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn notify_on_escalation_pages_only_on_escalations() {
        let mut p = policy(None, Some(vec![NotifyOn::Escalation]), None);
        assert_eq!(p.decide(&start("a", 0, None)).0, Decision::Filtered);
        assert_eq!(
            p.decide(&update("a", 0, 10, None)).0,
            Decision::Send,
            "no reason: an escalation"
        );
        assert_eq!(p.decide(&update("a", 0, 20, Some("escalation"))).0, Decision::Send);
        assert_eq!(
            p.decide(&update("a", 0, 30, Some("de_escalation"))).0,
            Decision::Filtered
        );
        assert_eq!(p.decide(&update("a", 0, 40, Some("reminder"))).0, Decision::Filtered);
        assert_eq!(
            p.decide(&update("a", 0, 45, Some("something_new"))).0,
            Decision::Filtered
        );
        assert_eq!(p.decide(&end("a", 0, 50)).0, Decision::Filtered);
        assert_eq!(p.decide(&health("a", 60)).0, Decision::Filtered, "not an event record");
    }

    #[test]
    fn notify_on_start_and_escalation_and_the_default_of_everything() {
        let mut p = policy(None, Some(vec![NotifyOn::Start, NotifyOn::Escalation]), None);
        let decisions: Vec<Decision> = [
            start("a", 0, None),
            update("a", 0, 10, Some("escalation")),
            update("a", 0, 20, Some("reminder")),
            update("a", 0, 30, Some("de_escalation")),
            end("a", 0, 40),
        ]
        .iter()
        .map(|r| p.decide(r).0)
        .collect();
        use Decision::*;
        assert_eq!(decisions, [Send, Send, Filtered, Filtered, Filtered]);
        let mut p = policy(
            None,
            Some(vec![NotifyOn::DeEscalation, NotifyOn::Reminder, NotifyOn::End]),
            None,
        );
        assert_eq!(p.decide(&update("a", 0, 20, Some("reminder"))).0, Send);
        assert_eq!(p.decide(&update("a", 0, 30, Some("de_escalation"))).0, Send);
        assert_eq!(p.decide(&end("a", 0, 40)).0, Send);
        assert_eq!(p.decide(&health("a", 50)).0, Filtered, "not an event record");
        // `other`: records that are not an event's (an offline report) besides the escalations
        let mut p = policy(None, Some(vec![NotifyOn::Escalation, NotifyOn::Other]), None);
        assert_eq!(p.decide(&health("a", 50)).0, Send);
        assert_eq!(p.decide(&start("a", 60, None)).0, Filtered);
        let mut p = policy(None, None, None);
        for r in [
            start("a", 0, None),
            update("a", 0, 10, Some("reminder")),
            update("a", 0, 20, Some("something_new")),
            end("a", 0, 30),
            health("a", 40),
        ] {
            assert_eq!(p.decide(&r).0, Send, "no notify_on: everything, as before it existed");
        }
    }

    #[test]
    fn a_record_left_out_by_notify_on_starts_no_cooldown() {
        let mut p = policy(Some(600_000), Some(vec![NotifyOn::Escalation]), None);
        assert_eq!(p.decide(&start("a", 0, None)).0, Decision::Filtered);
        assert_eq!(p.decide(&update("a", 0, 1_000, None)).0, Decision::Send);
        assert_eq!(
            p.decide(&update("a", 0, 2_000, None)).0,
            Decision::Suppress,
            "within the cooldown"
        );
        assert_eq!(p.suppressed_total(), 1);
        assert_eq!(p.entries(), 1, "only the escalation's entry");
    }

    #[test]
    fn cooldown_entries_stay_bounded_by_event_time_under_a_long_stream_of_new_devices() {
        // one new device every second of event time for a day; cooldown 10 min
        let cooldown = 600_000;
        let mut p = policy(Some(cooldown), None, None);
        let mut most = 0;
        for i in 0..86_400i64 {
            let t = i * 1000;
            assert_eq!(p.decide(&start(&format!("d{i}"), t, None)).0, Decision::Send);
            most = most.max(p.entries());
        }
        // at most the devices of one cooldown, the lag allowance and the half cooldown between
        // sweeps
        assert!(most <= 600 + 3600 + 300 + 1, "at most {most} entries");
        assert!(
            most >= 4200,
            "entries are kept for the cooldown and the allowance: {most}"
        );
        assert_eq!(p.evicted_total(), 0, "time, not the cap, bounded it");
        // a device notified within the last cooldown is still suppressed
        assert_eq!(p.decide(&start("d86399", 86_400_000, None)).0, Decision::Suppress);
    }

    #[test]
    fn the_entry_cap_evicts_the_oldest_and_counts_them() {
        // no time bound can help: every record is within one cooldown
        let mut p = policy(Some(1_000_000_000), None, Some(1_000));
        for i in 0..10_000i64 {
            p.decide(&start(&format!("d{i}"), i, None));
            assert!(p.entries() <= 1_000, "{} entries after {i}", p.entries());
        }
        assert!(p.entries() >= 900, "a tenth at a time: {}", p.entries());
        assert_eq!(p.evicted_total(), 10_000 - p.entries() as u64);
        // the newest are kept (suppressed again), the oldest were evicted (sent again)
        assert_eq!(p.decide(&start("d9999", 20_000, None)).0, Decision::Suppress);
        assert_eq!(p.decide(&start("d0", 20_000, None)).0, Decision::Send);
    }

    #[test]
    fn the_cap_evicts_entries_of_the_same_time_in_key_order() {
        // a burst: every start at the same event time
        let mut p = policy(Some(600_000), None, Some(10));
        for i in 0..11 {
            p.decide(&start(&format!("d{i:02}"), 0, None));
        }
        assert_eq!(p.evicted_total(), 2, "a tenth of 10, down to 9");
        let kept: Vec<String> = p.state().last.into_iter().map(|(d, _, _)| d).collect();
        let want: Vec<String> = (2..11).map(|i| format!("d{i:02}")).collect();
        assert_eq!(kept, want, "the first keys went, whatever the hash maps' order");
    }

    #[test]
    fn suppressed_starts_go_at_their_end_or_after_the_horizon() {
        let mut p = policy(Some(600_000), None, None);
        p.decide(&start("a", 0, None));
        assert_eq!(p.decide(&start("a", 60_000, None)).0, Decision::Suppress);
        assert_eq!(p.entries(), 2, "the last notification and the suppressed start");
        assert_eq!(p.decide(&end("a", 60_000, 90_000)).0, Decision::Suppress);
        assert_eq!(p.entries(), 1, "the end took its start with it");
        // a suppressed start whose end never comes
        assert_eq!(p.decide(&start("a", 120_000, None)).0, Decision::Suppress);
        assert_eq!(p.entries(), 2);
        p.decide(&start("b", 120_000 + SUPPRESSED_START_HORIZON_MS, None));
        assert_eq!(
            p.entries(),
            1,
            "only b's: a's entry timed out with its cooldown and the allowance, its start with the horizon"
        );
        assert_eq!(
            p.decide(&end("a", 120_000, 130_000)).0,
            Decision::Send,
            "forgotten: notified"
        );
    }

    /// A stream of starts and ends of a few devices with a cooldown, as records.
    fn stream() -> Vec<Value> {
        let mut records = Vec::new();
        for i in 0..400i64 {
            // a few devices often (suppressed), many rarely (evicted by the cap before they recur)
            let device = if i % 2 == 0 {
                format!("hot{}", i % 3)
            } else {
                format!("d{}", i % 37)
            };
            let t = i * 97_000;
            records.push(start(&device, t, None));
            records.push(end(&device, t, t + 50_000));
            if i % 3 == 0 {
                records.push(health(&device, t + 60_000));
            }
        }
        records
    }

    #[test]
    fn a_restored_state_decides_every_later_record_as_the_unbroken_run_does() {
        let records = stream();
        let cooldown = Some(3_600_000);
        let mut unbroken = policy(cooldown, None, Some(20));
        let want: Vec<Decision> = records.iter().map(|r| unbroken.decide(r).0).collect();
        assert!(want.contains(&Decision::Suppress) && want.contains(&Decision::Send));
        assert!(unbroken.evicted_total() > 0, "the cap took part");
        for cut in [1, 13, 200, 555, records.len() - 1] {
            let mut before = policy(cooldown, None, Some(20));
            let mut got: Vec<Decision> = records[..cut].iter().map(|r| before.decide(r).0).collect();
            let bytes = encode_state(&before.state());
            let mut after = policy(cooldown, None, Some(20));
            after.restore(decode_state(&bytes).unwrap());
            got.extend(records[cut..].iter().map(|r| after.decide(r).0));
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(after.state(), unbroken.state(), "cut at {cut}");
        }
    }

    /// The stored bytes of a small state, written by this version: a change of the layout must
    /// bump `POLICY_STATE_VERSION` (and read the old one), not change these silently.
    const STATE_FIXTURE_HEX: &str = "5001005632918d82d74f3b0102056c61622d310a706d32355f6576656e74fd00d0ca9f17030000056c61622d320e73656e736f723a6f66666c696e65fdc0a4cc9f1703000001056c61622d310a706d32355f6576656e74fd40ddcd9f17030000fd40ddcd9f17030000fd0005d79f170300000301fd002a2da217030000";

    fn fixture_state() -> PolicyState {
        PolicyState {
            last: vec![
                ("lab-1".into(), "pm25_event".into(), 1_700_000_000_000),
                ("lab-2".into(), "sensor:offline".into(), 1_700_000_060_000),
            ],
            suppressed: vec![("lab-1".into(), "pm25_event".into(), 1_700_000_100_000)],
            newest_ms: 1_700_000_100_000,
            next_sweep_ms: 1_700_000_400_000,
            suppressed_total: 3,
            evicted_total: 1,
            release_at_ms: 1_700_020_000_000,
        }
    }

    #[test]
    fn the_stored_state_fixture_still_decodes_and_encodes_to_the_same_bytes() {
        let bytes = encode_state(&fixture_state());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, STATE_FIXTURE_HEX, "the stored bytes changed");
        let stored: Vec<u8> = (0..STATE_FIXTURE_HEX.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&STATE_FIXTURE_HEX[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(decode_state(&stored).unwrap(), fixture_state());
        // another version, damage and a forged length are errors
        let mut other = vec![POLICY_STATE_VERSION + 1];
        other.extend_from_slice(&crate::store::unseal(&stored).unwrap()[1..]);
        let e = decode_state(&crate::store::seal(&other)).unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
        let mut damaged = stored.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(decode_state(&damaged).is_err());
        let forged = crate::store::seal(&[POLICY_STATE_VERSION, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        assert!(decode_state(&forged).is_err());
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
