//! The plain loop: every reading through its device's operator chain, one thread, no actors.
//!
//! It is the correctness oracle for the actor runtime (the same pipeline must give the same
//! results through both) and the single-core ceiling in the benchmarks.

use std::io::{self, BufRead, Write};

use rustc_hash::FxHashMap;

use crate::operators::{DeviceChain, Emit};
use crate::output::{OutputRecord, RecordFormatter, RunTotals};
use crate::pipeline::CompiledPipeline;

/// The state of a plain-loop run.
pub struct PlainRun<'p> {
    pipeline: &'p CompiledPipeline,
    formatter: RecordFormatter,
    devices: FxHashMap<Box<str>, DeviceChain>,
    emits: Vec<Emit>,
    dead_letters: u64,
    /// Each reading's arrival time (`runtime.clock`).
    arrival: crate::clock::ArrivalStamp,
    /// Event clock: when the devices are next checked for deadlines the fleet's clock passed
    /// (as the shards do), and how often.
    next_fleet_tick: i64,
    fleet_tick_ms: i64,
}

impl<'p> PlainRun<'p> {
    pub fn new(pipeline: &'p CompiledPipeline) -> Self {
        PlainRun {
            pipeline,
            formatter: RecordFormatter::new(pipeline),
            devices: FxHashMap::default(),
            emits: Vec::new(),
            dead_letters: 0,
            arrival: crate::clock::ArrivalStamp::new(pipeline.spec.runtime.clock.is_event()),
            next_fleet_tick: i64::MIN,
            fleet_tick_ms: pipeline.event_tick_interval_ms(),
        }
    }

    /// One line of input (blank lines are skipped and not counted).
    #[inline]
    pub fn push_line(
        &mut self,
        line: &[u8],
        source: &str,
        line_no: u64,
        now: i64,
        sink: &mut impl FnMut(OutputRecord),
    ) {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        let decoder = &self.pipeline.decoder;
        if line.len() > decoder.max_payload_bytes {
            self.dead_letters += 1;
            let raw = crate::decode::bounded_raw(line, decoder.max_dead_letter_bytes);
            let reason = crate::decode::oversized_reason(line.len() as u64, decoder.max_payload_bytes);
            sink(
                self.formatter
                    .dead_letter(source, &format!("line {line_no}"), &reason, raw),
            );
            return;
        }
        match decoder.decode(line, None, now) {
            Ok(mut decoded) => {
                decoded.reading.arrival = self.arrival.stamp(decoded.reading.ts, decoded.arrival, now);
                for &(field, value) in &decoded.dropped {
                    self.dead_letters += 1;
                    let raw = crate::decode::bounded_raw(line, decoder.max_dead_letter_bytes);
                    let reason = decoder.dropped_reason(field, value);
                    sink(
                        self.formatter
                            .dead_letter(source, &format!("line {line_no}"), &reason, raw),
                    );
                }
                let chain = match self.devices.get_mut(decoded.device.as_ref()) {
                    Some(chain) => chain,
                    None => {
                        let device: Box<str> = decoded.device.as_ref().into();
                        self.devices
                            .entry(device)
                            .or_insert_with_key(|d| self.pipeline.new_chain(d))
                    }
                };
                let at = match self.arrival.fleet_ms() {
                    Some(_) => {
                        chain.catch_up(decoded.reading.arrival, &mut self.emits);
                        decoded.reading.arrival
                    }
                    None => now,
                };
                chain.on_reading(decoded.reading, at, &mut self.emits);
                for emit in self.emits.drain(..) {
                    sink(self.formatter.format(&decoded.device, &emit));
                }
                if let Some(fleet_ms) = self.arrival.fleet_ms()
                    && fleet_ms >= self.next_fleet_tick
                {
                    self.next_fleet_tick = fleet_ms.saturating_add(self.fleet_tick_ms);
                    self.catch_up_all(fleet_ms, sink);
                }
            }
            Err(reason) => {
                self.dead_letters += 1;
                let raw = crate::decode::bounded_raw(line, decoder.max_dead_letter_bytes);
                sink(
                    self.formatter
                        .dead_letter(source, &format!("line {line_no}"), &reason.to_string(), raw),
                );
            }
        }
    }

