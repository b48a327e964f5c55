//! The plain loop: every reading through its device's operator chain, one thread, no actors.
//!
//! It is the correctness oracle for the actor runtime (the same pipeline must give the same
//! results through both) and the single-core ceiling in the benchmarks.

use std::hash::BuildHasher;
use std::io::{self, BufRead, Write};

use rustc_hash::FxBuildHasher;

use crate::decode::Decoded;
use crate::operators::device_slots::DeviceSlots;
use crate::operators::{DeviceChain, Emit};
use crate::output::{OutputRecord, RecordFormatter, RunTotals};
use crate::pipeline::CompiledPipeline;

/// One device of a plain-loop run.
struct PlainDevice {
    id: Box<str>,
    chain: DeviceChain,
}

/// A line on its way through [`PlainRun::push_lines`]: decoded, its device looked up, then run.
/// (A few are reused in turn: lines are decoded into them where they are, nothing is moved.)
struct Staged<'a> {
    what: StagedKind,
    /// With [`StagedKind::Reading`].
    decoded: Decoded<'a>,
    /// With [`StagedKind::Reading`]: `FxBuildHasher`'s hash of the device id.
    hash: u64,
    /// With [`StagedKind::Reading`]: the index of its device once `resolved`; before, the
    /// index of a device whose id has the same hash, if any (most likely the same device).
    device: Option<usize>,
    resolved: bool,
    /// With [`StagedKind::Refused`]: why.
    reason: String,
    line: &'a [u8],
    line_no: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StagedKind {
    /// Nothing to run: a blank line, or already run.
    Blank,
    Reading,
    Refused,
}

impl Staged<'_> {
    fn new(slots: usize) -> Self {
        Staged {
            what: StagedKind::Blank,
            decoded: Decoded::empty(slots),
            hash: 0,
            device: None,
            resolved: false,
            reason: String::new(),
            line: &[],
            line_no: 0,
        }
    }
}

/// The state of a plain-loop run.
///
/// Lines are taken a few ahead ([`PlainRun::push_lines`]): a line is decoded four lines before
/// it runs, and each of the next lines asks the CPU to load one more level of its device's state
/// (the table's slot, then the device's entry, then the operator list, then what the operators
/// keep outside themselves),
/// so the device is in the cache when its turn comes. A device's state is a few allocations
/// among thousands of devices: before, most of a reading's time was spent waiting for them. The
/// order in which lines run, and so every record, is the same.
pub struct PlainRun<'p> {
    pipeline: &'p CompiledPipeline,
    formatter: RecordFormatter,
    /// Every device, in the order first seen; `table` finds them by their id's hash.
    devices: Vec<PlainDevice>,
    table: DeviceSlots,
    hasher: FxBuildHasher,
    emits: Vec<Emit>,
    dead_letters: u64,
    /// Each reading's arrival time (`runtime.clock`).
    arrival: crate::clock::ArrivalStamp,
    /// Event clock: when the devices are next checked for deadlines the fleet's clock passed
    /// (as the shards do), and how often.
    next_fleet_tick: i64,
    fleet_tick_ms: i64,
    /// Readings in a row whose keys came in another order than the decoder learned (see
    /// [`crate::decode::Decoder::decode_into_learning`]).
    key_orders: crate::decode::DifferingKeyOrders,
}

impl<'p> PlainRun<'p> {
    pub fn new(pipeline: &'p CompiledPipeline) -> Self {
        PlainRun {
            pipeline,
            formatter: RecordFormatter::new(pipeline),
            devices: Vec::new(),
            table: DeviceSlots::new(),
            hasher: FxBuildHasher,
            emits: Vec::new(),
            dead_letters: 0,
            arrival: crate::clock::ArrivalStamp::new(pipeline.spec.runtime.clock.is_event()),
            next_fleet_tick: i64::MIN,
            fleet_tick_ms: pipeline.event_tick_interval_ms(),
            key_orders: Default::default(),
        }
    }

