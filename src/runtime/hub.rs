//! [`OutputHub`]: fans records out to the sinks. Each sink has a queue bounded in records; when
//! one is full the hub waits (its mailbox pauses) until the sink catches up, while the chunk
//! tickets held by the waiting records keep the sources from reading more. Memory stays
//! bounded and no record is dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;
use tracing::debug;

use super::ChunkTicket;
use super::checkpointer::SinksFlushed;
use crate::output::OutputRecord;
use crate::runtime::ports::{SinkCommand, SinkError, SinkHandle};
use crate::runtime::routes::RouteTable;

/// Records from a shard, in the order the shard produced them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteRecords {
    pub records: Vec<OutputRecord>,
    pub ticket: Option<Arc<ChunkTicket>>,
    /// The shard that produced them (none: the coordinator).
    pub shard: Option<usize>,
}

/// A shard has sent every record of checkpoint `id`. Once every shard has, the hub makes the
/// sinks durable and reports their lengths to the checkpointer; records a shard sends after
/// its mark wait until then, so the lengths cover exactly the checkpoint's records.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BarrierReached {
    pub shard: usize,
    pub id: u64,
}

enum HubItem {
    Records(RouteRecords),
    Barrier { shard: usize, id: u64 },
}

/// End of the run: route the summary, then flush and close every sink.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, SinkError>")]
pub struct FinishOutputs {
    pub summary: Option<OutputRecord>,
}

/// Make every sink durable (a checkpoint); replies with each sink's position.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, SinkError>")]
pub struct FlushSinks;

/// For tests and the admin view.
#[derive(Message)]
#[rtype(result = "HubCounters")]
pub struct ReportHubCounters;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubCounters {
    pub batches: u64,
    pub records: u64,
    /// Times the hub had to wait for a full sink queue.
    pub waits: u64,
    /// Records queued per sink, not yet written.
    pub waiting: Vec<usize>,
    pub written: Vec<u64>,
}

pub struct OutputHub {
    routes: RouteTable,
    sinks: Vec<SinkHandle>,
    counters: HubCounters,
    /// In arrival order; routed one after the other, pausing while a sink queue is full.
    backlog: VecDeque<HubItem>,
    /// Waits for full sink queues in progress.
    blocked: usize,
    /// The checkpoint being marked: which shards have reached it, and what they sent after.
    barrier: Option<(u64, Vec<bool>)>,
    held: Vec<RouteRecords>,
    checkpointer: Option<Recipient<SinksFlushed>>,
    shards: usize,
    metrics: Arc<super::RuntimeMetrics>,
    /// A batch's record counts by operator row and kind, added to the shared counters once per
    /// batch (reused: no allocation per batch).
    record_counts: Vec<[u64; crate::model::RecordKind::ALL.len()]>,
}

impl OutputHub {
    /// A hub for `shards` shards; `checkpointer` (a run with checkpoints) hears the sinks'
    /// lengths at each checkpoint.
    pub fn new(
        routes: RouteTable,
        sinks: Vec<SinkHandle>,
        shards: usize,
        checkpointer: Option<Recipient<SinksFlushed>>,
        metrics: Arc<super::RuntimeMetrics>,
    ) -> Self {
        OutputHub {
            record_counts: vec![[0; crate::model::RecordKind::ALL.len()]; metrics.records_by_operator.len()],
            metrics,
            routes,
            sinks,
            counters: HubCounters::default(),
            backlog: VecDeque::new(),
            blocked: 0,
            barrier: None,
            held: Vec::new(),
            checkpointer,
            shards,
        }
    }

