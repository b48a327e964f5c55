//! A fleet of simulated indoor air-quality monitors, for `plume demo` and for trying pipelines
//! without hardware. Each device reports PM2.5, CO2, VOC, temperature and humidity every
//! `interval` of simulated time as a JSON line (the same shape as aq1); simulated time runs
//! `speed` times faster than the wall clock, starting now.
//!
//! - PM2.5: a per-device background level with noise; pollution episodes (cooking, smoke,
//!   outdoor haze) ramp up to 40-200 µg/m³ and decay.
//! - CO2: occupancy makes it climb during the day and fall at night, with noise.
//! - Faults (chance `faults` per reading): a stuck sensor (the same values for a while), an
//!   out-of-range spike, a dropout (the device goes silent for minutes), a malformed payload.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::clock;
use crate::connectors::SourceError;
use crate::model::{ChunkData, Position};
use crate::runtime::ports::{ChunkFeeder, Shutdown};
use crate::spec::SimulatorSourceSpec;

struct SimDevice {
    name: String,
    next_ts: i64,
    pm_background: f64,
    pm_episode: f64,
    pm_episode_step: f64,
    pm_episode_peak: f64,
    pm_decay: f64,
    co2: f64,
    voc: f64,
    temp: f64,
    hum: f64,
    stuck_for: u32,
    stuck_line: Option<String>,
    silent_until: i64,
}

/// Simulated time: from the start, `speed` times faster than real time, up to the end of the
/// spec's `duration` (if any). Both the line source and the MQTT publisher follow it.
pub struct SimulatedClock {
    start_ms: i64,
    speed: f64,
    end_ms: Option<i64>,
    started: Instant,
    /// Simulated time generated up to.
    until: i64,
}

impl SimulatedClock {
    pub fn new(spec: &SimulatorSourceSpec, start_ms: i64) -> Self {
        SimulatedClock {
            start_ms,
            speed: if spec.speed > 0.0 { spec.speed } else { 1.0 },
            end_ms: spec.duration.map(|d| start_ms + d.as_millis()),
            started: Instant::now(),
            until: start_ms,
        }
    }

    /// The simulated time reached now, if it moved on since the last call.
    pub fn advance(&mut self) -> Option<i64> {
        let mut now = self.start_ms + (self.started.elapsed().as_secs_f64() * 1000.0 * self.speed) as i64;
        if let Some(end) = self.end_ms {
            now = now.min(end);
        }
        (now > self.until).then(|| {
            self.until = now;
            now
        })
    }

    /// The simulated duration is over.
    pub fn finished(&self) -> bool {
        self.end_ms.is_some_and(|end| self.until >= end)
    }
}

/// The simulator's state: deterministic for a seed and a start time.
pub struct Simulator {
    spec: SimulatorSourceSpec,
    rng: SmallRng,
    devices: Vec<SimDevice>,
    interval_ms: i64,
    pub start_ms: i64,
}

impl Simulator {
    pub fn new(spec: SimulatorSourceSpec, start_ms: i64) -> Self {
        let mut rng = SmallRng::seed_from_u64(spec.seed);
        let interval_ms = spec.interval.as_millis().max(1);
        let devices = (0..spec.devices)
            .map(|i| SimDevice {
                name: format!("room-{i:04}"),
                next_ts: start_ms + rng.random_range(0..interval_ms),
                pm_background: rng.random_range(4.0..15.0),
                pm_episode: 0.0,
                pm_episode_step: 0.0,
                pm_episode_peak: 0.0,
                pm_decay: 0.9,
                co2: rng.random_range(420.0..700.0),
                voc: rng.random_range(60.0..200.0),
                temp: rng.random_range(19.0..24.0),
                hum: rng.random_range(30.0..55.0),
                stuck_for: 0,
                stuck_line: None,
                silent_until: i64::MIN,
            })
            .collect();
        Simulator {
            spec,
            rng,
            devices,
            interval_ms,
            start_ms,
        }
    }