    /// One line of input (blank lines are skipped and not counted).
    #[inline]
    pub fn push_line(&mut self, line: &[u8], source: &str, line_no: u64, now: i64, out: &mut impl PlainOutput) {
        let mut staged = Staged::new(self.pipeline.decoder.slots);
        self.stage(&mut staged, line, line_no, now);
        self.run_staged(&mut staged, source, now, out);
    }

    /// Lines of input, split on `\n` as `BufRead::split` splits (a last line without `\n` is a
    /// line), numbered from `first_line_no`; returns how many there were. The same as
    /// [`PlainRun::push_line`] on each, a few lines ahead (see [`PlainRun`]).
    pub fn push_lines(
        &mut self,
        lines: &[u8],
        first_line_no: u64,
        source: &str,
        now: i64,
        out: &mut impl PlainOutput,
    ) -> u64 {
        const AHEAD: usize = 5;
        let mut line_no = first_line_no;
        let slots = self.pipeline.decoder.slots;
        let mut ring: [Staged<'_>; AHEAD] = std::array::from_fn(|_| Staged::new(slots));
        // ring[n % AHEAD] holds line n (counted from 0 in this block)
        let mut n = 0usize;
        for line in Lines(lines) {
            // line n: decoded, and the table's slot for its device asked for
            self.stage(&mut ring[n % AHEAD], line, line_no, now);
            line_no += 1;
            // line n − 1: its slot has had a line's time to arrive: the device it names, whose
            // entry is asked for
            if n >= 1 {
                let s = &mut ring[(n - 1) % AHEAD];
                if s.what == StagedKind::Reading {
                    s.device = self.table.candidate(s.hash);
                    if let Some(i) = s.device {
                        crate::operators::prefetch(&self.devices[i], std::mem::size_of::<PlainDevice>());
                    }
                }
            }
            // line n − 2: its entry is here: ask for its id and its operator list
            if n >= 2 {
                let s = &ring[(n - 2) % AHEAD];
                if s.what == StagedKind::Reading
                    && let Some(i) = s.device
                {
                    let device = &self.devices[i];
                    crate::operators::prefetch(device.id.as_ptr(), device.id.len());
                    device.chain.prefetch();
                }
            }
            // line n − 3: its device found for sure, and what its operators keep asked for
            if n >= 3 {
                let s = &mut ring[(n - 3) % AHEAD];
                if s.what == StagedKind::Reading {
                    let i = self.resolve(s);
                    self.devices[i].chain.prefetch_state();
                }
            }
            // line n − 4 runs
            if n >= 4 {
                self.run_staged(&mut ring[(n - 4) % AHEAD], source, now, out);
            }
            n += 1;
        }
        for k in n.saturating_sub(4)..n {
            self.run_staged(&mut ring[k % AHEAD], source, now, out);
        }
        line_no - first_line_no
    }

    /// Decodes a line into `into`, and asks the CPU for the table's slot where its device's
    /// search starts.
    #[inline]
    fn stage<'a>(&mut self, into: &mut Staged<'a>, line: &'a [u8], line_no: u64, now: i64) {
        into.line = line;
        into.line_no = line_no;
        into.resolved = false;
        into.device = None;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            into.what = StagedKind::Blank;
            return;
        }
        let decoder = &self.pipeline.decoder;
        if line.len() > decoder.max_payload_bytes {
            into.what = StagedKind::Refused;
            into.reason = crate::decode::oversized_reason(line.len() as u64, decoder.max_payload_bytes);
            return;
        }
        match decoder.decode_into_learning(line, None, now, &mut into.decoded, &mut self.key_orders) {
            Ok(()) => {
                into.what = StagedKind::Reading;
                let hash = self.hasher.hash_one(&*into.decoded.device);
                into.hash = hash;
                self.table.prefetch(hash);
            }
            Err(reason) => {
                into.what = StagedKind::Refused;
                into.reason = reason.to_string();
            }
        }
    }

    /// The index of a staged reading's device, added with a fresh chain if new.
    #[inline]
    fn resolve(&mut self, staged: &mut Staged<'_>) -> usize {
        if staged.resolved
            && let Some(i) = staged.device
        {
            return i;
        }
        let id: &str = &staged.decoded.device;
        let index = match staged.device {
            Some(i) if *self.devices[i].id == *id => i,
            _ => self.device_index(staged.hash, id),
        };
        staged.device = Some(index);
        staged.resolved = true;
        index
    }

    /// The index of `id` (whose hash is `hash`) in `devices`, added with a fresh chain if new.
    fn device_index(&mut self, hash: u64, id: &str) -> usize {
        let devices = &mut self.devices;
        match self.table.find(hash, |i| *devices[i].id == *id) {
            Some(i) => i,
            None => {
                let index = devices.len();
                devices.push(PlainDevice {
                    id: id.into(),
                    chain: self.pipeline.new_chain(id),
                });
                let hasher = &self.hasher;
                self.table.insert(hash, index, |i| hasher.hash_one(&*devices[i].id));
                index
            }
        }
    }

    /// Runs a staged line (once: it is left blank): its dead letters, or its reading through its
    /// device's chain.
    #[inline]
    fn run_staged(&mut self, staged: &mut Staged<'_>, source: &str, now: i64, out: &mut impl PlainOutput) {
        let decoder = &self.pipeline.decoder;
        let line_no = staged.line_no;
        match staged.what {
            StagedKind::Blank => {}
            StagedKind::Refused => {
                self.dead_letters += 1;
                let raw = crate::decode::bounded_raw(staged.line, decoder.max_dead_letter_bytes);
                out.record(
                    self.formatter
                        .dead_letter(source, &format!("line {line_no}"), &staged.reason, raw),
                );
            }
            StagedKind::Reading => {
                let decoded = &mut staged.decoded;
                decoded.reading.arrival = self.arrival.stamp(decoded.reading.ts, decoded.arrival, now);
                for &(field, value) in &decoded.dropped {
                    self.dead_letters += 1;
                    let raw = crate::decode::bounded_raw(staged.line, decoder.max_dead_letter_bytes);
                    let reason = decoder.dropped_reason(field, value);
                    out.record(
                        self.formatter
                            .dead_letter(source, &format!("line {line_no}"), &reason, raw),
                    );
                }
                let device = self.resolve(staged);
                let decoded = &mut staged.decoded;
                let chain = &mut self.devices[device].chain;
                let at = match self.arrival.fleet_ms() {
                    Some(_) => {
                        chain.catch_up(decoded.reading.arrival, &mut self.emits);
                        decoded.reading.arrival
                    }
                    None => now,
                };
                chain.on_reading_in_place(&mut decoded.reading, at, &mut self.emits);
                for emit in self.emits.drain(..) {
                    out.emit(&self.formatter, &decoded.device, &emit);
                }
                if let Some(fleet_ms) = self.arrival.fleet_ms()
                    && fleet_ms >= self.next_fleet_tick
                {
                    self.next_fleet_tick = fleet_ms.saturating_add(self.fleet_tick_ms);
                    self.catch_up_all(fleet_ms, out);
                }
            }
        }
        staged.what = StagedKind::Blank;
    }

    /// Event clock: every device acts on the deadlines the fleet's clock passed.
    fn catch_up_all(&mut self, fleet_ms: i64, out: &mut impl PlainOutput) {
        for device in self.devices.iter_mut() {
            if device.chain.catch_up(fleet_ms, &mut self.emits) {
                for emit in self.emits.drain(..) {
                    out.emit(&self.formatter, &device.id, &emit);
                }
            }
        }
    }

    /// End of input: every device flushes (in device id order), then the summary record.
    pub fn finish(mut self, out: &mut impl PlainOutput) -> RunTotals {
        if let Some(fleet_ms) = self.arrival.fleet_ms() {
            self.catch_up_all(fleet_ms, out);
        }
        let mut order: Vec<usize> = (0..self.devices.len()).collect();
        order.sort_by(|&a, &b| self.devices[a].id.cmp(&self.devices[b].id));
        let mut totals = RunTotals {
            dead_letters: self.dead_letters,
            devices: order.len() as u64,
            ..Default::default()
        };
        for index in order {
            let device = &mut self.devices[index];
            if self.pipeline.spec.shutdown.flush {
                device.chain.on_end(&mut self.emits);
            }
            let c = device.chain.counters();
            totals.readings += c.readings;
            totals.late += c.late;
            for emit in self.emits.drain(..) {
                out.emit(&self.formatter, &device.id, &emit);
            }
        }
        out.record(self.formatter.summary(&totals));
        totals
    }
}

