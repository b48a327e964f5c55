//! The labelled fleet workload: simulated indoor air-quality monitors with the ground truth of
//! what happened to them written beside the readings (`plume generate fleet`), so that a
//! pipeline's records can be scored against it ([`super::score`], `plume score`).
//!
//! # Readings
//! One reading per device every `interval` of true time, from [`FLEET_START_MS`]
//! (2026-01-05T00:00:00Z) with a per-device phase in `[0, interval)`, as JSON lines in **arrival
//! order** (the order a broker would deliver them; ties keep generation order):
//!
//! ```text
//! {"device":"d0001","ts":1767571212345,"received":1767571213101,"pm25":7.4,"co2":512.3,"voc":101.2,"temp":21.3,"hum":41.0}
//! ```
//!
//! `ts` is the device's clock (the true time, unless its clock is skewed), `received` the arrival
//! time at the ingest: the true time plus 0.1–2.5 s, later for backfilled uploads; a duplicate is
//! the same reading (device, `ts`, values) with its own later `received`. Lines are sorted by
//! `received`. Every measurement has one decimal.
//!
//! # The model
//! - PM2.5, true signal: a per-device background of 3–17 µg/m³ with a daily swing of at most
//!   ±2, plus pollution episodes that ramp up linearly (2–15 min) to a peak of 45–250 above the
//!   background, hold it (2–20 min) and decay exponentially (time constant 4–25 min). Episodes of
//!   one device are at least 30 minutes apart (after the previous one has decayed below
//!   0.3 µg/m³), and every episode has decayed before the simulation ends. The measured value
//!   adds noise: `(u1 + u2 - 1) * (1.5 + 0.08 * level)`, so background readings stay below 25
//!   and never reach 35.
//! - CO2, VOC, temperature, humidity: bounded random walks (CO2 follows office hours).
//! - Conditions, per device, never overlapping each other (at least 30 minutes apart), each with
//!   a rate per device and day ([`FleetRates`]): offline, backfill, stuck, drift, skew.
//! - Per reading: duplicates, junk values and malformed lines, each with a probability.
//!
//! # Ground truth
//! JSON lines, one object per labelled interval or reading, ordered by `start`, then device:
//! `{"kind":"episode","device":"d0001","start":…,"end":…,"peak":…}`. Every time is the true time
//! (epoch ms) of a reading slot of that device (`phase + k * interval`), whether or not a reading
//! was sent for it; `start` and `end` are the first and last slot affected (inclusive).
//!
//! | kind | meaning | extra keys |
//! | --- | --- | --- |
//! | `episode` | true PM2.5 (noise-free, fault-free) ≥ 35 µg/m³ from `start` to `end` (at least 2 minutes) | `peak`: the true maximum |
//! | `offline` | no reading at all for the slots `start`..`end`; the previous reading is at `start - interval`, the next one at `end + interval` | |
//! | `backfill` | a gateway outage: the readings of `start`..`end` arrive together after it, all with `received` (0.1–5 min after the outage; the gateway stores and forwards, so the readings taken meanwhile arrive after it) | `received` |
//! | `stuck` | `field` repeats exactly `value` | `field`, `value` |
//! | `drift` | `field` reads too high by an offset growing linearly from 0 to `offset` | `field`, `offset` |
//! | `skew` | the device's clock is `offset_ms` ahead (negative: behind): `ts` = true time + `offset_ms` | `offset_ms` |
//! | `duplicate` | the reading of slot `start` (= `end`) is delivered a second time (the same `ts` and values) at `received` | `received` |
//! | `junk` | the reading of slot `start` has `field` = `value`, out of any sane range; its other fields are good | `field`, `value` |
//! | `malformed` | the line of slot `start` is cut short (not JSON); the reading is lost | |
//!
//! Backfilled periods are placed, half of the time, over a planned episode, so that some true
//! episodes only arrive as history. Everything is a pure function of [`FleetSpec`]: each device
//! draws from its own random generator (seeded from the seed and its index).

