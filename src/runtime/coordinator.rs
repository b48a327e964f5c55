//! [`RunCoordinator`]: drives the end of a run. When every router has seen the end of every
//! source (the input ended, or a graceful shutdown stopped the sources), it asks for the last
//! checkpoint (with a store); once that checkpoint has captured the state, and while it is
//! written, it asks every shard to flush its devices, writes the summary record, flushes and
//! closes the sinks; it reports when both are done.

use std::sync::Arc;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;
use tracing::info;

use super::RuntimeMetrics;
use super::checkpointer::{CheckpointError, CheckpointNow, Checkpointer};
use super::hub::{FinishOutputs, OutputHub};
use super::shard::{FinishShard, ShardSupervisor, ShardTotals};
use crate::output::{RecordFormatter, RunTotals};
use crate::runtime::ports::SinkError;

/// A router has seen every source end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouterDrained {
    pub shard: usize,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub totals: RunTotals,
    pub sink_positions: Result<Vec<u64>, SinkError>,
    /// The last checkpoint of the run (none without a store), or why it failed.
    pub final_checkpoint: Option<Result<u64, CheckpointError>>,
}

pub struct RunCoordinator {
    shards: Vec<Addr<ShardSupervisor>>,
    hub: Addr<OutputHub>,
    formatter: RecordFormatter,
    metrics: Arc<RuntimeMetrics>,
    drained: usize,
    done: Option<oneshot::Sender<RunOutcome>>,
    checkpointer: Option<Addr<Checkpointer>>,
    final_checkpoint: Option<Result<u64, CheckpointError>>,
    /// What the end of the run found, kept until the last checkpoint is done too.
    finished: Option<(RunTotals, Result<Vec<u64>, SinkError>)>,
}

impl RunCoordinator {
    pub fn new(
        shards: Vec<Addr<ShardSupervisor>>,
        hub: Addr<OutputHub>,
        formatter: RecordFormatter,
        metrics: Arc<RuntimeMetrics>,
        checkpointer: Option<Addr<Checkpointer>>,
        done: oneshot::Sender<RunOutcome>,
    ) -> Self {
        RunCoordinator {
            shards,
            hub,
            formatter,
            metrics,
            drained: 0,
            done: Some(done),
            checkpointer,
            final_checkpoint: None,
            finished: None,
        }
    }

    /// Once the last checkpoint (if any) has captured the state: flush the devices, write the
    /// summary, close.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        self.finish_run(ctx);
    }

    /// Reports how the run ended, once the sinks are closed and the last checkpoint is done.
    fn report_when_done(&mut self) {
        // (with a store, the last checkpoint is asked for before the flush: it is done once
        // it has an outcome)
        if self.checkpointer.is_some() && self.final_checkpoint.is_none() {
            return;
        }
        let Some((totals, sink_positions)) = self.finished.take() else {
            return;
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(RunOutcome {
                totals,
                sink_positions,
                final_checkpoint: self.final_checkpoint.take(),
            });
        }
    }
}

impl Actor for RunCoordinator {
    type Context = Context<Self>;
}

impl Handler<RouterDrained> for RunCoordinator {
    type Result = ();

    fn handle(&mut self, msg: RouterDrained, ctx: &mut Context<Self>) {
        self.drained += 1;
        info!(
            shard = msg.shard,
            drained = self.drained,
            shards = self.shards.len(),
            "router drained"
        );
        if self.drained < self.shards.len() {
            return;
        }
        match self.checkpointer.clone() {
            // the state as the sources left it is checkpointed before the end-of-input flush:
            // a later run over more input continues from there, and the flushed records,
            // written after the checkpoint's sink lengths, are cut off again on resume. The
            // flush starts once the checkpoint has captured the devices and the sinks' lengths,
            // while it is written; the run reports when both are done.
            Some(checkpointer) => {
                let (captured, when_captured) = oneshot::channel();
                ctx.spawn(
                    checkpointer
                        .send(CheckpointNow { captured })
                        .into_actor(self)
                        .map(|result, act, _ctx| {
                            act.final_checkpoint = Some(result.unwrap_or(Err(CheckpointError::Stopped)));
                            act.report_when_done();
                        }),
                );
                // (a checkpoint that failed before capturing drops `captured`: the flush goes on)
                ctx.wait(when_captured.into_actor(self).map(|_, act, ctx| act.finish(ctx)));
            }
            None => self.finish(ctx),
        }
    }
}

impl RunCoordinator {
    fn finish_run(&mut self, ctx: &mut Context<Self>) {
        let finishing: Vec<_> = self.shards.iter().map(|s| s.send(FinishShard)).collect();
        let fut = join_all(finishing).into_actor(self).then(|replies, act, _ctx| {
            // routers count undecodable payloads, device actors the readings that made an
            // operator panic: both are in the shared metrics
            let dead_letters = RuntimeMetrics::get(&act.metrics.dead_letters);
            let mut totals = RunTotals {
                dead_letters,
                ..Default::default()
            };
            for reply in replies {
                let t: ShardTotals = reply.unwrap_or_default();
                totals.readings += t.readings;
                totals.late += t.late;
                totals.devices += t.devices;
            }
            let summary = act.formatter.summary(&totals);
            act.hub
                .send(FinishOutputs { summary: Some(summary) })
                .into_actor(act)
                .map(move |positions, act, _ctx| {
                    let sink_positions = positions.unwrap_or_else(|_| {
                        Err(SinkError::Gone {
                            sink: "output hub".into(),
                        })
                    });
                    act.finished = Some((totals, sink_positions));
                    act.report_when_done();
                })
        });
        ctx.wait(fut);
    }
}
