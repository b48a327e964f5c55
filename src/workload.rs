//! The aq1 reference workload: a deterministic generator of air-quality readings (JSON lines).
//!
//! # Layout
//! - [`Aq1Spec`]: the generator's arguments (devices, readings, seed).
//! - [`generate_aq1`]: writes the readings to any `Write`, returns [`Aq1Stats`].
//! - [`fleet`]: the labelled fleet (`plume generate fleet`): readings in arrival order and the
//!   ground truth of what happened to each device (episodes, offline, backfill, faults).
//! - [`score`]: scores a pipeline's records against that ground truth (`plume score`).
//! - [`PythonRandom`]: CPython's `random.Random(seed).random()` (MT19937 seeded by
//!   `init_by_array`, 53-bit floats), so the output is the same bytes as the reference
//!   generator's for the same arguments (checked by `tests/aq1_oracle.rs` against the recorded
//!   digest of the reference generator's output).
//!
//! The model, per device `d` (id `dev-%06d`), one reading every 10 s:
//! - `ts = 2026-01-01T00:00:00Z + phase_d + k * 10 s`, `phase_d` in `[0, 10 s)`;
//! - arrival = `ts` + a delay uniform in `[0, 3 s)` for 99.9 % of readings and in
//!   `[30 s, 120 s)` for 0.1 %; lines are written in arrival order (ties: generation order);
//! - `pm25` = a per-device base (5–20) + noise growing with the level, plus pollution episodes
//!   (about 2–2.5 % of readings) that ramp up to a peak of 40–150 and decay, and smaller ones
//!   peaking at 28–42 that hover in the hysteresis band;
//! - `co2`, `voc`, `temp`, `hum`: bounded random walks; every measurement has one decimal.

pub mod fleet;
pub mod score;

use std::collections::BTreeMap;
use std::io::{self, Write};

use rand_mt::Mt;

/// 2026-01-01T00:00:00Z in epoch milliseconds.
pub const AQ1_START_MS: i64 = 1_767_225_600_000;
const PERIOD_MS: i64 = 10_000;
/// Share of readings delayed 30–120 s.
const DELAY_FRACTION: f64 = 0.001;
const SMALL_DELAY_MS: f64 = 3000.0;
const BIG_DELAY_MIN_MS: i64 = 30_000;
const BIG_DELAY_SPAN_MS: f64 = 90_000.0;
/// Per reading: the start of a big episode (peak 40–150).
const P_EPISODE: f64 = 0.0004;
/// Per reading: the start of a small episode (peak 28–42).
const P_SMALL_EPISODE: f64 = 0.0003;
/// Sort key of a line within its arrival bucket: `arrival_ms << POS_BITS | position`.
const POS_BITS: u32 = 22;
const POS_MASK: u64 = (1 << POS_BITS) - 1;
/// The largest value printed (tenths up to 2000.0).
const MAX_TENTHS: usize = 20_000;

/// The generator's arguments: the output is a pure function of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aq1Spec {
    pub devices: u32,
    pub readings: u64,
    pub seed: u64,
}

/// What a generation produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aq1Stats {
    pub lines: u64,
    /// Readings delayed 30–120 s.
    pub delayed: u64,
    /// Readings generated while their device was in a pollution episode.
    pub episode_readings: u64,
}

/// Why a generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("--devices must be at least 1")]
    NoDevices,
    #[error("--devices {0} is too many for this generator (at most {max})", max = POS_MASK >> 1)]
    TooManyDevices(u32),
    #[error("writing the workload: {0}")]
    Write(#[from] io::Error),
}

/// CPython's `random.Random(seed)` for a non-negative integer seed: MT19937 initialised by
/// `init_by_array` with the seed's 32-bit words (least significant first; `[0]` for 0), and
/// `random()` = 53 random bits as `(a >> 5) * 2^26 + (b >> 6)` over `2^53`.
pub struct PythonRandom {
    mt: Mt,
}

impl PythonRandom {
    pub fn new(seed: u64) -> Self {
        let low = seed as u32;
        let high = (seed >> 32) as u32;
        let key: Vec<u32> = if high == 0 { vec![low] } else { vec![low, high] };
        PythonRandom {
            mt: Mt::new_with_key(key),
        }
    }