use std::collections::BTreeMap;
use std::io::{self, Write};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// 2026-01-05T00:00:00Z in epoch milliseconds.
pub const FLEET_START_MS: i64 = 1_767_571_200_000;
/// True PM2.5 at or above this is an episode (µg/m³).
pub const EPISODE_LEVEL: f64 = 35.0;
/// Shortest true episode labelled.
pub const EPISODE_MIN_MS: i64 = 120_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// Gap kept between conditions and between episodes of one device.
const QUIET_GAP_MS: i64 = 30 * MINUTE;
/// Readings are sorted by arrival in buckets of this much time.
const BUCKET_MS: i64 = 10 * MINUTE;

/// How often things happen: conditions per device and day, per-reading faults as probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FleetRates {
    /// True pollution episodes per device and day.
    pub episodes_per_day: f64,
    /// Offline periods per device and day (40 % short: 3–9 intervals; the others 12 min – 3 h).
    pub offline_per_day: f64,
    /// Gateway outages uploaded afterwards (20 min – 4 h), per device and day.
    pub backfill_per_day: f64,
    /// Stuck sensors (30 min – 3 h; half of them PM2.5 stuck at 40–120), per device and day.
    pub stuck_per_day: f64,
    /// Calibration drifts (6–48 h), per device and day.
    pub drift_per_day: f64,
    /// Clock skews (1–12 h, offset ±1–10 min), per device and day.
    pub skew_per_day: f64,
    /// Chance that a reading is delivered twice.
    pub duplicate: f64,
    /// Chance that a reading carries one junk value.
    pub junk: f64,
    /// Chance that a reading's line is malformed.
    pub malformed: f64,
}

impl Default for FleetRates {
    fn default() -> Self {
        FleetRates {
            episodes_per_day: 1.5,
            offline_per_day: 0.5,
            backfill_per_day: 0.15,
            stuck_per_day: 0.1,
            drift_per_day: 0.05,
            skew_per_day: 0.05,
            duplicate: 0.002,
            junk: 0.0005,
            malformed: 0.00005,
        }
    }
}

/// The generator's arguments: the output is a pure function of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FleetSpec {
    pub devices: u32,
    /// How much true time to simulate.
    pub duration_ms: i64,
    /// Time between two readings of one device.
    pub interval_ms: i64,
    pub seed: u64,
    /// The first reading slot (before each device's phase).
    pub start_ms: i64,
    pub rates: FleetRates,
}

impl FleetSpec {
    /// `devices` devices for `days` days, one reading a minute, from [`FLEET_START_MS`].
    pub fn new(devices: u32, days: f64, seed: u64) -> Self {
        FleetSpec {
            devices,
            duration_ms: (days * DAY as f64) as i64,
            interval_ms: MINUTE,
            seed,
            start_ms: FLEET_START_MS,
            rates: FleetRates::default(),
        }
    }
}

/// What the ground truth labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruthKind {
    Episode,
    Offline,
    Backfill,
    Stuck,
    Drift,
    Skew,
    Duplicate,
    Junk,
    Malformed,
}

impl TruthKind {
    pub const ALL: [TruthKind; 9] = [
        TruthKind::Episode,
        TruthKind::Offline,
        TruthKind::Backfill,
        TruthKind::Stuck,
        TruthKind::Drift,
        TruthKind::Skew,
        TruthKind::Duplicate,
        TruthKind::Junk,
        TruthKind::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TruthKind::Episode => "episode",
            TruthKind::Offline => "offline",
            TruthKind::Backfill => "backfill",
            TruthKind::Stuck => "stuck",
            TruthKind::Drift => "drift",
            TruthKind::Skew => "skew",
            TruthKind::Duplicate => "duplicate",
            TruthKind::Junk => "junk",
            TruthKind::Malformed => "malformed",
        }
    }
}

/// One line of the ground truth (the module docs say what each kind means).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthRecord {
    pub kind: TruthKind,
    pub device: String,
    /// First slot affected (true time, epoch ms).
    pub start: i64,
    /// Last slot affected (inclusive).
    pub end: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<i64>,
}

impl TruthRecord {
    fn new(kind: TruthKind, device: &str, start: i64, end: i64) -> Self {
        TruthRecord {
            kind,
            device: device.to_string(),
            start,
            end,
            peak: None,
            field: None,
            value: None,
            offset: None,
            offset_ms: None,
            received: None,
        }
    }
}

/// What a generation produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Lines written (readings, duplicates and malformed lines).
    pub lines: u64,
    /// Readings sent (each once; duplicates not counted).
    pub readings: u64,
    /// Ground-truth records by kind.
    pub truth: BTreeMap<TruthKind, u64>,
}

