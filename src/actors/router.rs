//! [`Router`]: one per shard thread. Every chunk of input is broadcast to every router; each
//! finds the device id of every payload (cheap: the rest of the payload is skipped), and fully
//! decodes only the payloads of devices in its own key groups. So parsing, most of the cost,
//! runs on every shard in parallel, and each device's readings reach its actor in arrival
//! order. A payload that does not decode becomes a dead letter, reported by exactly one router
//! (the owner of its device, or shard 0 when no device id can be found).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use rustc_hash::FxHashMap;

use super::coordinator::{RouterDrained, RunCoordinator};
use super::shard::{DeviceBatches, ShardBarrier, ShardSupervisor};
use super::{Chunk, ChunkData, ChunkProgress, RuntimeMetrics, ShardOutput, SourcePosition, key_group_of, shard_of};
use crate::decode::{Decoder, bounded_raw};
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

    #[inline]
    fn owns(&self, device: &str) -> bool {
        self.shards == 1 || shard_of(key_group_of(device, self.key_groups), self.key_groups, self.shards) == self.shard
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
#[derive(Default)]
struct Grouping<'a> {
    index: FxHashMap<Cow<'a, str>, usize>,
    batches: Vec<(Box<str>, Vec<Reading>)>,
}

impl<'a> Grouping<'a> {
    #[inline]
    fn push(&mut self, device: Cow<'a, str>, reading: Reading) {
        match self.index.get(device.as_ref()) {
            Some(&i) => self.batches[i].1.push(reading),
            None => {
                self.batches.push((device.as_ref().into(), vec![reading]));
                self.index.insert(device, self.batches.len() - 1);
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

impl Router {
    fn route(&mut self, chunk: &Chunk) {
        self.counters.chunks += 1;
        let now = chunk.read_at_ms;
        let decoder = self.decoder.clone();
        let mut grouping = Grouping::default();
        let mut readings = 0u64;
        match &chunk.data {
            ChunkData::Lines { bytes, first_line, .. } => {
                let mut line_no = *first_line;
                for line in bytes.split(|&b| b == b'\n') {
                    let this_line = line_no;
                    line_no += 1;
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    self.counters.payloads_seen += 1;
                    if self.shards > 1 {
                        match decoder.device_of(line, None) {
                            Some(device) if !self.owns(&device) => continue,
                            Some(_) => {}
                            None if self.shard != 0 => continue,
                            None => {}
                        }
                    }
                    match decoder.decode(line, None, now) {
                        Ok(decoded) => {
                            readings += 1;
                            grouping.push(decoded.device, decoded.reading);
                        }
                        Err(e) => {
                            let position = format!("line {this_line}");
                            self.dead_letter(&chunk.source_name, &position, &e.to_string(), line);
                        }
                    }
                }
            }
            ChunkData::Messages(messages) => {
                for m in messages {
                    self.counters.payloads_seen += 1;
                    if self.shards > 1 {
                        match decoder.device_of(&m.payload, m.device_hint.as_deref()) {
                            Some(device) if !self.owns(&device) => continue,
                            Some(_) => {}
                            None if self.shard != 0 => continue,
                            None => {}
                        }
                    }
                    match decoder.decode(&m.payload, m.device_hint.as_deref(), m.arrival_ms) {
                        Ok(decoded) => {
                            readings += 1;
                            grouping.push(decoded.device, decoded.reading);
                        }
                        Err(e) => self.dead_letter(&chunk.source_name, &m.position, &e.to_string(), &m.payload),
                    }
                }
            }
        }
        self.counters.readings += readings;
        self.metrics.readings.fetch_add(readings, Ordering::Relaxed);
        let progress = Arc::new(ChunkProgress {
            output: self.output.clone(),
            ticket: chunk.ticket.clone(),
        });
        if !grouping.batches.is_empty() {
            self.supervisor.do_send(DeviceBatches {
                batches: grouping.batches,
                now,
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
