//! The `plume` command line. `anyhow` lives here, at the edge; the library has typed errors.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use plume::spec::{self, DurationSpec, SourceSpec};

// mimalloc: less memory per idle device than glibc's allocator after bursts of activations
// (BENCHMARKS.md, "Memory per idle active device")
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use plume::app::{self, InputOverride, RunOptions, RuntimeOptions};
use plume::pipeline::CompiledPipeline;

#[path = "cli/describe.rs"]
mod describe;
#[path = "cli/generate.rs"]
mod generate;
#[path = "cli/checkpoints.rs"]
mod plume_cli;
#[path = "cli/score.rs"]
mod score_cli;
#[path = "cli/subscribers.rs"]
mod subscribers_cli;

use describe::describe_pipeline;
use generate::{GenerateCommand, generate};

#[derive(Parser)]
#[command(
    name = "plume",
    version,
    about = "Stateful stream processing for air-quality sensor fleets"
)]
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
    /// Print the JSON Schema of pipeline files (for editors: `plume schema > plume.schema.json`).
    Schema,
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
        /// Where state and checkpoints live (default: the pipeline's `checkpoint.data_dir`, or
        /// checkpoints/<pipeline>). An existing directory is resumed from.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Take a checkpoint this often (overrides the pipeline's `checkpoint.interval`), e.g. 200ms.
        #[arg(long)]
        checkpoint_interval: Option<String>,
        /// Resume even though the pipeline's operators or decode settings changed (the state of
        /// operators that still exist is kept).
        #[arg(long)]
        allow_pipeline_change: bool,
        /// Keep no state at all (an in-memory run).
        #[arg(long, conflicts_with = "data_dir")]
        no_checkpoints: bool,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address, such as
        /// 127.0.0.1:9464 (overrides the pipeline's `metrics.listen`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Keyed ingress for MQTT fleets: subscribe to the pipeline's `ingress.mqtt` topic (an MQTT
    /// shared subscription: run as many members as needed) and produce every reading to the keyed
    /// Kafka topic its Kafka source reads (key = device id), acknowledging each MQTT message once
    /// Kafka has its record. Runs until Ctrl-C.
    Ingest {
        pipeline: PathBuf,
        /// This member's MQTT client id (each member needs its own, stable across restarts: the
        /// broker keeps the member's session under it). Default: the pipeline's
        /// `ingress.mqtt.client_id`, or `plume-<pipeline>-ingress-<host name>`.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Inspect and manage the checkpoints of a data directory.
    Checkpoints {
        /// The data directory (as given to `plume run --data-dir`).
        #[arg(long, global = true, default_value = ".")]
        data_dir: PathBuf,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: plume_cli::CheckpointCommand,
    },
    /// Manage which push tokens (FCM, APNs) follow which device (works while a run holds the
    /// data directory: the run applies the change within a second).
    Subscribers {
        /// The data directory (as given to `plume run --data-dir`): required.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: subscribers_cli::SubscribersCommand,
    },
    /// The notifiers' outboxes of a data directory: pending deliveries, deliveries, dead letters.
    Outbox {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// List the dead letters too.
        #[arg(long)]
        dead_letters: bool,
        /// Put dead letters back among the pending deliveries (once their cause is fixed): the
        /// next run delivers them. Every one, or those given with --id. Not while a run holds the
        /// data directory.
        #[arg(long, conflicts_with = "drop_dead_letters")]
        retry_dead_letters: bool,
        /// Remove dead letters for good (their ids stay known, so a replay does not send them).
        /// Every one, or those given with --id.
        #[arg(long)]
        drop_dead_letters: bool,
        /// With --retry-dead-letters / --drop-dead-letters: only these delivery ids.
        #[arg(long = "id", value_name = "DELIVERY_ID")]
        ids: Vec<String>,
        /// With --retry-dead-letters / --drop-dead-letters: only this notifier sink's outbox
        /// (`webhook:0`, …).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Write a reference workload (JSON lines) for tests and benchmarks.
    Generate {
        #[command(subcommand)]
        workload: GenerateCommand,
    },
    /// Score a run's records against the ground truth of `plume generate fleet`: recall,
    /// precision, flaps, detection delay, pages from backfilled history, offline detection.
    Score(score_cli::ScoreArgs),
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
        /// Publish the simulated readings over MQTT through an embedded broker on this port
        /// (`--mqtt` alone: 1883), and read them with the pipeline's MQTT source.
        #[arg(long, num_args = 0..=1, default_missing_value = "1883", value_name = "PORT")]
        mqtt: Option<u16>,
    },
}

/// Where `plume demo` serves its metrics (unless the pipeline says).
const DEMO_METRICS: &str = "127.0.0.1:9464";