/// Why a generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--devices must be at least 1")]
    NoDevices,
    #[error("the interval must be at least 1 ms and the duration at least one interval")]
    NoTime,
    #[error("writing the fleet workload: {0}")]
    Write(#[from] io::Error),
}

/// A planned pollution episode: its contribution over the background at a time.
#[derive(Clone, Copy, Debug)]
struct PlannedEpisode {
    start: i64,
    ramp_ms: f64,
    hold_ms: f64,
    tau_ms: f64,
    peak: f64,
    /// When the contribution has decayed below 0.3.
    end: i64,
}

impl PlannedEpisode {
    fn contribution(&self, t: i64) -> f64 {
        if t < self.start || t >= self.end {
            return 0.0;
        }
        let x = (t - self.start) as f64;
        if x < self.ramp_ms {
            self.peak * x / self.ramp_ms
        } else if x < self.ramp_ms + self.hold_ms {
            self.peak
        } else {
            self.peak * (-(x - self.ramp_ms - self.hold_ms) / self.tau_ms).exp()
        }
    }
}

/// A planned condition of one device over the true times `[start, end)`.
#[derive(Clone, Debug)]
struct Condition {
    kind: TruthKind,
    start: i64,
    end: i64,
    /// Stuck: the field and its value; drift: the field and the final offset.
    field: &'static str,
    value: f64,
    /// Skew: the clock offset; backfill: when the upload arrives.
    at_ms: i64,
}

const FIELDS: [&str; 5] = ["pm25", "co2", "voc", "temp", "hum"];

fn field_index(name: &str) -> usize {
    FIELDS.iter().position(|f| *f == name).unwrap_or(0)
}

/// Uniform in `[low, high)` (`low` when the range is empty).
fn uniform(rng: &mut SmallRng, low: f64, high: f64) -> f64 {
    if high > low { rng.random_range(low..high) } else { low }
}

/// An exponential waiting time with `per_day` events a day (never, for a rate of 0).
fn waiting_time(rng: &mut SmallRng, per_day: f64) -> i64 {
    if per_day <= 0.0 {
        return i64::MAX / 4;
    }
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    (-u.ln() / per_day * DAY as f64) as i64
}

/// One simulated device: its plans, its state and the truth intervals it has open.
struct FleetDevice {
    name: String,
    rng: SmallRng,
    phase_ms: i64,
    background: f64,
    swing: f64,
    swing_phase: f64,
    episodes: Vec<PlannedEpisode>,
    next_episode: usize,
    conditions: Vec<Condition>,
    next_condition: usize,
    co2: f64,
    voc: f64,
    temp: f64,
    hum: f64,
    /// The open true episode: first slot, last slot, peak.
    open_episode: Option<(i64, i64, f64)>,
    /// The first and last slot of the current condition seen so far.
    open_condition: Option<(i64, i64)>,
    /// After a gateway outage: when its upload arrived. The gateway stores and forwards, so
    /// the readings taken before that arrive after the upload, in order.
    forwarding_until: i64,
}

