//! Operator views: batch status (rate, ETA), the per-row CSV report, retry-failed, cancel.

use crate::store::batch_views::RateWindow;
use crate::store::batches::{BatchInfo, StateCounts};
use crate::store::{Store, StoreError};

/// Status of one batch.
#[derive(Debug, Clone)]
pub struct BatchStatus {
    /// The batch.
    pub batch: BatchInfo,
    /// Jobs by state.
    pub counts: StateCounts,
    /// Jobs finished per second, measured on this batch (see [`Store::batch_rate`]).
    pub rate: f64,
    /// What `rate` was measured over.
    pub window: RateWindow,
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
            None if b.state == "cancelled" => "none (cancelled)".into(),
            None if c.open() == 0 => "done".into(),
            None => "unknown (no job finished in the last minute)".into(),
        };
        let rate = if c.open() > 0 {
            format!(
                "rate {:.1} jobs/s over the last {}",
                self.rate,
                format_duration(self.window.secs.clamp(1.0, 60.0))
            )
        } else if self.window.finished > 0 {
            format!(
                "rate {:.1} jobs/s on average ({} jobs in {})",
                self.rate,
                self.window.finished,
                format_duration(self.window.secs)
            )
        } else {
            "rate -".to_string()
        };
        format!(
            "batch {} {} / {} ({}{}), {}\n  rows {}: accepted {}, rejected {}, duplicates {}\n  jobs: queued {}, running {}, retrying {}, succeeded {}, failed {}, dead {}, cancelled {}\n  {}, ETA {}",
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
            rate,
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
    let window = store.batch_rate(batch.id).await?;
    let batch = store
        .batch(batch.id)
        .await?
        .unwrap_or_else(|| batch.clone());
    Ok(BatchStatus {
        batch,
        counts,
        rate: window.per_sec(),
        window,
    })
}

/// Header of the per-row report.
pub const REPORT_HEADER: [&str; 12] = [
    "row",
    "external_ref",
    "identifier",
    "state",
    "outcome",
    "abdm_code",
    "rejected_column",
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

mod output;
pub use output::{ReportError, ReportTarget, Reveal, os_account, write_report, write_report_to};

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