fn load(path: &std::path::Path) -> anyhow::Result<CompiledPipeline> {
    let spec = spec::load_pipeline(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    CompiledPipeline::compile(spec).with_context(|| format!("compiling {}", path.display()))
}

/// Logs the pipeline file's warnings (`plume validate` prints them with their positions).
fn warn_about(file: &std::path::Path, compiled: &CompiledPipeline) {
    for w in spec::load::warnings(file, &compiled.spec, &|name| std::env::var(name).ok()) {
        tracing::warn!(pipeline = %compiled.name, at = %format!("{}:{}:{}", w.file, w.line, w.column), "{}", w.message);
    }
}

fn print_report(report: &app::RunReport) {
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
    if let Some(limits) = report.limits.describe() {
        eprintln!("limits hit: {limits}");
    }
}

fn run_plain(compiled: &CompiledPipeline, input: Option<PathBuf>, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let input = match input {
        Some(path) => path,
        None => match compiled.spec.sources.first() {
            Some(SourceSpec::File(f)) => PathBuf::from(&f.path),
            _ => bail!("the plain engine reads files only: pass --input FILE"),
        },
    };
    if let Some(path) = &output {
        app::refuse_output_over_input(std::slice::from_ref(&input), std::slice::from_ref(path))?;
    }
    let started = std::time::Instant::now();
    let reader = File::open(&input).with_context(|| format!("opening {}", input.display()))?;
    let source = plume::model::SourceId::File(input.display().to_string()).to_string();
    // the input is read, and the records written, on threads of their own (1 MiB blocks)
    let totals = match output {
        Some(path) => {
            // (an earlier run's file is cut on a thread of its own while this run starts)
            let file = plume::connectors::file::cut::CutFile::open(&path, 0)
                .with_context(|| format!("creating {}", path.display()))?;
            plume::plain::run_with_io_threads(compiled, &source, reader, file)?
        }
        None => plume::plain::run_with_io_threads(compiled, &source, reader, std::io::stdout())?,
    };
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

/// Log lines written inside a span (a delivery, a checkpoint, a restore) end with its
/// `trace_id` and `span_id`, as OpenTelemetry's log correlation has them.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = plume::trace::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        // (formatted apart, without colours, to put the ids at the end of the line)
        let mut line = String::new();
        self.0
            .format_event(ctx, tracing_subscriber::fmt::format::Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}")
    }
}

/// Transparent huge pages off for plume's process, unless `MIMALLOC_ALLOW_THP` is set (then
/// mimalloc's own setting rules). mimalloc asks the kernel for huge pages (`madvise`) by
/// default, so each first touch of a 2 MiB region of its memory is backed and zeroed whole: a
/// two-shard run of 5,000,000 readings peaked at 210 MiB of RSS with them and 165 MiB without,
/// the plain loop at 51 and 44 MiB, with the same wall and CPU time (12 interleaved pairs each;
/// BENCHMARKS.md, "Huge pages off"). The flag is the process's (`PR_SET_THP_DISABLE`, kept across
/// `fork` and `exec`); it changes how memory is backed, never what a run computes.
fn huge_pages_off_unless_asked() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE sets a flag of this process and reads no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

