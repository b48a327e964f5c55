//! Scoring a pipeline's records against the ground truth of a labelled fleet
//! ([`super::fleet`]), for `plume score`. Pure functions over parsed lines: [`read_truth`] and
//! [`read_records`] parse, [`score`] measures, [`Score::table`] prints.
//!
//! # What is measured
//! An **alert** is one event of the event operator (`--event-operator`): its `event_start` and
//! `event_end` (the same device and `start_ts`), or, for a `threshold` operator, a `threshold`
//! record with `beyond: true` up to the next one with `beyond: false`. Times of a device whose
//! clock is skewed (truth `skew`) are moved back to true time first. An alert *overlaps* a true
//! episode when `[start_ts, end_ts]` (an alert never ended: `[start_ts, decided_ts]`) meets
//! `[episode start - tolerance, episode end + tolerance]`.
//!
//! - **Recall**: scored true episodes overlapped by at least one alert, over scored episodes.
//!   Episodes that overlap an `offline` period, or a `stuck` period of `pm25`, are not scored
//!   (the readings that would show them are missing or replaced); they are counted as excluded.
//!   Episodes held back by a `backfill` are scored: their records are history, but they are
//!   still expected in the records (only not among the pages).
//! - **Precision**: alerts that overlap a true episode and did not start inside a `stuck` period
//!   of the alert's field (a field named `pm25_smooth` counts as `pm25`), over all alerts.
//! - **Flaps**: for each true episode, the alerts overlapping it beyond the first.
//! - **Detection delay**: for each detected scored episode, `decided_ts` of the first alert
//!   overlapping it minus the episode's start (p50, p95, max).
//! - **Pages** (`--pages`, the records routed to a pager): how many, how many are events
//!   (`event_*` or `threshold` records) decided on history that arrived late (the reading they
//!   were decided on, `decided_ts`, or their data time without one, lies in a `backfill` period
//!   of the device and its upload arrived more than `--history-after` later), and how many scored
//!   episodes that were *not* held back got a page (an `event_start` or `threshold` start).
//! - **Backfill marks**: alerts marked `backfill: true` that were decided on live data, and
//!   alerts decided on history (as for pages) that are not marked.
//! - **Offline**: a truth `offline` period of at least `offline_after` must be reported (and so
//!   must a `backfill` period, from its start to its upload's arrival: live, the device was as
//!   silent as an offline one): a
//!   `health` record of the health operator with `status: offline` whose `ts` (the last reading
//!   before the silence) lies from one interval plus the tolerance before the period's start to
//!   its end. Periods shorter than `offline_after` minus two intervals must not be (a report
//!   that matches no period long enough is a false offline). The delay needs the time plume
//!   decided; a record with a `decided_ts` gives it (in intervals after `start + offline_after`);
//!   offline records without one are counted as having no decision time. **Reported as clean
//!   air**: alerts whose `end_ts` lies in an offline period (closed because readings stopped).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead};

use serde::Serialize;

use super::fleet::{TruthKind, TruthRecord};

/// Why inputs could not be scored: the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{file}: {source}")]
    Read { file: String, source: io::Error },
    #[error("{file}:{line}: {message}")]
    Parse { file: String, line: usize, message: String },
}

/// What the scorer looks at and how lenient it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScoreSettings {
    pub event_operator: String,
    pub health_operator: String,
    pub interval_ms: i64,
    pub offline_after_ms: i64,
    /// How far outside a true episode an alert may lie and still overlap it.
    pub tolerance_ms: i64,
    /// A decision on a reading of a `backfill` period is history when the upload arrived more
    /// than this after the reading.
    pub history_after_ms: i64,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            event_operator: "pm25_event".into(),
            health_operator: "sensor_health".into(),
            interval_ms: 60_000,
            offline_after_ms: 600_000,
            tolerance_ms: 300_000,
            history_after_ms: 300_000,
        }
    }
}

/// The parts of an output record the scorer reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlumeRecord {
    /// Line number in its file (1-based).
    pub line: usize,
    pub kind: String,
    pub operator: Option<String>,
    pub device: Option<String>,
    pub field: Option<String>,
    pub start_ts: Option<i64>,
    pub end_ts: Option<i64>,
    pub decided_ts: Option<i64>,
    pub ts: Option<i64>,
    pub status: Option<String>,
    pub beyond: Option<bool>,
    pub backfill: bool,
}

impl PlumeRecord {
    /// The event time of the data the record describes.
    fn data_ts(&self) -> Option<i64> {
        match self.kind.as_str() {
            "event_end" => self.end_ts,
            "event_start" | "event_update" => self.start_ts,
            _ => self.ts.or(self.start_ts),
        }
    }

