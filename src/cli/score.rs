//! `plume score`: a pipeline's records against the ground truth of `plume generate fleet`.
//! The measures are `plume::workload::score`'s; this is the shell (files, flags, printing).
//! Scoring is a report, not a judgment: the exit code is 0 unless an input cannot be read.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use plume::model::DurationSpec;
use plume::workload::score::{ScoreSettings, read_records, read_truth, score};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// The ground truth (`plume generate fleet --truth`).
    #[arg(long)]
    truth: PathBuf,
    /// Every record of the run (a `file` sink of all records).
    #[arg(long)]
    records: PathBuf,
    /// The records routed to pagers (a `file` sink on the pager's route).
    #[arg(long)]
    pages: Option<PathBuf>,
    /// The operator whose events are alerts (a hysteresis, or a threshold).
    #[arg(long, default_value = "pm25_event")]
    event_operator: String,
    /// The health operator that reports offline devices.
    #[arg(long, default_value = "sensor_health")]
    health_operator: String,
    /// The devices' report interval.
    #[arg(long, default_value = "1m")]
    interval: String,
    /// The health operator's `offline_after`.
    #[arg(long, default_value = "10m")]
    offline_after: String,
    /// How far outside a true episode an alert may lie and still match it.
    #[arg(long, default_value = "5m")]
    tolerance: String,
    /// A decision on a reading taken during a gateway outage is history when its upload arrived
    /// more than this after the reading was taken (the age a pipeline's `backfill_after` marks).
    #[arg(long, default_value = "5m")]
    history_after: String,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also list every miss, false alert, flap, page of history and offline mistake (device and
    /// true times); in the JSON as `findings`.
    #[arg(long)]
    details: bool,
}

fn duration(flag: &str, text: &str) -> anyhow::Result<i64> {
    DurationSpec::parse(text)
        .map(|d| d.as_millis())
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

fn open(path: &Path) -> anyhow::Result<BufReader<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

pub fn score_command(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let settings = ScoreSettings {
        event_operator: args.event_operator,
        health_operator: args.health_operator,
        interval_ms: duration("interval", &args.interval)?,
        offline_after_ms: duration("offline-after", &args.offline_after)?,
        tolerance_ms: duration("tolerance", &args.tolerance)?,
        history_after_ms: duration("history-after", &args.history_after)?,
    };
    let truth = read_truth(open(&args.truth)?, &args.truth.display().to_string())?;
    let records = read_records(open(&args.records)?, &args.records.display().to_string())?;
    let pages = match &args.pages {
        Some(path) => Some(read_records(open(path)?, &path.display().to_string())?),
        None => None,
    };
    let mut result = score(&truth, &records, pages.as_deref(), &settings);
    if args.json {
        if !args.details {
            result.findings.clear();
        }
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", result.table());
        if args.details {
            print!("{}", result.findings_table());
        }
    }
    Ok(ExitCode::SUCCESS)
}
