//! `abha-bulk submit`: a CSV file → a batch of jobs, its outbox row, and the rejected rows.
//!
//! Streaming in constant memory: a blocking thread reads, validates, encrypts and hashes rows
//! and hands chunks over a bounded channel to the inserter, which writes each chunk (jobs,
//! duplicates recorded as such) in one transaction, two chunks at a time. Every row counted
//! as accepted is committed before the command returns. A file already submitted for the
//! same kind and benefit (a completed batch) is refused unless `force`.
//!
//! Atomic: the batch gets its outbox row (one row standing for all its jobs, which the relay
//! expands) only when the whole file is stored and the batch turns `active` (one
//! transaction). A submit that fails (a database error, an unreadable file) or is interrupted
//! (SIGTERM/Ctrl-C: `submit_until`'s `stop`) marks its batch `aborted`; none of its rows runs
//! and the same file may be submitted again.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ingest::csv::{CsvIngest, IngestError, RowResult};
use crate::jobs::kind::JobKind;
use crate::store::batches::{ChunkOutcome, NewBatch, PreparedRow, RejectedRow};
use crate::store::submits::UploadConflict;
use crate::store::{Store, StoreError};

/// Rows per insert transaction.
pub const CHUNK_ROWS: usize = 5000;

/// Chunks written at once.
const INSERTERS: usize = 2;

/// What to submit.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// The CSV file.
    pub path: PathBuf,
    /// Job kind of every row.
    pub kind: JobKind,
    /// Benefit (programme) name.
    pub benefit: String,
    /// Submit even when the same file was submitted before.
    pub force: bool,
    /// The batch's priority within its programme's share of the rate.
    pub priority: crate::scheduler::Priority,
}

/// What a submission did.
#[derive(Debug, Clone)]
pub struct SubmitSummary {
    /// The new batch.
    pub batch: Uuid,
    /// Data rows read.
    pub total: u64,
    /// Jobs created.
    pub accepted: u64,
    /// Rows rejected (invalid).
    pub rejected: u64,
    /// Rows identical to an earlier row (run once).
    pub duplicates: u64,
    /// Header warnings (ignored columns, ...).
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a submission could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a usable CSV for this kind (header problems, ...).
    #[error("{path}")]
    Ingest {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: IngestError,
    },
    /// The same file was submitted before.
    #[error(
        "{path} was already submitted for {kind} / {benefit} as batch {batch} on {when}; use --force to submit it again"
    )]
    AlreadySubmitted {
        /// The file.
        path: PathBuf,
        /// Kind.
        kind: JobKind,
        /// Benefit.
        benefit: String,
        /// Earlier batch.
        batch: Uuid,
        /// When.
        when: String,
    },
    /// The same file is being submitted right now (two uploads at once make one batch).
    #[error(
        "{path} is being submitted right now as batch {batch}; wait for it (abha-bulk status {batch})"
    )]
    BeingSubmitted {
        /// The file.
        path: PathBuf,
        /// The batch being submitted.
        batch: Uuid,
    },
    /// Interrupted before the whole file was stored.
    #[error(
        "submit interrupted: batch {batch} was aborted and none of its rows will run; submit the file again"
    )]
    Interrupted {
        /// The aborted batch.
        batch: Uuid,
    },
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Progress reported while a file streams through.
pub trait Progress: Send + Sync {
    /// `bytes` of the file read, `rows` read so far.
    fn update(&self, bytes: u64, rows: u64);
}