/// A 64-bit mix (splitmix64's finaliser): per-device seeds from the seed and the index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl FleetDevice {
    fn plan(spec: &FleetSpec, index: u32) -> FleetDevice {
        let mut rng = SmallRng::seed_from_u64(mix(spec.seed ^ mix(u64::from(index) + 1)));
        let rates = &spec.rates;
        let interval = spec.interval_ms;
        let begin = spec.start_ms;
        let finish = spec.start_ms + spec.duration_ms;
        let phase_ms = rng.random_range(0..interval);
        let background = uniform(&mut rng, 3.0, 17.0);
        let swing = uniform(&mut rng, 0.0, 2.0);
        let swing_phase = uniform(&mut rng, 0.0, std::f64::consts::TAU);

        let mut episodes = Vec::new();
        let mut t = begin.saturating_add(waiting_time(&mut rng, rates.episodes_per_day));
        while t < finish {
            let peak = 45.0 * (uniform(&mut rng, 0.0, 1.0) * (250.0f64 / 45.0).ln()).exp();
            let ramp_ms = uniform(&mut rng, 2.0, 15.0) * MINUTE as f64;
            let hold_ms = uniform(&mut rng, 2.0, 20.0) * MINUTE as f64;
            let tau_ms = uniform(&mut rng, 4.0, 25.0) * MINUTE as f64;
            let end = t + (ramp_ms + hold_ms + tau_ms * (peak / 0.3).ln()) as i64;
            if end >= finish {
                // no episode is cut short by the end of the simulation
                break;
            }
            episodes.push(PlannedEpisode {
                start: t,
                ramp_ms,
                hold_ms,
                tau_ms,
                peak,
                end,
            });
            t = end
                .saturating_add(QUIET_GAP_MS)
                .saturating_add(waiting_time(&mut rng, rates.episodes_per_day));
        }

        let kinds = [
            (TruthKind::Offline, rates.offline_per_day),
            (TruthKind::Backfill, rates.backfill_per_day),
            (TruthKind::Stuck, rates.stuck_per_day),
            (TruthKind::Drift, rates.drift_per_day),
            (TruthKind::Skew, rates.skew_per_day),
        ];
        let total: f64 = kinds.iter().map(|(_, r)| r.max(0.0)).sum();
        let mut conditions = Vec::new();
        let mut t = begin.saturating_add(waiting_time(&mut rng, total));
        while t < finish && total > 0.0 {
            let mut pick = uniform(&mut rng, 0.0, total);
            let mut kind = TruthKind::Offline;
            for (k, r) in kinds {
                if pick < r.max(0.0) {
                    kind = k;
                    break;
                }
                pick -= r.max(0.0);
            }
            let mut start = t;
            let minutes = |rng: &mut SmallRng, low: f64, high: f64| (uniform(rng, low, high) * MINUTE as f64) as i64;
            let (length, field, value, at_ms) = match kind {
                TruthKind::Offline => {
                    let length = if rng.random_bool(0.4) {
                        rng.random_range(3..10) * interval
                    } else {
                        minutes(&mut rng, 12.0, 180.0).max(3 * interval)
                    };
                    (length, "", 0.0, 0)
                }
                TruthKind::Backfill => {
                    let mut length = minutes(&mut rng, 20.0, 240.0);
                    // half of the outages hold back a true episode
                    if rng.random_bool(0.5)
                        && let Some(e) = episodes
                            .iter()
                            .find(|e| e.start >= t + 30 * MINUTE && e.start < t + DAY)
                    {
                        start = e.start - minutes(&mut rng, 5.0, 30.0);
                        length = (e.end - start + minutes(&mut rng, 5.0, 60.0)).min(6 * HOUR);
                    }
                    let upload = minutes(&mut rng, 0.1, 5.0);
                    (length, "", 0.0, upload)
                }
                TruthKind::Stuck => {
                    let length = minutes(&mut rng, 30.0, 180.0);
                    if rng.random_bool(0.5) {
                        (
                            length,
                            "pm25",
                            (uniform(&mut rng, 40.0, 120.0) * 10.0).round() / 10.0,
                            0,
                        )
                    } else {
                        // the value is the field's reading when it sticks
                        (length, FIELDS[rng.random_range(1..FIELDS.len())], f64::NAN, 0)
                    }
                }
                TruthKind::Drift => {
                    let length = minutes(&mut rng, 360.0, 2880.0);
                    let (field, offset) = match rng.random_range(0..3) {
                        0 => ("pm25", uniform(&mut rng, 2.0, 8.0)),
                        1 => ("co2", uniform(&mut rng, 100.0, 400.0)),
                        _ => ("temp", uniform(&mut rng, 1.0, 3.0)),
                    };
                    (length, field, offset, 0)
                }
                _ => {
                    let length = minutes(&mut rng, 60.0, 720.0);
                    let offset = rng.random_range(60..600) * 1000 * if rng.random_bool(0.5) { 1 } else { -1 };
                    (length, "", 0.0, offset)
                }
            };
            let end = start + length.max(1);
            let at_ms = if kind == TruthKind::Backfill {
                end + at_ms
            } else {
                at_ms
            };
            // an upload that would arrive after the simulation's end is not simulated (nothing
            // after the end can be scored)
            if !(kind == TruthKind::Backfill && at_ms >= finish) {
                conditions.push(Condition {
                    kind,
                    start,
                    end,
                    field,
                    value,
                    at_ms,
                });
            }
            t = end
                .saturating_add(QUIET_GAP_MS)
                .saturating_add(waiting_time(&mut rng, total));
        }

        let co2 = uniform(&mut rng, 420.0, 700.0);
        let voc = uniform(&mut rng, 60.0, 200.0);
        let temp = uniform(&mut rng, 19.0, 24.0);
        let hum = uniform(&mut rng, 30.0, 55.0);
        FleetDevice {
            name: format!("d{:04}", index + 1),
            rng,
            phase_ms,
            background,
            swing,
            swing_phase,
            episodes,
            next_episode: 0,
            conditions,
            next_condition: 0,
            co2,
            voc,
            temp,
            hum,
            open_episode: None,
            open_condition: None,
            forwarding_until: i64::MIN,
        }
    }

    /// The noise-free, fault-free PM2.5 at `t`.
    fn true_pm25(&mut self, t: i64) -> f64 {
        while self.next_episode < self.episodes.len() && self.episodes[self.next_episode].end <= t {
            self.next_episode += 1;
        }
        let day = (t.rem_euclid(DAY)) as f64 / DAY as f64;
        let mut level = self.background + self.swing * (std::f64::consts::TAU * day + self.swing_phase).sin();
        if let Some(e) = self.episodes.get(self.next_episode) {
            level += e.contribution(t);
        }
        level
    }
}

