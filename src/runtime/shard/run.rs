//! How a shard runs a chunk ([`RunChunk`](super::RunChunk)): its payloads one after the other,
//! in arrival order, as the plain loop runs lines. Each payload is decoded four payloads before
//! it runs, and each of the payloads after it asks the CPU for one more level of its device
//! (the index slot, the device's entry, its operator list, what its operators keep outside
//! themselves), so that the device is in the cache when its reading runs: a shard's devices
//! are thousands of separate allocations, and waiting for them was most of a reading's time.
//!
//! Before, the router decoded a chunk into per-device batches (a `Vec` of readings per device
//! per chunk, one copy of each reading in, one out) and the supervisor ran the batches: the
//! batches cost more than the readings' own work (BENCHMARKS.md, issue 18), and they made
//! chunks large to amortise it (16 MiB, so 250 MiB of memory for two shards).
//!
//! A panic inside an operator does not take the shard down. Every device keeps, for the chunk
//! running, a copy of its state before its first reading of the chunk (its last good state;
//! one copy per device per chunk, as the batches had). On a panic the device restarts from that
//! copy, applies its readings of the chunk before the one that panicked again (their records
//! are already out, so the operators' output is dropped: operators are deterministic), and
//! tries the reading once more: if it panics again it goes to dead letters with the panic
//! message, and the state goes back to before it. Other devices never notice.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use tracing::warn;
use xxhash_rust::xxh3::xxh3_64;

use super::ShardSupervisor;
use crate::decode::{DecodeError, Decoded, Decoder, DifferingKeyOrders, bounded_raw};
use crate::model::{Chunk, ChunkData, Message, MessagePosition, RoutedKind, RoutedLine};
use crate::operators::{DeviceChain, Emit};
use crate::runtime::RuntimeMetrics;
use crate::runtime::device::{DeviceActor, panic_message};
use crate::runtime::router::{PayloadShards, SplitLines, split_lines};
use crate::runtime::shard::ShardLocal;

/// What a shard keeps from chunk to chunk to run them.
pub(super) struct ChunkRunner {
    /// This shard's number of the chunk running (never 0: see [`DeviceActor::note_reading`]).
    seq: u32,
    /// Which shard a payload goes to (for the chunks it scans itself).
    shards_of: std::rc::Rc<PayloadShards>,
    /// Each reading's arrival time (`runtime.clock`), and the fleet's clock.
    pub(super) arrival: crate::clock::ArrivalStamp,
    /// The chunk running: every device's state before its first reading in it, for a restart
    /// after a panic. The first `kept` entries are this chunk's; the others are copies of
    /// earlier chunks, copied over next (into their own allocations: a fresh copy of every
    /// device per chunk made the allocator fault pages in again and again).
    journal: Vec<LastGood>,
    kept: usize,
    /// The chunk running: the arrival time each payload's reading was decided with (by payload;
    /// 0 for payloads that were not readings), to apply them again after a restart.
    arrivals: Vec<i64>,
    /// The chunk running: payloads that went to dead letters for making an operator panic.
    poisoned: Vec<usize>,
    /// The payload being applied and its device's number, while an operator runs.
    running: Option<(usize, usize)>,
    emits: Vec<Emit>,
    /// Payloads that did not decode (or were too long), since the start: the checkpoints
    /// record them.
    pub(super) dead_letters: u64,
    /// Readings in a row whose keys came in another order than the decoder learned, across
    /// chunks (see [`Decoder::decode_into_learning`]).
    key_orders: DifferingKeyOrders,
}

impl ChunkRunner {
    pub(super) fn new(pipeline: &crate::pipeline::CompiledPipeline, shards: usize) -> Self {
        ChunkRunner {
            seq: 0,
            shards_of: std::rc::Rc::new(PayloadShards::new(pipeline, shards)),
            arrival: crate::clock::ArrivalStamp::new(pipeline.spec.runtime.clock.is_event()),
            journal: Vec::new(),
            kept: 0,
            arrivals: Vec::new(),
            poisoned: Vec::new(),
            running: None,
            emits: Vec::new(),
            dead_letters: 0,
            key_orders: DifferingKeyOrders::default(),
        }
    }
}