/// The lines of a block of text, split on `\n` as `BufRead::split` splits: a last line without
/// `\n` is a line, a block ending in `\n` has no empty last line.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        match memchr::memchr(b'\n', self.0) {
            Some(i) => {
                let line = &self.0[..i];
                self.0 = &self.0[i + 1..];
                Some(line)
            }
            None => Some(std::mem::take(&mut self.0)),
        }
    }
}

/// Calls `f` with blocks of whole lines of `input` (each block ends with `\n`, except at the end
/// of input) and the number of the block's first line, from 1; `f` returns how many lines the
/// block held. Blocks are taken from the reader's buffer where they lie; only a line that
/// straddles two reads is copied (`BufRead::split` allocated and copied every line).
fn for_each_block(mut input: impl BufRead, mut f: impl FnMut(&[u8], u64) -> u64) -> io::Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut line_no = 1u64;
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
                    carry.extend_from_slice(&rest[..=i]);
                    line_no += f(&carry, line_no);
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
        if let Some(last) = memchr::memrchr(b'\n', rest) {
            line_no += f(&rest[..=last], line_no);
            rest = &rest[last + 1..];
        }
        carry.extend_from_slice(rest);
        input.consume(read);
    }
    if !carry.is_empty() {
        f(&carry, line_no);
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
    let mut lines = JsonLines {
        output,
        line: String::new(),
        error: None,
    };
    let now = crate::clock::now_ms();
    for_each_block(input, |block, first| {
        run.push_lines(block, first, source_name, now, &mut lines)
    })?;
    let totals = run.finish(&mut lines);
    if let Some(e) = lines.error {
        return Err(e);
    }
    lines.output.flush()?;
    Ok(totals)
}