    fn enqueue(&mut self, item: HubItem, ctx: &mut Context<Self>) {
        self.backlog.push_back(item);
        self.drain(ctx);
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while self.blocked == 0 {
            let Some(item) = self.backlog.pop_front() else { break };
            match item {
                HubItem::Records(rr) => {
                    if let (Some(shard), Some((_, reached))) = (rr.shard, &self.barrier)
                        && reached.get(shard).copied().unwrap_or(false)
                    {
                        self.held.push(rr);
                        continue;
                    }
                    self.route(rr.records, rr.ticket, ctx);
                }
                HubItem::Barrier { shard, id } => {
                    let shards = self.shards.max(shard + 1);
                    let (_, reached) = self.barrier.get_or_insert_with(|| (id, vec![false; shards]));
                    reached[shard] = true;
                    if reached.iter().all(|&r| r) {
                        self.barrier = None;
                        self.flush_for_checkpoint(id, ctx);
                        for rr in std::mem::take(&mut self.held).into_iter().rev() {
                            self.backlog.push_front(HubItem::Records(rr));
                        }
                    }
                }
            }
        }
    }

    /// Every record of checkpoint `id` is queued to its sink: make them durable, report.
    fn flush_for_checkpoint(&mut self, id: u64, ctx: &mut Context<Self>) {
        let flushed = self.send_to_all(move |reply| SinkCommand::Checkpoint(id, reply));
        let checkpointer = self.checkpointer.clone();
        ctx.spawn(
            async move {
                let lengths = flushed.await;
                if let Some(c) = checkpointer {
                    c.do_send(SinksFlushed { id, lengths });
                }
            }
            .into_actor(self),
        );
    }

