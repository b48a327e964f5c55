//! [`Router`]: one per shard thread. Every chunk of input is broadcast to every router, and each
//! fully decodes only the payloads of devices in its own key groups. Which those are is found
//! once per chunk of lines by the feeder ([`LineRouter`]: it lists each shard's lines); in a
//! chunk of messages each router finds the device id of every payload itself (cheap: the rest
//! of the payload is skipped). So parsing, most of the cost, runs on every shard in parallel,
//! and each device's readings reach its actor in arrival order. A payload that does not decode
//! becomes a dead letter, reported by exactly one router (the owner of its device, or shard 0
//! when no device id can be found).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::coordinator::{RouterDrained, RunCoordinator};
use super::shard::{DeviceBatches, ShardBarrier, ShardSupervisor};
use super::{Chunk, ChunkData, ChunkProgress, RuntimeMetrics, ShardOutput, SourcePosition, shard_of};
use crate::decode::{Decoder, bounded_raw};
use crate::model::{LineRouting, RoutedKind, RoutedLine, RoutedLinePool, key_group_of_hash};
use crate::operators::Reading;
use crate::output::RecordFormatter;

/// A chunk for this router (shared by all routers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteChunk(pub Arc<Chunk>);

/// A source has sent its last chunk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SourceEnded {
    pub source: usize,
}

/// A checkpoint barrier from a source: everything the source sent before it belongs to
/// checkpoint `id`, everything after to the next.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SourceBarrier {
    pub source: usize,
    pub id: u64,
}

/// Every source has ended: take checkpoint `id` now (the final one of a run).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForceBarrier {
    pub id: u64,
}

/// What arrives from the sources, in order.
enum Input {
    Chunk(Arc<Chunk>),
    Barrier(SourceBarrier),
    Ended(usize),
}

impl Input {
    fn source(&self) -> usize {
        match self {
            Input::Chunk(c) => c.end.source,
            Input::Barrier(b) => b.source,
            Input::Ended(s) => *s,
        }
    }
}

/// A barrier some sources have sent and others not yet.
struct Alignment {
    id: u64,
    got: Vec<bool>,
}

/// What a router has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounters {
    pub chunks: u64,
    pub payloads_seen: u64,
    pub readings: u64,
    pub dead_letters: u64,
}

#[derive(Message)]
#[rtype(result = "RouterCounters")]
pub struct ReportRouterCounters;