/// [`run`] with its input read and its records written on two threads of their own, so that
/// the loop's thread only decodes, runs the operators and formats: the reads and writes (a
/// tenth of a run's time, most of it in the kernel) happen beside it. Blocks of 1 MiB go each
/// way through bounded channels (two in flight), and their buffers come back to be reused.
pub fn run_with_io_threads(
    pipeline: &CompiledPipeline,
    source_name: &str,
    input: impl io::Read + Send,
    output: impl Write + Send,
) -> io::Result<RunTotals> {
    std::thread::scope(|scope| {
        let (blocks, blocks_in) = std::sync::mpsc::sync_channel(2);
        let (returned, returned_in) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("plain-read".into())
            .spawn_scoped(scope, move || read_blocks(input, blocks, returned_in))?;
        let (full, full_in) = std::sync::mpsc::sync_channel(2);
        let (spare, spare_in) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("plain-write".into())
            .spawn_scoped(scope, move || write_blocks(output, full_in, spare))?;
        let reader = BlockReader {
            blocks: blocks_in,
            returned,
            current: Vec::new(),
            at: 0,
        };
        let mut out = BlockWriter {
            full,
            spare: spare_in,
            buffer: Vec::with_capacity(IO_BLOCK),
        };
        let ran = run(pipeline, source_name, reader, &mut out);
        // the last block, and the end (the writer flushes and stops)
        let sent = out.send();
        drop(out);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the output writer panicked")));
        // the writer's own error says more than "the writer stopped"
        written?;
        sent?;
        ran
    })
}

/// The size of the blocks [`run_with_io_threads`] reads and writes.
const IO_BLOCK: usize = 1 << 20;