/// A device's state before its first reading of the chunk running.
struct LastGood {
    device: std::sync::Arc<str>,
    /// The payload of that first reading.
    first: usize,
    chain: DeviceChain,
}

impl ChunkRunner {
    /// Keeps `chain` as `device`'s last good state, from payload `first` on.
    #[inline]
    fn keep(&mut self, device: &std::sync::Arc<str>, first: usize, chain: &DeviceChain) {
        match self.journal.get_mut(self.kept) {
            Some(entry) => {
                entry.device.clone_from(device);
                entry.first = first;
                entry.chain.clone_from(chain);
            }
            None => self.journal.push(LastGood {
                device: device.clone(),
                first,
                chain: chain.clone(),
            }),
        }
        self.kept += 1;
        // the copies the next copies go into hold another device's state of an earlier chunk,
        // long out of the cache: their operator lists asked for two copies ahead, what those
        // keep outside themselves (and the old id's count, which the next copy drops) one ahead
        if let Some(next) = self.journal.get(self.kept) {
            next.chain.prefetch_state();
            // (an `Arc`'s counts are the 16 bytes before what it points to)
            let counts = (std::sync::Arc::as_ptr(&next.device) as *const u8).wrapping_sub(16);
            crate::operators::prefetch(counts, 16);
        }
        if let Some(after) = self.journal.get(self.kept + 1) {
            after.chain.prefetch();
        }
    }
}

/// What a chunk gave on this shard.
#[derive(Default)]
pub(super) struct ChunkCounts {
    pub payloads: u64,
    pub readings: u64,
    pub dead_letters: u64,
}

/// Where a payload was, for its dead letters.
#[derive(Clone, Copy)]
enum At<'c> {
    Line(u64),
    Message(&'c MessagePosition),
}

impl At<'_> {
    fn describe(self) -> String {
        match self {
            At::Line(n) => format!("line {n}"),
            At::Message(position) => position.to_string(),
        }
    }
}

/// A payload of a chunk that this shard takes.
#[derive(Clone, Copy)]
struct Item<'c> {
    payload: &'c [u8],
    /// The device id the topic or record key gave.
    hint: Option<&'c str>,
    arrival_ms: i64,
    at: At<'c>,
    /// The xxh3 hash of its device id, when a scan found one (the decode finds the same id:
    /// tests/fuzz.rs checks it).
    hash: Option<u64>,
    /// Longer than `decode.max_payload_bytes`: not decoded, a dead letter.
    oversized: bool,
}

/// Which payloads of a chunk a shard takes when it finds their devices itself (a chunk the
/// feeder did not route: messages, or any chunk with one shard).
struct Owner<'c> {
    shards_of: &'c PayloadShards,
    shard: usize,
    shards: usize,
}

impl Owner<'_> {
    /// `None`: another shard's payload; else this shard's, with its device id's hash if the
    /// scan found an id (one without goes to shard 0, which reports the dead letter).
    #[inline]
    fn takes(&self, payload: &[u8], hint: Option<&str>) -> Option<Option<u64>> {
        if self.shards == 1 {
            return Some(None);
        }
        let (shard, hash) = self.shards_of.of(payload, hint);
        (shard == self.shard).then_some(hash)
    }
}

/// How many of its routed lines ahead a shard asks for a line's bytes (BENCHMARKS.md, issue 18,
/// "Routed lines asked for ahead").
const LINE_PREFETCH_DISTANCE: usize = 16;
/// At most this much of a line is asked for (a reading is about 100 bytes; a long line is not
/// worth the cache it would take).
const LINE_PREFETCH_BYTES: usize = 256;

/// This shard's payloads of a chunk, in arrival order.
struct Items<'c> {
    source_ms: i64,
    max_payload: usize,
    owner: Owner<'c>,
    kind: ItemsKind<'c>,
}

enum ItemsKind<'c> {
    /// The lines the feeder listed for this shard.
    Routed {
        bytes: &'c [u8],
        first_line: u64,
        lines: std::slice::Iter<'c, RoutedLine>,
    },
    /// Every line, each scanned for its device.
    Lines {
        lines: SplitLines<'c>,
        line_no: u64,
    },
    Messages(std::slice::Iter<'c, Message>),
    Done,
}

