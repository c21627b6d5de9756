//! Writing the per-row report: where it may go, and the order of a `--reveal` export.
//!
//! A report file is never written over without `force`, never over the input file of any
//! batch (compared by SHA-256, the hash `submit` records), never into a directory that does
//! not exist, and never through an existing path: an existing file is removed and the new one
//! created exclusively (`create_new`), so a symlink or a hard link to another file is not
//! followed. `-` streams to standard output.
//!
//! A reveal is recorded in `reveal_audit` first; the plaintext is written only once that row
//! is committed, into a file of mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use uuid::Uuid;

use super::{REPORT_HEADER, ReportCounts, spreadsheet_safe};
use crate::store::{Store, StoreError};

/// Where a report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportTarget {
    /// Standard output (`--out -`).
    Stdout,
    /// A file.
    File {
        /// The path.
        path: PathBuf,
        /// Replace an existing file (never the input file of a batch).
        force: bool,
    },
}

impl ReportTarget {
    /// `-` is standard output, anything else a file.
    pub fn from_arg(out: &Path, force: bool) -> Self {
        if out.as_os_str() == "-" {
            Self::Stdout
        } else {
            Self::File {
                path: out.to_path_buf(),
                force,
            }
        }
    }

    /// How the target is named in messages.
    pub fn display(&self) -> String {
        match self {
            Self::Stdout => "standard output".into(),
            Self::File { path, .. } => path.display().to_string(),
        }
    }
}

/// Who reveals identifiers, and why.
#[derive(Debug, Clone, Copy)]
pub struct Reveal<'a> {
    /// The OS account the command runs as ([`os_account`]).
    pub os_user: &'a str,
    /// The person responsible, when named with `--operator`.
    pub operator: Option<&'a str>,
    /// Why (required, not blank).
    pub reason: &'a str,
}

/// Writing a report failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be written.
    #[error("cannot write {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// CSV encoding failed.
    #[error("cannot write {0}: {1}")]
    Csv(String, #[source] csv::Error),
    /// The file exists and `force` was not given.
    #[error("{0} already exists: choose another --out, or pass --force to replace it")]
    Exists(String),
    /// The target is the input file of a batch.
    #[error(
        "{path} is the input file of batch {batch}: it is never overwritten, choose another --out"
    )]
    InputFile {
        /// The file.
        path: String,
        /// The batch it was submitted as.
        batch: Uuid,
    },
    /// The folder of the target does not exist.
    #[error("the folder of {0} does not exist: create it first")]
    NoFolder(String),
    /// `--reveal` without a reason.
    #[error("--reveal needs --reason: why the identifiers are revealed (recorded in the audit)")]
    NoReason,
    /// Reading failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored result does not decrypt.
    #[error(transparent)]
    Vault(#[from] crate::store::VaultError),
}

/// The account this process runs as, from the kernel (the owner of `/proc/self`) and
/// `/etc/passwd`, not from `$USER`, which anyone can set: `alice (uid 1000)`.
pub fn os_account() -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            let uid = meta.uid();
            let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
                p.lines().find_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let id: u32 = f.nth(1)?.parse().ok()?;
                    (id == uid).then(|| name.to_string())
                })
            });
            return match name {
                Some(n) => format!("{n} (uid {uid})"),
                None => format!("uid {uid}"),
            };
        }
    }
    "unknown account".into()
}

/// Refuses a target that must not be written: an existing file without `force`, the input
/// file of a batch, a folder that does not exist.
async fn check_target(store: &Store, path: &Path, force: bool) -> Result<(), ReportError> {
    let shown = path.display().to_string();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(ReportError::NoFolder(shown));
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !force {
        return Err(ReportError::Exists(shown));
    }
    // Follow a symlink for the comparison: whatever it points to must not be an input.
    if meta.is_file() || meta.file_type().is_symlink() && path.is_file() {
        let p = path.to_path_buf();
        let sha = tokio::task::spawn_blocking(move || crate::submit::file_sha256(&p))
            .await
            .expect("hashing task")
            .map_err(|e| ReportError::Io(shown.clone(), e))?;
        if let Some(batch) = store.batch_of_file(&sha).await? {
            return Err(ReportError::InputFile { path: shown, batch });
        }
    } else if !meta.file_type().is_symlink() {
        return Err(ReportError::Io(
            shown,
            std::io::Error::other("not a regular file"),
        ));
    }
    Ok(())
}