    /// Every reading with event time before `until`, as JSON lines, in time order per device.
    pub fn generate_until(&mut self, until: i64, out: &mut Vec<u8>) -> u64 {
        let mut n = 0;
        let interval = self.interval_ms;
        for d in &mut self.devices {
            while d.next_ts < until {
                let ts = d.next_ts;
                d.next_ts += interval;
                if ts < d.silent_until {
                    continue;
                }
                n += 1;
                if d.stuck_for > 0 {
                    d.stuck_for -= 1;
                    let line = d.stuck_line.clone().unwrap_or_default();
                    // same values, new time
                    out.extend_from_slice(line.replace("\"ts\":TS", &format!("\"ts\":{ts}")).as_bytes());
                    out.push(b'\n');
                    continue;
                }
                let r = &mut self.rng;
                // pollution episodes
                if d.pm_episode_step == 0.0 && d.pm_episode < 0.5 && r.random::<f64>() < self.spec.episodes {
                    d.pm_episode_peak = r.random_range(40.0..200.0);
                    d.pm_episode_step = d.pm_episode_peak / r.random_range(2.0..9.0);
                    d.pm_decay = r.random_range(0.80..0.95);
                }
                if d.pm_episode_step > 0.0 {
                    d.pm_episode += d.pm_episode_step;
                    if d.pm_episode >= d.pm_episode_peak {
                        d.pm_episode_step = 0.0;
                    }
                } else {
                    d.pm_episode *= d.pm_decay;
                }
                let level = d.pm_background + d.pm_episode;
                let pm25 = (level + (r.random::<f64>() + r.random::<f64>() - 1.0) * (1.5 + 0.08 * level)).max(0.0);
                // occupancy: CO2 climbs from 8:00 to 18:00 (UTC of the simulated clock)
                let hour = ts.div_euclid(3_600_000).rem_euclid(24);
                let target = if (8..18).contains(&hour) { 1400.0 } else { 450.0 };
                d.co2 += (target - d.co2) * 0.01 + r.random_range(-8.0..8.0);
                d.co2 = d.co2.clamp(400.0, 2500.0);
                d.voc = (d.voc + r.random_range(-6.0..6.0)).clamp(20.0, 900.0);
                d.temp = (d.temp + r.random_range(-0.05..0.05)).clamp(15.0, 30.0);
                d.hum = (d.hum + r.random_range(-0.3..0.3)).clamp(15.0, 80.0);
                let mut pm_text = format!("{pm25:.1}");
                if r.random::<f64>() < self.spec.faults {
                    match r.random_range(0..4) {
                        0 => {
                            d.stuck_for = r.random_range(20..60);
                            d.stuck_line = Some(format!(
                                r#"{{"device":"{}","ts":TS,"pm25":{pm25:.1},"co2":{:.1},"voc":{:.1},"temp":{:.1},"hum":{:.1}}}"#,
                                d.name, d.co2, d.voc, d.temp, d.hum
                            ));
                        }
                        1 => pm_text = "5000.0".into(),
                        2 => {
                            d.silent_until = ts + r.random_range(5..30) * 60_000;
                            continue;
                        }
                        _ => {
                            out.extend_from_slice(
                                format!(r#"{{"device":"{}","ts":{ts},"pm25":"E42","co2":"#, d.name).as_bytes(),
                            );
                            out.push(b'\n');
                            continue;
                        }
                    }
                }
                out.extend_from_slice(
                    format!(
                        r#"{{"device":"{}","ts":{ts},"pm25":{pm_text},"co2":{:.1},"voc":{:.1},"temp":{:.1},"hum":{:.1}}}"#,
                        d.name, d.co2, d.voc, d.temp, d.hum
                    )
                    .as_bytes(),
                );
                out.push(b'\n');
            }
        }
        n
    }
}

/// Runs the simulator until its `duration` of simulated time has passed or `stop` is set.
pub fn run(spec: SimulatorSourceSpec, mut feeder: ChunkFeeder, stop: Shutdown) -> Result<(), SourceError> {
    let start_ms = clock::now_ms();
    let mut simulated = SimulatedClock::new(&spec, start_ms);
    let mut sim = Simulator::new(spec, start_ms);
    let mut offset = 0u64;
    let mut line = 1u64;
    while !stop.is_requested() {
        std::thread::sleep(Duration::from_millis(100));
        feeder.poll_barrier();
        if let Some(until) = simulated.advance() {
            let mut bytes = Vec::new();
            sim.generate_until(until, &mut bytes);
            if !bytes.is_empty() {
                let permit = feeder.wait_for_room();
                let start = offset;
                offset += bytes.len() as u64;
                let first_line = line;
                line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
                feeder.send_at(
                    ChunkData::Lines {
                        bytes: bytes.into(),
                        first_line,
                        start_offset: start,
                    },
                    Position::File { offset, line },
                    permit,
                    until,
                );
            }
        }
        if simulated.finished() {
            break;
        }
    }
    feeder.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DurationSpec;

    fn spec(faults: f64) -> SimulatorSourceSpec {
        SimulatorSourceSpec {
            devices: 20,
            interval: DurationSpec::from_millis(10_000),
            speed: 1.0,
            episodes: 0.01,
            faults,
            duration: None,
            seed: 7,
        }
    }

    #[test]
    fn deterministic_for_a_seed_and_one_reading_per_interval() {
        let mut a = Simulator::new(spec(0.0), 0);
        let mut b = Simulator::new(spec(0.0), 0);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        assert_eq!(a.generate_until(3_600_000, &mut x), 20 * 360);
        b.generate_until(3_600_000, &mut y);
        assert_eq!(x, y);
        for line in x.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert!(v["pm25"].as_f64().unwrap() >= 0.0);
        }
    }

    #[test]
    fn faults_produce_bad_payloads_and_spikes() {
        let mut sim = Simulator::new(spec(0.05), 0);
        let mut out = Vec::new();
        sim.generate_until(6 * 3_600_000, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"pm25\":\"E42\""), "malformed payloads");
        assert!(text.contains("\"pm25\":5000.0"), "out-of-range spikes");
    }
}
