//! The no-framework reference of issue 18: the aq1 work in one plain single-thread loop, written
//! from the aq1 spec (`pipelines/aq1.yaml`) as plume implements it, without any of plume's code.
//!
//! - every line is parsed with `serde_json` into a struct (`device`, `ts`, `pm25`, `co2`; the other
//!   keys are skipped by serde's derive);
//! - per device: a 60 s tumbling window with 5 s allowed lateness (watermark = largest accepted
//!   event time − 5 s; a reading whose window already closed is late and goes no further; windows
//!   close once the watermark passes their end) with `count`, `pm25_avg`, `pm25_max`, `co2_avg`;
//!   a PM2.5 hysteresis (opens at ≥ 35, closes at ≤ 25: start and end records with peak and
//!   mean); a CO2 EWMA baseline (alpha 0.01) emitted at the end;
//! - at the end every device flushes its open windows and its baseline, then a summary;
//! - with an output path, every result is written as a JSON line (ryu/itoa into one reused
//!   buffer, xxh3 ids) through a 1 MiB `BufWriter`; without one, results are only counted.
//!
//! It is what plume could at best do on one core for this pipeline; its output is not meant to
//! be byte-identical to plume's (plume's records carry more keys), only the same work.

use std::fs::File;
use std::io::{BufWriter, Read, Write};

use rustc_hash::FxHashMap;
use serde::Deserialize;

const WINDOW_MS: i64 = 60_000;
const LATENESS_MS: i64 = 5_000;
const ENTER: f64 = 35.0;
const EXIT: f64 = 25.0;
const ALPHA: f64 = 0.01;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    device: &'a str,
    ts: i64,
    pm25: f64,
    co2: f64,
}

#[derive(Clone, Copy)]
struct Window {
    start: i64,
    count: u64,
    pm25_sum: f64,
    pm25_max: f64,
    co2_sum: f64,
}

#[derive(Default)]
struct Device {
    /// Open windows, ascending start (at most two with 5 s lateness on 60 s windows).
    windows: Vec<Window>,
    max_ts: Option<i64>,
    event: Option<Event>,
    seq: u64,
    baseline: Option<f64>,
    readings: u64,
    late: u64,
}

struct Event {
    start_ts: i64,
    peak: f64,
    sum: f64,
    n: u64,
}

/// Where results go: counted, or formatted and written.
struct Out {
    writer: Option<BufWriter<File>>,
    line: Vec<u8>,
    records: u64,
}

