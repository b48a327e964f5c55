//! The `plume` command line. `anyhow` lives here, at the edge; the library has typed errors.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use plume::config::{self, DurationSpec, SourceSpec};

// mimalloc: less memory per idle device than glibc's allocator after bursts of activations
// (BENCHMARKS.md, "Memory per idle active device")
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use plume::engine::{self, InputOverride, RunOptions, RuntimeOptions};
use plume::pipeline::CompiledPipeline;

#[path = "cli_checkpoints.rs"]
mod plume_cli;
#[path = "cli_subscribers.rs"]
mod subscribers_cli;

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
    let reader = BufReader::with_capacity(
        1 << 20,
        File::open(&input).with_context(|| format!("opening {}", input.display()))?,
    );
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        )),
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
    plume::clock::mark_start();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLUME_LOG").unwrap_or_else(|_| "warn,rumqttd=off".into()),
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
            let mut failed_files = 0;
            let mut error_count = 0;
            for file in &files {
                match config::LoadedPipeline::load(file) {
                    Ok(loaded) => match CompiledPipeline::compile(loaded.spec.clone()) {
                        Ok(compiled) => {
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
            print!("{}", config::schema::schema_text());
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
        } => {
            if matches!(engine, Engine::Actors) {
                // before anything else, so an early Ctrl-C still ends the run gracefully
                engine::catch_interrupts();
            }
            let compiled = load(&pipeline)?;
            let interval = checkpoint_interval
                .map(|s| DurationSpec::parse(&s).map_err(|e| anyhow::anyhow!("--checkpoint-interval: {e}")))
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
                        state: engine::StateOptions {
                            data_dir,
                            disabled: no_checkpoints,
                            interval,
                            allow_pipeline_change,
                        },
                    };
                    let report = engine::run(Arc::new(compiled), options)?;
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
            engine::catch_interrupts();
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
                use plume::sources::simulator_mqtt;
                simulator_mqtt::use_embedded_broker(&mut compiled.spec, port);
                eprintln!(
                    "plume demo: over MQTT: embedded broker on 127.0.0.1:{port}, the rooms publish to {}",
                    simulator_mqtt::TOPIC
                );
                simulator_mqtt::spawn_publisher(sim.clone(), port);
            }
            // the demo keeps no state: every demo starts afresh
            let options = RunOptions {
                progress: Some(std::time::Duration::from_millis(500)),
                state: engine::StateOptions {
                    disabled: true,
                    ..Default::default()
                },
                ..Default::default()
            };
            let report = engine::run(Arc::new(compiled), options)?;
            print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
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

/// The short summary `plume validate` prints for a valid pipeline: sources, fields, the
/// operator chain with its key parameters, and the routes.
fn describe_pipeline(file: &str, loaded: &config::LoadedPipeline, compiled: &CompiledPipeline) -> String {
    use std::fmt::Write as _;

    use config::{AggregatesSpec, DecodeFormat, OperatorSpec, SinkSpec};

    let spec = &loaded.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{file}: ok: pipeline `{}` (hash {})",
        compiled.name,
        &loaded.hash[..16]
    );
    let sources: Vec<String> = spec
        .sources
        .iter()
        .map(|s| match s {
            SourceSpec::File(f) => format!("file {}", f.path),
            SourceSpec::Stdin(_) => "stdin".to_string(),
            SourceSpec::Simulator(s) => format!("simulator ({} devices, a reading every {})", s.devices, s.interval),
            SourceSpec::Mqtt(m) => format!("mqtt {} topic {} (qos {})", m.url, m.topic, m.qos.level()),
            SourceSpec::Kafka(k) => format!("kafka {} topics {} (group {})", k.brokers, k.topics.join(","), k.group),
        })
        .collect();
    let _ = writeln!(
        out,
        "  sources:   {}",
        if sources.is_empty() {
            "none (pass --input FILE)".to_string()
        } else {
            sources.join("; ")
        }
    );
    let decode = &spec.decode;
    let device = match (&decode.device.field, &decode.device.tag, decode.device.topic) {
        (_, _, true) => "the topic's {device}".to_string(),
        (_, Some(tag), _) => format!("tag `{tag}`"),
        (Some(field), _, _) => format!("`{field}`"),
        _ => "?".to_string(),
    };
    let time = match (&decode.time, decode.format) {
        (None, DecodeFormat::Influx) => "the line's timestamp (ns)".to_string(),
        (None, DecodeFormat::Json) => "arrival time".to_string(),
        (Some(t), format) => format!(
            "{} ({})",
            t.field
                .as_deref()
                .map_or("the line's timestamp".to_string(), |f| format!("`{f}`")),
            wire_name(&t.unit_for(format))
        ),
    };
    let _ = writeln!(
        out,
        "  decode:    {}, device from {device}, event time from {time}",
        wire_name(&decode.format)
    );
    let declared: Vec<&str> = compiled
        .fields
        .iter()
        .filter(|f| f.declared)
        .map(|f| f.name.as_str())
        .collect();
    let derived: Vec<&str> = compiled
        .fields
        .iter()
        .filter(|f| !f.declared)
        .map(|f| f.name.as_str())
        .collect();
    let mut fields = declared.join(", ");
    if !derived.is_empty() {
        let _ = write!(fields, "; produced: {}", derived.join(", "));
    }
    let _ = writeln!(out, "  fields:    {fields}");
    for (i, op) in spec.operators.iter().enumerate() {
        let label = if i == 0 { "  operators: " } else { "             " };
        let text = match op {
            OperatorSpec::Window(w) => {
                let aggregates = match &w.aggregates {
                    AggregatesSpec::All(list) => format!(
                        "{} of {}",
                        list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("/"),
                        w.fields.join(", ")
                    ),
                    AggregatesSpec::PerField(map) => map
                        .iter()
                        .map(|(f, list)| {
                            format!("{f} {}", list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("/"))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let slide = w.slide.map(|s| format!(" sliding by {s}")).unwrap_or_default();
                format!(
                    "window `{}`: every {}{slide}, lateness {}: {aggregates}",
                    op.name(),
                    w.every,
                    w.lateness
                )
            }
            OperatorSpec::Hysteresis(h) => {
                let (enter, exit) = match h.direction {
                    config::Direction::Above => (">=", "<="),
                    config::Direction::Below => ("<=", ">="),
                };
                let debounce = h
                    .min_duration
                    .map(|d| format!(", for at least {d}"))
                    .unwrap_or_default();
                let mut bands: Vec<(&String, &f64)> = h.severity.iter().collect();
                bands.sort_by(|a, b| a.1.total_cmp(b.1));
                let bands = if bands.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", severity {}",
                        bands
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!(
                    "hysteresis `{}`: {} {enter} {} opens, {exit} {} closes{debounce}{bands}",
                    op.name(),
                    h.field,
                    h.enter,
                    h.exit
                )
            }
            OperatorSpec::Baseline(b) => {
                format!(
                    "baseline `{}`: {} of {}, alpha {}",
                    op.name(),
                    wire_name(&b.method),
                    b.field,
                    b.alpha
                )
            }
            OperatorSpec::Smooth(s) => format!("smooth `{}`: {} of {}", op.name(), wire_name(&s.method), s.field),
            OperatorSpec::Threshold(t) => format!("threshold `{}` on {}", op.name(), t.field),
            OperatorSpec::Calibrate(c) => format!("calibrate `{}` of {}", op.name(), c.field),
            OperatorSpec::Health(_) => format!("health `{}`", op.name()),
        };
        let _ = writeln!(out, "{label}{text}");
    }
    for (i, route) in spec.outputs.iter().enumerate() {
        let label = if i == 0 { "  routes:    " } else { "             " };
        let sinks: Vec<String> = route
            .to
            .iter()
            .map(|s| match s {
                SinkSpec::Stdout(o) => format!("stdout ({})", wire_name(&o.format)),
                SinkSpec::File(f) => format!("file {}", f.path),
                SinkSpec::Webhook(w) => format!("webhook {}", w.url),
                SinkSpec::Push(p) => match p {
                    config::PushSinkSpec::Fcm(_) => "push (fcm)".to_string(),
                    config::PushSinkSpec::Apns(_) => "push (apns)".to_string(),
                    config::PushSinkSpec::Ntfy(n) => format!("push (ntfy topic {})", n.topic),
                },
                SinkSpec::Mqtt(m) => format!("mqtt {} topic {}", m.url, m.topic),
                SinkSpec::Kafka(k) => format!("kafka topic {}", k.topic),
            })
            .collect();
        let events = if route.events.is_empty() {
            String::new()
        } else {
            format!(" ({})", route.events.join(", "))
        };
        let _ = writeln!(
            out,
            "{label}{}{events} -> {}",
            route.when.to_vec().join(", "),
            sinks.join(", ")
        );
    }
    out
}

/// A unit enum as the pipeline file writes it (`ewma`, `json`).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_string(),
    }
}
