//! `plume subscribers …` (which push tokens follow which device) and `plume outbox` (the
//! notifiers' pending deliveries and dead letters), both on a data directory.
//!
//! Changes need the store's write lock. While a run holds it, `add` and `remove` queue the
//! change in `<data dir>/subscribers.requests`, which the run applies within a second (this
//! command waits up to a few seconds to say so). Reading opens the store read-only, which works
//! while a run holds it.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use plume::notify::SubscriberStore;
use plume::notify::outbox;
use plume::notify::subscribers::{RequestOp, SubscriberRequest, queue_request, queued_requests, token_hint};
use plume::store::{StateStore, StoreError};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    Fcm,
    Apns,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Fcm => "fcm",
            Provider::Apns => "apns",
        }
    }
}

#[derive(Subcommand)]
pub enum SubscribersCommand {
    /// Subscribe a device token to a device's notifications (`--device '*'`: every device).
    Add {
        #[arg(long)]
        device: String,
        #[arg(long, value_enum)]
        provider: Provider,
        #[arg(long)]
        token: String,
    },
    /// Unsubscribe a token (from one device, or with no `--device` from every device).
    Remove {
        #[arg(long, default_value = "*")]
        device: String,
        #[arg(long, value_enum)]
        provider: Provider,
        #[arg(long)]
        token: String,
    },
    /// The subscriptions (tokens shortened unless --show-tokens).
    List {
        #[arg(long)]
        device: Option<String>,
        #[arg(long, value_enum)]
        provider: Option<Provider>,
        /// Print whole tokens.
        #[arg(long)]
        show_tokens: bool,
    },
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON values print"));
}

/// How long `add`/`remove` wait for a running plume to apply a queued change.
const APPLY_WAIT: Duration = Duration::from_secs(5);

