//! `plume generate`: reference workloads for tests and benchmarks.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use plume::model::DurationSpec;
use plume::workload::fleet::{FleetRates, FleetSpec};

#[derive(Subcommand)]
pub enum GenerateCommand {
    /// The aq1 air-quality workload: one reading per device every 10 s, in arrival order, with
    /// delayed readings and pollution episodes (the same bytes as the reference generator).
    Aq1 {
        /// Number of devices.
        #[arg(long)]
        devices: u32,
        /// Number of readings (lines).
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print counts to standard error.
        #[arg(long)]
        stats: bool,
    },
    /// A labelled fleet: readings in arrival order (`--out`) and the ground truth of what
    /// happened to each device (`--truth`: episodes, offline, backfill, stuck, drift, skew,
    /// duplicates, junk, malformed lines), for `plume score`.
    Fleet(FleetArgs),
}

/// `plume generate fleet`: the rates are per device and day, or per reading.
#[derive(clap::Args)]
pub struct FleetArgs {
    #[arg(long, default_value_t = 200)]
    devices: u32,
    /// Days of simulated time.
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time between two readings of one device.
    #[arg(long, default_value = "1m")]
    interval: String,
    /// The first reading slot: an RFC 3339 time, or `now` (rounded down to the minute) for a
    /// paced live run.
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    start: String,
    /// The readings (JSON lines, arrival order).
    #[arg(long)]
    out: PathBuf,
    /// The ground truth (JSON lines).
    #[arg(long)]
    truth: PathBuf,
    /// True pollution episodes per device and day.
    #[arg(long, default_value_t = FleetRates::default().episodes_per_day)]
    episodes_per_day: f64,
    /// Offline periods per device and day.
    #[arg(long, default_value_t = FleetRates::default().offline_per_day)]
    offline_per_day: f64,
    /// Gateway outages uploaded afterwards, per device and day.
    #[arg(long, default_value_t = FleetRates::default().backfill_per_day)]
    backfill_per_day: f64,
    /// Stuck sensors per device and day.
    #[arg(long, default_value_t = FleetRates::default().stuck_per_day)]
    stuck_per_day: f64,
    /// Calibration drifts per device and day.
    #[arg(long, default_value_t = FleetRates::default().drift_per_day)]
    drift_per_day: f64,
    /// Clock skews per device and day.
    #[arg(long, default_value_t = FleetRates::default().skew_per_day)]
    skew_per_day: f64,
    /// Chance that a reading is delivered twice.
    #[arg(long, default_value_t = FleetRates::default().duplicate)]
    duplicate: f64,
    /// Chance that a reading carries one junk value.
    #[arg(long, default_value_t = FleetRates::default().junk)]
    junk: f64,
    /// Chance that a reading's line is malformed.
    #[arg(long, default_value_t = FleetRates::default().malformed)]
    malformed: f64,
    /// Print counts to standard error.
    #[arg(long)]
    stats: bool,
}

fn generate_fleet(args: FleetArgs) -> anyhow::Result<ExitCode> {
    let interval = DurationSpec::parse(&args.interval).map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    if !(args.days > 0.0 && args.days.is_finite()) {
        anyhow::bail!("--days must be a positive number");
    }
    let start_ms = if args.start == "now" {
        let now = jiff::Timestamp::now().as_millisecond();
        now - now.rem_euclid(60_000)
    } else {
        args.start
            .parse::<jiff::Timestamp>()
            .map_err(|e| anyhow::anyhow!("--start {}: {e}", args.start))?
            .as_millisecond()
    };
    let spec = FleetSpec {
        devices: args.devices,
        duration_ms: (args.days * 86_400_000.0) as i64,
        interval_ms: interval.as_millis(),
        seed: args.seed,
        start_ms,
        rates: FleetRates {
            episodes_per_day: args.episodes_per_day,
            offline_per_day: args.offline_per_day,
            backfill_per_day: args.backfill_per_day,
            stuck_per_day: args.stuck_per_day,
            drift_per_day: args.drift_per_day,
            skew_per_day: args.skew_per_day,
            duplicate: args.duplicate,
            junk: args.junk,
            malformed: args.malformed,
        },
    };
    let create = |path: &PathBuf| -> anyhow::Result<BufWriter<File>> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BufWriter::with_capacity(1 << 22, file))
    };
    let started = std::time::Instant::now();
    let stats = plume::workload::fleet::generate_fleet(&spec, &mut create(&args.out)?, &mut create(&args.truth)?)?;
    if args.stats {
        let secs = started.elapsed().as_secs_f64();
        let truth: Vec<String> = stats.truth.iter().map(|(k, n)| format!("{} {n}", k.as_str())).collect();
        eprintln!(
            "fleet: {} lines ({} readings), {} devices, {} days, seed {}, {:.1} s, {:.0} lines/s; truth: {}",
            stats.lines,
            stats.readings,
            args.devices,
            args.days,
            args.seed,
            secs,
            stats.lines as f64 / secs.max(1e-9),
            truth.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn generate(command: GenerateCommand) -> anyhow::Result<ExitCode> {
    let (devices, events, seed, out, stats) = match command {
        GenerateCommand::Aq1 {
            devices,
            events,
            seed,
            out,
            stats,
        } => (devices, events, seed, out, stats),
        GenerateCommand::Fleet(args) => return generate_fleet(args),
    };
    let spec = plume::workload::Aq1Spec {
        devices,
        readings: events,
        seed,
    };
    let started = std::time::Instant::now();
    let counts = match &out {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            plume::workload::generate_aq1(spec, &mut BufWriter::with_capacity(1 << 22, file))?
        }
        None => plume::workload::generate_aq1(spec, &mut BufWriter::with_capacity(1 << 22, std::io::stdout().lock()))?,
    };
    if stats {
        let secs = started.elapsed().as_secs_f64();
        let lines = counts.lines.max(1) as f64;
        eprintln!(
            "aq1: {} lines, {devices} devices, seed {seed}, delayed {} ({:.3}%), episode readings {:.2}%, {secs:.1} s, {:.0} lines/s",
            counts.lines,
            counts.delayed,
            100.0 * counts.delayed as f64 / lines,
            100.0 * counts.episode_readings as f64 / lines,
            counts.lines as f64 / secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}