/// Appends `v` with one decimal.
fn push_tenths(buf: &mut String, v: f64) {
    let tenths = (v * 10.0).round() as i64;
    if tenths < 0 {
        buf.push('-');
    }
    let a = tenths.unsigned_abs();
    let mut b = itoa::Buffer::new();
    buf.push_str(b.format(a / 10));
    buf.push('.');
    buf.push(char::from(b'0' + (a % 10) as u8));
}

fn push_int(buf: &mut String, v: i64) {
    let mut b = itoa::Buffer::new();
    buf.push_str(b.format(v));
}

/// Lines waiting for their arrival time, in buckets of [`BUCKET_MS`].
#[derive(Default)]
struct ArrivalBuckets {
    buckets: BTreeMap<i64, Vec<(i64, u64, String)>>,
    seq: u64,
}

impl ArrivalBuckets {
    fn push(&mut self, received: i64, line: String) {
        self.seq += 1;
        self.buckets
            .entry(received.div_euclid(BUCKET_MS))
            .or_default()
            .push((received, self.seq, line));
    }

    /// Writes every bucket that ends at or before `until` (all of them for `i64::MAX`).
    fn flush(&mut self, until: i64, out: &mut impl Write) -> io::Result<u64> {
        let mut lines = 0;
        while let Some(entry) = self.buckets.first_entry() {
            if until != i64::MAX && (entry.key() + 1) * BUCKET_MS > until {
                break;
            }
            let mut bucket = entry.remove();
            bucket.sort_unstable_by_key(|(received, seq, _)| (*received, *seq));
            for (_, _, line) in &bucket {
                out.write_all(line.as_bytes())?;
            }
            lines += bucket.len() as u64;
        }
        Ok(lines)
    }
}