pub struct Router {
    shard: usize,
    shards: usize,
    key_groups: u32,
    /// By key group: whether this shard owns it (`shard_of`, computed once: two 64-bit
    /// divisions per line cost 3–4 % of a router).
    owned_groups: Box<[bool]>,
    decoder: Arc<Decoder>,
    formatter: Rc<RecordFormatter>,
    supervisor: Addr<ShardSupervisor>,
    output: Arc<ShardOutput>,
    metrics: Arc<RuntimeMetrics>,
    coordinator: Addr<RunCoordinator>,
    sources_open: usize,
    counters: RouterCounters,
    /// Per source: still sending.
    open: Vec<bool>,
    /// Per source: the end of the last chunk routed (the position a checkpoint records).
    positions: Vec<SourcePosition>,
    aligning: Option<Alignment>,
    /// Input waiting: of sources that already sent the pending barrier, or anything while the
    /// shard takes its snapshot.
    held: VecDeque<Input>,
    waiting: bool,
    last_forwarded: u64,
    /// Readings per device batch in the last chunk (to size the next chunk's batches).
    batch_size_hint: usize,
    /// Each reading's arrival time (`runtime.clock`).
    arrival: crate::clock::ArrivalStamp,
}

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: usize,
        shards: usize,
        pipeline: &crate::pipeline::CompiledPipeline,
        supervisor: Addr<ShardSupervisor>,
        output: Arc<ShardOutput>,
        metrics: Arc<RuntimeMetrics>,
        coordinator: Addr<RunCoordinator>,
        sources: usize,
        positions: Vec<SourcePosition>,
        last_checkpoint: u64,
    ) -> Self {
        Router {
            shard,
            shards,
            key_groups: pipeline.spec.runtime.key_groups,
            owned_groups: {
                let groups = pipeline.spec.runtime.key_groups;
                (0..groups).map(|g| shard_of(g, groups, shards) == shard).collect()
            },
            decoder: pipeline.decoder.clone(),
            formatter: Rc::new(RecordFormatter::new(pipeline)),
            supervisor,
            output,
            metrics,
            coordinator,
            sources_open: sources,
            counters: RouterCounters::default(),
            open: vec![true; sources],
            positions,
            aligning: None,
            held: VecDeque::new(),
            waiting: false,
            last_forwarded: last_checkpoint,
            batch_size_hint: 1,
            arrival: crate::clock::ArrivalStamp::new(pipeline.spec.runtime.clock.is_event()),
        }
    }

    fn accept(&mut self, input: Input, ctx: &mut Context<Self>) {
        if self.waiting {
            self.held.push_back(input);
        } else {
            self.process(input, ctx);
        }
    }

    fn process(&mut self, input: Input, ctx: &mut Context<Self>) {
        if let Some(a) = &self.aligning
            && a.got[input.source()]
        {
            self.held.push_back(input);
            return;
        }
        match input {
            Input::Chunk(chunk) => {
                self.route(&chunk);
                self.positions[chunk.end.source] = chunk.end.clone();
            }
            Input::Barrier(b) => {
                if b.id <= self.last_forwarded {
                    return; // already taken (forced at the end of the sources)
                }
                let sources = self.open.len();
                let a = self.aligning.get_or_insert_with(|| Alignment {
                    id: b.id,
                    got: vec![false; sources],
                });
                a.got[b.source] = true;
                self.check_aligned(ctx);
            }
            Input::Ended(source) => {
                self.open[source] = false;
                self.check_aligned(ctx);
                self.sources_open = self.sources_open.saturating_sub(1);
                if self.sources_open == 0 {
                    self.output.flush(None);
                    self.coordinator.do_send(RouterDrained {
                        shard: self.shard,
                        dead_letters: self.counters.dead_letters,
                    });
                }
            }
        }
    }

    fn check_aligned(&mut self, ctx: &mut Context<Self>) {
        let aligned = self
            .aligning
            .as_ref()
            .is_some_and(|a| a.got.iter().zip(&self.open).all(|(&got, &open)| got || !open));
        if aligned {
            let id = self.aligning.take().expect("checked").id;
            self.forward(id, ctx);
        }
    }

    /// Hands barrier `id` to the shard and waits (holding new input) until it has taken its
    /// snapshot, then goes on with what was held.
    fn forward(&mut self, id: u64, ctx: &mut Context<Self>) {
        self.last_forwarded = id;
        self.waiting = true;
        let barrier = ShardBarrier {
            id,
            positions: self.positions.clone(),
            dead_letters: self.counters.dead_letters,
        };
        ctx.wait(self.supervisor.send(barrier).into_actor(self).map(|_, act, ctx| {
            act.waiting = false;
            act.release(ctx);
        }));
    }

    fn release(&mut self, ctx: &mut Context<Self>) {
        let mut items = std::mem::take(&mut self.held).into_iter();
        while let Some(item) = items.next() {
            if self.waiting {
                self.held.push_back(item);
                self.held.extend(items);
                return;
            }
            self.process(item, ctx);
        }
    }

    /// Whether this shard owns a device, from the xxh3 hash of its id (see [`key_group_of`]).
    ///
    /// [`key_group_of`]: super::key_group_of
    #[inline]
    fn owns(&self, hash: u64) -> bool {
        if self.shards == 1 {
            return true;
        }
        self.owned_groups[key_group_of_hash(hash, self.key_groups) as usize]
    }

    /// A payload over `decode.max_payload_bytes`: a dead letter with its first bytes, reported
    /// once, by shard 0 (its device id is not looked for).
    fn oversized(&mut self, source: &str, position: &str, length: u64, first_bytes: &[u8]) {
        if self.shard == 0 {
            RuntimeMetrics::add(&self.metrics.payloads_oversized, 1);
            let reason = crate::decode::oversized_reason(length, self.decoder.max_payload_bytes);
            self.dead_letter(source, position, &reason, first_bytes);
        }
    }

    /// [`Router::oversized`] for line `line_no` of a chunk of lines.
    fn oversized_line(&mut self, chunk: &Chunk, line_no: u64, line: &[u8]) {
        self.oversized(&chunk.source_name, &format!("line {line_no}"), line.len() as u64, line);
    }

    fn dead_letter(&mut self, source: &str, position: &str, reason: &str, payload: &[u8]) {
        self.counters.dead_letters += 1;
        self.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
        let raw = bounded_raw(payload, self.decoder.max_dead_letter_bytes);
        self.output
            .push(self.formatter.dead_letter(source, position, reason, raw));
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

/// Readings grouped by device, in arrival order, keeping first-seen device order.
///
/// Indexed by the device id's xxh3 hash (already computed for the key group), so a lookup
/// hashes nothing and compares the id only with the batch's copy in `ids` (one compact buffer:
/// it stays in cache); a 64-bit collision falls back to a linear search (rare, still correct).
struct Grouping {
    index: HashMap<u64, u32, BuildHasherDefault<PrecomputedHash>>,
    /// The device ids of the batches, back to back; `spans[i]` is batch `i`'s.
    ids: String,
    spans: Vec<(u32, u32)>,
    readings: Vec<Vec<Reading>>,
    /// Initial capacity of a device's batch (the average of the previous chunk).
    expected: usize,
}

impl Grouping {
    fn new(expected: usize) -> Self {
        Grouping {
            index: HashMap::default(),
            ids: String::new(),
            spans: Vec::new(),
            readings: Vec::new(),
            expected: expected.clamp(1, 64),
        }
    }

    #[inline]
    fn id(&self, i: usize) -> &str {
        let (start, end) = self.spans[i];
        &self.ids[start as usize..end as usize]
    }

    /// Starts loading the place the next reading of the device hashed `hash` will be written
    /// to (its batch's end), so that the decode before the push hides the miss.
    /// Returns the batch found for `hash`, for [`Grouping::push_found`].
    #[inline]
    fn prefetch(&self, hash: u64) -> Option<u32> {
        let &i = self.index.get(&hash)?;
        let batch = &self.readings[i as usize];
        crate::operators::prefetch(batch.as_ptr().wrapping_add(batch.len()), std::mem::size_of::<Reading>());
        Some(i)
    }

    /// [`Grouping::push`] with the batch [`Grouping::prefetch`] found for the same hash (looked
    /// up once): used when its id is the device's, else the lookup decides.
    #[inline]
    fn push_found(&mut self, found: Option<u32>, hash: u64, device: &str, reading: Reading) {
        if let Some(i) = found.map(|i| i as usize)
            && crate::decode::same_bytes(self.id(i).as_bytes(), device.as_bytes())
        {
            self.readings[i].push(reading);
        } else {
            self.push(hash, device, reading);
        }
    }

    #[inline]
    fn push(&mut self, hash: u64, device: &str, reading: Reading) {
        match self.index.entry(hash) {
            Entry::Occupied(e) => {
                let i = *e.get() as usize;
                let i = if crate::decode::same_bytes(self.id(i).as_bytes(), device.as_bytes()) {
                    Some(i)
                } else {
                    (0..self.spans.len()).find(|&j| self.id(j) == device)
                };
                match i {
                    Some(i) => self.readings[i].push(reading),
                    None => self.new_batch(device, reading),
                }
            }
            Entry::Vacant(e) => {
                e.insert(self.spans.len() as u32);
                self.new_batch(device, reading);
            }
        }
    }

    fn new_batch(&mut self, device: &str, reading: Reading) {
        let start = self.ids.len() as u32;
        self.ids.push_str(device);
        self.spans.push((start, self.ids.len() as u32));
        let mut readings = Vec::with_capacity(self.expected);
        readings.push(reading);
        self.readings.push(readings);
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn into_batches(self) -> Vec<(Box<str>, Vec<Reading>)> {
        let ids = self.ids;
        self.spans
            .into_iter()
            .zip(self.readings)
            .map(|((start, end), readings)| (Box::from(&ids[start as usize..end as usize]), readings))
            .collect()
    }
}

/// Finds, once per chunk of lines, which shard each line goes to ([`LineRouting`]), on the
/// source's thread as the chunk enters the runtime ([`ChunkFeeder`](super::ports::ChunkFeeder)):
/// the routers then read only their own lines. The same decisions a router takes when it scans
/// a chunk itself: blank lines go nowhere, an oversized line and a line without a device id the
/// scan can find go to shard 0, every other line to the owner of its device's key group.
pub struct LineRouter {
    decoder: Arc<Decoder>,
    /// By key group: the shard that owns it.
    shard_of_group: Box<[u32]>,
    shards: usize,
    /// The lists of dropped chunks, for the next ones.
    spare: RoutedLinePool,
}

impl LineRouter {
    /// `None` with one shard: its router reads every line anyway.
    pub fn new(pipeline: &crate::pipeline::CompiledPipeline, shards: usize) -> Option<Self> {
        (shards > 1).then(|| {
            let groups = pipeline.spec.runtime.key_groups;
            LineRouter {
                decoder: pipeline.decoder.clone(),
                shard_of_group: (0..groups).map(|g| shard_of(g, groups, shards) as u32).collect(),
                shards,
                spare: RoutedLinePool::default(),
            }
        })
    }

    /// Each line's shard; `None` for a chunk too large to index with 32-bit offsets (the
    /// routers then scan it themselves).
    pub fn route(&self, bytes: &[u8]) -> Option<LineRouting> {
        if bytes.len() >= u32::MAX as usize {
            return None;
        }
        let expected = bytes.len() / 100 / self.shards + 16;
        let mut by_shard: Vec<Vec<RoutedLine>> = (0..self.shards).map(|_| self.spare.take(expected)).collect();
        let groups = self.shard_of_group.len() as u32;
        let mut start = 0usize;
        for (index, line) in split_lines(bytes).enumerate() {
            let at = start;
            start += line.len() + 1;
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let mut routed = RoutedLine {
                start: at as u32,
                end: (at + line.len()) as u32,
                index: index as u32,
                kind: RoutedKind::NoDevice,
                hash: 0,
            };
            let mut shard = 0;
            if line.len() > self.decoder.max_payload_bytes {
                routed.kind = RoutedKind::Oversized;
            } else if let Some(device) = self.decoder.device_of(line, None) {
                let hash = xxh3_64(device.as_bytes());
                shard = self.shard_of_group[key_group_of_hash(hash, groups) as usize] as usize;
                routed.kind = RoutedKind::Device;
                routed.hash = hash;
            }
            by_shard[shard].push(routed);
        }
        Some(LineRouting {
            by_shard,
            spare: Some(self.spare.clone()),
        })
    }
}

/// `bytes.split(|&b| b == b'\n')`, with memchr (a byte-by-byte split is a tenth of a router's time).
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'\n', current) {
            Some(i) => {
                rest = Some(&current[i + 1..]);
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct PrecomputedHash(u64);

impl Hasher for PrecomputedHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Handler<RouteChunk> for Router {
    type Result = ();

    fn handle(&mut self, RouteChunk(chunk): RouteChunk, ctx: &mut Context<Self>) {
        self.accept(Input::Chunk(chunk), ctx);
    }
}

impl Handler<SourceBarrier> for Router {
    type Result = ();

    fn handle(&mut self, msg: SourceBarrier, ctx: &mut Context<Self>) {
        self.accept(Input::Barrier(msg), ctx);
    }
}

impl Handler<ForceBarrier> for Router {
    type Result = ();

    fn handle(&mut self, msg: ForceBarrier, ctx: &mut Context<Self>) {
        if msg.id > self.last_forwarded {
            self.aligning = None;
            self.forward(msg.id, ctx);
        }
    }
}

impl Router {
    /// Decodes a payload this router takes into `decoded` and adds its reading to its device's
    /// batch (`routed`: its device id's hash, when a scan found one; `found`: that hash's batch);
    /// a payload that does not decode becomes a dead letter at `position` (made only then).
    /// Whether it gave a reading.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn take_payload<'c>(
        &mut self,
        source_name: &str,
        payload: &'c [u8],
        device_hint: Option<&'c str>,
        arrival_ms: i64,
        position: impl Fn() -> String,
        routed: Option<u64>,
        found: Option<u32>,
        decoded: &mut crate::decode::Decoded<'c>,
        grouping: &mut Grouping,
    ) -> bool {
        let decoder = &*self.decoder;
        match decoder.decode_into(payload, device_hint, arrival_ms, decoded) {
            Ok(()) => {
                decoded.reading.arrival = self.arrival.stamp(decoded.reading.ts, decoded.arrival, arrival_ms);
                if decoded.time_clamped {
                    RuntimeMetrics::add(&self.metrics.times_implausible, 1);
                }
                if !decoded.dropped.is_empty() {
                    let decoder = self.decoder.clone();
                    for &(field, value) in &decoded.dropped {
                        let reason = decoder.dropped_reason(field, value);
                        self.dead_letter(source_name, &position(), &reason, payload);
                    }
                }
                let hash = routed.unwrap_or_else(|| xxh3_64(decoded.device.as_bytes()));
                grouping.push_found(found, hash, &decoded.device, decoded.reading.clone());
                true
            }
            Err(e) => {
                self.metrics.count_limit(&e);
                self.dead_letter(source_name, &position(), &e.to_string(), payload);
                false
            }
        }
    }

    fn route(&mut self, chunk: &Chunk) {
        self.counters.chunks += 1;
        let now = chunk.read_at_ms;
        let decoder = self.decoder.clone();
        let mut grouping = Grouping::new(self.batch_size_hint);
        let mut readings = 0u64;
        let dead_letters_before = self.counters.dead_letters;
        // every payload of the chunk is decoded into this one (nothing moved; its reading is
        // copied into its device's batch)
        let mut decoded = crate::decode::Decoded::empty(decoder.slots);
        match &chunk.data {
            ChunkData::Lines { bytes, first_line, .. } => match &chunk.routing {
                // the feeder found each line's shard: only this shard's lines
                Some(routing) => {
                    for r in routing.by_shard.get(self.shard).map_or(&[][..], Vec::as_slice) {
                        let line = &bytes[r.start as usize..r.end as usize];
                        let this_line = first_line + r.index as u64;
                        self.counters.payloads_seen += 1;
                        let (routed, found) = match r.kind {
                            RoutedKind::Oversized => {
                                self.oversized_line(chunk, this_line, line);
                                continue;
                            }
                            RoutedKind::NoDevice => (None, None),
                            RoutedKind::Device => (Some(r.hash), grouping.prefetch(r.hash)),
                        };
                        let taken = self.take_payload(
                            &chunk.source_name,
                            line,
                            None,
                            chunk.source_time_ms,
                            || format!("line {this_line}"),
                            routed,
                            found,
                            &mut decoded,
                            &mut grouping,
                        );
                        readings += taken as u64;
                    }
                }
                None => {
                    for (this_line, line) in (*first_line..).zip(split_lines(bytes)) {
                        if line.iter().all(|b| b.is_ascii_whitespace()) {
                            continue;
                        }
                        self.counters.payloads_seen += 1;
                        if line.len() > decoder.max_payload_bytes {
                            self.oversized_line(chunk, this_line, line);
                            continue;
                        }
                        // the scan's hash is the decoded device's (`device_of` finds the id
                        // `decode` finds: tests/fuzz.rs checks it), so it is not computed twice
                        let mut routed = None;
                        let mut found = None;
                        if self.shards > 1 {
                            match decoder.device_of(line, None) {
                                Some(device) => {
                                    let hash = xxh3_64(device.as_bytes());
                                    if !self.owns(hash) {
                                        continue;
                                    }
                                    found = grouping.prefetch(hash);
                                    routed = Some(hash);
                                }
                                None if self.shard != 0 => continue,
                                None => {}
                            }
                        }
                        let taken = self.take_payload(
                            &chunk.source_name,
                            line,
                            None,
                            chunk.source_time_ms,
                            || format!("line {this_line}"),
                            routed,
                            found,
                            &mut decoded,
                            &mut grouping,
                        );
                        readings += taken as u64;
                    }
                }
            },
            ChunkData::Messages(messages) => {
                for m in messages {
                    self.counters.payloads_seen += 1;
                    if m.payload.len() > decoder.max_payload_bytes {
                        self.oversized(&chunk.source_name, &m.position, m.payload.len() as u64, &m.payload);
                        continue;
                    }
                    let mut routed = None;
                    let mut found = None;
                    if self.shards > 1 {
                        match decoder.device_of(&m.payload, m.device_hint.as_deref()) {
                            Some(device) => {
                                let hash = xxh3_64(device.as_bytes());
                                if !self.owns(hash) {
                                    continue;
                                }
                                found = grouping.prefetch(hash);
                                routed = Some(hash);
                            }
                            None if self.shard != 0 => continue,
                            None => {}
                        }
                    }
                    let taken = self.take_payload(
                        &chunk.source_name,
                        &m.payload,
                        m.device_hint.as_deref(),
                        m.arrival_ms,
                        || m.position.clone(),
                        routed,
                        found,
                        &mut decoded,
                        &mut grouping,
                    );
                    readings += taken as u64;
                }
            }
            ChunkData::SkippedLine {
                line, length, prefix, ..
            } => {
                self.counters.payloads_seen += 1;
                self.oversized(&chunk.source_name, &format!("line {line}"), *length, prefix);
            }
        }
        if !grouping.is_empty() {
            self.batch_size_hint = (readings as usize).div_ceil(grouping.spans.len());
        }
        self.counters.readings += readings;
        self.metrics.readings.fetch_add(readings, Ordering::Relaxed);
        if let Some(source) = self.metrics.sources.get(chunk.end.source) {
            source.readings.fetch_add(readings, Ordering::Relaxed);
            let dead_letters = self.counters.dead_letters - dead_letters_before;
            if dead_letters > 0 {
                source.dead_letters.fetch_add(dead_letters, Ordering::Relaxed);
            }
        }
        let progress = Arc::new(ChunkProgress {
            output: self.output.clone(),
            ticket: chunk.ticket.clone(),
        });
        if !grouping.is_empty() {
            self.supervisor.do_send(DeviceBatches {
                batches: grouping.into_batches(),
                now,
                fleet_ms: self.arrival.fleet_ms(),
                progress,
            });
        }
        // with no readings for this shard, dropping `progress` flushes the dead letters now
    }
}

impl Handler<SourceEnded> for Router {
    type Result = ();

    fn handle(&mut self, msg: SourceEnded, ctx: &mut Context<Self>) {
        self.accept(Input::Ended(msg.source), ctx);
    }
}

impl Handler<ReportRouterCounters> for Router {
    type Result = MessageResult<ReportRouterCounters>;

    fn handle(&mut self, _: ReportRouterCounters, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_is_split_on_newlines() {
        for text in ["", "\n", "a", "a\n", "a\nb", "a\n\nb\n", "\n\na"] {
            let ours: Vec<&[u8]> = split_lines(text.as_bytes()).collect();
            let std: Vec<&[u8]> = text.as_bytes().split(|&b| b == b'\n').collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    #[test]
    fn grouping_keeps_arrival_order_per_device_and_survives_collisions() {
        // pushed directly, and through the batch the prefetch found (the routers' way)
        for through_prefetch in [false, true] {
            let r = |ts| Reading::new(ts, 1);
            let mut g = Grouping::new(1);
            let push = |g: &mut Grouping, hash: u64, device: &str, reading: Reading| {
                if through_prefetch {
                    let found = g.prefetch(hash);
                    g.push_found(found, hash, device, reading);
                } else {
                    g.push(hash, device, reading);
                }
            };
            push(&mut g, 1, "a", r(1));
            push(&mut g, 2, "b", r(2));
            push(&mut g, 1, "a", r(3));
            // same hash, different device: a collision
            push(&mut g, 1, "c", r(4));
            push(&mut g, 1, "c", r(5));
            push(&mut g, 2, "b", r(6));
            push(&mut g, 1, "a", r(7));
            let batches: Vec<(String, Vec<i64>)> = g
                .into_batches()
                .into_iter()
                .map(|(d, rs)| (d.to_string(), rs.iter().map(|r| r.ts).collect()))
                .collect();
            assert_eq!(
                batches,
                vec![
                    ("a".to_string(), vec![1, 3, 7]),
                    ("b".to_string(), vec![2, 6]),
                    ("c".to_string(), vec![4, 5]),
                ],
                "through the prefetch: {through_prefetch}"
            );
        }
    }

    #[test]
    fn the_feeder_puts_each_line_in_the_list_of_the_shard_that_owns_it() {
        let text = "version: 1\npipeline: t\nsources:\n  - file: { path: in.jsonl }\ndecode:\n  format: json\n  device: { field: device }\n  time: { field: ts, unit: ms }\n  max_payload_bytes: 200\n  fields:\n    pm25: { type: float }\noperators:\n  - threshold: { name: hot, field: pm25, above: 35 }\n";
        let pipeline = crate::pipeline::CompiledPipeline::compile(
            crate::spec::parse_pipeline("t.yaml", text, &|_| None).expect("parses"),
        )
        .expect("compiles");
        assert!(
            LineRouter::new(&pipeline, 1).is_none(),
            "one shard reads every line itself"
        );
        let mut lines: Vec<String> = Vec::new();
        for i in 0..300 {
            lines.push(match i % 10 {
                // blank lines go nowhere
                3 => "   ".to_string(),
                4 => String::new(),
                // no device id: shard 0 reports it
                5 => format!(r#"{{"ts":{i},"pm25":1}}"#),
                6 => "not json".to_string(),
                // the device key not first, or escaped: still found by the scan's slow path
                7 => format!(r#"{{"ts":{i},"device":"late-{i}","pm25":1}}"#),
                8 => format!(r#"{{"device":"esc\u0061ped-{i}","ts":{i},"pm25":1}}"#),
                // over max_payload_bytes: shard 0 reports it
                9 => format!(
                    r#"{{"device":"dev-{i}","ts":{i},"pm25":1,"pad":"{}"}}"#,
                    "x".repeat(250)
                ),
                _ => format!(r#"{{"device":"dev-{i}","ts":{i},"pm25":1}}"#),
            });
        }
        let bytes = lines.join("\n");
        for shards in [2, 3] {
            let router = LineRouter::new(&pipeline, shards).expect("more than one shard");
            let routing = router.route(bytes.as_bytes()).expect("a small chunk");
            assert_eq!(routing.by_shard.len(), shards);
            let mut seen = vec![0u32; lines.len()];
            for (shard, routed) in routing.by_shard.iter().enumerate() {
                assert!(routed.windows(2).all(|w| w[0].index < w[1].index), "in order");
                for r in routed {
                    let line = &bytes.as_bytes()[r.start as usize..r.end as usize];
                    assert_eq!(line, lines[r.index as usize].as_bytes());
                    seen[r.index as usize] += 1;
                    match r.kind {
                        RoutedKind::Device => {
                            // the id the decode finds, hashed as the routers hash it, owned here
                            let device = match pipeline.decoder.decode(line, None, 0) {
                                Ok(decoded) => decoded.device.into_owned(),
                                Err(_) => pipeline.decoder.device_of(line, None).expect("found").into_owned(),
                            };
                            assert_eq!(r.hash, xxh3_64(device.as_bytes()), "{device}");
                            let group = crate::model::key_group_of(&device, pipeline.spec.runtime.key_groups);
                            assert_eq!(shard_of(group, pipeline.spec.runtime.key_groups, shards), shard);
                        }
                        RoutedKind::NoDevice => {
                            assert_eq!(shard, 0);
                            assert!(pipeline.decoder.device_of(line, None).is_none());
                        }
                        RoutedKind::Oversized => {
                            assert_eq!(shard, 0);
                            assert!(line.len() > 200);
                        }
                    }
                }
            }
            for (i, line) in lines.iter().enumerate() {
                let blank = line.trim().is_empty();
                assert_eq!(seen[i], if blank { 0 } else { 1 }, "line {i}: {line}");
            }
            let kinds = |k| routing.by_shard.iter().flatten().filter(|r| r.kind == k).count();
            assert_eq!((kinds(RoutedKind::NoDevice), kinds(RoutedKind::Oversized)), (60, 30));
            assert!(routing.by_shard.iter().all(|r| !r.is_empty()), "every shard owns some");
            // the lists go back to the feeder's pool with the chunk, and are reused
            drop(routing);
            assert_eq!(router.spare.kept(), shards);
            let again = router.route(b"{\"device\":\"a\",\"ts\":1}").expect("routed");
            assert_eq!(router.spare.kept(), 0);
            assert_eq!(again.by_shard.iter().map(Vec::len).sum::<usize>(), 1);
        }
    }
}