fn main() -> ExitCode {
    plume::clock::mark_start();
    huge_pages_off_unless_asked();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(plume::trace::log_filter(
                std::env::var("PLUME_LOG").ok().as_deref(),
            ))
            .unwrap_or_else(|e| {
                eprintln!("warning: PLUME_LOG is not a valid log filter ({e}): logging at warn");
                plume::trace::log_filter(None).into()
            }),
        )
        .with_writer(std::io::stderr)
        .map_event_format(WithTraceIds)
        .init();
    // spans go to an OTLP endpoint when the OTEL_* variables name one (metrics: `plume run`)
    let tracing_export =
        match plume::app::otlp::OtlpConfig::from_env().and_then(|config| plume::app::otlp::install_tracing(&config)) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", plume::app::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    };
    // the last spans go out before the process ends
    drop(tracing_export);
    code
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let mut failed_files = 0;
            let mut error_count = 0;
            for file in &files {
                match spec::LoadedPipeline::load(file) {
                    Ok(loaded) => match CompiledPipeline::compile(loaded.spec.clone()) {
                        Ok(compiled) => {
                            for w in spec::load::warnings(file, &loaded.spec, &|name| std::env::var(name).ok()) {
                                eprintln!("{}:{}:{}: warning: {}", w.file, w.line, w.column, w.message);
                            }
                            print!("{}", describe_pipeline(&file.display().to_string(), &loaded, &compiled))
                        }
                        Err(e) => {
                            failed_files += 1;
                            error_count += 1;
                            eprintln!(
                                "{}: error: the pipeline is valid but cannot be compiled: {e}",
                                file.display()
                            );
                        }
                    },
                    Err(diagnostics) => {
                        failed_files += 1;
                        for d in &diagnostics.0 {
                            error_count += 1;
                            eprintln!("{}:{}:{}: error: {}", d.file, d.line, d.column, d.message);
                        }
                    }
                }
            }
            if failed_files > 0 {
                eprintln!(
                    "{error_count} error{} in {failed_files} of {} file{}",
                    if error_count == 1 { "" } else { "s" },
                    files.len(),
                    if files.len() == 1 { "" } else { "s" }
                );
                Ok(ExitCode::from(1))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Schema => {
            print!("{}", spec::schema::schema_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            pipeline,
            input,
            output,
            engine,
            shards,
            data_dir,
            checkpoint_interval,
            allow_pipeline_change,
            no_checkpoints,
            metrics,
        } => {
            // before anything else, so an early Ctrl-C still ends the run gracefully
            let shutdown = matches!(engine, Engine::Actors).then(app::shutdown_on_ctrl_c);
            let compiled = load(&pipeline)?;
            warn_about(&pipeline, &compiled);
            let interval = checkpoint_interval
                .map(|s| match DurationSpec::parse(&s) {
                    Ok(d) if d.as_millis() > 0 => Ok(d),
                    Ok(_) => Err(anyhow::anyhow!("--checkpoint-interval must be longer than 0s")),
                    Err(e) => Err(anyhow::anyhow!("--checkpoint-interval: {e}")),
                })
                .transpose()?
                .map(|d| std::time::Duration::from_millis(d.as_millis() as u64));
            match engine {
                Engine::Plain => run_plain(&compiled, input, output),
                Engine::Actors => {
                    let input = input.map(|p| {
                        if p.as_os_str() == "-" {
                            InputOverride::Stdin
                        } else {
                            InputOverride::File(p)
                        }
                    });
                    let options = RunOptions {
                        input,
                        output,
                        runtime: RuntimeOptions {
                            shards,
                            ..Default::default()
                        },
                        progress: None,
                        state: app::StateOptions {
                            data_dir,
                            disabled: no_checkpoints,
                            interval,
                            allow_pipeline_change,
                        },
                        metrics_listen: metrics,
                        metrics_optional: false,
                    };
                    let report = app::run(Arc::new(compiled), options, shutdown.unwrap_or_default())?;
                    print_report(&report);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Demo {
            pipeline,
            devices,
            duration,
            speed,
            mqtt,
        } => {
            let shutdown = app::shutdown_on_ctrl_c();
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
            if let Some(port) = mqtt {
                use plume::app::demo as simulator_mqtt;
                simulator_mqtt::use_embedded_broker(&mut compiled.spec, port);
                eprintln!(
                    "plume demo: over MQTT: embedded broker on 127.0.0.1:{port}, the rooms publish to {}",
                    simulator_mqtt::TOPIC
                );
                simulator_mqtt::spawn_publisher(sim.clone(), port, shutdown.clone());
                // (the decoder follows the rewritten `decode`)
                compiled = CompiledPipeline::compile(compiled.spec).context("compiling the demo pipeline")?;
            }
            // the demo keeps no state: every demo starts afresh
            // and serves /metrics where it can (a taken port only warns)
            let options = RunOptions {
                progress: Some(std::time::Duration::from_millis(500)),
                state: app::StateOptions {
                    disabled: true,
                    ..Default::default()
                },
                metrics_listen: compiled.spec.metrics.is_none().then(|| DEMO_METRICS.to_string()),
                metrics_optional: true,
                ..Default::default()
            };
            if compiled.spec.metrics.is_none() {
                eprintln!("plume demo: metrics on http://{DEMO_METRICS}/metrics (and /healthz, /readyz)");
            }
            let report = app::run(Arc::new(compiled), options, shutdown)?;
            print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { pipeline, client_id } => {
            let shutdown = app::shutdown_on_ctrl_c();
            let compiled = load(&pipeline)?;
            let options = plume::connectors::mqtt::bridge::IngressOptions { client_id };
            let report = plume::connectors::mqtt::bridge::run(&compiled, options, shutdown)?;
            eprintln!(
                "done: {} messages received ({} sent again by the broker), {} readings and {} dead letters delivered to Kafka, {} acknowledged, over {:.2} s",
                report.received,
                report.redelivered,
                report.produced,
                report.dead_letters,
                report.acked,
                report.elapsed.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate { workload } => generate(workload),
        Command::Score(args) => score_cli::score_command(args),
        Command::Checkpoints {
            data_dir,
            json,
            command,
        } => plume_cli::checkpoints(&data_dir, json, command),
        Command::Subscribers {
            data_dir,
            json,
            command,
        } => {
            // (a global argument cannot be required in clap: it may come before or after the
            // subcommand)
            let data_dir = data_dir.context("--data-dir is required: the data directory of the runs")?;
            subscribers_cli::subscribers(&data_dir, json, command)
        }
        Command::Outbox {
            data_dir,
            json,
            dead_letters,
            retry_dead_letters,
            drop_dead_letters,
            ids,
            sink,
        } => {
            if retry_dead_letters || drop_dead_letters {
                subscribers_cli::take_dead_letters(&data_dir, json, retry_dead_letters, &ids, sink.as_deref())
            } else if !ids.is_empty() || sink.is_some() {
                anyhow::bail!("--id and --sink go with --retry-dead-letters or --drop-dead-letters")
            } else {
                subscribers_cli::outbox(&data_dir, json, dead_letters)
            }
        }
    }
}