    fn route(&mut self, mut records: Vec<OutputRecord>, ticket: Option<Arc<ChunkTicket>>, ctx: &mut Context<Self>) {
        self.counters.batches += 1;
        self.counters.records += records.len() as u64;
        // counted here, then one relaxed add per operator and kind seen (the hub is the only
        // writer)
        if let Some(last) = self.record_counts.len().checked_sub(1) {
            for record in &records {
                let row = record.op.map_or(last, |op| (op as usize).min(last));
                self.record_counts[row][record.kind.index()] += 1;
            }
            for (counts, shared) in self.record_counts.iter_mut().zip(&self.metrics.records_by_operator) {
                for (n, counter) in counts.iter_mut().zip(shared) {
                    if *n > 0 {
                        counter.fetch_add(std::mem::take(n), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        let mut per_sink: Vec<Vec<OutputRecord>> = vec![Vec::new(); self.sinks.len()];
        // the records up to the first that goes elsewhere all go to one sink: when that is all of
        // them (a run with one output, say) the list goes on as it is, not moved record by record
        // into a new one
        let only = records
            .first()
            .map(|r| self.routes.sinks_for(r))
            .filter(|t| t.len() == 1);
        let same = only.as_ref().map_or(0, |only| {
            records
                .iter()
                .position(|r| self.routes.sinks_for(r) != *only)
                .unwrap_or(records.len())
        });
        if let Some(only) = only {
            if same == records.len() {
                per_sink[only[0]] = records;
                records = Vec::new();
            } else {
                per_sink[only[0]].extend(records.drain(..same));
            }
        }
        for record in records {
            let targets = self.routes.sinks_for(&record);
            if let Some((&last, rest)) = targets.split_last() {
                for &s in rest {
                    per_sink[s].push(record.clone());
                }
                per_sink[last].push(record);
            }
        }
        for (sink, batch) in self.sinks.iter().zip(per_sink) {
            if batch.is_empty() {
                continue;
            }
            let n = batch.len().min(sink.capacity_total) as u32;
            match sink.capacity.clone().try_acquire_many_owned(n) {
                Ok(permit) => {
                    let _ = sink.tx.send(SinkCommand::Write {
                        records: batch,
                        _permit: permit,
                        _ticket: ticket.clone(),
                    });
                }
                Err(_) => {
                    self.counters.waits += 1;
                    debug!(sink = %sink.name, waiting = sink.waiting(), "sink queue full: waiting");
                    let sem = sink.capacity.clone();
                    let tx = sink.tx.clone();
                    let ticket = ticket.clone();
                    self.blocked += 1;
                    ctx.wait(
                        async move {
                            if let Ok(permit) = sem.acquire_many_owned(n).await {
                                let _ = tx.send(SinkCommand::Write {
                                    records: batch,
                                    _permit: permit,
                                    _ticket: ticket,
                                });
                            }
                        }
                        .into_actor(self)
                        .map(|(), act, ctx| {
                            act.blocked -= 1;
                            act.drain(ctx);
                        }),
                    );
                }
            }
        }
    }

    /// Finishes the sinks whose `finishes_first` is `first`; their results by sink index.
    fn finish_sinks(&self, first: bool) -> impl Future<Output = Vec<(usize, Result<u64, SinkError>)>> + use<> {
        let replies: Vec<_> = self
            .sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.finishes_first == first)
            .map(|(i, s)| {
                let (tx, rx) = oneshot::channel();
                let _ = s.tx.send(SinkCommand::Finish(tx));
                let name = s.name.clone();
                async move { (i, rx.await.unwrap_or(Err(SinkError::Gone { sink: name }))) }
            })
            .collect();
        join_all(replies)
    }

    fn send_to_all<F>(&self, make: F) -> impl Future<Output = Result<Vec<u64>, SinkError>> + use<F>
    where
        F: Fn(oneshot::Sender<Result<u64, SinkError>>) -> SinkCommand,
    {
        let replies: Vec<_> = self
            .sinks
            .iter()
            .map(|s| {
                let (tx, rx) = oneshot::channel();
                let _ = s.tx.send(make(tx));
                let name = s.name.clone();
                async move { rx.await.unwrap_or(Err(SinkError::Gone { sink: name })) }
            })
            .collect();
        async move { join_all(replies).await.into_iter().collect() }
    }
}

impl Actor for OutputHub {
    type Context = Context<Self>;
}

impl Handler<RouteRecords> for OutputHub {
    type Result = ();

    fn handle(&mut self, msg: RouteRecords, ctx: &mut Context<Self>) {
        self.enqueue(HubItem::Records(msg), ctx);
    }
}

impl Handler<BarrierReached> for OutputHub {
    type Result = ();

    fn handle(&mut self, msg: BarrierReached, ctx: &mut Context<Self>) {
        self.enqueue(
            HubItem::Barrier {
                shard: msg.shard,
                id: msg.id,
            },
            ctx,
        );
    }
}

impl Handler<FinishOutputs> for OutputHub {
    type Result = ResponseActFuture<Self, Result<Vec<u64>, SinkError>>;

    fn handle(&mut self, msg: FinishOutputs, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(summary) = msg.summary {
            self.enqueue(
                HubItem::Records(RouteRecords {
                    records: vec![summary],
                    ticket: None,
                    shard: None,
                }),
                ctx,
            );
        }
        // sent after the summary's write (or after the wait for its permits completes). The
        // notifiers finish first: the dead letters of their last deliveries still reach the
        // other sinks (they arrive as messages, handled before this future goes on).
        Box::pin(
            async {}
                .into_actor(self)
                .then(|(), act, _ctx| act.finish_sinks(true).into_actor(act))
                .then(|first, act, _ctx| {
                    let rest = act.finish_sinks(false);
                    async move {
                        let mut all: Vec<(usize, Result<u64, SinkError>)> =
                            first.into_iter().chain(rest.await).collect();
                        all.sort_by_key(|(i, _)| *i);
                        all.into_iter().map(|(_, r)| r).collect()
                    }
                    .into_actor(act)
                }),
        )
    }
}

impl Handler<FlushSinks> for OutputHub {
    type Result = ResponseActFuture<Self, Result<Vec<u64>, SinkError>>;

    fn handle(&mut self, _: FlushSinks, _ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(self.send_to_all(SinkCommand::Flush).into_actor(self))
    }
}

impl Handler<ReportHubCounters> for OutputHub {
    type Result = MessageResult<ReportHubCounters>;

    fn handle(&mut self, _: ReportHubCounters, _ctx: &mut Context<Self>) -> Self::Result {
        let mut c = self.counters.clone();
        c.waiting = self.sinks.iter().map(|s| s.waiting()).collect();
        c.written = self
            .sinks
            .iter()
            .map(|s| s.stats.records.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        MessageResult(c)
    }
}