/// The input thread: fills blocks of up to [`IO_BLOCK`] bytes (reusing those the loop returns)
/// and sends them in order; an error is sent in place of a block, and ends it.
fn read_blocks(
    mut input: impl io::Read,
    blocks: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
) {
    loop {
        // a returned block keeps its length (what it last held is read over): only a new one
        // is zeroed
        let mut block = returned.try_recv().unwrap_or_default();
        block.resize(IO_BLOCK, 0);
        let mut filled = 0;
        while filled < IO_BLOCK {
            match input.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = blocks.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        block.truncate(filled);
        if blocks.send(Ok(block)).is_err() {
            // the loop stopped early (an error of its own): nothing more to read for
            return;
        }
    }
}

/// The output thread: writes the blocks it is sent, in order, and hands their buffers back; at
/// the end (the sender dropped) it flushes. Its first error ends it, and is its result.
fn write_blocks(
    mut output: impl Write,
    full: std::sync::mpsc::Receiver<Vec<u8>>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    for mut block in full {
        output.write_all(&block)?;
        block.clear();
        let _ = spare.send(block);
    }
    output.flush()
}

/// The loop's side of the input thread: its blocks as a [`BufRead`].
struct BlockReader {
    blocks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    returned: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl io::Read for BlockReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for BlockReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.at == self.current.len() {
            match self.blocks.recv() {
                Ok(block) => {
                    let used = std::mem::replace(&mut self.current, block?);
                    self.at = 0;
                    let _ = self.returned.send(used);
                }
                // the input thread is done: end of input
                Err(_) => {
                    self.current.clear();
                    self.at = 0;
                }
            }
        }
        Ok(&self.current[self.at..])
    }

    fn consume(&mut self, amount: usize) {
        self.at = (self.at + amount).min(self.current.len());
    }
}

/// The loop's side of the output thread: bytes gathered into blocks of [`IO_BLOCK`], each sent
/// once full.
struct BlockWriter {
    full: std::sync::mpsc::SyncSender<Vec<u8>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    buffer: Vec<u8>,
}

impl BlockWriter {
    /// Sends what is gathered (if anything).
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(IO_BLOCK));
        let block = std::mem::replace(&mut self.buffer, next);
        self.full
            .send(block)
            .map_err(|_| io::Error::other("the output writer stopped"))
    }
}

impl Write for BlockWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= IO_BLOCK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    /// Sends what is gathered; the output thread flushes the output itself at the end.
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Where a plain-loop run's records go. A closure taking each [`OutputRecord`] is one; a run
/// that only writes its records out ([`run`]) formats them straight into one buffer instead.
pub trait PlainOutput {
    /// A result of a device's operators.
    fn emit(&mut self, formatter: &RecordFormatter, device: &str, emit: &Emit);
    /// Any other record: a dead letter, the summary.
    fn record(&mut self, record: OutputRecord);
}

impl<F: FnMut(OutputRecord)> PlainOutput for F {
    fn emit(&mut self, formatter: &RecordFormatter, device: &str, emit: &Emit) {
        self(formatter.format(device, emit))
    }

    fn record(&mut self, record: OutputRecord) {
        self(record)
    }
}

/// Records written as JSON lines, each formatted into the same buffer (no allocation per
/// record); the first write error is kept and ends the run.
struct JsonLines<'w> {
    output: &'w mut dyn Write,
    line: String,
    error: Option<io::Error>,
}

impl JsonLines<'_> {
    fn write_line(&mut self) {
        self.line.push('\n');
        if self.error.is_none()
            && let Err(e) = self.output.write_all(self.line.as_bytes())
        {
            self.error = Some(e);
        }
    }
}

