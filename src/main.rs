//! The `plume` command line. `anyhow` lives here, at the edge; the library has typed errors.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use plume::config::{self, DurationSpec, SourceSpec};
use plume::engine::{self, InputOverride, RunOptions, RuntimeOptions};
use plume::pipeline::CompiledPipeline;

#[derive(Parser)]
#[command(name = "plume", version, about = "Stateful stream processing for air-quality sensor fleets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// Device actors on shard threads (the real runtime).
    Actors,
    /// One thread, one loop: the reference oracle.
    Plain,
}

#[derive(Subcommand)]
enum Command {
    /// Check pipeline files and report every problem with file:line:column.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a pipeline until its input ends or Ctrl-C.
    Run {
        pipeline: PathBuf,
        /// Read this JSON-lines file instead of the pipeline's sources.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Write every result to this JSON-lines file instead of the pipeline's sinks.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "actors")]
        engine: Engine,
        /// Shard threads (default: the pipeline's setting; 0 = one per core).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// The zero-setup demo: a simulated fleet through pipelines/indoor-air.yaml, live.
    Demo {
        #[arg(long, default_value = "pipelines/indoor-air.yaml")]
        pipeline: PathBuf,
        /// Number of simulated rooms.
        #[arg(long)]
        devices: Option<u32>,
        /// Simulated time to run for.
        #[arg(long, default_value = "2h")]
        duration: String,
        /// Simulated seconds per second.
        #[arg(long)]
        speed: Option<f64>,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<CompiledPipeline> {
    let spec = config::load_pipeline(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    CompiledPipeline::compile(spec).with_context(|| format!("compiling {}", path.display()))
}

fn print_report(report: &engine::RunReport) {
    let t = &report.totals;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "done: {} readings ({:.0}/s over {:.2} s, {} shards), {} late, {} dead letters, {} devices, {} restarts, {} passivations",
        t.readings,
        t.readings as f64 / secs.max(1e-9),
        secs,
        report.shards,
        t.late,
        t.dead_letters,
        t.devices,
        report.restarts,
        report.passivations
    );
}

fn run_plain(compiled: &CompiledPipeline, input: Option<PathBuf>, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let input = match input {
        Some(path) => path,
        None => match compiled.spec.sources.first() {
            Some(SourceSpec::File(f)) => PathBuf::from(&f.path),
            _ => bail!("the plain engine reads files only: pass --input FILE"),
        },
    };
    let started = std::time::Instant::now();
    let reader = BufReader::with_capacity(1 << 20, File::open(&input).with_context(|| format!("opening {}", input.display()))?);
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(BufWriter::with_capacity(1 << 20, File::create(&path).with_context(|| format!("creating {}", path.display()))?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let totals = plume::plain::run(compiled, &format!("file:{}", input.display()), reader, &mut out)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "done: {} readings ({:.0}/s over {:.2} s, plain loop), {} late, {} dead letters, {} devices",
        totals.readings,
        totals.readings as f64 / secs.max(1e-9),
        secs,
        totals.late,
        totals.dead_letters,
        totals.devices
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLUME_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let mut failed = false;
            for file in files {
                match config::load_pipeline(&file) {
                    Ok(spec) => {
                        println!("{}: ok: pipeline `{}`", file.display(), spec.pipeline);
                    }
                    Err(diags) => {
                        failed = true;
                        eprintln!("{diags}");
                    }
                }
            }
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Run { pipeline, input, output, engine, shards } => {
            let compiled = load(&pipeline)?;
            match engine {
                Engine::Plain => run_plain(&compiled, input, output),
                Engine::Actors => {
                    let input = input.map(|p| if p.as_os_str() == "-" { InputOverride::Stdin } else { InputOverride::File(p) });
                    let options = RunOptions {
                        input,
                        output,
                        runtime: RuntimeOptions { shards, ..Default::default() },
                        progress: None,
                    };
                    let report = engine::run(Arc::new(compiled), options)?;
                    print_report(&report);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Demo { pipeline, devices, duration, speed } => {
            let mut compiled = load(&pipeline)?;
            let mut sim = compiled
                .spec
                .sources
                .iter()
                .find_map(|s| match s {
                    SourceSpec::Simulator(s) => Some(s.clone()),
                    _ => None,
                })
                .context("the demo pipeline needs a simulator source")?;
            if let Some(d) = devices {
                sim.devices = d;
            }
            if let Some(s) = speed {
                sim.speed = s;
            }
            sim.duration = Some(DurationSpec::parse(&duration).map_err(|e| anyhow::anyhow!(e))?);
            compiled.spec.sources = vec![SourceSpec::Simulator(sim.clone())];
            eprintln!(
                "plume demo: {} simulated rooms, one reading every {} each, {}x real time, for {} of simulated time (Ctrl-C stops early)",
                sim.devices, sim.interval, sim.speed, duration
            );
            let options = RunOptions { progress: Some(std::time::Duration::from_millis(500)), ..Default::default() };
            let report = engine::run(Arc::new(compiled), options)?;
            print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
    }
}