fn change(dir: &Path, as_json: bool, request: SubscriberRequest) -> anyhow::Result<ExitCode> {
    let verb = match request.op {
        RequestOp::Add => "added",
        RequestOp::Remove => "removed",
    };
    let shown = format!(
        "token {} ({}) {} device {}",
        token_hint(&request.token),
        request.provider,
        if request.op == RequestOp::Add { "for" } else { "from" },
        request.device
    );
    match StateStore::open_tool(dir) {
        Ok(store) => {
            let subs = SubscriberStore::open(store.clone())?;
            // a change queued for a run that ended before applying it
            subs.apply_requests(dir)?;
            let changed = subs.apply(&request)?;
            drop(subs);
            StateStore::close(store);
            if as_json {
                print_json(&json!({ "op": request.op, "changed": changed, "applied": true }));
            } else if changed {
                println!("{verb}: {shown}");
            } else {
                println!(
                    "unchanged: {shown} ({})",
                    if request.op == RequestOp::Add {
                        "already subscribed"
                    } else {
                        "was not subscribed"
                    }
                );
            }
        }
        Err(StoreError::Refused(_)) => {
            queue_request(dir, &request)?;
            let deadline = Instant::now() + APPLY_WAIT;
            let applied = loop {
                if !queued_requests(dir).contains(&request) {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if as_json {
                print_json(&json!({ "op": request.op, "queued": true, "applied": applied }));
            } else if applied {
                println!("{verb} by the running plume: {shown}");
            } else {
                println!(
                    "queued in {}: {shown} (a running plume applies it within a second; the next plume command otherwise)",
                    plume::notify::subscribers::requests_path(dir).display()
                );
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn subscribers(dir: &Path, as_json: bool, command: SubscribersCommand) -> anyhow::Result<ExitCode> {
    match command {
        SubscribersCommand::Add {
            device,
            provider,
            token,
        } => change(
            dir,
            as_json,
            SubscriberRequest {
                op: RequestOp::Add,
                provider: provider.name().into(),
                device,
                token,
            },
        ),
        SubscribersCommand::Remove {
            device,
            provider,
            token,
        } => change(
            dir,
            as_json,
            SubscriberRequest {
                op: RequestOp::Remove,
                provider: provider.name().into(),
                device,
                token,
            },
        ),
        SubscribersCommand::List {
            device,
            provider,
            show_tokens,
        } => {
            if !StateStore::live_dir(dir).exists() {
                bail!("{} has no state store (nothing subscribed yet)", dir.display());
            }
            let store = StateStore::open_read_only(dir)?;
            let subs = SubscriberStore::open(store.clone())?;
            let providers: Vec<&str> = match provider {
                Some(p) => vec![p.name()],
                None => plume::notify::subscribers::PROVIDERS.to_vec(),
            };
            let mut rows = Vec::new();
            let mut removed = serde_json::Map::new();
            for p in &providers {
                removed.insert(p.to_string(), json!(subs.removed_count(p)));
                for (d, tokens) in subs.list(p) {
                    if device.as_ref().is_some_and(|want| *want != d) {
                        continue;
                    }
                    for t in tokens {
                        rows.push((p.to_string(), d.clone(), t));
                    }
                }
            }
            let queued = queued_requests(dir).len();
            if as_json {
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(p, d, t)| {
                        let mut v = json!({ "provider": p, "device": d, "token_hint": token_hint(t) });
                        if show_tokens {
                            v["token"] = json!(t);
                        }
                        v
                    })
                    .collect();
                print_json(&json!({
                    "subscriptions": list,
                    "removed_unregistered": removed,
                    "queued_changes": queued,
                }));
            } else {
                if rows.is_empty() {
                    println!("no subscriptions");
                } else {
                    println!("{:<8}  {:<24}  token", "provider", "device");
                    for (p, d, t) in &rows {
                        println!(
                            "{p:<8}  {d:<24}  {}",
                            if show_tokens { t.clone() } else { token_hint(t) }
                        );
                    }
                }
                for p in &providers {
                    let n = subs.removed_count(p);
                    if n > 0 {
                        println!("{p}: {n} token(s) removed because the provider reported them unregistered");
                    }
                }
                if queued > 0 {
                    println!("{queued} change(s) queued for the running plume");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `plume outbox`: each notifier sink's pending deliveries, remembered acknowledgements,
/// deliveries and dead letters.
pub fn outbox(dir: &Path, as_json: bool, dead_letters: bool) -> anyhow::Result<ExitCode> {
    if !StateStore::live_dir(dir).exists() {
        bail!("{} has no state store", dir.display());
    }
    let store = StateStore::open_read_only(dir)?;
    let summaries = outbox::summaries(&store)?;
    let mut letters = Vec::new();
    if dead_letters {
        use plume::notify::Outbox;
        for s in &summaries {
            let o = outbox::StoreOutbox::open(store.clone(), &s.sink)?;
            for d in o.dead_letters()? {
                letters.push(json!({
                    "sink": s.sink, "id": d.entry.id, "event_id": d.entry.event_id,
                    "device": d.entry.device, "kind": d.entry.kind,
                    "target": if d.entry.target.is_empty() { String::new() } else { token_hint(&d.entry.target) },
                    "error": d.error, "attempts": d.attempts,
                }));
            }
        }
    }
    if as_json {
        let mut v = json!({ "sinks": summaries });
        if dead_letters {
            v["dead_letters"] = json!(letters);
        }
        print_json(&v);
    } else {
        if summaries.is_empty() {
            println!("{}: no notifier outboxes", dir.display());
        }
        for s in &summaries {
            println!(
                "{}: {} pending ({} held for a digest{}), {} delivered, {} dead letters, {} acknowledged ids remembered",
                s.sink,
                s.pending,
                s.held,
                s.oldest_pending_ms
                    .map(|ms| format!(", oldest {:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                s.delivered,
                s.dead_letters,
                s.acknowledged_remembered
            );
        }
        for l in &letters {
            println!(
                "  dead letter {} {} ({} {}): {} after {} attempts",
                l["sink"].as_str().unwrap_or(""),
                l["id"].as_str().unwrap_or(""),
                l["device"].as_str().unwrap_or(""),
                l["kind"].as_str().unwrap_or(""),
                l["error"].as_str().unwrap_or(""),
                l["attempts"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `plume outbox --retry-dead-letters | --drop-dead-letters [--id ID]… [--sink SINK]`.
pub fn take_dead_letters(
    dir: &Path,
    as_json: bool,
    retry: bool,
    ids: &[String],
    sink: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if !StateStore::live_dir(dir).exists() {
        bail!("{} has no state store", dir.display());
    }
    let store = StateStore::open_tool(dir)?;
    let summaries = outbox::summaries(&store)?;
    if let Some(sink) = sink
        && !summaries.iter().any(|s| s.sink == sink)
    {
        let known: Vec<&str> = summaries.iter().map(|s| s.sink.as_str()).collect();
        bail!(
            "{} has no outbox for sink `{sink}` (it has: {})",
            dir.display(),
            known.join(", ")
        );
    }
    let only = (!ids.is_empty()).then_some(ids);
    let now = jiff::Timestamp::now().as_millisecond();
    let mut taken = serde_json::Map::new();
    let mut found = std::collections::BTreeSet::new();
    for s in summaries.iter().filter(|s| sink.is_none_or(|n| n == s.sink)) {
        let o = outbox::StoreOutbox::open(store.clone(), &s.sink)?;
        let moved = if retry {
            o.retry_dead_letters(only, now)?
        } else {
            o.drop_dead_letters(only)?
        };
        found.extend(moved.iter().cloned());
        if !as_json {
            println!(
                "{}: {} dead letters {}",
                s.sink,
                moved.len(),
                if retry {
                    "back to pending (the next run delivers them)"
                } else {
                    "dropped"
                }
            );
        }
        taken.insert(s.sink.clone(), json!(moved));
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !found.contains(*id)).collect();
    if as_json {
        print_json(&json!({ if retry { "retried" } else { "dropped" }: taken, "not_found": missing }));
    } else if !missing.is_empty() {
        eprintln!(
            "not dead letters here: {}",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
