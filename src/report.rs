//! Operator views: batch status (rate, ETA), the per-row CSV report, retry-failed, cancel.

use std::path::Path;

use futures::TryStreamExt;
use uuid::Uuid;

use crate::store::batches::{BatchInfo, StateCounts};
use crate::store::{Store, StoreError};

/// Status of one batch.
#[derive(Debug, Clone)]
pub struct BatchStatus {
    /// The batch.
    pub batch: BatchInfo,
    /// Jobs by state.
    pub counts: StateCounts,
    /// Jobs finished per second over the last minute.
    pub rate: f64,
}

impl BatchStatus {
    /// Seconds until the open jobs are done at the current rate.
    pub fn eta_secs(&self) -> Option<f64> {
        let open = self.counts.open() as f64;
        (open > 0.0 && self.rate > 0.0).then(|| open / self.rate)
    }

    /// The lines `abha-bulk status` prints.
    pub fn render(&self) -> String {
        let b = &self.batch;
        let c = &self.counts;
        let eta = match self.eta_secs() {
            Some(s) => format_duration(s),
            None if c.open() == 0 => "done".into(),
            None => "unknown (no job finished in the last minute)".into(),
        };
        format!(
            "batch {} {} / {} ({}{}), {}\n  rows {}: accepted {}, rejected {}, duplicates {}\n  jobs: queued {}, running {}, retrying {}, succeeded {}, failed {}, dead {}, cancelled {}\n  rate {:.1} jobs/s over the last minute, ETA {}",
            b.id,
            b.kind,
            b.benefit,
            b.source,
            b.file_name
                .as_ref()
                .map(|f| format!(" {f}"))
                .unwrap_or_default(),
            b.state,
            b.total_rows,
            b.accepted_rows,
            b.rejected_rows,
            b.duplicate_rows,
            c.get("queued"),
            c.get("running"),
            c.get("retrying"),
            c.get("succeeded"),
            c.get("failed"),
            c.get("dead"),
            c.get("cancelled"),
            self.rate,
            eta,
        )
    }
}

/// `1h 02m 03s`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// Reads the status of a batch.
pub async fn status(store: &Store, batch: &BatchInfo) -> Result<BatchStatus, StoreError> {
    let counts = store.batch_counts(batch.id).await?;
    let recent = store.finished_recently(batch.id, 60).await?;
    let batch = store
        .batch(batch.id)
        .await?
        .unwrap_or_else(|| batch.clone());
    Ok(BatchStatus {
        batch,
        counts,
        rate: recent as f64 / 60.0,
    })
}

/// Header of the per-row report.
pub const REPORT_HEADER: [&str; 11] = [
    "row",
    "external_ref",
    "identifier",
    "state",
    "outcome",
    "abdm_code",
    "message",
    "attempts",
    "finished_at",
    "result",
    "result_revealed",
];

/// Escapes a cell that a spreadsheet would run as a formula (`= + - @`, tab, CR).
pub fn spreadsheet_safe(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_string(),
    }
}

/// How a report was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportCounts {
    /// Lines written (without the header).
    pub rows: u64,
    /// Results revealed.
    pub revealed: u64,
}

/// Writes the per-row report of a batch: one line per input row, accepted or rejected.
/// With `reveal`, the `result_revealed` column holds the identifiers found or created, and the
/// export is recorded in the audit table.
pub async fn write_report(
    store: &Store,
    batch: Uuid,
    out: &Path,
    reveal: Option<(&str, Option<&str>)>,
) -> Result<ReportCounts, ReportError> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| ReportError::Io(out.display().to_string(), e))?;
    }
    let file =
        std::fs::File::create(out).map_err(|e| ReportError::Io(out.display().to_string(), e))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    w.write_record(REPORT_HEADER)
        .map_err(|e| ReportError::Csv(out.display().to_string(), e))?;
    let mut counts = ReportCounts::default();
    let mut rows = std::pin::pin!(store.report_rows(batch));
    while let Some(r) = rows.try_next().await? {
        let revealed = match (&reveal, &r.result_ciphertext) {
            (Some(_), Some(ct)) => {
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
            r.message.unwrap_or_default(),
            r.attempts.to_string(),
            r.finished_at
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default(),
            r.result.unwrap_or_default(),
            revealed,
        ];
        w.write_record(cells.iter().map(|c| spreadsheet_safe(c)))
            .map_err(|e| ReportError::Csv(out.display().to_string(), e))?;
        counts.rows += 1;
    }
    w.flush()
        .map_err(|e| ReportError::Io(out.display().to_string(), e))?;
    if let Some((who, reason)) = reveal {
        store
            .audit_reveal(batch, who, reason, counts.revealed)
            .await?;
    }
    Ok(counts)
}

/// Writing a report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be written.
    #[error("cannot write {0}: {1}")]
    Io(String, std::io::Error),
    /// CSV encoding failed.
    #[error("cannot write {0}: {1}")]
    Csv(String, csv::Error),
    /// Reading failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored result does not decrypt.
    #[error(transparent)]
    Vault(#[from] crate::store::VaultError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_escaped() {
        assert_eq!(spreadsheet_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(spreadsheet_safe("+91"), "'+91");
        assert_eq!(spreadsheet_safe("-1"), "'-1");
        assert_eq!(spreadsheet_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(spreadsheet_safe("XX-XXXX-XXXX-1234"), "XX-XXXX-XXXX-1234");
        assert_eq!(spreadsheet_safe(""), "");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(5.2), "5s");
        assert_eq!(format_duration(125.0), "2m 05s");
        assert_eq!(format_duration(3723.0), "1h 02m 03s");
    }
}
