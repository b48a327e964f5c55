//! [`Router`]: one per shard thread. Every chunk of input is broadcast to every router; the
//! router aligns the sources' checkpoint barriers and hands the chunks, in order, to its shard's
//! supervisor, which runs the payloads of its own key groups ([`RunChunk`]). Which lines those
//! are is found once per chunk of lines, before the routers see it ([`LineRouter`]: it lists
//! each shard's lines; the file source routes each piece it reads right after reading it,
//! [`PartialRouting`]); in a chunk of messages each shard finds the device id of every payload
//! itself (cheap: the rest of the payload is skipped). So parsing, most of the cost, runs on every
//! shard in parallel, and each device's readings reach it in arrival order.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::coordinator::{RouterDrained, RunCoordinator};
use super::shard::{RunChunk, ShardBarrier, ShardSupervisor};
use super::{Chunk, ShardOutput, SourcePosition, shard_of};
use crate::decode::Decoder;
use crate::model::{LineRouting, RoutedKind, RoutedLine, RoutedLinePool, key_group_of_hash};

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
    /// Checkpoint barriers handed to the shard.
    pub barriers: u64,
}

#[derive(Message)]
#[rtype(result = "RouterCounters")]
pub struct ReportRouterCounters;

pub struct Router {
    shard: usize,
    supervisor: Addr<ShardSupervisor>,
    output: Arc<ShardOutput>,
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
}

