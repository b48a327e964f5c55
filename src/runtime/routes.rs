//! Which records go to which sinks: the `outputs:` routes of a pipeline, compiled.
//!
//! `when` names operators, or `all` (everything, dead letters and the summary included),
//! `late` (late readings of any window), `dead_letters`, `summary`. `events` narrows a route
//! to kinds of records: `start`/`event_start`, `end`/`event_end`, `window`, `baseline`,
//! `deviation`, `smoothed`, `threshold`, `health`, `late`.

use smallvec::SmallVec;

use crate::model::{OutputRecord, RecordKind};
use crate::pipeline::CompiledPipeline;
use crate::spec::{OutputRoute, SinkSpec};

#[derive(Debug, Clone, Default)]
struct Target {
    sink: usize,
    /// Only these record kinds (all if empty).
    kinds: Vec<RecordKind>,
    backfill: crate::spec::BackfillRoute,
}

impl Target {
    fn wants(&self, record: &OutputRecord) -> bool {
        use crate::spec::BackfillRoute;
        let backfill_ok = match self.backfill {
            BackfillRoute::Include => true,
            BackfillRoute::Skip => !record.backfill,
            BackfillRoute::Only => record.backfill,
        };
        backfill_ok && (self.kinds.is_empty() || self.kinds.contains(&record.kind))
    }
}

/// Routes, by operator and by special record kind.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_operator: Vec<Vec<Target>>,
    late: Vec<Target>,
    dead_letters: Vec<Target>,
    summary: Vec<Target>,
}

impl RouteTable {
    /// `sink_of_route[i][j]` is the sink index of `routes[i].to[j]`.
    pub fn compile(pipeline: &CompiledPipeline, routes: &[OutputRoute], sink_of_route: &[Vec<usize>]) -> Self {
        let mut table = RouteTable {
            by_operator: vec![Vec::new(); pipeline.operators.len()],
            ..Default::default()
        };
        for (route, sinks) in routes.iter().zip(sink_of_route) {
            let kinds: Vec<RecordKind> = route
                .events
                .iter()
                .filter_map(|e| RecordKind::from_event_name(e))
                .collect();
            for &sink in sinks {
                let target = Target {
                    sink,
                    kinds: kinds.clone(),
                    backfill: route.backfill,
                };
                for name in route.when.to_vec() {
                    match name.as_str() {
                        "all" => {
                            for t in &mut table.by_operator {
                                t.push(target.clone());
                            }
                            table.dead_letters.push(target.clone());
                            table.summary.push(target.clone());
                        }
                        "late" => table.late.push(target.clone()),
                        "dead_letters" => table.dead_letters.push(target.clone()),
                        "summary" => table.summary.push(target.clone()),
                        op => {
                            if let Some(i) = pipeline.operators.iter().position(|o| o.name() == op) {
                                table.by_operator[i].push(target.clone());
                            }
                        }
                    }
                }
            }
        }
        table
    }

    /// Every record to one sink (`--output FILE`).
    pub fn everything_to(pipeline: &CompiledPipeline, sink: usize) -> Self {
        let t = Target {
            sink,
            kinds: Vec::new(),
            backfill: Default::default(),
        };
        RouteTable {
            by_operator: vec![vec![t.clone()]; pipeline.operators.len()],
            late: Vec::new(),
            dead_letters: vec![t.clone()],
            summary: vec![t],
        }
    }

    /// The sinks a record goes to (each once).
    pub fn sinks_for(&self, record: &OutputRecord) -> SmallVec<[usize; 4]> {
        let mut out: SmallVec<[usize; 4]> = SmallVec::new();
        let mut add = |targets: &[Target]| {
            for t in targets {
                if t.wants(record) && !out.contains(&t.sink) {
                    out.push(t.sink);
                }
            }
        };
        match record.kind {
            RecordKind::DeadLetter => add(&self.dead_letters),
            RecordKind::Summary => add(&self.summary),
            kind => {
                if let Some(op) = record.op
                    && let Some(targets) = self.by_operator.get(op as usize)
                {
                    add(targets);
                }
                if kind == RecordKind::Late {
                    add(&self.late);
                }
            }
        }
        out
    }
}

/// The sinks of a pipeline's routes, deduplicated (two routes to the same file share a sink).
pub fn distinct_sinks(routes: &[OutputRoute]) -> (Vec<SinkSpec>, Vec<Vec<usize>>) {
    let mut sinks: Vec<SinkSpec> = Vec::new();
    let mut of_route = Vec::new();
    for route in routes {
        let mut ids = Vec::new();
        for spec in &route.to {
            let id = match sinks.iter().position(|s| s == spec) {
                Some(i) => i,
                None => {
                    sinks.push(spec.clone());
                    sinks.len() - 1
                }
            };
            ids.push(id);
        }
        of_route.push(ids);
    }
    (sinks, of_route)
}