    /// An event record (of any operator): what a page is about.
    fn is_event(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "event_start" | "event_update" | "event_end" | "threshold"
        )
    }

    /// The record starts an alert (what a pager is woken for).
    fn is_alert_start(&self) -> bool {
        self.kind == "event_start" || (self.kind == "threshold" && self.beyond == Some(true))
    }
}

fn lines_of(reader: impl BufRead, file: &str) -> impl Iterator<Item = Result<(usize, String), ScoreError>> {
    reader.lines().enumerate().map(move |(i, line)| {
        line.map(|l| (i + 1, l)).map_err(|source| ScoreError::Read {
            file: file.to_string(),
            source,
        })
    })
}

/// Parses a ground-truth file (JSON lines of [`TruthRecord`]); blank lines are skipped.
pub fn read_truth(reader: impl BufRead, file: &str) -> Result<Vec<TruthRecord>, ScoreError> {
    let mut out = Vec::new();
    for item in lines_of(reader, file) {
        let (line, text) = item?;
        if text.trim().is_empty() {
            continue;
        }
        let record: TruthRecord = serde_json::from_str(&text).map_err(|e| ScoreError::Parse {
            file: file.to_string(),
            line,
            message: format!("not a ground-truth record: {e}"),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Parses plume's output records (JSON lines); blank lines are skipped.
pub fn read_records(reader: impl BufRead, file: &str) -> Result<Vec<PlumeRecord>, ScoreError> {
    let mut out = Vec::new();
    for item in lines_of(reader, file) {
        let (line, text) = item?;
        if text.trim().is_empty() {
            continue;
        }
        let parse_error = |message: String| ScoreError::Parse {
            file: file.to_string(),
            line,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| parse_error(format!("not a JSON record: {e}")))?;
        let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
            return Err(parse_error("a record without \"type\"".into()));
        };
        let text_of = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let int_of = |key: &str| value.get(key).and_then(|v| v.as_i64());
        out.push(PlumeRecord {
            line,
            kind: kind.to_string(),
            operator: text_of("operator"),
            device: text_of("device"),
            field: text_of("field"),
            start_ts: int_of("start_ts"),
            end_ts: int_of("end_ts"),
            decided_ts: int_of("decided_ts"),
            ts: int_of("ts"),
            status: text_of("status"),
            beyond: value.get("beyond").and_then(|v| v.as_bool()),
            backfill: value.get("backfill").and_then(|v| v.as_bool()).unwrap_or(false),
        });
    }
    Ok(out)
}

/// Percentiles of a list of values (nearest rank).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub count: usize,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub max: Option<i64>,
}

impl Spread {
    fn of(mut values: Vec<i64>) -> Spread {
        values.sort_unstable();
        let rank = |p: f64| -> Option<i64> {
            if values.is_empty() {
                return None;
            }
            let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            Some(values[i - 1])
        };
        Spread {
            count: values.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            max: values.last().copied(),
        }
    }
}

/// What the scorer measured (the module docs define each number).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Score {
    pub settings: ScoreSettings,
    /// Ground-truth records by kind.
    pub truth: BTreeMap<String, u64>,
    /// Output records by type.
    pub records: BTreeMap<String, u64>,
    pub episodes: u64,
    pub episodes_scored: u64,
    pub episodes_excluded: u64,
    pub episodes_detected: u64,
    /// Scored episodes held back by a backfill, and how many of them were detected.
    pub episodes_backfilled: u64,
    pub episodes_backfilled_detected: u64,
    pub recall: Option<f64>,
    pub alerts: u64,
    pub alerts_true: u64,
    /// Alerts that started inside a stuck period of their field.
    pub alerts_on_stuck: u64,
    pub precision: Option<f64>,
    pub flaps: u64,
    pub episodes_with_flaps: u64,
    /// Detection delay in ms.
    pub delay_ms: Spread,
    pub pages: Option<u64>,
    pub pages_from_backfill: Option<u64>,
    /// Scored episodes delivered live, and how many of them got a page.
    pub live_episodes: u64,
    pub live_episodes_paged: Option<u64>,
    pub alerts_marked_backfill: u64,
    pub alerts_marked_backfill_live: u64,
    pub alerts_backfill_unmarked: u64,
    /// Offline periods at least `offline_after` long, and how many were reported.
    pub offline_long: u64,
    pub offline_detected: u64,
    /// Reported periods whose record gives a decision time, and those within two intervals.
    pub offline_delay_intervals: Vec<f64>,
    pub offline_within_two_intervals: u64,
    pub offline_reports_without_decision_time: u64,
    /// Offline reports that match no period long enough to be one.
    pub offline_false: u64,
    /// Alerts that ended inside an offline period.
    pub clean_air_ends: u64,
    /// Each miss, false alert, flap, page of history and offline mistake, in the order found.
    pub findings: Vec<Finding>,
}

/// One thing the scorer counted against a pipeline: what, which device, when (true time, ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub what: &'static str,
    pub device: String,
    pub start: i64,
    pub end: i64,
}