impl Router {
    pub fn new(
        shard: usize,
        supervisor: Addr<ShardSupervisor>,
        output: Arc<ShardOutput>,
        coordinator: Addr<RunCoordinator>,
        sources: usize,
        positions: Vec<SourcePosition>,
        last_checkpoint: u64,
    ) -> Self {
        Router {
            shard,
            supervisor,
            output,
            coordinator,
            sources_open: sources,
            counters: RouterCounters::default(),
            open: vec![true; sources],
            positions,
            aligning: None,
            held: VecDeque::new(),
            waiting: false,
            last_forwarded: last_checkpoint,
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
                self.counters.chunks += 1;
                self.positions[chunk.end.source] = chunk.end.clone();
                self.supervisor.do_send(RunChunk(chunk));
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
                    self.coordinator.do_send(RouterDrained { shard: self.shard });
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
        self.counters.barriers += 1;
        let barrier = ShardBarrier {
            id,
            positions: self.positions.clone(),
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
}

impl Actor for Router {
    type Context = Context<Self>;
}

/// Finds, once per chunk of lines, which shard each line goes to ([`LineRouting`]), on the
/// source's thread as the chunk enters the runtime ([`ChunkFeeder`](super::ports::ChunkFeeder)),
/// or as the file source reads it ([`PartialRouting`]):
/// the routers then read only their own lines. The same decisions a router takes when it scans
/// a chunk itself: blank lines go nowhere, an oversized line and a line without a device id the
/// scan can find go to shard 0, every other line to the owner of its device's key group.
pub struct LineRouter {
    shards_of: PayloadShards,
    shards: usize,
    /// The lists of dropped chunks, for the next ones.
    spare: RoutedLinePool,
}

impl LineRouter {
    /// `None` with one shard: its router reads every line anyway.
    pub fn new(pipeline: &crate::pipeline::CompiledPipeline, shards: usize) -> Option<Self> {
        (shards > 1).then(|| LineRouter {
            shards_of: PayloadShards::new(pipeline, shards),
            shards,
            spare: RoutedLinePool::default(),
        })
    }

    /// Each line's shard; `None` for a chunk too large to index with 32-bit offsets (the
    /// routers then scan it themselves).
    pub fn route(&self, bytes: &[u8]) -> Option<LineRouting> {
        let mut routing = self.start(bytes.len())?;
        routing.add_whole_lines(self, bytes);
        Some(routing.finish(self, bytes))
    }

    /// Starts the routing of a chunk that is read in pieces (see [`PartialRouting`]), which
    /// will hold up to `capacity` bytes; `None` if that is too large to index with 32-bit
    /// offsets (the routers then scan the chunk themselves).
    pub fn start(&self, capacity: usize) -> Option<PartialRouting> {
        if capacity >= u32::MAX as usize {
            return None;
        }
        let expected = capacity / 100 / self.shards + 16;
        Some(PartialRouting {
            by_shard: (0..self.shards).map(|_| self.spare.take(expected)).collect(),
            next_start: 0,
            next_index: 0,
            newlines: 0,
        })
    }

    /// Puts the line at `start..start + line.len()` of its chunk, the chunk's line `index`, in
    /// the list of the shard that owns it (a blank line goes nowhere).
    #[inline]
    fn route_line(&self, by_shard: &mut [Vec<RoutedLine>], line: &[u8], start: usize, index: u32) {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        let mut routed = RoutedLine {
            start: start as u32,
            end: (start + line.len()) as u32,
            index,
            kind: RoutedKind::NoDevice,
            hash: 0,
        };
        let mut shard = 0;
        if line.len() > self.shards_of.decoder.max_payload_bytes {
            routed.kind = RoutedKind::Oversized;
        } else if let (owner, Some(hash)) = self.shards_of.of(line, None) {
            shard = owner;
            routed.kind = RoutedKind::Device;
            routed.hash = hash;
        }
        by_shard[shard].push(routed);
    }
}

/// The routing of a chunk made while the chunk is read: the file source routes the whole lines
/// of each piece it reads right after the read, while the piece is still in the cache (routing a
/// 16 MiB chunk once it was whole read it back from memory, and counting its lines did so
/// again). [`finish`](Self::finish) gives the same [`LineRouting`] as [`LineRouter::route`]
/// of the whole chunk.
pub struct PartialRouting {
    by_shard: Vec<Vec<RoutedLine>>,
    /// Where the next line starts in the chunk, and its index (blank lines count).
    next_start: usize,
    next_index: u32,
    /// The newlines routed so far.
    newlines: u64,
}

impl PartialRouting {
    /// Routes every line of `chunk` (the chunk as read so far, from its first byte) that ends
    /// with a newline and was not routed yet.
    #[inline]
    pub fn add_whole_lines(&mut self, router: &LineRouter, chunk: &[u8]) {
        debug_assert!(chunk.len() < u32::MAX as usize, "checked by `start`");
        let from = self.next_start;
        let mut start = from;
        let mut index = self.next_index;
        for end in memchr::memchr_iter(b'\n', &chunk[from..]) {
            let end = from + end;
            router.route_line(&mut self.by_shard, &chunk[start..end], start, index);
            start = end + 1;
            index += 1;
            self.newlines += 1;
        }
        self.next_start = start;
        self.next_index = index;
    }

    /// The newlines of the lines routed so far.
    pub fn newlines(&self) -> u64 {
        self.newlines
    }

    /// Routes what `chunk` (the whole chunk) holds after its last newline (a last line without
    /// one, when the input ends so), and gives the chunk's routing.
    pub fn finish(mut self, router: &LineRouter, chunk: &[u8]) -> LineRouting {
        self.add_whole_lines(router, chunk);
        if self.next_start < chunk.len() {
            router.route_line(
                &mut self.by_shard,
                &chunk[self.next_start..],
                self.next_start,
                self.next_index,
            );
        }
        LineRouting {
            by_shard: std::mem::take(&mut self.by_shard),
            spare: Some(router.spare.clone()),
        }
    }
}

/// Which shard a payload goes to: the owner of its device id's key group (`xxh3(id) %
/// key_groups`, groups in contiguous ranges per shard), or shard 0 when the scan finds no id
/// (shard 0 reports the dead letter). The one rule for the feeder routing lines
/// ([`LineRouter`]) and for a shard scanning a chunk itself (messages, or one shard).
pub struct PayloadShards {
    pub decoder: Arc<Decoder>,
    /// By key group: the shard that owns it.
    shard_of_group: Box<[u32]>,
}

impl PayloadShards {
    pub fn new(pipeline: &crate::pipeline::CompiledPipeline, shards: usize) -> Self {
        let groups = pipeline.spec.runtime.key_groups;
        PayloadShards {
            decoder: pipeline.decoder.clone(),
            shard_of_group: (0..groups).map(|g| shard_of(g, groups, shards) as u32).collect(),
        }
    }

    /// A payload's shard, and the xxh3 hash of its device id when the scan finds one (the
    /// decode finds the same id: tests/fuzz.rs checks it, so the hash is not computed again).
    #[inline]
    pub fn of(&self, payload: &[u8], hint: Option<&str>) -> (usize, Option<u64>) {
        match self.decoder.device_of(payload, hint) {
            Some(device) => {
                let hash = xxh3_64(device.as_bytes());
                let group = key_group_of_hash(hash, self.shard_of_group.len() as u32);
                (self.shard_of_group[group as usize] as usize, Some(hash))
            }
            None => (0, None),
        }
    }
}

/// `bytes.split(|&b| b == b'\n')`, with memchr (a byte-by-byte split is a tenth of a router's
/// time).
pub fn split_lines(bytes: &[u8]) -> SplitLines<'_> {
    SplitLines { rest: Some(bytes) }
}

/// See [`split_lines`].
pub struct SplitLines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for SplitLines<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let current = self.rest?;
        match memchr::memchr(b'\n', current) {
            Some(i) => {
                self.rest = Some(&current[i + 1..]);
                Some(&current[..i])
            }
            None => {
                self.rest = None;
                Some(current)
            }
        }
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

    fn routing_pipeline() -> crate::pipeline::CompiledPipeline {
        let text = "version: 1\npipeline: t\nsources:\n  - file: { path: in.jsonl }\ndecode:\n  format: json\n  device: { field: device }\n  time: { field: ts, unit: ms }\n  max_payload_bytes: 200\n  fields:\n    pm25: { type: float }\noperators:\n  - threshold: { name: hot, field: pm25, above: 35 }\n";
        crate::pipeline::CompiledPipeline::compile(
            crate::spec::parse_pipeline("t.yaml", text, &|_| None).expect("parses"),
        )
        .expect("compiles")
    }

    /// Every line's (shard, start, end, index, kind, hash), in order per shard.
    fn routed(routing: &LineRouting) -> Vec<(usize, u32, u32, u32, RoutedKind, u64)> {
        let mut all = Vec::new();
        for (shard, lines) in routing.by_shard.iter().enumerate() {
            all.extend(lines.iter().map(|r| (shard, r.start, r.end, r.index, r.kind, r.hash)));
        }
        all
    }

    #[test]
    fn a_chunk_routed_piece_by_piece_as_it_is_read_is_routed_as_the_whole_chunk() {
        let pipeline = routing_pipeline();
        let router = LineRouter::new(&pipeline, 3).expect("more than one shard");
        let mut text = String::new();
        for i in 0..400 {
            text.push_str(&match i % 7 {
                0 => String::new(),
                1 => "  ".to_string(),
                2 => format!(r#"{{"ts":{i},"pm25":1}}"#),
                3 => format!(
                    r#"{{"device":"dev-{i}","ts":{i},"pm25":1,"pad":"{}"}}"#,
                    "x".repeat(250)
                ),
                _ => format!(r#"{{"device":"dev-{i}","ts":{i},"pm25":1}}"#),
            });
            text.push('\n');
        }
        // a chunk as the source cuts it (ending with a newline), and one whose input ended
        // without one
        for chunk in [text.as_bytes(), &text.as_bytes()[..text.len() - 1], b"", b"\n", b"x"] {
            let whole = router.route(chunk).expect("small");
            // pieces of every size from 1 byte to past the whole chunk, cut anywhere
            for piece in [1usize, 2, 7, 64, 100, 101, 999, 4096, chunk.len() + 1] {
                let mut partial = router.start(chunk.len()).expect("small");
                let mut read = 0;
                while read < chunk.len() {
                    read = (read + piece).min(chunk.len());
                    partial.add_whole_lines(&router, &chunk[..read]);
                }
                assert_eq!(partial.newlines(), memchr::memchr_iter(b'\n', chunk).count() as u64);
                let pieces = partial.finish(&router, chunk);
                assert_eq!(routed(&pieces), routed(&whole), "pieces of {piece} bytes");
            }
        }
        let blank = (0..400).filter(|i| i % 7 < 2).count();
        assert_eq!(
            routed(&router.route(text.as_bytes()).expect("small")).len(),
            400 - blank
        );
    }

    #[test]
    fn the_feeder_puts_each_line_in_the_list_of_the_shard_that_owns_it() {
        let pipeline = routing_pipeline();
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
