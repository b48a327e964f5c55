//! Assembling and running the actor runtime for one pipeline.
//!
//! [`start`] builds the runtime inside a running actix `System`: sink threads and the
//! [`OutputHub`] (own arbiter), one arbiter per shard with its [`Router`] and
//! [`ShardSupervisor`], and the [`RunCoordinator`]; it returns a [`Runtime`] with the addresses
//! (for tests and the admin view) and a feeder per source. [`run`] is what `plume run` does:
//! it starts the runtime and the source threads, stops when its [`Shutdown`] is requested (graceful: sources stop, every
//! in-flight reading is processed, windows are flushed if the pipeline says so) and returns the
//! report when the run has ended.
//!
//! # Layout
//! - `outputs`: the sinks of a run (the sink factory) and their stable names.
//! - `assemble`: [`start`] / [`start_with_state`]: the runtime's actors and threads.
//! - `sources`: the sources of a run, planned from the pipeline.
//! - `state`: the data directory and the resume policy.
//! - `interrupt`: Ctrl-C as a [`Shutdown`] (a run is given its shutdown; nothing global reads
//!   a flag).
//! - `run`: [`run`], what `plume run` does, with the progress line.
//! - `shared_subscriptions`: push subscriptions shared by a cluster's members through Kafka.
//! - `demo`: `plume demo --mqtt`, the simulator publishing through the embedded broker.

pub mod admin;
pub mod assemble;
pub mod demo;
pub mod interrupt;
pub mod metrics;
pub mod otlp;
pub mod outputs;
pub mod run;
pub mod shared_subscriptions;
pub mod sources;
pub mod state;

pub use crate::runtime::ports::Shutdown;
pub use assemble::{RunState, Runtime, RuntimeOptions, shard_count, start, start_with_state};
pub use interrupt::shutdown_on_ctrl_c;
pub use outputs::{OutputPlan, sink_names};
pub use run::run;
pub use state::{StateOptions, data_dir_of, file_fingerprint};

use std::path::PathBuf;
use std::time::Duration;

use crate::connectors::SourceError;
use crate::output::RunTotals;
use crate::runtime::ports::SinkError;
use crate::store::StoreError;

/// Why a run could not start or did not end well.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Broker(#[from] crate::connectors::mqtt::broker::BrokerError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error("the runtime stopped before the run ended")]
    Aborted,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Resume(String),
    #[error(
        "the run stopped because nothing could be made durable any more: {0}. Nothing is lost: the next start \
         resumes from the last durable checkpoint"
    )]
    Unrecoverable(String),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
    #[error("the last checkpoint of the run failed: {0}")]
    Checkpoint(crate::runtime::checkpointer::CheckpointError),
    #[error("{output} is both an input and an output of the run: writing it would destroy the input")]
    OutputIsInput { output: String },
}

/// An error and its causes on one line, as `plume` prints it: `outer: cause: its cause`, each
/// cause left out when the text before already says it. Many errors carry their cause's text
/// in their own (so that a log line's `error = %e` is whole) and return it as their source
/// too: printed as a chain, `sink file:out.jsonl: resuming: it is 0 bytes, shorter than …`
/// said the cause twice.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// Whether two paths name the same existing file (a path that does not exist yet names none).
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Refuses a run whose file output is one of its file inputs, before anything is opened (a
/// file sink truncates its file, and would do so before the source read it).
pub fn refuse_output_over_input(inputs: &[PathBuf], outputs: &[PathBuf]) -> Result<(), EngineError> {
    for output in outputs {
        if inputs.iter().any(|input| same_file(input, output)) {
            return Err(EngineError::OutputIsInput {
                output: output.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Where `plume run` reads from.
#[derive(Debug, Clone)]
pub enum InputOverride {
    File(PathBuf),
    Stdin,
}

/// Options of `plume run` / `plume demo`.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub input: Option<InputOverride>,
    pub output: Option<PathBuf>,
    pub runtime: RuntimeOptions,
    /// Print a live progress line to stderr every this often.
    pub progress: Option<Duration>,
    pub state: StateOptions,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (overrides the pipeline's `metrics`).
    pub metrics_listen: Option<String>,
    /// A taken address is a warning, not an error (`plume demo`).
    pub metrics_optional: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub totals: RunTotals,
    pub elapsed: Duration,
    pub shards: usize,
    pub restarts: u64,
    pub passivations: u64,
    /// How often each input limit was hit.
    pub limits: crate::runtime::LimitCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        // a sink error carries its cause's text and returns the cause as its source
        let sink = SinkError::Io {
            sink: "file:out.jsonl".into(),
            operation: "resuming",
            source: std::io::Error::other("it is 0 bytes, shorter than the 227 bytes the checkpoint covered"),
        };
        let run = EngineError::from(sink);
        assert_eq!(
            error_chain(&run),
            "sink file:out.jsonl: resuming: it is 0 bytes, shorter than the 227 bytes the checkpoint covered"
        );
        // as the binary prints it: with a context around, every cause that adds something
        let wrapped = anyhow::Error::new(run).context("running pipelines/aq1.yaml");
        let text = error_chain(wrapped.as_ref());
        assert_eq!(
            text,
            "running pipelines/aq1.yaml: sink file:out.jsonl: resuming: it is 0 bytes, shorter than the 227 \
             bytes the checkpoint covered"
        );
        assert_eq!(text.matches("shorter than").count(), 1, "{text}");
        // a cause that its error does not repeat is kept
        let opened = anyhow::Error::new(std::io::Error::other("permission denied")).context("opening the input");
        assert_eq!(error_chain(opened.as_ref()), "opening the input: permission denied");
    }
}
