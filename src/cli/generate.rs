//! `plume generate`: reference workloads for tests and benchmarks.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

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
}

pub fn generate(command: GenerateCommand) -> anyhow::Result<ExitCode> {
    let GenerateCommand::Aq1 {
        devices,
        events,
        seed,
        out,
        stats,
    } = command;
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
