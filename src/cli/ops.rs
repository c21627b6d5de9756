//! `abha-bulk rekey`.

use std::process::ExitCode;

use super::RekeyArgs;
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
                    "rekey: {}/{} jobs scanned, {} rewritten",
                    p.scanned, p.total, p.rewritten
                );
            }
        })
        .await?;
    if p.complete() {
        out!(
            "rekey done: {} of {} jobs rewritten; every value is under key id {}, whose check value is now stored. pii.previous_keys can be removed.",
            p.rewritten,
            p.scanned,
            store.vault.key_id()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        out!(
            "rekey incomplete: {} rewritten, {} changed by a worker meanwhile (run rekey again), {} decrypt with no configured key; keep pii.previous_keys",
            p.rewritten,
            p.raced,
            p.undecryptable
        );
        Ok(ExitCode::FAILURE)
    }
}