    /// Event clock: every device acts on the deadlines the fleet's clock passed.
    fn catch_up_all(&mut self, fleet_ms: i64, sink: &mut impl FnMut(OutputRecord)) {
        for (device, chain) in self.devices.iter_mut() {
            if chain.catch_up(fleet_ms, &mut self.emits) {
                for emit in self.emits.drain(..) {
                    sink(self.formatter.format(device, &emit));
                }
            }
        }
    }

    /// End of input: every device flushes (in device id order), then the summary record.
    pub fn finish(mut self, sink: &mut impl FnMut(OutputRecord)) -> RunTotals {
        if let Some(fleet_ms) = self.arrival.fleet_ms() {
            self.catch_up_all(fleet_ms, sink);
        }
        let mut ids: Vec<&Box<str>> = self.devices.keys().collect();
        ids.sort();
        let ids: Vec<Box<str>> = ids.into_iter().cloned().collect();
        let mut totals = RunTotals {
            dead_letters: self.dead_letters,
            devices: ids.len() as u64,
            ..Default::default()
        };
        for id in ids {
            let chain = self.devices.get_mut(&id).expect("listed above");
            if self.pipeline.spec.shutdown.flush {
                chain.on_end(&mut self.emits);
            }
            let c = chain.counters();
            totals.readings += c.readings;
            totals.late += c.late;
            for emit in self.emits.drain(..) {
                sink(self.formatter.format(&id, &emit));
            }
        }
        sink(self.formatter.summary(&totals));
        totals
    }
}

/// Calls `f` with every line of `input` (split on `\n`, as `BufRead::split` splits) and its
/// number, from 1. Lines are taken from the reader's buffer where they lie; only a line that
/// straddles two reads is copied (`BufRead::split` allocated and copied every line).
fn for_each_line(mut input: impl BufRead, mut f: impl FnMut(&[u8], u64)) -> io::Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    loop {
        let buf = input.fill_buf()?;
        let read = buf.len();
        if read == 0 {
            break;
        }
        let mut rest = buf;
        if !carry.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    carry.extend_from_slice(&rest[..i]);
                    line_no += 1;
                    f(&carry, line_no);
                    carry.clear();
                    rest = &rest[i + 1..];
                }
                None => {
                    carry.extend_from_slice(rest);
                    input.consume(read);
                    continue;
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            line_no += 1;
            f(&rest[..i], line_no);
            rest = &rest[i + 1..];
        }
        carry.extend_from_slice(rest);
        input.consume(read);
    }
    if !carry.is_empty() {
        f(&carry, line_no + 1);
    }
    Ok(())
}

/// Runs the whole input through the plain loop, writing JSON lines to `output`.
pub fn run(
    pipeline: &CompiledPipeline,
    source_name: &str,
    input: impl BufRead,
    output: &mut dyn Write,
) -> io::Result<RunTotals> {
    let mut run = PlainRun::new(pipeline);
    let mut write_error = None;
    let mut sink = |record: OutputRecord| {
        if write_error.is_none()
            && let Err(e) = output
                .write_all(record.json.as_bytes())
                .and_then(|()| output.write_all(b"\n"))
        {
            write_error = Some(e);
        }
    };
    let now = crate::clock::now_ms();
    for_each_line(input, |line, line_no| {
        run.push_line(line, source_name, line_no, now, &mut sink)
    })?;
    let totals = run.finish(&mut sink);
    if let Some(e) = write_error {
        return Err(e);
    }
    output.flush()?;
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_numbered_as_bufread_split_does() {
        for text in [
            &b""[..],
            b"a",
            b"a\n",
            b"a\n\nb",
            b"\n\n",
            b"first\nsecond line that straddles\nthird\n",
            b"x\r\ny",
        ] {
            for capacity in [1, 2, 3, 7, 64] {
                let mut lines = Vec::new();
                for_each_line(io::BufReader::with_capacity(capacity, text), |l, n| {
                    lines.push((l.to_vec(), n))
                })
                .unwrap();
                let expected: Vec<(Vec<u8>, u64)> = io::BufReader::new(text)
                    .split(b'\n')
                    .enumerate()
                    .map(|(i, l)| (l.unwrap(), i as u64 + 1))
                    .collect();
                assert_eq!(
                    lines,
                    expected,
                    "{:?} read {capacity} bytes at a time",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }
}