/// One alert, in true time.
#[derive(Clone, Debug)]
struct Alert {
    device: String,
    field: Option<String>,
    /// As written (for finding its page).
    raw_start: i64,
    start: i64,
    decided: Option<i64>,
    end: Option<i64>,
    backfill: bool,
}

impl Alert {
    fn last(&self) -> i64 {
        self.end.or(self.decided).unwrap_or(self.start).max(self.start)
    }
}

/// The ground truth of one device, by kind.
#[derive(Default)]
struct DeviceTruth<'a> {
    by_kind: HashMap<TruthKind, Vec<&'a TruthRecord>>,
}

impl<'a> DeviceTruth<'a> {
    fn of(&self, kind: TruthKind) -> &[&'a TruthRecord] {
        self.by_kind.get(&kind).map_or(&[], |v| v.as_slice())
    }

    /// A time of the device's clock moved back to true time (when its clock was skewed).
    fn to_true(&self, ts: i64, interval: i64) -> i64 {
        for s in self.of(TruthKind::Skew) {
            let offset = s.offset_ms.unwrap_or(0);
            let t = ts - offset;
            if t >= s.start - interval && t <= s.end + interval {
                return t;
            }
        }
        ts
    }

    fn inside(&self, kind: TruthKind, t: i64, slack: i64) -> Option<&'a TruthRecord> {
        self.of(kind)
            .iter()
            .find(|r| t >= r.start - slack && t <= r.end + slack)
            .copied()
    }

    /// Whether a decision on the reading taken at `t` was a decision on history: the reading
    /// was held back by a gateway outage and arrived more than `after` later.
    fn history(&self, t: i64, after: i64) -> bool {
        self.inside(TruthKind::Backfill, t, 0)
            .is_some_and(|b| b.received.unwrap_or(b.end) - t > after)
    }

    fn overlaps(&self, kind: TruthKind, start: i64, end: i64) -> bool {
        self.of(kind).iter().any(|r| r.start <= end && r.end >= start)
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Measures `records` (and `pages`) against `truth`.
pub fn score(
    truth: &[TruthRecord],
    records: &[PlumeRecord],
    pages: Option<&[PlumeRecord]>,
    settings: &ScoreSettings,
) -> Score {
    let interval = settings.interval_ms.max(1);
    let tolerance = settings.tolerance_ms.max(0);
    let mut result = Score {
        settings: settings.clone(),
        ..Score::default()
    };
    let mut devices: HashMap<&str, DeviceTruth> = HashMap::new();
    for t in truth {
        *result.truth.entry(t.kind.as_str().to_string()).or_default() += 1;
        devices
            .entry(t.device.as_str())
            .or_default()
            .by_kind
            .entry(t.kind)
            .or_default()
            .push(t);
    }
    let no_truth = DeviceTruth::default();
    let device_truth = |device: &str| devices.get(device).unwrap_or(&no_truth);
    for r in records {
        *result.records.entry(r.kind.clone()).or_default() += 1;
    }

    // alerts of the event operator, in true time
    let mut alerts: Vec<Alert> = Vec::new();
    let mut by_start: HashMap<(String, i64), usize> = HashMap::new();
    let mut open_threshold: HashMap<String, usize> = HashMap::new();
    for r in records {
        if r.operator.as_deref() != Some(settings.event_operator.as_str()) {
            continue;
        }
        let Some(device) = r.device.as_deref() else { continue };
        let dt = device_truth(device);
        let to_true = |t: i64| dt.to_true(t, interval);
        let new_alert = |raw_start: i64| Alert {
            device: device.to_string(),
            field: r.field.clone(),
            raw_start,
            start: to_true(raw_start),
            decided: None,
            end: None,
            backfill: r.backfill,
        };
        match (r.kind.as_str(), r.start_ts, r.ts) {
            ("event_start", Some(start), _) => {
                let i = *by_start.entry((device.to_string(), start)).or_insert_with(|| {
                    alerts.push(new_alert(start));
                    alerts.len() - 1
                });
                alerts[i].decided = r.decided_ts.map(to_true);
                alerts[i].backfill |= r.backfill;
            }
            ("event_end", Some(start), _) => {
                let i = *by_start.entry((device.to_string(), start)).or_insert_with(|| {
                    alerts.push(new_alert(start));
                    alerts.len() - 1
                });
                alerts[i].end = r.end_ts.map(to_true);
            }
            ("threshold", _, Some(ts)) => match r.beyond {
                Some(true) if !open_threshold.contains_key(device) => {
                    let mut alert = new_alert(ts);
                    alert.decided = Some(alert.start);
                    by_start.insert((device.to_string(), ts), alerts.len());
                    open_threshold.insert(device.to_string(), alerts.len());
                    alerts.push(alert);
                }
                Some(false) => {
                    if let Some(i) = open_threshold.remove(device) {
                        alerts[i].end = Some(to_true(ts));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    alerts.sort_by(|a, b| (&a.device, a.start).cmp(&(&b.device, b.start)));
    let mut alerts_of: HashMap<&str, Vec<&Alert>> = HashMap::new();
    for a in &alerts {
        alerts_of.entry(a.device.as_str()).or_default().push(a);
    }

    // pages
    let mut paged_starts: HashSet<(String, i64)> = HashSet::new();
    if let Some(pages) = pages {
        let mut from_backfill = 0;
        let mut findings = Vec::new();
        for p in pages {
            let (Some(device), Some(ts)) = (p.device.as_deref(), p.data_ts()) else {
                continue;
            };
            let dt = device_truth(device);
            // (decided on: the reading the decision was made on; the data time without one)
            let true_ts = dt.to_true(p.decided_ts.unwrap_or(ts), interval);
            if p.is_event() && dt.history(true_ts, settings.history_after_ms) {
                from_backfill += 1;
                findings.push(Finding {
                    what: "page of backfilled history",
                    device: device.to_string(),
                    start: true_ts,
                    end: true_ts,
                });
            }
            if p.is_alert_start() && p.operator.as_deref() == Some(settings.event_operator.as_str()) {
                paged_starts.insert((device.to_string(), p.start_ts.or(p.ts).unwrap_or(ts)));
            }
        }
        result.pages = Some(pages.iter().filter(|p| p.kind != "summary").count() as u64);
        result.pages_from_backfill = Some(from_backfill);
        result.findings.extend(findings);
        result.live_episodes_paged = Some(0);
    }

    // episodes: recall, flaps, delay, pages
    let mut delays = Vec::new();
    for e in truth.iter().filter(|t| t.kind == TruthKind::Episode) {
        result.episodes += 1;
        let dt = device_truth(&e.device);
        let overlapping: Vec<&&Alert> = alerts_of
            .get(e.device.as_str())
            .map(|v| v.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|a| a.start <= e.end + tolerance && a.last() >= e.start - tolerance)
            .collect();
        if overlapping.len() > 1 {
            result.flaps += overlapping.len() as u64 - 1;
            result.episodes_with_flaps += 1;
            result.finding("flapped episode", &e.device, e.start, e.end);
        }
        let stuck_pm25 = dt
            .of(TruthKind::Stuck)
            .iter()
            .any(|s| s.field.as_deref() == Some("pm25") && s.start <= e.end && s.end >= e.start);
        if stuck_pm25 || dt.overlaps(TruthKind::Offline, e.start, e.end) {
            result.episodes_excluded += 1;
            continue;
        }
        result.episodes_scored += 1;
        let backfilled = dt.overlaps(TruthKind::Backfill, e.start, e.end);
        if backfilled {
            result.episodes_backfilled += 1;
        } else {
            result.live_episodes += 1;
        }
        let Some(first) = overlapping.first() else {
            result.finding("missed episode", &e.device, e.start, e.end);
            continue;
        };
        result.episodes_detected += 1;
        if backfilled {
            result.episodes_backfilled_detected += 1;
        } else if let Some(paged) = result.live_episodes_paged.as_mut()
            && overlapping
                .iter()
                .any(|a| paged_starts.contains(&(a.device.clone(), a.raw_start)))
        {
            *paged += 1;
        }
        if let Some(decided) = first.decided {
            delays.push(decided - e.start);
        }
    }
    result.recall = share(result.episodes_detected, result.episodes_scored);
    result.delay_ms = Spread::of(delays);

    // precision and backfill marks
    for a in &alerts {
        result.alerts += 1;
        let dt = device_truth(&a.device);
        let on_stuck = dt.of(TruthKind::Stuck).iter().any(|s| {
            let field = s.field.as_deref().unwrap_or("");
            a.field.as_deref().is_some_and(|f| f.starts_with(field))
                && a.start >= s.start - interval
                && a.start <= s.end
        });
        let true_episode = dt
            .of(TruthKind::Episode)
            .iter()
            .any(|e| a.start <= e.end + tolerance && a.last() >= e.start - tolerance);
        if on_stuck {
            result.alerts_on_stuck += 1;
            result.finding("alert on a stuck sensor", &a.device, a.start, a.last());
        } else if true_episode {
            result.alerts_true += 1;
        } else {
            result.finding("false alert", &a.device, a.start, a.last());
        }
        let history = dt.history(a.decided.unwrap_or(a.start), settings.history_after_ms);
        if a.backfill {
            result.alerts_marked_backfill += 1;
            if !history {
                result.alerts_marked_backfill_live += 1;
            }
        } else if history {
            result.alerts_backfill_unmarked += 1;
        }
        if let Some(end) = a.end
            && dt.inside(TruthKind::Offline, end, 0).is_some()
        {
            result.clean_air_ends += 1;
            result.finding("alert ended by silence", &a.device, a.start, end);
        }
    }
    result.precision = share(result.alerts_true, result.alerts);

    // offline
    let offline_reports: Vec<&PlumeRecord> = records
        .iter()
        .filter(|r| {
            r.kind == "health"
                && r.status.as_deref() == Some("offline")
                && r.operator.as_deref() == Some(settings.health_operator.as_str())
        })
        .collect();
    let mut used = vec![false; offline_reports.len()];
    let long_enough = |o: &TruthRecord| o.end - o.start >= settings.offline_after_ms;
    let may_report = |o: &TruthRecord| o.end - o.start + 2 * interval >= settings.offline_after_ms;
    // a gateway outage (`backfill`) leaves the device unheard until its upload arrives: for a
    // live system that is silence like any other, to be reported like an offline period
    let unheard: Vec<TruthRecord> = truth
        .iter()
        .filter_map(|t| match t.kind {
            TruthKind::Offline => Some(t.clone()),
            TruthKind::Backfill => Some(TruthRecord {
                end: t.received.unwrap_or(t.end),
                ..t.clone()
            }),
            _ => None,
        })
        .collect();
    for o in &unheard {
        let dt = device_truth(&o.device);
        let mut found = None;
        for (i, r) in offline_reports.iter().enumerate() {
            let (Some(device), Some(ts)) = (r.device.as_deref(), r.ts) else {
                continue;
            };
            let ts = dt.to_true(ts, interval);
            if device == o.device && ts >= o.start - interval - tolerance && ts <= o.end && may_report(o) {
                used[i] = true;
                found = found.or(Some(*r));
            }
        }
        if !long_enough(o) {
            continue;
        }
        result.offline_long += 1;
        let Some(report) = found else {
            result.finding("offline not reported", &o.device, o.start, o.end);
            continue;
        };
        result.offline_detected += 1;
        match report.decided_ts {
            Some(decided) => {
                let late = (decided - (o.start + settings.offline_after_ms)) as f64 / interval as f64;
                result.offline_delay_intervals.push(late);
                if late <= 2.0 {
                    result.offline_within_two_intervals += 1;
                }
            }
            None => result.offline_reports_without_decision_time += 1,
        }
    }
    for (report, _) in offline_reports.iter().zip(&used).filter(|(_, used)| !**used) {
        result.offline_false += 1;
        let ts = report.ts.unwrap_or(0);
        result.finding("false offline report", report.device.as_deref().unwrap_or(""), ts, ts);
    }
    result
}

fn percent(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |x| format!("{:.2} %", 100.0 * x))
}

fn seconds(x: Option<i64>) -> String {
    x.map_or("n/a".into(), |x| format!("{:.0} s", x as f64 / 1000.0))
}

fn count(x: Option<u64>) -> String {
    x.map_or("n/a (no --pages)".into(), |x| x.to_string())
}

impl Score {
    fn finding(&mut self, what: &'static str, device: &str, start: i64, end: i64) {
        self.findings.push(Finding {
            what,
            device: device.to_string(),
            start,
            end,
        });
    }

    /// The findings, one a line: what, device, start and end (RFC 3339, true time).
    pub fn findings_table(&self) -> String {
        let time = |ms: i64| jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string());
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!(
                "{:<28} {} {} .. {}\n",
                f.what,
                f.device,
                time(f.start),
                time(f.end)
            ));
        }
        out
    }

    /// A readable report, one measure a line.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let rows: Vec<(&str, String)> = vec![
            (
                "truth",
                self.truth
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "records",
                self.records
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "episodes",
                format!(
                    "{} ({} scored, {} excluded: offline or pm25 stuck; {} backfilled)",
                    self.episodes, self.episodes_scored, self.episodes_excluded, self.episodes_backfilled
                ),
            ),
            (
                "recall",
                format!(
                    "{} ({} of {}; backfilled {} of {})",
                    percent(self.recall),
                    self.episodes_detected,
                    self.episodes_scored,
                    self.episodes_backfilled_detected,
                    self.episodes_backfilled
                ),
            ),
            (
                "precision",
                format!(
                    "{} ({} of {} alerts of {}; {} on a stuck sensor)",
                    percent(self.precision),
                    self.alerts_true,
                    self.alerts,
                    s.event_operator,
                    self.alerts_on_stuck
                ),
            ),
            (
                "flaps",
                format!("{} (in {} episodes)", self.flaps, self.episodes_with_flaps),
            ),
            (
                "detection delay",
                format!(
                    "p50 {}, p95 {}, max {} ({} episodes)",
                    seconds(self.delay_ms.p50),
                    seconds(self.delay_ms.p95),
                    seconds(self.delay_ms.max),
                    self.delay_ms.count
                ),
            ),
            ("pages", count(self.pages)),
            ("pages from backfilled history", count(self.pages_from_backfill)),
            (
                "live episodes paged",
                format!("{} of {}", count(self.live_episodes_paged), self.live_episodes),
            ),
            (
                "backfill marks",
                format!(
                    "{} alerts marked, {} of them on live data; {} alerts of backfilled history unmarked",
                    self.alerts_marked_backfill, self.alerts_marked_backfill_live, self.alerts_backfill_unmarked
                ),
            ),
            (
                "offline detected",
                format!(
                    "{} of {} periods ≥ offline_after {} ms (by {}); {} false offline reports",
                    self.offline_detected, self.offline_long, s.offline_after_ms, s.health_operator, self.offline_false
                ),
            ),
            (
                "offline delay",
                if self.offline_delay_intervals.is_empty() {
                    format!(
                        "n/a: {} reports carry no decision time",
                        self.offline_reports_without_decision_time
                    )
                } else {
                    format!(
                        "{} of {} within 2 intervals; {} reports without decision time",
                        self.offline_within_two_intervals,
                        self.offline_delay_intervals.len(),
                        self.offline_reports_without_decision_time
                    )
                },
            ),
            ("reported as clean air", self.clean_air_ends.to_string()),
        ];
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn label(kind: TruthKind, device: &str, start: i64, end: i64) -> TruthRecord {
        TruthRecord {
            kind,
            device: device.into(),
            start: start * MIN,
            end: end * MIN,
            peak: None,
            field: None,
            value: None,
            offset: None,
            offset_ms: None,
            received: None,
        }
    }

    fn event(kind: &str, device: &str, start: i64, decided: i64, end: Option<i64>) -> PlumeRecord {
        PlumeRecord {
            kind: kind.into(),
            operator: Some("pm25_event".into()),
            device: Some(device.into()),
            field: Some("pm25_smooth".into()),
            start_ts: Some(start * MIN),
            end_ts: end.map(|e| e * MIN),
            decided_ts: Some(decided * MIN),
            ..PlumeRecord::default()
        }
    }

    /// An alert from `start` to `end` (minutes): its start and end records.
    fn alert(device: &str, start: i64, decided: i64, end: i64) -> Vec<PlumeRecord> {
        vec![
            event("event_start", device, start, decided, None),
            event("event_end", device, start, end + 2, Some(end)),
        ]
    }

    fn offline_report(device: &str, ts: i64) -> PlumeRecord {
        PlumeRecord {
            kind: "health".into(),
            operator: Some("sensor_health".into()),
            device: Some(device.into()),
            ts: Some(ts * MIN),
            status: Some("offline".into()),
            ..PlumeRecord::default()
        }
    }

    fn settings() -> ScoreSettings {
        ScoreSettings {
            tolerance_ms: 2 * MIN,
            ..ScoreSettings::default()
        }
    }

    #[test]
    fn a_perfect_run_scores_full_recall_and_precision() {
        let truth = vec![
            label(TruthKind::Episode, "a", 100, 120),
            label(TruthKind::Episode, "b", 200, 230),
        ];
        let records: Vec<_> = [alert("a", 101, 102, 121), alert("b", 200, 201, 232)].concat();
        let s = score(&truth, &records, Some(&[]), &settings());
        assert_eq!((s.recall, s.precision, s.flaps), (Some(1.0), Some(1.0), 0));
        assert_eq!(s.delay_ms.max, Some(2 * MIN));
        assert_eq!(s.delay_ms.p50, Some(MIN));
        assert_eq!(s.records["event_start"], 2);
        assert_eq!(s.pages, Some(0));
        assert_eq!(s.live_episodes_paged, Some(0));
    }

    #[test]
    fn a_missed_episode_lowers_recall_and_a_spurious_alert_precision() {
        let truth = vec![
            label(TruthKind::Episode, "a", 100, 120),
            label(TruthKind::Episode, "a", 300, 320),
        ];
        // the second episode missed; an alert in clean air; one on another device
        let records: Vec<_> = [
            alert("a", 101, 102, 121),
            alert("a", 500, 501, 505),
            alert("c", 100, 101, 110),
        ]
        .concat();
        let s = score(&truth, &records, None, &settings());
        assert_eq!(s.recall, Some(0.5));
        assert_eq!((s.alerts, s.alerts_true), (3, 1));
        assert_eq!(s.pages, None);
        let found: Vec<_> = s
            .findings
            .iter()
            .map(|f| (f.what, f.device.as_str(), f.start / MIN))
            .collect();
        assert_eq!(
            found,
            [
                ("missed episode", "a", 300),
                ("false alert", "a", 500),
                ("false alert", "c", 100)
            ]
        );
    }

    #[test]
    fn tolerance_decides_whether_a_late_alert_still_counts() {
        let truth = vec![label(TruthKind::Episode, "a", 100, 120)];
        let records = alert("a", 123, 124, 130);
        assert_eq!(score(&truth, &records, None, &settings()).recall, Some(0.0));
        let lenient = ScoreSettings {
            tolerance_ms: 5 * MIN,
            ..settings()
        };
        assert_eq!(score(&truth, &records, None, &lenient).recall, Some(1.0));
    }

    #[test]
    fn repeated_starts_inside_one_episode_are_flaps() {
        let truth = vec![label(TruthKind::Episode, "a", 100, 160)];
        let records: Vec<_> = [
            alert("a", 100, 101, 110),
            alert("a", 115, 116, 130),
            alert("a", 140, 141, 161),
        ]
        .concat();
        let s = score(&truth, &records, None, &settings());
        assert_eq!((s.flaps, s.episodes_with_flaps), (2, 1));
        assert_eq!(s.precision, Some(1.0));
        assert_eq!(s.delay_ms.count, 1, "the delay is the first alert's");
    }

    #[test]
    fn alerts_on_a_stuck_sensor_are_false_and_its_episodes_not_scored() {
        let mut stuck = label(TruthKind::Stuck, "a", 100, 200);
        stuck.field = Some("pm25".into());
        let truth = vec![stuck, label(TruthKind::Episode, "a", 150, 170)];
        let records = alert("a", 100, 101, 200);
        let s = score(&truth, &records, None, &settings());
        assert_eq!((s.alerts_on_stuck, s.precision), (1, Some(0.0)));
        assert_eq!((s.episodes_scored, s.episodes_excluded, s.recall), (0, 1, None));
    }

    #[test]
    fn pages_of_backfilled_history_are_counted_and_live_episodes_paged() {
        let mut backfill = label(TruthKind::Backfill, "a", 90, 140);
        backfill.received = Some(141 * MIN);
        let truth = vec![
            backfill,
            label(TruthKind::Episode, "a", 100, 120),
            label(TruthKind::Episode, "a", 300, 320),
            label(TruthKind::Episode, "a", 500, 520),
        ];
        let records: Vec<_> = [
            alert("a", 100, 101, 121),
            alert("a", 300, 301, 321),
            alert("a", 500, 501, 521),
        ]
        .concat();
        let pages = vec![records[0].clone(), records[1].clone(), records[2].clone()];
        let s = score(&truth, &records, Some(&pages), &settings());
        assert_eq!(s.pages, Some(3));
        assert_eq!(
            s.pages_from_backfill,
            Some(2),
            "the start and the end of the held-back episode"
        );
        assert_eq!((s.live_episodes, s.live_episodes_paged), (2, Some(1)));
        assert_eq!((s.episodes_backfilled, s.episodes_backfilled_detected), (1, 1));
        assert_eq!(s.alerts_backfill_unmarked, 1);
    }

    #[test]
    fn backfill_marks_on_live_data_are_counted() {
        let truth = vec![label(TruthKind::Episode, "a", 100, 120)];
        let mut records = alert("a", 100, 101, 121);
        records[0].backfill = true;
        let s = score(&truth, &records, None, &settings());
        assert_eq!((s.alerts_marked_backfill, s.alerts_marked_backfill_live), (1, 1));
    }

    #[test]
    fn skewed_clocks_are_moved_back_to_true_time() {
        let mut skew = label(TruthKind::Skew, "a", 0, 1000);
        skew.offset_ms = Some(9 * MIN);
        let truth = vec![skew, label(TruthKind::Episode, "a", 100, 110)];
        let records = alert("a", 110, 111, 118);
        let s = score(&truth, &records, None, &settings());
        assert_eq!(s.recall, Some(1.0));
        assert_eq!(s.delay_ms.max, Some(2 * MIN));
    }

    #[test]
    fn offline_periods_must_be_reported_and_short_ones_must_not() {
        let truth = vec![
            label(TruthKind::Offline, "a", 100, 130),
            label(TruthKind::Offline, "a", 300, 340),
            label(TruthKind::Offline, "a", 500, 504),
        ];
        let mut reported = offline_report("a", 99);
        reported.decided_ts = Some(111 * MIN);
        let records = vec![reported, offline_report("a", 499), offline_report("b", 10)];
        let s = score(&truth, &records, None, &settings());
        assert_eq!((s.offline_long, s.offline_detected), (2, 1));
        assert_eq!(s.offline_delay_intervals, vec![1.0]);
        assert_eq!(s.offline_within_two_intervals, 1);
        assert_eq!(s.offline_false, 2, "the short period and the device never offline");
        let found: Vec<_> = s
            .findings
            .iter()
            .map(|f| (f.what, f.device.as_str(), f.start / MIN))
            .collect();
        assert_eq!(
            found,
            [
                ("offline not reported", "a", 300),
                ("false offline report", "a", 499),
                ("false offline report", "b", 10)
            ]
        );
        assert!(
            s.findings_table()
                .contains("offline not reported         a 1970-01-01T05:00:00Z .. ")
        );
    }

    #[test]
    fn a_late_offline_report_is_not_within_two_intervals() {
        let truth = vec![label(TruthKind::Offline, "a", 100, 130)];
        let mut reported = offline_report("a", 99);
        reported.decided_ts = Some(115 * MIN);
        let s = score(&truth, &[reported], None, &settings());
        assert_eq!(s.offline_delay_intervals, vec![5.0]);
        assert_eq!(s.offline_within_two_intervals, 0);
        let unknown = score(&truth, &[offline_report("a", 99)], None, &settings());
        assert_eq!(unknown.offline_reports_without_decision_time, 1);
    }

    #[test]
    fn an_alert_ended_by_silence_is_reported_as_clean_air() {
        let truth = vec![
            label(TruthKind::Episode, "a", 100, 150),
            label(TruthKind::Offline, "a", 120, 160),
        ];
        let records = alert("a", 100, 101, 125);
        let s = score(&truth, &records, None, &settings());
        assert_eq!(s.clean_air_ends, 1);
        let fine = score(&truth, &alert("a", 100, 101, 118), None, &settings());
        assert_eq!(fine.clean_air_ends, 0);
    }

    #[test]
    fn threshold_records_make_alerts_from_crossing_to_return() {
        let truth = vec![label(TruthKind::Episode, "a", 100, 120)];
        let crossing = |ts: i64, beyond: bool| PlumeRecord {
            kind: "threshold".into(),
            operator: Some("pm25_event".into()),
            device: Some("a".into()),
            field: Some("pm25".into()),
            ts: Some(ts * MIN),
            beyond: Some(beyond),
            ..PlumeRecord::default()
        };
        let records = vec![
            crossing(101, true),
            crossing(105, false),
            crossing(106, true),
            crossing(121, false),
        ];
        let s = score(&truth, &records, Some(&records[..1]), &settings());
        assert_eq!((s.alerts, s.flaps, s.recall), (2, 1, Some(1.0)));
        assert_eq!(s.live_episodes_paged, Some(1));
    }

    #[test]
    fn unreadable_lines_name_their_file_and_line() {
        let text = "{\"type\":\"summary\"}\n\nnot json\n";
        let e = read_records(text.as_bytes(), "out.jsonl").unwrap_err();
        assert!(e.to_string().starts_with("out.jsonl:3: not a JSON record"), "{e}");
        let e = read_records("{\"v\":1}\n".as_bytes(), "out.jsonl").unwrap_err();
        assert_eq!(e.to_string(), "out.jsonl:1: a record without \"type\"");
        let e = read_truth("{\"kind\":\"bogus\"}\n".as_bytes(), "truth.jsonl").unwrap_err();
        assert!(
            e.to_string().starts_with("truth.jsonl:1: not a ground-truth record"),
            "{e}"
        );
        let ok = read_records(
            "{\"type\":\"event_start\",\"operator\":\"x\",\"device\":\"d\",\"start_ts\":5,\"backfill\":true}\n"
                .as_bytes(),
            "out.jsonl",
        )
        .unwrap();
        assert_eq!((ok[0].start_ts, ok[0].backfill), (Some(5), true));
    }
}
