//! `abha-bulk rekey` and `abha-bulk probe`.

use std::process::ExitCode;
use std::time::Duration;

use super::{ProbeArgs, RekeyArgs};
use crate::config::Settings;
use crate::store::Store;

/// `abha-bulk rekey`.
pub(super) async fn rekey(settings: &Settings, args: &RekeyArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    eprintln!(
        "re-encrypting stored identifiers under pii.key (key id {})...",
        store.vault.key_id()
    );
    // A line every two seconds at most (a million jobs are a thousand chunks).
    let mut last = std::time::Instant::now();
    let p = store
        .rekey(args.chunk.max(1), |p| {
            if last.elapsed() >= std::time::Duration::from_secs(2) || p.scanned >= p.total {
                last = std::time::Instant::now();
                eprintln!(
                    "rekey: {}/{} rows scanned ({}), {} rewritten",
                    p.scanned, p.total, p.table, p.rewritten
                );
            }
        })
        .await?;
    if p.complete() {
        out!(
            "rekey done: {} of {} rows rewritten (jobs.payload, jobs.result, api_keys.webhook_secret); every value is under key id {}, whose check value is now stored. pii.previous_keys can be removed from every process once all run with this pii.key.",
            p.rewritten,
            p.scanned,
            store.vault.key_id()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        out!(
            "rekey incomplete: {} rewritten, {} changed meanwhile (run rekey again), {} decrypt with no configured key; keep pii.previous_keys",
            p.rewritten,
            p.raced,
            p.undecryptable
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `abha-bulk probe`: one GET, no settings read (a health check must not need secrets).
/// Prints the status and the first line of the body, which for `/readyz` names what failed.
pub(super) async fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()?;
    let response = client.get(&args.url).send().await?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{status} {}", body.lines().next().unwrap_or(""));
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