/// Creates the report file exclusively (an existing one was checked and is removed first),
/// mode 0600 for a reveal, 0644 otherwise.
fn create_file(path: &Path, replace: bool, reveal: bool) -> std::io::Result<std::fs::File> {
    if replace {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if reveal { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = reveal;
    opts.open(path)
}

/// Writes the per-row report of a batch: one line per input row, accepted or rejected.
/// With `reveal`, the audit row is committed first, then `result_revealed` holds the
/// identifiers found or created.
pub async fn write_report(
    store: &Store,
    batch: Uuid,
    target: &ReportTarget,
    reveal: Option<Reveal<'_>>,
) -> Result<ReportCounts, ReportError> {
    if let ReportTarget::File { path, force } = target {
        check_target(store, path, *force).await?;
    }
    if let Some(r) = &reveal {
        if r.reason.trim().is_empty() {
            return Err(ReportError::NoReason);
        }
        let operator = r.operator.map(str::trim).filter(|o| !o.is_empty());
        store
            .audit_reveal(batch, r.os_user, operator, r.reason.trim())
            .await?;
    }
    let shown = target.display();
    let sink: Box<dyn Write + Send> = match target {
        ReportTarget::Stdout => Box::new(std::io::stdout()),
        ReportTarget::File { path, force } => Box::new(
            create_file(path, *force, reveal.is_some())
                .map_err(|e| ReportError::Io(shown.clone(), e))?,
        ),
    };
    let result = write_rows(store, batch, sink, &shown, reveal.is_some()).await;
    if result.is_err()
        && let ReportTarget::File { path, .. } = target
    {
        // No half-written report (and no half-written plaintext) is left behind.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Writes a batch's report into `sink` (the programme API streams it to the client this way,
/// so a revealed report never lies in clear in a temporary file). A reveal is audited first.
pub async fn write_report_to(
    store: &Store,
    batch: Uuid,
    sink: Box<dyn Write + Send>,
    reveal: Option<Reveal<'_>>,
) -> Result<ReportCounts, ReportError> {
    if let Some(r) = &reveal {
        if r.reason.trim().is_empty() {
            return Err(ReportError::NoReason);
        }
        let operator = r.operator.map(str::trim).filter(|o| !o.is_empty());
        store
            .audit_reveal(batch, r.os_user, operator, r.reason.trim())
            .await?;
    }
    write_rows(store, batch, sink, "the response", reveal.is_some()).await
}

fn csv_error(shown: &str, e: csv::Error) -> ReportError {
    if !matches!(e.kind(), csv::ErrorKind::Io(_)) {
        return ReportError::Csv(shown.to_string(), e);
    }
    match e.into_kind() {
        csv::ErrorKind::Io(io) => ReportError::Io(shown.to_string(), io),
        _ => unreachable!("checked above"),
    }
}

/// What the `result_revealed` cell of an erased row says.
pub const ERASED: &str = "erased";

async fn write_rows(
    store: &Store,
    batch: Uuid,
    sink: Box<dyn Write + Send>,
    shown: &str,
    reveal: bool,
) -> Result<ReportCounts, ReportError> {
    let mut w = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 16, sink));
    w.write_record(REPORT_HEADER)
        .map_err(|e| csv_error(shown, e))?;
    let mut counts = ReportCounts::default();
    let mut rows = std::pin::pin!(store.report_rows(batch));
    while let Some(r) = rows.try_next().await? {
        let revealed = match (reveal, &r.result_ciphertext) {
            // The value is gone for good: the report says so rather than leaving a blank.
            _ if r.erased => ERASED.to_string(),
            (true, Some(ct)) => {
                counts.revealed += 1;
                String::from_utf8_lossy(
                    &store
                        .vault
                        .decrypt(ct, crate::store::vault::Aad::JobResult(r.job_id))?,
                )
                .to_string()
            }
            _ => String::new(),
        };
        let cells = [
            r.row_number.map(|n| n.to_string()).unwrap_or_default(),
            r.external_ref.unwrap_or_default(),
            r.identifier.unwrap_or_default(),
            r.state,
            r.outcome.unwrap_or_default(),
            r.code.unwrap_or_default(),
            r.rejected_column.unwrap_or_default(),
            r.message.unwrap_or_default(),
            r.attempts.to_string(),
            r.finished_at
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default(),
            r.result.unwrap_or_default(),
            revealed,
        ];
        w.write_record(cells.iter().map(|c| spreadsheet_safe(c)))
            .map_err(|e| csv_error(shown, e))?;
        counts.rows += 1;
    }
    w.flush()
        .map_err(|e| ReportError::Io(shown.to_string(), e))?;
    Ok(counts)
}