impl Out {
    fn begin(&mut self, kind: &str, operator: &str, device: &str, a: i64, b: u64) -> bool {
        self.records += 1;
        if self.writer.is_none() {
            return false;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in ["aq1", device, operator, kind] {
            h.update(&(part.len() as u32).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&a.to_le_bytes());
        h.update(&b.to_le_bytes());
        let id = h.digest128();
        let l = &mut self.line;
        l.clear();
        l.extend_from_slice(b"{\"v\":1,\"type\":\"");
        l.extend_from_slice(kind.as_bytes());
        l.extend_from_slice(b"\",\"operator\":\"");
        l.extend_from_slice(operator.as_bytes());
        l.extend_from_slice(b"\",\"device\":\"");
        l.extend_from_slice(device.as_bytes()); // generated ids need no escaping
        l.extend_from_slice(b"\",\"id\":\"");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in (0..32).rev() {
            l.push(HEX[((id >> (i * 4)) & 0xf) as usize]);
        }
        l.push(b'"');
        true
    }
    fn int(&mut self, key: &str, x: i64) {
        self.key(key);
        self.line.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
    }
    fn num(&mut self, key: &str, x: f64) {
        self.key(key);
        if x.is_finite() {
            self.line
                .extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
        } else {
            self.line.extend_from_slice(b"null");
        }
    }
    fn key(&mut self, key: &str) {
        self.line.extend_from_slice(b",\"");
        self.line.extend_from_slice(key.as_bytes());
        self.line.extend_from_slice(b"\":");
    }
    fn end(&mut self) {
        self.line.extend_from_slice(b"}\n");
        if let Some(w) = &mut self.writer {
            w.write_all(&self.line).expect("writing the reference's output");
        }
    }

    fn window(&mut self, device: &str, w: &Window) {
        if self.begin("window", "window", device, w.start, 0) {
            self.int("window_start", w.start);
            self.int("window_end", w.start + WINDOW_MS);
            self.int("count", w.count as i64);
            self.num("pm25_avg", w.pm25_sum / w.count as f64);
            self.num("pm25_max", w.pm25_max);
            self.num("co2_avg", w.co2_sum / w.count as f64);
            self.end();
        }
    }
}

impl Device {
    fn reading(&mut self, device: &str, ts: i64, pm25: f64, co2: f64, out: &mut Out) {
        self.readings += 1;
        // window: late, or added to its window
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let watermark = self.max_ts.map(|m| m - LATENESS_MS);
        if watermark.is_some_and(|wm| start + WINDOW_MS <= wm) {
            self.late += 1;
            if out.begin("late", "window", device, ts, 0) {
                out.int("ts", ts);
                out.end();
            }
            return;
        }
        match self.windows.iter().position(|w| w.start >= start) {
            Some(i) if self.windows[i].start == start => {
                let w = &mut self.windows[i];
                w.count += 1;
                w.pm25_sum += pm25;
                w.pm25_max = w.pm25_max.max(pm25);
                w.co2_sum += co2;
            }
            at => self.windows.insert(
                at.unwrap_or(self.windows.len()),
                Window {
                    start,
                    count: 1,
                    pm25_sum: pm25,
                    pm25_max: pm25,
                    co2_sum: co2,
                },
            ),
        }
        // hysteresis on pm25
        match &mut self.event {
            None if pm25 >= ENTER => {
                self.seq += 1;
                self.event = Some(Event {
                    start_ts: ts,
                    peak: pm25,
                    sum: pm25,
                    n: 1,
                });
                if out.begin("event_start", "pm25_event", device, ts, self.seq) {
                    out.int("start_ts", ts);
                    out.num("value", pm25);
                    out.end();
                }
            }
            None => {}
            Some(e) => {
                e.peak = e.peak.max(pm25);
                e.sum += pm25;
                e.n += 1;
                if pm25 <= EXIT {
                    let (start_ts, peak, mean) = (e.start_ts, e.peak, e.sum / e.n as f64);
                    self.event = None;
                    if out.begin("event_end", "pm25_event", device, start_ts, self.seq) {
                        out.int("start_ts", start_ts);
                        out.int("end_ts", ts);
                        out.num("peak", peak);
                        out.num("mean", mean);
                        out.end();
                    }
                }
            }
        }
        // co2 baseline
        self.baseline = Some(match self.baseline {
            None => co2,
            Some(b) => b + ALPHA * (co2 - b),
        });
        // the watermark moves; closed windows are emitted
        let max_ts = self.max_ts.map_or(ts, |m| m.max(ts));
        self.max_ts = Some(max_ts);
        let wm = max_ts - LATENESS_MS;
        while let Some(w) = self.windows.first()
            && w.start + WINDOW_MS <= wm
        {
            let w = self.windows.remove(0);
            out.window(device, &w);
        }
    }

    fn finish(&mut self, device: &str, out: &mut Out) {
        for w in std::mem::take(&mut self.windows) {
            out.window(device, &w);
        }
        if let Some(b) = self.baseline
            && out.begin("baseline", "co2_baseline", device, self.max_ts.unwrap_or(0), 0)
        {
            out.int("ts", self.max_ts.unwrap_or(0));
            out.num("baseline", b);
            out.end();
        }
    }
}

/// What a reference run did.
pub struct Totals {
    pub readings: u64,
    pub late: u64,
    pub bad_lines: u64,
    pub devices: u64,
    pub records: u64,
}

/// Runs the reference over `input`, writing records to `output` if given.
pub fn run(input: &str, output: Option<&str>) -> Totals {
    let mut file = File::open(input).expect("opening the input");
    let mut out = Out {
        writer: output.map(|p| BufWriter::with_capacity(1 << 20, File::create(p).expect("creating the output"))),
        line: Vec::with_capacity(256),
        records: 0,
    };
    let mut devices: FxHashMap<Box<str>, Device> = FxHashMap::default();
    let mut bad_lines = 0u64;
    // 1 MiB reads; the partial last line moves to the front of the buffer
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = file.read(&mut buf[filled..]).expect("reading the input");
        filled += n;
        let complete = if n == 0 {
            filled
        } else {
            match memchr::memrchr(b'\n', &buf[..filled]) {
                Some(i) => i + 1,
                None => continue,
            }
        };
        let mut rest = &buf[..complete];
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let line = &rest[..end];
            rest = &rest[(end + 1).min(rest.len())..];
            if line.is_empty() {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<Line>(line) else {
                bad_lines += 1;
                continue;
            };
            let device = match devices.get_mut(r.device) {
                Some(d) => d,
                None => devices.entry(r.device.into()).or_default(),
            };
            device.reading(r.device, r.ts, r.pm25, r.co2, &mut out);
        }
        buf.copy_within(complete..filled, 0);
        filled -= complete;
        if n == 0 {
            break;
        }
    }
    let mut ids: Vec<Box<str>> = devices.keys().cloned().collect();
    ids.sort();
    let (mut readings, mut late) = (0, 0);
    for id in &ids {
        let d = devices.get_mut(id).expect("listed above");
        d.finish(id, &mut out);
        readings += d.readings;
        late += d.late;
    }
    let totals = Totals {
        readings,
        late,
        bad_lines,
        devices: ids.len() as u64,
        records: out.records,
    };
    if let Some(w) = &mut out.writer {
        writeln!(
            w,
            "{{\"v\":1,\"type\":\"summary\",\"pipeline\":\"aq1\",\"readings\":{readings},\"late\":{late},\"dead_letters\":{bad_lines},\"devices\":{}}}",
            totals.devices
        )
        .and_then(|()| w.flush())
        .expect("writing the reference's output");
    }
    totals
}
