//! The roster, streamed: a first pass for its content hash (the key a resumed run is found
//! by), then passes of bounded chunks read on a blocking thread, so a million rows never sit
//! in memory at once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use super::ReconcileError;
use super::check::{ReconcileGate, lookup};
use super::output::Progress;
use crate::abdm::AbdmClient;
use crate::ingest::csv::{CsvIngest, RowResult};
use crate::jobs::kind::{Job, JobKind};
use crate::pii::AbhaNumber;
use crate::store::Store;
use crate::store::reconcile_rows::CheckResult;

/// Rows per chunk read from the roster (and per staging statement).
pub(super) const CHUNK: usize = 1000;

/// Lookups recorded in Postgres at a time (at most this many are redone after a kill).
const RECORD_EVERY: usize = 64;

/// The SHA-256 of the roster file's bytes.
pub(super) fn sha256(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_vec())
}

/// A valid roster row: its number, reference, ABHA and the ABHA's keyed hash.
pub(super) struct RosterRow {
    pub row: u64,
    pub external_ref: Option<String>,
    pub abha: AbhaNumber,
    pub hash: Vec<u8>,
}

/// One data row of the roster.
pub(super) enum Item {
    Valid(RosterRow),
    Invalid(crate::ingest::csv::Rejection),
}

/// The blocking thread reading the roster: `Err` says why the file could not be read to
/// its end.
pub(super) type Reader = JoinHandle<Result<(), String>>;

/// Streams the roster in chunks of [`CHUNK`] items from a blocking thread. The handle says
/// whether the file could be read to the end.
pub(super) fn chunks(
    store: &Store,
    path: &Path,
) -> Result<(mpsc::Receiver<Vec<Item>>, Reader), ReconcileError> {
    let roster_err = |reason: String| ReconcileError::Roster {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| roster_err(e.to_string()))?;
    let ingest = CsvIngest::new(
        std::io::BufReader::new(file),
        JobKind::BenefitLookup,
        Utc::now().date_naive(),
    )
    .map_err(|e| roster_err(e.to_string()))?;
    let vault = store.vault.clone();
    let (tx, rx) = mpsc::channel::<Vec<Item>>(2);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut chunk = Vec::with_capacity(CHUNK);
        for row in ingest {
            let item = match row.map_err(|e| e.to_string())? {
                RowResult::Rejected(r) => Item::Invalid(r),
                RowResult::Accepted(r) => {
                    let Job::BenefitLookup(abha) = r.job else {
                        unreachable!("benefit-lookup rows hold an ABHA number")
                    };
                    // The same hash as the subject of a link job (jobs.subject_hash), so the
                    // sweep and the open-fix check match roster rows in Postgres.
                    let hash = vault.hash(abha.expose());
                    Item::Valid(RosterRow {
                        row: r.row_number,
                        external_ref: r.external_ref,
                        abha,
                        hash,
                    })
                }
            };
            chunk.push(item);
            if chunk.len() == CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    Ok((rx, reader))
}

async fn finish_reader(path: &Path, reader: Reader) -> Result<(), ReconcileError> {
    reader
        .await
        .expect("roster reader")
        .map_err(|reason| ReconcileError::Roster {
            path: PathBuf::from(path),
            reason,
        })
}

/// Stages every valid roster row in `reconcile_rows` (the first occurrence of each ABHA keeps
/// its row number). Postgres, not memory, de-duplicates: a million rows cost a thousand
/// statements.
pub(super) async fn stage(store: &Store, run: Uuid, path: &Path) -> Result<(), ReconcileError> {
    let (mut rx, reader) = chunks(store, path)?;
    while let Some(chunk) = rx.recv().await {
        let (hashes, rows): (Vec<Vec<u8>>, Vec<i64>) = chunk
            .into_iter()
            .filter_map(|i| match i {
                Item::Valid(r) => Some((r.hash, r.row as i64)),
                Item::Invalid(_) => None,
            })
            .unzip();
        if !hashes.is_empty() {
            store.stage_roster_rows(run, &hashes, &rows).await?;
        }
    }
    finish_reader(path, reader).await?;
    store.mark_staged(run, false).await?;
    Ok(())
}

/// Looks up, at most `concurrency` at a time, the staged first occurrences that have no
/// answer yet, in roster order; answers are recorded every [`RECORD_EVERY`] lookups, so a
/// killed run redoes at most those in flight and unrecorded.
#[allow(clippy::too_many_arguments)]
pub(super) async fn check(
    store: &Store,
    client: &Arc<AbdmClient>,
    gate: &Arc<ReconcileGate>,
    benefit: &str,
    run: Uuid,
    path: &Path,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), ReconcileError> {
    let (mut rx, reader) = chunks(store, path)?;
    let mut lookups = Lookups::new(store, run, concurrency);
    while let Some(chunk) = rx.recv().await {
        let rows: Vec<RosterRow> = chunk
            .into_iter()
            .filter_map(|i| match i {
                Item::Valid(r) => Some(r),
                Item::Invalid(_) => None,
            })
            .collect();
        let hashes: Vec<Vec<u8>> = rows.iter().map(|r| r.hash.clone()).collect();
        let todo: std::collections::HashSet<(Vec<u8>, i64)> = store
            .staged_rows(run, &hashes)
            .await?
            .into_iter()
            .filter(|s| s.class.is_none())
            .filter_map(|s| s.first_row.map(|r| (s.subject_hash, r)))
            .collect();
        for r in rows {
            if !todo.contains(&(r.hash.clone(), r.row as i64)) {
                continue;
            }
            let (client, gate, benefit) = (client.clone(), gate.clone(), benefit.to_string());
            lookups
                .spawn(
                    async move { lookup(&client, &gate, &benefit, r.hash, &r.abha, false).await },
                    progress,
                )
                .await?;
        }
    }
    lookups.finish(progress).await?;
    finish_reader(path, reader).await
}

/// Lookups in flight (tokio tasks, so they run while the next chunk is read) and answers not
/// yet recorded.
pub(super) struct Lookups<'a> {
    store: &'a Store,
    run: Uuid,
    concurrency: usize,
    tasks: JoinSet<CheckResult>,
    done: Vec<CheckResult>,
    counted: u64,
    drift: u64,
}