/// Writes the readings (arrival order) to `readings` and the ground truth to `truth`.
pub fn generate_fleet(
    spec: &FleetSpec,
    readings: &mut impl Write,
    truth: &mut impl Write,
) -> Result<FleetStats, FleetError> {
    if spec.devices < 1 {
        return Err(FleetError::NoDevices);
    }
    if spec.interval_ms < 1 || spec.duration_ms < spec.interval_ms {
        return Err(FleetError::NoTime);
    }
    let mut devices: Vec<FleetDevice> = (0..spec.devices).map(|i| FleetDevice::plan(spec, i)).collect();
    let rates = spec.rates;
    let slots = spec.duration_ms / spec.interval_ms;
    let mut stats = FleetStats::default();
    let mut labels: Vec<TruthRecord> = Vec::new();
    let mut arrivals = ArrivalBuckets::default();
    for k in 0..slots {
        let slot_start = spec.start_ms + k * spec.interval_ms;
        stats.lines += arrivals.flush(slot_start, readings)?;
        for d in &mut devices {
            let t = slot_start + d.phase_ms;
            // the truth: episodes on the true signal
            let truth_pm = d.true_pm25(t);
            if truth_pm >= EPISODE_LEVEL {
                let open = d.open_episode.get_or_insert((t, t, truth_pm));
                open.1 = t;
                open.2 = open.2.max(truth_pm);
            } else if let Some((start, end, peak)) = d.open_episode.take() {
                close_episode(&mut labels, &d.name, start, end, peak);
            }
            // the other fields move whether or not the reading is sent
            let r = &mut d.rng;
            let hour = t.div_euclid(HOUR).rem_euclid(24);
            let target = if (8..18).contains(&hour) { 1400.0 } else { 450.0 };
            d.co2 = (d.co2 + (target - d.co2) * 0.01 + r.random_range(-8.0..8.0)).clamp(400.0, 2500.0);
            d.voc = (d.voc + r.random_range(-6.0..6.0)).clamp(20.0, 900.0);
            d.temp = (d.temp + r.random_range(-0.05..0.05)).clamp(15.0, 30.0);
            d.hum = (d.hum + r.random_range(-0.3..0.3)).clamp(15.0, 80.0);
            let noise = (r.random::<f64>() + r.random::<f64>() - 1.0) * (1.5 + 0.08 * truth_pm);
            let mut values = [(truth_pm + noise).max(0.0), d.co2, d.voc, d.temp, d.hum];
            let delay = r.random_range(100..2500);

            // the condition of this slot
            while let Some(c) = d.conditions.get(d.next_condition)
                && c.end <= t
            {
                let c = c.clone();
                d.next_condition += 1;
                if let Some((start, end)) = d.open_condition.take() {
                    labels.push(condition_label(&d.name, &c, start, end));
                }
            }
            let mut ts = t;
            // (behind an upload still on its way: after it)
            let mut received = (t + delay).max(d.forwarding_until.saturating_add(delay));
            if let Some(c) = d.conditions.get_mut(d.next_condition)
                && c.start <= t
            {
                let open = d.open_condition.get_or_insert((t, t));
                open.1 = t;
                match c.kind {
                    TruthKind::Offline => continue,
                    TruthKind::Backfill => {
                        received = c.at_ms;
                        d.forwarding_until = c.at_ms;
                    }
                    TruthKind::Stuck => {
                        let slot = field_index(c.field);
                        if c.value.is_nan() {
                            c.value = (values[slot] * 10.0).round() / 10.0;
                        }
                        values[slot] = c.value;
                    }
                    TruthKind::Drift => {
                        let share = (t - c.start) as f64 / (c.end - c.start).max(1) as f64;
                        values[field_index(c.field)] += c.value * share;
                    }
                    _ => ts = t + c.at_ms,
                }
            }

            // per-reading faults
            let r = &mut d.rng;
            let mut line = String::with_capacity(128);
            if r.random_bool(rates.malformed.clamp(0.0, 1.0)) {
                line.push_str("{\"device\":\"");
                line.push_str(&d.name);
                line.push_str("\",\"ts\":");
                push_int(&mut line, ts);
                line.push_str(",\"pm25\":\n");
                labels.push(TruthRecord::new(TruthKind::Malformed, &d.name, t, t));
                arrivals.push(received, line);
                continue;
            }
            if r.random_bool(rates.junk.clamp(0.0, 1.0)) {
                let (field, value) = match r.random_range(0..5) {
                    0 => ("pm25", -1.0),
                    1 => ("pm25", 9999.0),
                    2 => ("co2", 65535.0),
                    3 => ("voc", 65535.0),
                    _ => ("hum", 150.0),
                };
                values[field_index(field)] = value;
                let mut label = TruthRecord::new(TruthKind::Junk, &d.name, t, t);
                label.field = Some(field.to_string());
                label.value = Some(value);
                labels.push(label);
            }
            line.push_str("{\"device\":\"");
            line.push_str(&d.name);
            line.push_str("\",\"ts\":");
            push_int(&mut line, ts);
            line.push_str(",\"received\":");
            let received_at = line.len();
            push_int(&mut line, received);
            let mut body = String::with_capacity(64);
            for (name, value) in FIELDS.iter().zip(values) {
                body.push_str(",\"");
                body.push_str(name);
                body.push_str("\":");
                push_tenths(&mut body, value);
            }
            body.push_str("}\n");
            line.push_str(&body);
            stats.readings += 1;
            if r.random_bool(rates.duplicate.clamp(0.0, 1.0)) {
                // the same reading again; `received` is the ingest's, so it is the copy's arrival
                let again = received + r.random_range(1_000..60_000);
                let mut copy = String::with_capacity(line.len());
                copy.push_str(&line[..received_at]);
                push_int(&mut copy, again);
                copy.push_str(&body);
                let mut label = TruthRecord::new(TruthKind::Duplicate, &d.name, t, t);
                label.received = Some(again);
                labels.push(label);
                arrivals.push(again, copy);
            }
            arrivals.push(received, line);
        }
    }
    stats.lines += arrivals.flush(i64::MAX, readings)?;
    readings.flush()?;
    for d in &mut devices {
        if let Some((start, end, peak)) = d.open_episode.take() {
            close_episode(&mut labels, &d.name, start, end, peak);
        }
        if let (Some((start, end)), Some(c)) = (d.open_condition.take(), d.conditions.get(d.next_condition)) {
            labels.push(condition_label(&d.name, c, start, end));
        }
    }
    labels.sort_by(|a, b| (a.start, &a.device, a.kind).cmp(&(b.start, &b.device, b.kind)));
    for label in &labels {
        *stats.truth.entry(label.kind).or_default() += 1;
        serde_json::to_writer(&mut *truth, label).map_err(io::Error::from)?;
        truth.write_all(b"\n")?;
    }
    truth.flush()?;
    Ok(stats)
}