impl<'c> Items<'c> {
    fn of(chunk: &'c Chunk, local: &'c ShardLocal, shards_of: &'c PayloadShards, shards: usize) -> Self {
        let decoder = &*local.pipeline.decoder;
        let kind = match &chunk.data {
            ChunkData::Lines { bytes, first_line, .. } => match &chunk.routing {
                Some(routing) => ItemsKind::Routed {
                    bytes,
                    first_line: *first_line,
                    lines: routing.by_shard.get(local.shard).map_or(&[][..], Vec::as_slice).iter(),
                },
                None => ItemsKind::Lines {
                    lines: split_lines(bytes),
                    line_no: *first_line,
                },
            },
            ChunkData::Messages(messages) => ItemsKind::Messages(messages.iter()),
            ChunkData::SkippedLine { .. } => ItemsKind::Done,
        };
        Items {
            source_ms: chunk.source_time_ms,
            max_payload: decoder.max_payload_bytes,
            owner: Owner {
                shards_of,
                shard: local.shard,
                shards,
            },
            kind,
        }
    }

    /// A payload found by a scan: this shard's or not.
    #[inline]
    fn scanned(&self, mut item: Item<'c>) -> Option<Item<'c>> {
        if item.payload.len() > self.max_payload {
            // reported once, by shard 0 (its device id is not looked for)
            item.oversized = true;
            return (self.owner.shard == 0).then_some(item);
        }
        item.hash = self.owner.takes(item.payload, item.hint)?;
        Some(item)
    }
}

impl<'c> Iterator for Items<'c> {
    type Item = Item<'c>;

    // `always`: called out of line (as `#[inline]` let it be), its `Item` came back through
    // the stack and was copied into the ring bit by bit (LLVM unpacked two `u16`s of it into
    // 32 bytes per payload), a quarter of a shard's CPU per reading (BENCHMARKS.md, issue 18,
    // 2026-12-07)
    #[inline(always)]
    fn next(&mut self) -> Option<Item<'c>> {
        loop {
            let item = match &mut self.kind {
                ItemsKind::Routed {
                    bytes,
                    first_line,
                    lines,
                } => {
                    // every cache line of the line `LINE_PREFETCH_DISTANCE` ahead asked for:
                    // the source's thread read the chunk, so a shard meets each of its lines
                    // outside its cache (with one shard, its own scan of every line brings
                    // them in); the decode's first load of a line waited for it
                    if let Some(ahead) = lines.as_slice().get(LINE_PREFETCH_DISTANCE)
                        && let Some(line) = bytes.get(ahead.start as usize..ahead.end as usize)
                    {
                        crate::operators::prefetch(line.as_ptr(), line.len().min(LINE_PREFETCH_BYTES));
                    }
                    let r = lines.next()?;
                    return Some(Item {
                        payload: &bytes[r.start as usize..r.end as usize],
                        hint: None,
                        arrival_ms: self.source_ms,
                        at: At::Line(*first_line + r.index as u64),
                        hash: (r.kind == RoutedKind::Device).then_some(r.hash),
                        oversized: r.kind == RoutedKind::Oversized,
                    });
                }
                ItemsKind::Lines { lines, line_no } => {
                    let line = lines.next()?;
                    let this_line = *line_no;
                    *line_no += 1;
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    Item {
                        payload: line,
                        hint: None,
                        arrival_ms: self.source_ms,
                        at: At::Line(this_line),
                        hash: None,
                        oversized: false,
                    }
                }
                ItemsKind::Messages(messages) => {
                    let m = messages.next()?;
                    Item {
                        payload: &m.payload,
                        hint: m.device_hint.as_deref(),
                        arrival_ms: m.arrival_ms,
                        at: At::Message(&m.position),
                        hash: None,
                        oversized: false,
                    }
                }
                ItemsKind::Done => return None,
            };
            if let Some(item) = self.scanned(item) {
                return Some(item);
            }
        }
    }
}