impl Progress for () {
    fn update(&self, _: u64, _: u64) {}
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

enum Chunk {
    Rows(Vec<PreparedRow>, Vec<RejectedRow>),
    Done { total: u64, warnings: Vec<String> },
    Failed(SubmitError),
}

/// Submits a file.
pub async fn submit(
    store: &Store,
    req: &SubmitRequest,
    progress: std::sync::Arc<dyn Progress>,
) -> Result<SubmitSummary, SubmitError> {
    submit_until(store, req, progress, &CancellationToken::new()).await
}

/// Submits a file unless `stop` fires first (the batch is then aborted).
pub async fn submit_until(
    store: &Store,
    req: &SubmitRequest,
    progress: std::sync::Arc<dyn Progress>,
    stop: &CancellationToken,
) -> Result<SubmitSummary, SubmitError> {
    let started = Instant::now();
    let io_err = |source| SubmitError::Io {
        path: req.path.clone(),
        source,
    };
    let sha = {
        let path = req.path.clone();
        tokio::task::spawn_blocking(move || file_sha256(&path))
            .await
            .expect("hashing task")
            .map_err(io_err)?
    };
    if !req.force
        && let Some(prev) = store.previous_upload(&sha, req.kind, &req.benefit).await?
    {
        return Err(SubmitError::AlreadySubmitted {
            path: req.path.clone(),
            kind: req.kind,
            benefit: req.benefit.clone(),
            batch: prev.id,
            when: prev.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        });
    }
    // Open and read the header before creating the batch: a bad header creates nothing.
    let file = File::open(&req.path).map_err(io_err)?;
    let ingest = CsvIngest::new(
        BufReader::with_capacity(1 << 20, file),
        req.kind,
        Utc::now().date_naive(),
    )
    .map_err(|source| SubmitError::Ingest {
        path: req.path.clone(),
        source,
    })?;
    let file_name = req
        .path
        .file_name()
        .map(|n| n.to_string_lossy().to_string());
    let created = store
        .create_upload_batch(
            NewBatch {
                kind: req.kind,
                benefit: &req.benefit,
                source: "csv",
                file_name: file_name.as_deref(),
                file_sha256: Some(&sha),
                parent: None,
                priority: req.priority,
            },
            req.force,
        )
        .await?;
    let batch = match created {
        Ok(batch) => batch,
        Err(UploadConflict::InProgress(other)) => {
            return Err(SubmitError::BeingSubmitted {
                path: req.path.clone(),
                batch: other.id,
            });
        }
        Err(UploadConflict::Done(prev)) => {
            return Err(SubmitError::AlreadySubmitted {
                path: req.path.clone(),
                kind: req.kind,
                benefit: req.benefit.clone(),
                batch: prev.id,
                when: prev.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            });
        }
    };
    match store_rows(store, req, batch, ingest, progress, stop).await {
        Ok((total, accepted, rejected, duplicates, warnings)) => Ok(SubmitSummary {
            batch,
            total,
            accepted,
            rejected,
            duplicates,
            warnings,
            elapsed: started.elapsed(),
        }),
        Err(e) => {
            let why = match &e {
                SubmitError::Interrupted { .. } => "the submit was interrupted".to_string(),
                other => format!("the submit failed: {other}"),
            };
            match store.abort_submit(batch, &why).await {
                Ok(_) => {
                    tracing::warn!(batch = %batch, "submit stopped; batch aborted, none of its rows will run")
                }
                Err(a) => tracing::warn!(batch = %batch, error = %a,
                    "submit stopped and the batch could not be marked aborted; its rows cannot run (no outbox rows) and housekeeping will abort it"),
            }
            Err(e)
        }
    }
}

type Counts = (u64, u64, u64, u64, Vec<String>);

/// Streams the rows into `batch` and activates it; the caller aborts the batch on `Err`.
async fn store_rows(
    store: &Store,
    req: &SubmitRequest,
    batch: Uuid,
    ingest: CsvIngest<BufReader<File>>,
    progress: std::sync::Arc<dyn Progress>,
    stop: &CancellationToken,
) -> Result<Counts, SubmitError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let reader = {
        let store = store.clone();
        let path = req.path.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            read_chunks(ingest, &store, &path, tx, progress.as_ref())
        })
    };
    // Two chunks are written at once: Postgres uses both cores while the reader prepares more.
    let (mut accepted, mut rejected, mut duplicates) = (0u64, 0u64, 0u64);
    let mut end = None;
    let mut writers = tokio::task::JoinSet::new();
    // Chunks are inserted without ON CONFLICT until one repeats a stored row (most files
    // repeat none); from then on every chunk takes the path that records duplicates.
    let repeats = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut failure = None;
    loop {
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = stop.cancelled() => {
                failure = Some(SubmitError::Interrupted { batch });
                break;
            }
        };
        let Some(chunk) = chunk else { break };
        match chunk {
            Chunk::Rows(rows, rejections) => {
                while writers.len() >= INSERTERS {
                    let (a, r, d) = writers
                        .join_next()
                        .await
                        .expect("a writer")
                        .expect("writer task")?;
                    (accepted, rejected, duplicates) = (accepted + a, rejected + r, duplicates + d);
                }
                let store = store.clone();
                let (kind, benefit) = (req.kind, req.benefit.clone());
                let repeats = repeats.clone();
                writers.spawn(async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    let out = if rows.is_empty() {
                        ChunkOutcome::default()
                    } else if !repeats.load(Relaxed)
                        && let Some(out) =
                            store.insert_new_jobs(batch, kind, &benefit, &rows).await?
                    {
                        out
                    } else {
                        repeats.store(true, Relaxed);
                        store.insert_jobs(batch, kind, &benefit, &rows).await?
                    };
                    store.insert_rejections(batch, &rejections).await?;
                    Ok::<_, StoreError>((out.accepted, rejections.len() as u64, out.duplicates))
                });
            }
            Chunk::Done { total, warnings } => end = Some((total, warnings)),
            Chunk::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    while let Some(done) = writers.join_next().await {
        let (a, r, d) = done.expect("writer task")?;
        (accepted, rejected, duplicates) = (accepted + a, rejected + r, duplicates + d);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    reader.await.expect("reader task");
    let (total, warnings) = end.unwrap_or_default();
    store
        .finish_submit(batch, total, accepted, rejected, duplicates)
        .await?;
    Ok((total, accepted, rejected, duplicates, warnings))
}