fn close_episode(labels: &mut Vec<TruthRecord>, device: &str, start: i64, end: i64, peak: f64) {
    if end - start >= EPISODE_MIN_MS {
        let mut label = TruthRecord::new(TruthKind::Episode, device, start, end);
        label.peak = Some((peak * 10.0).round() / 10.0);
        labels.push(label);
    }
}

fn condition_label(device: &str, c: &Condition, start: i64, end: i64) -> TruthRecord {
    let mut label = TruthRecord::new(c.kind, device, start, end);
    match c.kind {
        TruthKind::Backfill => label.received = Some(c.at_ms),
        TruthKind::Stuck => {
            label.field = Some(c.field.to_string());
            label.value = Some(c.value);
        }
        TruthKind::Drift => {
            label.field = Some(c.field.to_string());
            label.offset = Some((c.value * 10.0).round() / 10.0);
        }
        TruthKind::Skew => label.offset_ms = Some(c.at_ms),
        _ => {}
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> (Vec<u8>, Vec<TruthRecord>, FleetStats) {
        let spec = FleetSpec::new(12, 2.0, seed);
        let (mut readings, mut truth) = (Vec::new(), Vec::new());
        let stats = generate_fleet(&spec, &mut readings, &mut truth).unwrap();
        let labels = truth
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (readings, labels, stats)
    }

    fn parsed(readings: &[u8]) -> Vec<serde_json::Value> {
        readings
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }

    #[test]
    fn deterministic_for_a_seed_and_different_for_another() {
        let (a, ta, _) = small(3);
        let (b, tb, _) = small(3);
        let (c, _, _) = small(4);
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        assert_ne!(a, c);
    }

    #[test]
    fn lines_are_in_arrival_order_and_every_kind_is_labelled() {
        let spec = FleetSpec::new(60, 3.0, 1);
        let (mut readings, mut truth) = (Vec::new(), Vec::new());
        let stats = generate_fleet(&spec, &mut readings, &mut truth).unwrap();
        let values = parsed(&readings);
        assert!(
            values
                .windows(2)
                .all(|w| w[0]["received"].as_i64() <= w[1]["received"].as_i64())
        );
        for kind in TruthKind::ALL {
            assert!(
                stats.truth.get(&kind).copied().unwrap_or(0) > 0,
                "no {kind:?} in three days of 60 devices"
            );
        }
        let malformed = stats.truth[&TruthKind::Malformed];
        assert_eq!(values.len() as u64 + malformed, stats.lines);
    }

    #[test]
    fn offline_slots_have_no_readings_and_backfills_arrive_after_the_outage() {
        let (readings, labels, _) = small(5);
        let values = parsed(&readings);
        let of = |kind| labels.iter().filter(move |l: &&TruthRecord| l.kind == kind);
        assert!(of(TruthKind::Offline).count() > 0 && of(TruthKind::Backfill).count() > 0);
        for v in &values {
            let device = v["device"].as_str().unwrap();
            let ts = v["ts"].as_i64().unwrap();
            let received = v["received"].as_i64().unwrap();
            for o in of(TruthKind::Offline).filter(|o| o.device == device) {
                assert!(ts < o.start || ts > o.end, "{device} sent {ts} while offline {o:?}");
            }
            for b in of(TruthKind::Backfill).filter(|b| b.device == device && (b.start..=b.end).contains(&ts)) {
                assert!(received >= b.received.unwrap() && received - ts >= b.received.unwrap() - b.end);
            }
        }
    }

    #[test]
    fn episodes_stand_out_of_the_background_noise() {
        let (readings, labels, _) = small(2);
        let episodes: Vec<_> = labels.iter().filter(|l| l.kind == TruthKind::Episode).collect();
        assert!(episodes.len() >= 12, "about 1.5 a day per device: {}", episodes.len());
        // readings far from every episode and every fault stay well under the episode level
        let quiet = |device: &str, ts: i64| {
            !labels
                .iter()
                .any(|l| l.device == device && ts >= l.start - 60 * MINUTE && ts <= l.end + 3 * HOUR)
        };
        let mut checked = 0;
        for v in parsed(&readings) {
            let (device, ts) = (v["device"].as_str().unwrap(), v["ts"].as_i64().unwrap());
            if quiet(device, ts) {
                checked += 1;
                assert!(v["pm25"].as_f64().unwrap() < 25.0, "{v}");
            }
        }
        assert!(checked > 1000);
        for e in episodes {
            assert!(e.end - e.start >= EPISODE_MIN_MS && e.peak.unwrap() >= 45.0, "{e:?}");
        }
    }

    #[test]
    fn stuck_fields_repeat_their_value_and_junk_touches_one_field() {
        let (readings, labels, _) = small(9);
        let values = parsed(&readings);
        let find = |device: &str, ts: i64| {
            values
                .iter()
                .find(|v| v["device"] == device && v["ts"].as_i64() == Some(ts))
                .cloned()
        };
        let stuck: Vec<_> = labels.iter().filter(|l| l.kind == TruthKind::Stuck).collect();
        assert!(!stuck.is_empty());
        for s in stuck {
            let v = find(&s.device, s.start).expect("the first stuck reading is sent");
            assert_eq!(v[s.field.as_deref().unwrap()].as_f64(), s.value, "{s:?}");
        }
        let written_ts = |device: &str, t: i64| {
            let skew = labels
                .iter()
                .find(|s| s.kind == TruthKind::Skew && s.device == device && (s.start..=s.end).contains(&t));
            t + skew.map_or(0, |s| s.offset_ms.unwrap())
        };
        for j in labels.iter().filter(|l| l.kind == TruthKind::Junk) {
            let v = find(&j.device, written_ts(&j.device, j.start)).expect("a junk reading is sent");
            assert_eq!(v[j.field.as_deref().unwrap()].as_f64(), j.value);
            assert!(v["co2"].as_f64().unwrap() >= 400.0 || j.field.as_deref() == Some("co2"));
        }
    }

    #[test]
    fn some_backfilled_outages_hold_a_true_episode() {
        let spec = FleetSpec::new(100, 3.0, 1);
        let mut truth = Vec::new();
        generate_fleet(&spec, &mut io::sink(), &mut truth).unwrap();
        let labels: Vec<TruthRecord> = truth
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let held = labels
            .iter()
            .filter(|b| b.kind == TruthKind::Backfill)
            .filter(|b| {
                labels.iter().any(|e| {
                    e.kind == TruthKind::Episode && e.device == b.device && e.start >= b.start && e.end <= b.end
                })
            })
            .count();
        assert!(held > 0);
    }

    #[test]
    fn refuses_no_devices_and_no_time() {
        let mut spec = FleetSpec::new(0, 1.0, 1);
        assert!(matches!(
            generate_fleet(&spec, &mut io::sink(), &mut io::sink()),
            Err(FleetError::NoDevices)
        ));
        spec.devices = 1;
        spec.duration_ms = 10;
        assert!(matches!(
            generate_fleet(&spec, &mut io::sink(), &mut io::sink()),
            Err(FleetError::NoTime)
        ));
    }
}
