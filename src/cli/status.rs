//! `abha-bulk status`: the active batches (all with `--all`), one batch, or a watch of one
//! batch or of every active batch.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use uuid::Uuid;

use super::StatusArgs;
use crate::config::Settings;
use crate::report::{BatchStatus, format_duration};
use crate::store::Store;
use crate::store::batches::BatchInfo;

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
                out!("{}", crate::report::status(&store, &batch).await?.render());
                Ok(ExitCode::SUCCESS)
            }
        }
        None if args.watch => watch(&store, None).await,
        None => list(&store, args.all).await,
    }
}

async fn list(store: &Store, all: bool) -> anyhow::Result<ExitCode> {
    let batches = store.list_batches(!all, LIST_LIMIT).await?;
    if batches.is_empty() {
        if all {
            out!("no batches yet");
        } else {
            out!("no active batches (abha-bulk status --all lists finished and cancelled ones)");
        }
    }
    for b in batches {
        let c = store.batch_counts(b.id).await?;
        out!(
            "{}  {:<17} {:<14} {:<10} {:>8} rows  {:>8} done  {:>6} open  {}",
            &b.id.to_string()[..8],
            b.kind,
            b.benefit,
            b.state,
            b.total_rows,
            c.done(),
            c.open(),
            b.created_at.format("%Y-%m-%d %H:%M")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The one-line progress of a batch: `ok 10 failed 0 dead 0 retrying 0 | 4.2/s ETA 1m 05s`.
fn progress_line(s: &BatchStatus) -> String {
    format!(
        "ok {} failed {} dead {} retrying {} | {:.1}/s ETA {}",
        s.counts.get("succeeded"),
        s.counts.get("failed"),
        s.counts.get("dead"),
        s.counts.get("retrying"),
        s.rate,
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
