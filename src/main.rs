//! The `plume` command line. `anyhow` lives here, at the edge; the library has typed errors.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use plume::config::{self, SourceSpec};
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
    },
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
        Command::Run { pipeline, input, output, engine } => {
            let spec = config::load_pipeline(&pipeline).map_err(|d| anyhow::anyhow!("{d}"))?;
            let compiled = CompiledPipeline::compile(spec).context("compiling the pipeline")?;
            let input = match input {
                Some(path) => path,
                None => match compiled.spec.sources.first() {
                    Some(SourceSpec::File(f)) => PathBuf::from(&f.path),
                    _ => bail!("this engine reads files only for now: pass --input FILE"),
                },
            };
            let reader = BufReader::with_capacity(1 << 20, File::open(&input).with_context(|| format!("opening {}", input.display()))?);
            let mut out: Box<dyn Write> = match output {
                Some(path) => Box::new(BufWriter::with_capacity(1 << 20, File::create(&path).with_context(|| format!("creating {}", path.display()))?)),
                None => Box::new(BufWriter::new(std::io::stdout().lock())),
            };
            let _ = engine;
            let totals = plume::plain::run(&compiled, &format!("file:{}", input.display()), reader, &mut out)?;
            eprintln!("{} readings, {} late, {} dead letters, {} devices", totals.readings, totals.late, totals.dead_letters, totals.devices);
            Ok(ExitCode::SUCCESS)
        }
    }
}
