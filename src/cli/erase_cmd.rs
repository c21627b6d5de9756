//! `abha-bulk erase` and `abha-bulk retention`: the data lifecycle's commands.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::EraseArgs;
use crate::config::Settings;
use crate::lifecycle::erase::{self, EraseOptions};
use crate::lifecycle::{RetentionPolicy, Sweeper};
use crate::report::os_account;
use crate::store::Store;

/// `abha-bulk erase FILE --reason …`.
pub(super) async fn erase(settings: &Settings, args: &EraseArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = Store::connect(settings).await?;
    let hashes = erase::parse_identifiers(&text, &store.vault)
        .with_context(|| format!("{} is refused, nothing was erased", args.file.display()))?;
    let scope = (!args.benefits.is_empty()).then(|| args.benefits.clone());
    let req = erase::request(
        hashes,
        scope,
        os_account(),
        args.operator.clone(),
        &args.reason,
    )?;
    eprintln!(
        "erasure request {}: {} people, {}",
        req.id,
        req.people,
        match &req.scope {
            Some(b) => format!("benefits {}", b.join(", ")),
            None => "every benefit".into(),
        }
    );
    let mut last = Instant::now();
    let opts = EraseOptions {
        wait: Duration::from_secs(args.wait_secs),
        ..EraseOptions::default()
    };
    let p = erase::run(&store, &req, opts, |p| {
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            eprintln!(
                "erase: {}/{} job ids scanned, {} rows erased ({} cancelled), {} running",
                p.scanned, p.total, p.erased, p.cancelled, p.waiting
            );
        }
    })
    .await?;
    if p.waiting == 0 {
        out!(
            "erasure request {} done: {} rows erased, {} of them cancelled before they ran; recorded in erasure_log",
            req.id,
            p.erased,
            p.cancelled
        );
        Ok(ExitCode::SUCCESS)
    } else {
        out!(
            "erasure request {} incomplete: {} rows erased ({} cancelled), {} rows still running after {} s: run the same command again to erase them once they finish",
            req.id,
            p.erased,
            p.cancelled,
            p.waiting,
            args.wait_secs
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `abha-bulk retention`: the sweep of every relay's housekeeping, once, to its end.
pub(super) async fn retention(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    let policy = RetentionPolicy::from_settings(&settings.retention);
    let mut rows = 0;
    let mut batches = 0;
    let mut last = Instant::now();
    loop {
        let c = store
            .sweep_identifiers(&policy.identifiers, policy.chunk)
            .await?;
        if c.batch.is_none() {
            break;
        }
        rows += c.jobs;
        batches += u64::from(c.batch_done);
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            eprintln!("retention: {rows} rows erased, {batches} batches done");
        }
    }
    let mut deleted = 0;
    loop {
        let c = store.sweep_rows(policy.rows, policy.chunk).await?;
        if c.batch.is_none() {
            break;
        }
        deleted += c.jobs;
    }
    crate::telemetry::metrics::RETENTION_ERASED
        .with_label_values(&["jobs"])
        .inc_by(rows);
    Sweeper::new(policy.clone()).purge(&store).await;
    let s = store.retention_stats(&policy.identifiers).await?;
    out!(
        "retention done: identifiers of {rows} rows erased ({batches} batches finished), {deleted} erased rows deleted; oldest unerased finished batch {:.0} s old, {:.0} s past its retention",
        s.oldest_unerased_secs,
        s.overdue_secs
    );
    Ok(ExitCode::SUCCESS)
}