/// A payload on its way through [`ShardSupervisor::run_items`]: decoded, its device looked up
/// a level at a time, then run. (A few are reused in turn: payloads are decoded into them where
/// they are, nothing is moved.)
struct Staged<'c> {
    item: Option<Item<'c>>,
    /// Its place among this shard's payloads of the chunk.
    ordinal: usize,
    decode: Result<(), DecodeError>,
    decoded: Decoded<'c>,
    /// The xxh3 hash of its device id (when decoded).
    hash: u64,
    /// The number of the device most likely its own (checked before it runs).
    candidate: Option<usize>,
}

impl<'c> Staged<'c> {
    fn new(slots: usize) -> Self {
        Staged {
            item: None,
            ordinal: 0,
            decode: Ok(()),
            decoded: Decoded::empty(slots),
            hash: 0,
            candidate: None,
        }
    }

    #[inline]
    fn is_reading(&self) -> bool {
        self.item.is_some_and(|i| !i.oversized) && self.decode.is_ok()
    }

    #[inline]
    fn stage(&mut self, item: Item<'c>, ordinal: usize, decoder: &Decoder, key_orders: &mut DifferingKeyOrders) {
        self.item = Some(item);
        self.ordinal = ordinal;
        self.candidate = None;
        if item.oversized {
            return;
        }
        self.decode =
            decoder.decode_into_learning(item.payload, item.hint, item.arrival_ms, &mut self.decoded, key_orders);
        if self.decode.is_ok() {
            self.hash = item.hash.unwrap_or_else(|| xxh3_64(self.decoded.device.as_bytes()));
        }
    }
}

impl ShardSupervisor {
    /// Runs this shard's payloads of a chunk (see the module). `now`: the processing time at
    /// which the chunk was read.
    pub(super) fn run_chunk(&mut self, chunk: &Chunk, now: i64) -> ChunkCounts {
        let local = self.local.clone();
        let mut counts = ChunkCounts::default();
        if let ChunkData::SkippedLine {
            line, length, prefix, ..
        } = &chunk.data
        {
            counts.payloads += 1;
            if local.shard == 0 {
                self.oversized(
                    &local,
                    &chunk.source_name,
                    At::Line(*line),
                    *length,
                    prefix,
                    &mut counts,
                );
            }
            return counts;
        }
        let runner = &mut self.runner;
        if runner.seq == u32::MAX {
            // (once in 4 billion chunks) numbers start again: no device may keep an old one
            for (_, actor) in self.active.iter_mut() {
                actor.forget_chunk();
            }
            runner.seq = 0;
        }
        runner.seq += 1;
        runner.kept = 0;
        runner.arrivals.clear();
        runner.poisoned.clear();
        let shards_of = runner.shards_of.clone();
        let mut from = 0;
        loop {
            let ran = catch_unwind(AssertUnwindSafe(|| {
                self.run_items(chunk, now, from, &local, &shards_of, &mut counts)
            }));
            match ran {
                Ok(()) => break,
                Err(panic) => {
                    // only an operator's panic is survived
                    let Some((ordinal, device)) = self.runner.running.take() else {
                        std::panic::resume_unwind(panic)
                    };
                    self.recover(chunk, now, ordinal, device, &local, &shards_of);
                    from = ordinal + 1;
                }
            }
        }
        counts
    }

