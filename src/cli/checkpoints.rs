//! `plume checkpoints …`: the on-call engineer's view of a data directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;

use plume::operators::DeviceSnapshot;
use plume::runtime::key_group_of;
use plume::store::retained::{self, Manifest};
use plume::store::{
    CF_DEVICES, CheckpointRecord, StateStore, export, open_db, open_db_read_only, parse_device_key, read_record, unseal,
};

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// The retained checkpoints, oldest first.
    List,
    /// One checkpoint's manifest: pipeline, time, source positions, sink lengths, devices.
    Show { id: String },
    /// The state of one device in a checkpoint, readable.
    Inspect {
        id: String,
        #[arg(long)]
        device: String,
    },
    /// What changed between two checkpoints.
    Diff { a: String, b: String },
    /// Check every checksum of a checkpoint (or of all of them with `all`).
    Verify { id: String },
    /// Make a checkpoint the state the next run starts from (refused while a run uses the directory).
    Restore { id: String },
    /// Write a checkpoint to one portable file.
    Export { id: String, file: PathBuf },
    /// Make an exported checkpoint the state of this (empty) data directory.
    Import { file: PathBuf },
    /// Keep only the newest K retained checkpoints.
    Prune {
        #[arg(long)]
        keep: usize,
    },
}

fn resolve(dir: &Path, id: &str) -> anyhow::Result<u64> {
    let ids = retained::ids(dir)?;
    if ids.is_empty() {
        bail!("{} has no retained checkpoints", dir.display());
    }
    if id == "latest" {
        return Ok(*ids.last().expect("not empty"));
    }
    let n: u64 = id
        .parse()
        .with_context(|| format!("`{id}` is not a checkpoint id (a number, or `latest`)"))?;
    if !ids.contains(&n) {
        bail!(
            "{} has no checkpoint {n}; it has {}",
            dir.display(),
            ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(n)
}

fn time_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// A sink's recorded position: bytes for files, deliveries acknowledged for notifiers.
fn sink_position(name: &str, n: u64) -> String {
    let notifier = ["webhook:", "fcm:", "apns:", "ntfy:"]
        .iter()
        .any(|p| name.starts_with(p));
    if name.starts_with("file:") {
        format!("{n} bytes")
    } else if notifier {
        format!("{n} delivered")
    } else {
        n.to_string()
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON values print"));
}

/// All stored device values of a checkpoint: device -> stored bytes.
fn devices_of(dir: &Path, id: u64) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let cdir = retained::checkpoint_dir(dir, id);
    let db = open_db_read_only(&cdir)?;
    let cf = db.cf_handle(CF_DEVICES).expect("column family");
    let mut out = std::collections::BTreeMap::new();
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let (_, device) = parse_device_key(&k).context("a damaged device key")?;
        out.insert(device, v.to_vec());
    }
    Ok(out)
}

fn record_of(dir: &Path, id: u64) -> anyhow::Result<CheckpointRecord> {
    let cdir = retained::checkpoint_dir(dir, id);
    let db = open_db_read_only(&cdir)?;
    read_record(&db, &cdir)?.with_context(|| format!("checkpoint {id} has no record"))
}

pub fn checkpoints(dir: &Path, as_json: bool, command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    if !dir.exists() {
        bail!(
            "{} does not exist (pass the data directory with --data-dir)",
            dir.display()
        );
    }
    match command {
        CheckpointCommand::List => {
            let manifests = retained::list(dir)?;
            if as_json {
                print_json(&serde_json::to_value(&manifests)?);
            } else if manifests.is_empty() {
                println!("{}: no retained checkpoints", dir.display());
            } else {
                println!(
                    "{:>8}  {:<27}  {:<16}  {:>9}  {:>9}  positions",
                    "id", "time", "pipeline", "devices", "written"
                );
                for m in &manifests {
                    let positions: Vec<String> = m
                        .record
                        .sources
                        .iter()
                        .map(|p| format!("{}@{}", p.name, p.offset))
                        .collect();
                    println!(
                        "{:>8}  {:<27}  {:<16}  {:>9}  {:>9}  {}",
                        m.record.id,
                        time_of(m.record.created_ms),
                        m.record.pipeline,
                        m.record.devices,
                        m.record.devices_written,
                        positions.join(", ")
                    );
                }
            }
        }
        CheckpointCommand::Show { id } => {
            let id = resolve(dir, &id)?;
            let m = Manifest::read(dir, id).map_err(anyhow::Error::msg)?;
            if as_json {
                print_json(&serde_json::to_value(&m)?);
            } else {
                println!(
                    "checkpoint {} of pipeline `{}` (hash {})",
                    m.record.id, m.record.pipeline, m.record.pipeline_hash
                );
                println!("  taken       {}", time_of(m.record.created_ms));
                println!(
                    "  devices     {} stored, {} written by this checkpoint",
                    m.record.devices, m.record.devices_written
                );
                println!("  dead letters so far {}", m.record.dead_letters);
                for p in &m.record.sources {
                    println!("  source      {}: offset {} (next line {})", p.name, p.offset, p.line);
                }
                for s in &m.record.sinks {
                    println!("  sink        {}: {}", s.name, sink_position(&s.name, s.length));
                }
                let bytes: u64 = m.files.iter().map(|f| f.size).sum();
                println!("  files       {} ({} bytes)", m.files.len(), bytes);
            }
        }
        CheckpointCommand::Inspect { id, device } => {
            let id = resolve(dir, &id)?;
            let record = record_of(dir, id)?;
            let cdir = retained::checkpoint_dir(dir, id);
            let db = open_db_read_only(&cdir)?;
            let cf = db.cf_handle(CF_DEVICES).expect("column family");
            let key = plume::store::device_key(key_group_of(&device, record.key_groups), &device);
            let Some(stored) = db.get_cf(cf, &key)? else {
                bail!("checkpoint {id} has no state for device `{device}`");
            };
            let payload = unseal(&stored).map_err(|e| anyhow::anyhow!("device `{device}`: {e}"))?;
            let snapshot = DeviceSnapshot::decode(payload).map_err(|e| anyhow::anyhow!("device `{device}`: {e}"))?;
            if as_json {
                print_json(&json!({ "checkpoint": id, "device": device, "state": snapshot }));
            } else {
                println!(
                    "device {device} in checkpoint {id} (key group {})",
                    key_group_of(&device, record.key_groups)
                );
                println!(
                    "  readings {}, late {}",
                    snapshot.counters.readings, snapshot.counters.late
                );
                for op in &snapshot.operators {
                    println!("  {} ({}):", op.name, op.state.kind());
                    let text = serde_json::to_string_pretty(&op.state)?;
                    for line in text.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
        CheckpointCommand::Diff { a, b } => {
            let (a, b) = (resolve(dir, &a)?, resolve(dir, &b)?);
            let (da, db) = (devices_of(dir, a)?, devices_of(dir, b)?);
            let only_a: Vec<&String> = da.keys().filter(|k| !db.contains_key(*k)).collect();
            let only_b: Vec<&String> = db.keys().filter(|k| !da.contains_key(*k)).collect();
            let changed: Vec<&String> = da
                .iter()
                .filter(|(k, v)| db.get(*k).is_some_and(|w| w != *v))
                .map(|(k, _)| k)
                .collect();
            let same = da.len() - only_a.len() - changed.len();
            let (ra, rb) = (record_of(dir, a)?, record_of(dir, b)?);
            if as_json {
                print_json(&json!({
                    "a": a, "b": b,
                    "only_in_a": only_a, "only_in_b": only_b, "changed": changed, "unchanged": same,
                    "sources": { "a": ra.sources, "b": rb.sources },
                    "sinks": { "a": ra.sinks, "b": rb.sinks },
                }));
            } else {
                println!("checkpoint {a} -> {b}");
                println!(
                    "  devices: {} changed, {} unchanged, {} only in {a}, {} only in {b}",
                    changed.len(),
                    same,
                    only_a.len(),
                    only_b.len()
                );
                for (pa, pb) in ra.sources.iter().zip(&rb.sources) {
                    println!("  source {}: offset {} -> {}", pa.name, pa.offset, pb.offset);
                }
                for (sa, sb) in ra.sinks.iter().zip(&rb.sinks) {
                    println!(
                        "  sink {}: {} -> {}",
                        sa.name,
                        sa.length,
                        sink_position(&sb.name, sb.length)
                    );
                }
                let show = |label: &str, list: &[&String]| {
                    if !list.is_empty() {
                        let head: Vec<&str> = list.iter().take(20).map(|s| s.as_str()).collect();
                        println!(
                            "  {label}: {}{}",
                            head.join(", "),
                            if list.len() > 20 { ", …" } else { "" }
                        );
                    }
                };
                show("changed", &changed);
                show(&format!("only in {b}"), &only_b);
                show(&format!("only in {a}"), &only_a);
            }
        }
        CheckpointCommand::Verify { id } => {
            let ids = if id == "all" {
                retained::ids(dir)?
            } else {
                vec![resolve(dir, &id)?]
            };
            let mut bad = 0;
            let mut results = Vec::new();
            for id in ids {
                match retained::verify(dir, id) {
                    Ok(v) => {
                        if !as_json {
                            println!(
                                "checkpoint {id}: ok ({} files, {} bytes, {} values, {} devices)",
                                v.files, v.bytes, v.values, v.devices
                            );
                        }
                        results.push(json!({ "id": id, "ok": true, "verified": v }));
                    }
                    Err(e) => {
                        bad += 1;
                        if !as_json {
                            println!("checkpoint {id}: DAMAGED: {e}");
                        }
                        results.push(json!({ "id": id, "ok": false, "problem": e }));
                    }
                }
            }
            if as_json {
                print_json(&json!(results));
            }
            return Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        CheckpointCommand::Restore { id } => {
            let id = resolve(dir, &id)?;
            retained::verify(dir, id).map_err(|e| anyhow::anyhow!("checkpoint {id} cannot be restored: {e}"))?;
            let live = StateStore::live_dir(dir);
            if live.exists() {
                // holding the database lock proves no run uses the directory
                match open_db(&live) {
                    Ok(db) => drop(db),
                    Err(e) if e.to_string().to_lowercase().contains("lock") => {
                        bail!("a pipeline is running on {}: stop it first ({e})", dir.display())
                    }
                    Err(_) => {} // damaged: replacing it is the point
                }
            }
            retained::make_live(dir, id)?;
            if as_json {
                print_json(&json!({ "restored": id }));
            } else {
                println!(
                    "checkpoint {id} is now the state the next run of {} starts from",
                    dir.display()
                );
            }
        }
        CheckpointCommand::Export { id, file } => {
            let id = resolve(dir, &id)?;
            let n = export::export(dir, id, &file)?;
            if as_json {
                print_json(&json!({ "exported": id, "file": file, "entries": n }));
            } else {
                println!("checkpoint {id} written to {} ({n} entries)", file.display());
            }
        }
        CheckpointCommand::Import { file } => {
            let record = export::import(dir, &file)?;
            if as_json {
                print_json(&json!({ "imported": record.id, "devices": record.devices }));
            } else {
                println!(
                    "imported checkpoint {} of pipeline `{}` ({} devices) into {}",
                    record.id,
                    record.pipeline,
                    record.devices,
                    dir.display()
                );
            }
        }
        CheckpointCommand::Prune { keep } => {
            if keep == 0 {
                bail!("--keep must be at least 1 (the newest checkpoint is the one a run resumes from)");
            }
            let removed = retained::prune(dir, keep)?;
            if as_json {
                print_json(&json!({ "removed": removed }));
            } else {
                println!(
                    "removed {} checkpoint(s){}",
                    removed.len(),
                    if removed.is_empty() {
                        String::new()
                    } else {
                        format!(": {removed:?}")
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