impl<'a> Lookups<'a> {
    pub(super) fn new(store: &'a Store, run: Uuid, concurrency: usize) -> Self {
        Self {
            store,
            run,
            concurrency: concurrency.max(1),
            tasks: JoinSet::new(),
            done: Vec::with_capacity(RECORD_EVERY),
            counted: 0,
            drift: 0,
        }
    }

    /// Starts a lookup once fewer than `concurrency` run.
    pub(super) async fn spawn(
        &mut self,
        f: impl Future<Output = CheckResult> + Send + 'static,
        progress: &Progress,
    ) -> Result<(), ReconcileError> {
        while self.tasks.len() >= self.concurrency {
            self.reap(progress).await?;
        }
        self.tasks.spawn(f);
        Ok(())
    }

    async fn reap(&mut self, progress: &Progress) -> Result<(), ReconcileError> {
        if let Some(r) = self.tasks.join_next().await {
            let r = r.expect("lookup task");
            self.counted += 1;
            if r.class != super::check::class::LINKED && r.class != super::check::class::NOT_LINKED
            {
                self.drift += 1;
            }
            progress.set(self.counted, &format!("{} not as expected", self.drift));
            self.done.push(r);
            if self.done.len() >= RECORD_EVERY {
                self.store.record_checks(self.run, &self.done).await?;
                self.done.clear();
            }
        }
        Ok(())
    }

    /// Waits for every lookup and records the rest.
    pub(super) async fn finish(mut self, progress: &Progress) -> Result<(), ReconcileError> {
        while !self.tasks.is_empty() {
            self.reap(progress).await?;
        }
        self.store.record_checks(self.run, &self.done).await?;
        Ok(())
    }
}
