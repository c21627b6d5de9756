//! `abha-bulk status`: the active batches (all with `--all`), one batch, or a watch of one
//! batch or of every active batch.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{OutputFormat, StatusArgs};
use crate::config::Settings;
use crate::report::{BatchStatus, Plan, format_duration, percent};
use crate::store::Store;
use crate::store::batches::{BatchInfo, StateCounts};

/// Batches listed at most.
const LIST_LIMIT: i64 = 50;

pub(super) async fn status(settings: &Settings, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    match &args.batch {
        Some(id) => {
            let batch = store.find_batch(id).await?;
            if args.watch {
                watch(&store, Some(batch)).await
            } else {
                // The operator sees every programme: its place among all active batches.
                let s = crate::report::status_measuring(&store, &batch, |_| true).await?;
                match args.output {
                    OutputFormat::Text => out!("{}", s.render()),
                    OutputFormat::Json => out!("{}", pretty(&one_json(&s))?),
                }
                Ok(ExitCode::SUCCESS)
            }
        }
        None if args.watch => watch(&store, None).await,
        None => list(&store, args.all, args.output).await,
    }
}

fn pretty(v: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

/// One batch as JSON: the API's document plus its place among every programme's batches
/// (the operator sees them all).
fn one_json(s: &BatchStatus) -> Value {
    let mut v = s.to_json();
    v["fleet_position"] = json!(s.planned.as_ref().map(|p| p.position));
    v["active_batches"] = json!(s.planned.as_ref().map(|_| s.active));
    v
}

/// A batch of the list, counted, with its place in the plan (active ones only).
struct Listed {
    batch: BatchInfo,
    counts: StateCounts,
    priority: String,
}

async fn list(store: &Store, all: bool, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let batches = store.list_batches(!all, LIST_LIMIT).await?;
    let mut counted = Vec::with_capacity(batches.len());
    for b in batches {
        let counts = store.batch_counts(b.id).await?;
        counted.push((b, counts));
    }
    let known: HashMap<Uuid, i64> = counted
        .iter()
        .filter(|(b, _)| b.state == "active")
        .map(|(b, c)| (b.id, c.open()))
        .collect();
    let plan = Plan::load(store, &known, |_| true).await?;
    // Active batches in order of expected completion, then the others newest first.
    counted.sort_by_key(|(b, _)| plan.batches.get(&b.id).map_or(usize::MAX, |p| p.position));
    let mut listed = Vec::with_capacity(counted.len());
    for (batch, counts) in counted {
        let priority = match plan.batches.get(&batch.id) {
            Some(p) => p.priority.clone(),
            None => store.batch_priority(batch.id).await?,
        };
        listed.push(Listed {
            batch,
            counts,
            priority,
        });
    }
    if output == OutputFormat::Json {
        let items: Vec<Value> = listed.iter().map(|l| list_json(l, &plan)).collect();
        out!("{}", pretty(&json!({ "batches": items }))?);
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        if all {
            out!("no batches yet");
        } else {
            out!("no active batches (abha-bulk status --all lists finished and cancelled ones)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:>3}  {:<8}  {:<17} {:<14} {:<10} {:<8} {:>8} {:>8} {:>8} {:>6}  {:<11} {}",
        "POS",
        "BATCH",
        "KIND",
        "BENEFIT",
        "STATE",
        "PRIORITY",
        "ROWS",
        "DONE",
        "OPEN",
        "SHARE",
        "ETA",
        "CREATED"
    );
    for l in &listed {
        let (b, c) = (&l.batch, &l.counts);
        let p = plan.batches.get(&b.id);
        let share = match p.and_then(|p| p.share) {
            Some(s) => percent(s),
            None if p.is_some() => "?".into(),
            None => "-".into(),
        };
        let eta = match p {
            Some(p) if p.open == 0 => "done".into(),
            Some(p) => p
                .eta_secs
                .map(format_duration)
                .unwrap_or_else(|| "unknown".into()),
            None => "-".into(),
        };
        out!(
            "{:>3}  {}  {:<17} {:<14} {:<10} {:<8} {:>8} {:>8} {:>8} {:>6}  {:<11} {}",
            p.map_or("-".to_string(), |p| p.position.to_string()),
            &b.id.to_string()[..8],
            b.kind,
            b.benefit,
            b.state,
            l.priority,
            b.total_rows,
            c.done(),
            c.open(),
            share,
            eta,
            b.created_at.format("%Y-%m-%d %H:%M")
        );
    }
    if !plan.batches.is_empty() && plan.batches.values().all(|p| p.share.is_none()) {
        out!(
            "share ?: no scheduler has reported the shares of the rate; ETAs come from each batch's own rate"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A batch of `status --output json` without BATCH: as for one batch, without
/// `rate_per_second` (measuring it reads every finished job of the batch; ask for the batch).
fn list_json(l: &Listed, plan: &Plan) -> Value {
    let b = &l.batch;
    let p = plan.batches.get(&b.id);
    let eta = p.filter(|p| p.open > 0).and_then(|p| p.eta_secs);
    json!({
        "id": b.id, "kind": b.kind, "benefit": b.benefit, "source": b.source,
        "state": b.state, "file_name": b.file_name, "total_rows": b.total_rows,
        "accepted_rows": b.accepted_rows, "rejected_rows": b.rejected_rows,
        "duplicate_rows": b.duplicate_rows, "created_at": b.created_at,
        "finished_at": b.finished_at,
        "priority": l.priority,
        "counts": l.counts.0,
        "open": l.counts.open(),
        "share": p.and_then(|p| p.share),
        "rate": p.and_then(|p| p.rate),
        "backlog": p.and_then(|p| p.backlog),
        "eta_seconds": eta,
        "eta_basis": eta.and(p.and_then(|p| p.basis)).map(|b| b.as_str()),
        "position": p.map(|p| p.programme_position),
        "active_in_programme": p.map(|p| plan.programme_size(&p.programme)),
        "fleet_position": p.map(|p| p.position),
        "active_batches": p.map(|_| plan.active),
    })
}

/// The one-line progress of a batch: `ok 10 failed 0 dead 0 retrying 0 | 4.2/s ETA 1m 05s`.
/// With a share known: `... | 4.2/s share 25% (5.0/s) ETA 1m 05s`.
fn progress_line(s: &BatchStatus) -> String {
    format!(
        "ok {} failed {} dead {} retrying {} | {:.1}/s{} ETA {}",
        s.counts.get("succeeded"),
        s.counts.get("failed"),
        s.counts.get("dead"),
        s.counts.get("retrying"),
        s.rate,
        s.share()
            .map(|(share, rate)| format!(" share {} ({rate:.1}/s)", percent(share)))
            .unwrap_or_default(),
        s.eta_secs()
            .map(format_duration)
            .unwrap_or_else(|| "-".into())
    )
}

fn finished(s: &BatchStatus) -> bool {
    s.counts.open() == 0 && s.batch.state != "submitting"
}

/// Refreshes until `one` is finished, or, without it, until no batch is active (batches that
/// become active meanwhile are picked up).
async fn watch(store: &Store, one: Option<BatchInfo>) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let mut bars: BTreeMap<Uuid, indicatif::ProgressBar> = BTreeMap::new();
    let mut watched_any = false;
    // Batches whose final status was printed (still `active` until the relay closes them).
    let mut reported = std::collections::HashSet::new();
    loop {
        let batches = match &one {
            Some(b) => vec![b.clone()],
            None => store
                .list_batches(true, LIST_LIMIT)
                .await?
                .into_iter()
                .filter(|b| !reported.contains(&b.id))
                .collect(),
        };
        if batches.is_empty() {
            if !watched_any {
                out!("no active batches to watch");
            }
            return Ok(ExitCode::SUCCESS);
        }
        watched_any = true;
        let mut open = 0;
        for b in &batches {
            let s = crate::report::status(store, b).await?;
            let line = progress_line(&s);
            let short = &b.id.to_string()[..8];
            if tty {
                let bar = bars.entry(b.id).or_insert_with(|| {
                    let bar = multi.add(indicatif::ProgressBar::new(0));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} {elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(format!("{short} {}", b.kind));
                    bar
                });
                bar.set_length(s.counts.total() as u64);
                bar.set_position(s.counts.done() as u64);
                bar.set_message(line);
            } else {
                out!(
                    "{short} {} {}/{} {line}",
                    b.kind,
                    s.counts.done(),
                    s.counts.total()
                );
            }
            if !finished(&s) {
                open += 1;
            } else {
                reported.insert(b.id);
                if let Some(bar) = bars.remove(&b.id) {
                    bar.finish();
                }
                out!("{}", s.render());
                if one.is_some() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if open > 0 {
            tokio::time::sleep(Duration::from_secs(if tty { 2 } else { 10 })).await;
        }
    }
}