    /// The payloads from the `from`th on (see the module for the look-ahead).
    fn run_items(
        &mut self,
        chunk: &Chunk,
        now: i64,
        from: usize,
        local: &ShardLocal,
        shards_of: &PayloadShards,
        counts: &mut ChunkCounts,
    ) {
        const AHEAD: usize = 5;
        let decoder = &*local.pipeline.decoder;
        // (not `skip(from)`: `Skip::next` is a call per payload)
        let items = Items::of(chunk, local, shards_of, self.shards)
            .enumerate()
            .filter(|(ordinal, _)| *ordinal >= from);
        let mut ring: [Staged<'_>; AHEAD] = std::array::from_fn(|_| Staged::new(decoder.slots));
        // ring[n % AHEAD] holds payload n (counted from `from`)
        let mut n = 0usize;
        for (ordinal, item) in items {
            // payload n: decoded, and the index slot of its device asked for
            let s = &mut ring[n % AHEAD];
            s.stage(item, ordinal, decoder, &mut self.runner.key_orders);
            if s.is_reading() {
                self.active.prefetch_slot(s.hash);
            }
            // payload n − 1: its slot has arrived: the device it names, whose entry is asked for
            if n >= 1 {
                let s = &mut ring[(n - 1) % AHEAD];
                if s.is_reading() {
                    s.candidate = self.active.candidate(s.hash);
                }
            }
            // payload n − 2: its entry is here: its id and its operator list asked for
            if n >= 2
                && let Some(i) = ring[(n - 2) % AHEAD].candidate
                && i < self.active.len()
            {
                let d = self.active.at(i);
                crate::operators::prefetch(d.id.as_ptr(), d.id.len());
                d.actor.chain().prefetch();
            }
            // payload n − 3: what its operators keep outside themselves asked for
            if n >= 3
                && let Some(i) = ring[(n - 3) % AHEAD].candidate
                && i < self.active.len()
            {
                self.active.at(i).actor.chain().prefetch_state();
            }
            // payload n − 4 runs
            if n >= 4 {
                self.run_staged(&mut ring[(n - 4) % AHEAD], chunk, now, local, counts);
            }
            n += 1;
        }
        for k in n.saturating_sub(4)..n {
            self.run_staged(&mut ring[k % AHEAD], chunk, now, local, counts);
        }
    }

    /// Runs a staged payload (once: it is left empty): its dead letters, or its reading through
    /// its device's chain.
    #[inline]
    fn run_staged(
        &mut self,
        s: &mut Staged<'_>,
        chunk: &Chunk,
        now: i64,
        local: &ShardLocal,
        counts: &mut ChunkCounts,
    ) {
        let Some(item) = s.item.take() else { return };
        counts.payloads += 1;
        let ordinal = s.ordinal;
        debug_assert_eq!(self.runner.arrivals.len(), ordinal);
        if item.oversized {
            self.runner.arrivals.push(0);
            let length = item.payload.len() as u64;
            self.oversized(local, &chunk.source_name, item.at, length, item.payload, counts);
            return;
        }
        if let Err(e) = &s.decode {
            self.runner.arrivals.push(0);
            local.metrics.count_limit(e);
            self.dead_letter(local, &chunk.source_name, item.at, &e.to_string(), item.payload, counts);
            return;
        }
        let decoded = &mut s.decoded;
        let arrival = self
            .runner
            .arrival
            .stamp(decoded.reading.ts, decoded.arrival, item.arrival_ms);
        decoded.reading.arrival = arrival;
        self.runner.arrivals.push(arrival);
        if decoded.time_clamped {
            RuntimeMetrics::add(&local.metrics.times_implausible, 1);
        }
        if !decoded.dropped.is_empty() {
            let decoder = &local.pipeline.decoder;
            for &(field, value) in &s.decoded.dropped {
                let reason = decoder.dropped_reason(field, value);
                self.dead_letter(local, &chunk.source_name, item.at, &reason, item.payload, counts);
            }
        }
        let decoded = &mut s.decoded;
        let device: &str = &decoded.device;
        let index = match s.candidate {
            Some(i)
                if i < self.active.len()
                    && crate::decode::same_bytes(self.active.at(i).id.as_bytes(), device.as_bytes()) =>
            {
                i
            }
            _ => match self.active.find(s.hash, device) {
                Some(i) => i,
                None => match self.admit(device, s.hash, now) {
                    Some(i) => i,
                    None => {
                        self.refuse(device, std::slice::from_ref(&decoded.reading));
                        return;
                    }
                },
            },
        };
        counts.readings += 1;
        let runner = &mut self.runner;
        let entry = self.active.at_mut(index);
        if entry.actor.note_reading(runner.seq, now) {
            runner.keep(&entry.id, ordinal, entry.actor.chain());
            self.counters.batches += 1;
        }
        runner.running = Some((ordinal, index));
        entry
            .actor
            .apply_reading(&entry.id, local, &mut decoded.reading, now, &mut runner.emits);
        runner.running = None;
        DeviceActor::publish(&entry.id, local, &mut runner.emits);
    }

    /// A device not in memory: activated, if the device limit leaves room (see
    /// [`ShardSupervisor::make_room`]). Its number.
    fn admit(&mut self, device: &str, hash: u64, now: i64) -> Option<usize> {
        if self.active.len() + self.passive.len() >= self.max_devices
            && !self.passive.contains_key(device)
            && !self.make_room()
        {
            return None;
        }
        Some(self.activate_hashed(device, hash, now))
    }

    /// After an operator panicked on payload `ordinal` of device number `index`: the device
    /// restarts from its state before the chunk, applies its readings before that payload again
    /// (their records are out already), then tries that one once more (see the module).
    fn recover(
        &mut self,
        chunk: &Chunk,
        now: i64,
        ordinal: usize,
        index: usize,
        local: &ShardLocal,
        shards_of: &PayloadShards,
    ) {
        self.runner.emits.clear();
        let id = self.active.at(index).id.clone();
        let (first, last_good) = self.runner.journal[..self.runner.kept]
            .iter()
            .rev()
            .find(|k| k.device == id)
            .map(|k| (k.first, k.chain.clone()))
            .expect("a device's state is kept at its first reading of a chunk");
        self.active.at_mut(index).actor.restart(&id, local, last_good);
        let decoder = &*local.pipeline.decoder;
        let mut decoded = Decoded::empty(decoder.slots);
        let mut scratch = Vec::new();
        let items = Items::of(chunk, local, shards_of, self.shards).enumerate();
        for (o, item) in items.skip(first).take(ordinal + 1 - first) {
            if item.oversized || self.runner.poisoned.contains(&o) {
                continue;
            }
            if decoder
                .decode_into(item.payload, item.hint, item.arrival_ms, &mut decoded)
                .is_err()
                || *decoded.device != *id
            {
                continue;
            }
            decoded.reading.arrival = self.runner.arrivals[o];
            let actor = &mut self.active.at_mut(index).actor;
            if o < ordinal {
                actor.apply_reading(&id, local, &mut decoded.reading, now, &mut scratch);
                scratch.clear();
                continue;
            }
            let reading = decoded.reading.clone();
            let before = actor.chain().clone();
            let retried = catch_unwind(AssertUnwindSafe(|| {
                actor.apply_reading(&id, local, &mut decoded.reading, now, &mut scratch);
            }));
            match retried {
                Ok(()) => DeviceActor::publish(&id, local, &mut scratch),
                Err(panic) => {
                    scratch.clear();
                    actor.poisoned(before);
                    self.runner.poisoned.push(o);
                    let message = panic_message(&panic);
                    warn!(device = %id, ts = reading.ts, panic = %message, "reading made an operator panic: sent to dead letters");
                    let raw = serde_json::to_vec(&reading).unwrap_or_default();
                    local.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                    local.output.push(local.formatter.dead_letter(
                        &format!("device:{id}"),
                        &format!("ts {}", reading.ts),
                        &format!("an operator panicked on this reading: {message}"),
                        &raw,
                    ));
                }
            }
        }
    }

    /// A payload over `decode.max_payload_bytes`: a dead letter with its first bytes.
    fn oversized(
        &mut self,
        local: &ShardLocal,
        source: &str,
        at: At<'_>,
        length: u64,
        first_bytes: &[u8],
        counts: &mut ChunkCounts,
    ) {
        RuntimeMetrics::add(&local.metrics.payloads_oversized, 1);
        let reason = crate::decode::oversized_reason(length, local.pipeline.decoder.max_payload_bytes);
        self.dead_letter(local, source, at, &reason, first_bytes, counts);
    }

    fn dead_letter(
        &mut self,
        local: &ShardLocal,
        source: &str,
        at: At<'_>,
        reason: &str,
        payload: &[u8],
        counts: &mut ChunkCounts,
    ) {
        counts.dead_letters += 1;
        self.runner.dead_letters += 1;
        local.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
        let raw = bounded_raw(payload, local.pipeline.decoder.max_dead_letter_bytes);
        local
            .output
            .push(local.formatter.dead_letter(source, &at.describe(), reason, raw));
    }
}