fn read_chunks<R: Read>(
    mut ingest: CsvIngest<R>,
    store: &Store,
    path: &Path,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    progress: &dyn Progress,
) {
    let warnings = ingest.warnings().to_vec();
    let mut rows = Vec::with_capacity(CHUNK_ROWS);
    let mut rejections = Vec::new();
    let mut total = 0u64;
    loop {
        let next = ingest.next();
        let flush = match &next {
            None => true,
            Some(_) => rows.len() + rejections.len() >= CHUNK_ROWS,
        };
        if flush && (!rows.is_empty() || !rejections.is_empty()) {
            let chunk = Chunk::Rows(
                std::mem::replace(&mut rows, Vec::with_capacity(CHUNK_ROWS)),
                std::mem::take(&mut rejections),
            );
            if tx.blocking_send(chunk).is_err() {
                return;
            }
            progress.update(ingest.bytes_read(), total);
        }
        match next {
            None => break,
            Some(Err(e)) => {
                let _ = tx.blocking_send(Chunk::Failed(SubmitError::Ingest {
                    path: path.to_path_buf(),
                    source: e,
                }));
                return;
            }
            Some(Ok(RowResult::Accepted(row))) => {
                total += 1;
                rows.push(store.prepare(row.row_number as i64, row.external_ref, &row.job));
            }
            Some(Ok(RowResult::Rejected(r))) => {
                total += 1;
                rejections.push(RejectedRow {
                    row_number: r.row_number as i64,
                    external_ref: r.external_ref,
                    column: r.column,
                    reason: r.reason,
                });
            }
        }
    }
    progress.update(ingest.bytes_read(), total);
    let _ = tx.blocking_send(Chunk::Done { total, warnings });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sha256_is_the_sha256_of_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        // Larger than the 1 MiB read buffer, with a BOM and CRLF: every byte counts.
        let mut data = "\u{FEFF}mobile\r\n".as_bytes().to_vec();
        while data.len() < 3 << 20 {
            data.extend_from_slice(b"9876543210\r\n");
        }
        std::fs::write(&path, &data).unwrap();
        let expected: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(file_sha256(&path).unwrap(), expected);
    }
}