    /// A float uniform in `[0, 1)`, bit for bit `random.random()`.
    pub fn random(&mut self) -> f64 {
        let a = (self.mt.next_u32() >> 5) as f64;
        let b = (self.mt.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// One arrival bucket (readings arriving within one 10 s period): sort keys and lines.
#[derive(Default)]
struct Bucket {
    keys: Vec<u64>,
    lines: Vec<String>,
}

impl Bucket {
    fn push(&mut self, arrival: i64, line: String) {
        debug_assert!(arrival >= 0);
        self.keys.push(((arrival as u64) << POS_BITS) | self.lines.len() as u64);
        self.lines.push(line);
    }

    fn write_to(mut self, out: &mut impl Write) -> io::Result<()> {
        self.keys.sort_unstable();
        for key in &self.keys {
            out.write_all(self.lines[(key & POS_MASK) as usize].as_bytes())?;
        }
        Ok(())
    }
}

/// Per-device episode state: 0 none, 1 ramping up, 2 decaying.
#[derive(Clone, Copy, Default)]
struct Episode {
    mode: u8,
    level: f64,
    peak: f64,
    step: f64,
    decay: f64,
}

/// Writes `spec.readings` aq1 lines for `spec.devices` devices to `out`.
pub fn generate_aq1(spec: Aq1Spec, out: &mut impl Write) -> Result<Aq1Stats, WorkloadError> {
    if spec.devices < 1 {
        return Err(WorkloadError::NoDevices);
    }
    if u64::from(spec.devices) > (POS_MASK >> 1) {
        return Err(WorkloadError::TooManyDevices(spec.devices));
    }
    let tenths: Vec<String> = (0..=MAX_TENTHS).map(|i| format!("{}.{}", i / 10, i % 10)).collect();
    let print = |v: f64| -> &str { &tenths[(v * 10.0 + 0.5) as usize] };
    let mut rng = PythonRandom::new(spec.seed);
    let devices = spec.devices as usize;

    // static per-device parameters and initial state, drawn in the reference's order
    let mut phase = Vec::with_capacity(devices);
    let mut base = Vec::with_capacity(devices);
    let mut co2 = Vec::with_capacity(devices);
    let mut voc = Vec::with_capacity(devices);
    let mut temp = Vec::with_capacity(devices);
    let mut hum = Vec::with_capacity(devices);
    for _ in 0..devices {
        phase.push((rng.random() * PERIOD_MS as f64) as i64);
        base.push(5.0 + 15.0 * rng.random());
        co2.push(420.0 + 600.0 * rng.random());
        voc.push(80.0 + 200.0 * rng.random());
        temp.push(19.0 + 5.0 * rng.random());
        hum.push(30.0 + 25.0 * rng.random());
    }
    let prefixes: Vec<String> = (0..devices)
        .map(|d| format!("{{\"device\":\"dev-{d:06}\",\"ts\":"))
        .collect();
    let mut episodes = vec![Episode::default(); devices];

    let mut buckets: BTreeMap<i64, Bucket> = BTreeMap::new();
    let mut stats = Aq1Stats::default();
    let p_any = P_EPISODE + P_SMALL_EPISODE;
    let small_scale = SMALL_DELAY_MS / (1.0 - DELAY_FRACTION);
    let mut period: i64 = 0;
    while stats.lines < spec.readings {
        let in_this_period = (spec.readings - stats.lines).min(devices as u64) as usize;
        let period_start = AQ1_START_MS + period * PERIOD_MS;
        let next_period_start = period_start + PERIOD_MS;
        buckets.entry(period).or_default();
        buckets.entry(period + 1).or_default();
        for d in 0..in_this_period {
            let ts = period_start + phase[d];

            // pm25
            let e = &mut episodes[d];
            let mut extra = 0.0;
            if e.mode == 0 {
                let u = rng.random();
                if u < p_any {
                    let peak = if u < P_EPISODE {
                        40.0 + 110.0 * (u / P_EPISODE)
                    } else {
                        28.0 + 14.0 * ((u - P_EPISODE) / P_SMALL_EPISODE)
                    };
                    let excess = (peak - base[d]).max(5.0);
                    e.peak = excess;
                    let ramp_steps = 2 + (rng.random() * 8.0) as i64; // 20..90 s
                    e.step = excess / ramp_steps as f64;
                    e.level = e.step;
                    e.decay = 0.80 + 0.12 * rng.random();
                    e.mode = 1;
                }
            }
            if e.mode == 1 {
                extra = e.level;
                let next = extra + e.step;
                if next >= e.peak {
                    e.level = e.peak;
                    e.mode = 2;
                } else {
                    e.level = next;
                }
                stats.episode_readings += 1;
            } else if e.mode == 2 {
                extra = e.level * e.decay;
                if extra < 0.5 {
                    e.mode = 0;
                    extra = 0.0;
                }
                e.level = extra;
                stats.episode_readings += 1;
            }
            let level = base[d] + extra;
            let noise = (rng.random() + rng.random() - 1.0) * (2.0 + 0.08 * level);
            let pm = (level + noise).max(0.0);

            // co2 / voc / temp / hum: random walks reflected at their bounds
            let c = reflect(co2[d] + (rng.random() - 0.5) * 30.0, 400.0, 2000.0);
            co2[d] = c;
            let v = reflect(voc[d] + (rng.random() - 0.5) * 16.0, 20.0, 900.0);
            voc[d] = v;
            let t = reflect(temp[d] + (rng.random() - 0.5) * 0.2, 15.0, 30.0);
            temp[d] = t;
            let h = reflect(hum[d] + (rng.random() - 0.5) * 0.8, 15.0, 80.0);
            hum[d] = h;

            // arrival
            let u = rng.random();
            let line = format!(
                "{}{ts},\"pm25\":{},\"co2\":{},\"voc\":{},\"temp\":{},\"hum\":{}}}\n",
                prefixes[d],
                print(pm),
                print(c),
                print(v),
                print(t),
                print(h)
            );
            let (arrival, bucket) = if u < DELAY_FRACTION {
                stats.delayed += 1;
                let arrival = ts + BIG_DELAY_MIN_MS + (u / DELAY_FRACTION * BIG_DELAY_SPAN_MS) as i64;
                (arrival, (arrival - AQ1_START_MS).div_euclid(PERIOD_MS))
            } else {
                let arrival = ts + ((u - DELAY_FRACTION) * small_scale) as i64;
                (
                    arrival,
                    if arrival < next_period_start {
                        period
                    } else {
                        period + 1
                    },
                )
            };
            buckets.entry(bucket).or_default().push(arrival, line);
        }
        stats.lines += in_this_period as u64;
        // every reading generated later arrives at or after the start of the next period, so
        // this period's bucket (and any before it) is complete
        while let Some(entry) = buckets.first_entry() {
            if *entry.key() > period {
                break;
            }
            entry.remove().write_to(out)?;
        }
        period += 1;
    }
    while let Some((_, bucket)) = buckets.pop_first() {
        bucket.write_to(out)?;
    }
    out.flush()?;
    Ok(stats)
}

/// A random-walk step reflected back into `[low, high]`.
fn reflect(x: f64, low: f64, high: f64) -> f64 {
    if x < low {
        2.0 * low - x
    } else if x > high {
        2.0 * high - x
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_random_matches_cpython() {
        // python3 -c 'import random; r=random.Random(1); print([r.random() for _ in range(3)])'
        let mut r = PythonRandom::new(1);
        assert_eq!(r.random(), 0.13436424411240122);
        assert_eq!(r.random(), 0.8474337369372327);
        assert_eq!(r.random(), 0.763774618976614);
        // random.Random(0).random(); a seed wider than 32 bits uses two key words
        assert_eq!(PythonRandom::new(0).random(), 0.8444218515250481);
        assert_eq!(PythonRandom::new(1 << 40).random(), 0.1036394562812375);
    }

    #[test]
    fn writes_the_requested_lines_in_arrival_order_per_device() {
        let mut out = Vec::new();
        let stats = generate_aq1(
            Aq1Spec {
                devices: 7,
                readings: 1000,
                seed: 3,
            },
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(stats.lines, 1000);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["device"].as_str().unwrap().starts_with("dev-00000"));
            for k in ["pm25", "co2", "voc", "temp", "hum"] {
                assert!(v[k].as_f64().unwrap() >= 0.0, "{line}");
            }
        }
    }

    #[test]
    fn refuses_zero_devices() {
        let spec = Aq1Spec {
            devices: 0,
            readings: 1,
            seed: 1,
        };
        assert!(matches!(
            generate_aq1(spec, &mut Vec::new()),
            Err(WorkloadError::NoDevices)
        ));
    }
}