impl PlainOutput for JsonLines<'_> {
    fn emit(&mut self, formatter: &RecordFormatter, device: &str, emit: &Emit) {
        self.line.clear();
        formatter.format_into(device, emit, &mut self.line);
        self.write_line();
    }

    fn record(&mut self, record: OutputRecord) {
        self.line.clear();
        self.line.push_str(&record.json);
        self.write_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the input read and the records written on threads of their own, a run writes the
    /// same bytes as with both on the loop's thread: an input of several blocks, lines cut at
    /// the blocks' edges, records spanning output blocks, a last line without `\n`.
    #[test]
    fn io_threads_write_what_the_loops_own_thread_writes() {
        let pipeline = compile(
            "version: 1\npipeline: t\ndecode:\n  device: { field: device }\n  time: { field: ts, unit: ms }\n  fields:\n    pm25: {}\noperators:\n  - window: { every: 10s, lateness: 1s, aggregates: { pm25: [avg, max] } }\n  - hysteresis: { name: e, field: pm25, enter: 35, exit: 25 }\n",
        );
        let mut input = String::new();
        for i in 0..60_000u64 {
            let pad = "p".repeat((i % 37) as usize);
            input.push_str(&format!(
                "{{\"device\":\"dev-{:04}\",\"ts\":{},\"pm25\":{},\"pad\":\"{pad}\"}}\n",
                i % 500,
                1_767_225_600_000 + i * 100,
                (i * 7919 % 61) as f64
            ));
        }
        input.push_str("{\"device\":\"last\",\"ts\":1767225600000,\"pm25\":1}");
        assert!(input.len() > 3 * IO_BLOCK, "{} bytes", input.len());
        let mut on_the_loop = Vec::new();
        let totals = run(&pipeline, "t", input.as_bytes(), &mut on_the_loop).unwrap();
        let mut threaded = Vec::new();
        let threaded_totals = run_with_io_threads(&pipeline, "t", input.as_bytes(), &mut threaded).unwrap();
        assert_eq!(totals.readings, 60_001);
        assert_eq!(threaded_totals.readings, totals.readings);
        assert!(
            on_the_loop.len() > 2 * IO_BLOCK,
            "{} bytes of records",
            on_the_loop.len()
        );
        assert!(on_the_loop == threaded, "the same records, in the same order");
    }

    /// An output that fails ends the run with its error (not a hang, not a success), and so
    /// does an input that fails.
    #[test]
    fn io_thread_errors_end_the_run() {
        struct Fails(usize);
        impl Write for Fails {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                if self.0 < bytes.len() {
                    return Err(io::Error::other("disk full, as it happens"));
                }
                self.0 -= bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl io::Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("the disk went away"));
                }
                let n = buf.len().min(self.0);
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = if k % 50 == 49 { b'\n' } else { b' ' };
                }
                self.0 -= n;
                Ok(n)
            }
        }
        let pipeline = compile(
            "version: 1\npipeline: t\ndecode:\n  device: { field: device }\n  time: { field: ts, unit: ms }\n  fields:\n    pm25: {}\noperators:\n  - window: { every: 1s, lateness: 0s, aggregates: { pm25: [max] } }\n",
        );
        let input: String = (0..200_000u64)
            .map(|i| {
                format!(
                    "{{\"device\":\"d{}\",\"ts\":{},\"pm25\":1}}\n",
                    i % 100,
                    1_767_225_600_000 + i * 500
                )
            })
            .collect();
        let e = run_with_io_threads(&pipeline, "t", input.as_bytes(), Fails(3 * IO_BLOCK / 2)).unwrap_err();
        assert!(e.to_string().contains("disk full, as it happens"), "{e}");
        let e = run_with_io_threads(&pipeline, "t", Fails(5 * IO_BLOCK / 2), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("the disk went away"), "{e}");
    }

    fn compile(text: &str) -> CompiledPipeline {
        CompiledPipeline::compile(crate::spec::parse_pipeline("t.yaml", text, &|_| None).expect("parses"))
            .expect("compiles")
    }

    /// Every record of a run that gives lines one at a time ([`PlainRun::push_line`]), and of one
    /// that gives them in blocks of `block` lines ([`PlainRun::push_lines`], lines staged ahead).
    fn both_ways(pipeline: &CompiledPipeline, text: &str, block: usize) -> (Vec<String>, Vec<String>) {
        let now = 1_767_225_600_000 + 3_600_000;
        let mut one = Vec::new();
        let mut run = PlainRun::new(pipeline);
        for (i, line) in text.split('\n').enumerate() {
            run.push_line(line.as_bytes(), "t", i as u64 + 1, now, &mut |r: OutputRecord| {
                one.push(r.json.to_string())
            });
        }
        run.finish(&mut |r: OutputRecord| one.push(r.json.to_string()));
        let mut blocks = Vec::new();
        let mut run = PlainRun::new(pipeline);
        let lines: Vec<&str> = text.split('\n').collect();
        let mut first = 1;
        for chunk in lines.chunks(block) {
            let joined = chunk.join("\n");
            let n = run.push_lines(joined.as_bytes(), first, "t", now, &mut |r: OutputRecord| {
                blocks.push(r.json.to_string())
            });
            // an empty last line of a block is no line (as `BufRead::split` has it)
            assert_eq!(n as usize, chunk.len() - usize::from(chunk.last() == Some(&"")));
            first += chunk.len() as u64;
        }
        run.finish(&mut |r: OutputRecord| blocks.push(r.json.to_string()));
        (one, blocks)
    }

    #[test]
    fn lines_staged_ahead_give_the_records_of_lines_taken_one_at_a_time() {
        let operators = "operators:\n  - window: { every: 60s, lateness: 5s, aggregates: { pm25: [avg, max] } }\n  - hysteresis: { name: pm25_event, field: pm25, enter: 35, exit: 25 }\n  - baseline: { field: co2, method: ewma, alpha: 0.1, emit: end }\n  - health: { offline_after: 2m }\n";
        for clock in ["processing", "event"] {
            let text = format!(
                "version: 1\npipeline: t\nruntime: {{ clock: {clock} }}\ndecode:\n  device: {{ field: device }}\n  time: {{ field: ts, unit: ms }}\n  max_payload_bytes: 300\n  fields:\n    pm25: {{ max: 500, out_of_range: field_dead_letter }}\n    co2: {{}}\n{operators}"
            );
            let pipeline = compile(&text);
            // 40 devices, some going quiet; bad, blank, oversized and out-of-range lines among them
            let mut input = String::new();
            let mut state = 7u64;
            for i in 0..3_000u64 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let device = (state >> 33) % if i < 1_500 { 40 } else { 25 };
                let ts = 1_767_225_600_000 + i as i64 * 1_000 - ((state >> 20) % 7_000) as i64;
                let pm25 = match (state >> 40) % 50 {
                    0 => 900.0,
                    k => (k as f64) * 1.3,
                };
                let line = match (state >> 50) % 97 {
                    0 => "{\"device\": \"broken".to_string(),
                    1 => String::new(),
                    2 => format!("{{\"device\":\"d{device}\",\"pad\":\"{}\"}}", "x".repeat(400)),
                    3 => "   ".to_string(),
                    _ => format!(
                        "{{\"device\":\"d{device}\",\"ts\":{ts},\"pm25\":{pm25},\"co2\":{}}}",
                        400 + i % 300
                    ),
                };
                input.push_str(&line);
                input.push('\n');
            }
            for block in [1, 2, 3, 4, 5, 64, 10_000] {
                let (one, blocks) = both_ways(&pipeline, &input, block);
                assert!(one.len() > 300, "{} records", one.len());
                for kind in [
                    "\"type\":\"dead_letter\"",
                    "\"type\":\"event_start\"",
                    "\"type\":\"window\"",
                ] {
                    assert!(one.iter().any(|r| r.contains(kind)), "the input makes {kind} records");
                }
                if clock == "event" {
                    // devices that went quiet, reported as the fleet's clock passes their deadline
                    assert!(
                        one.iter().any(|r| r.contains("\"status\":\"offline\"")),
                        "offline records: {:?}",
                        one.iter().filter(|r| r.contains("health")).take(3).collect::<Vec<_>>()
                    );
                }
                assert_eq!(one, blocks, "{clock} clock, blocks of {block} lines");
            }
        }
    }

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
                for_each_block(io::BufReader::with_capacity(capacity, text), |block, first| {
                    let mut n = first;
                    for line in Lines(block) {
                        lines.push((line.to_vec(), n));
                        n += 1;
                    }
                    n - first
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
