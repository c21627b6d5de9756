//! Operator views: batch status (rate, share, ETA), the per-row CSV report, retry-failed,
//! cancel.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::store::batch_views::RateWindow;
use crate::store::batches::{BatchInfo, StateCounts};
use crate::store::{Store, StoreError};

pub mod schedule;
pub use schedule::{EtaBasis, Plan, Planned};

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
    /// `low`, `normal`, `high` or `urgent`.
    pub priority: String,
    /// Its place among the active batches, its share and ETA (`None`: not active).
    pub planned: Option<Planned>,
    /// Active batches in all.
    pub active: usize,
    /// Active batches of its programme.
    pub programme_active: usize,
}

impl BatchStatus {
    /// Seconds until the open jobs are done: at its share of the rate with the other active
    /// batches' work accounted for when the scheduler has said, else at its own rate.
    pub fn eta_secs(&self) -> Option<f64> {
        let open = self.counts.open() as f64;
        if open <= 0.0 {
            return None;
        }
        match &self.planned {
            Some(p) if p.basis == Some(EtaBasis::Scheduled) => p.eta_secs,
            _ => (self.rate > 0.0).then(|| open / self.rate),
        }
    }

    /// What [`BatchStatus::eta_secs`] is based on.
    pub fn eta_basis(&self) -> Option<EtaBasis> {
        self.eta_secs()?;
        Some(match &self.planned {
            Some(p) if p.basis == Some(EtaBasis::Scheduled) => EtaBasis::Scheduled,
            _ => EtaBasis::Measured,
        })
    }

    /// The scheduler's share (fraction) and rate (calls/s), when fresh.
    pub fn share(&self) -> Option<(f64, f64)> {
        let p = self.planned.as_ref()?;
        Some((p.share?, p.rate?))
    }

    /// The share line of `status`: priority, share of the rate, place in the queue.
    pub fn share_line(&self) -> String {
        let mut line = format!("priority {}", self.priority);
        match (&self.planned, self.share()) {
            (Some(p), Some((share, rate))) => line.push_str(&format!(
                "; share {} of the rate ({rate:.1} calls/s); expected to finish {} of the {} active batches ({}), the ETA counting their work",
                percent(share),
                ordinal(p.position),
                self.active,
                if self.programme_active <= 1 {
                    format!("{}'s only one", p.programme)
                } else {
                    format!(
                        "{} of {}'s {}",
                        ordinal(p.programme_position),
                        p.programme,
                        self.programme_active
                    )
                },
            )),
            (Some(p), None) => line.push_str(&format!(
                "; share unknown (no scheduler has reported one for it in the last {:.0} s), ETA from its own rate; expected to finish {} of the {} active batches",
                schedule::SHARE_FRESH_SECS,
                ordinal(p.position),
                self.active,
            )),
            (None, _) if self.batch.state == "submitting" => {
                line.push_str("; no share yet (still being submitted)")
            }
            (None, _) => {}
        }
        line
    }

    /// The lines `abha-bulk status` prints.
    pub fn render(&self) -> String {
        let b = &self.batch;
        let c = &self.counts;
        let eta = match self.eta_secs() {
            Some(s) => format_duration(s),
            None if b.state == "cancelled" => "none (cancelled)".into(),
            None if c.open() == 0 => "done".into(),
            None if self.share().is_some() => "unknown (no rate is scheduled for it)".into(),
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
            "batch {} {} / {} ({}{}), {}\n  rows {}: accepted {}, rejected {}, duplicates {}\n  jobs: queued {}, running {}, retrying {}, succeeded {}, failed {}, dead {}, cancelled {}\n  {}, ETA {}\n  {}",
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
            self.share_line(),
        )
    }

    /// The batch as JSON: what `GET /v1/batches/{id}` answers and `status --output json`
    /// prints (docs/api.md lists the fields). `position` counts among the active batches of
    /// the batch's own programme, so a programme's key learns nothing of the others'.
    pub fn to_json(&self) -> Value {
        let b = &self.batch;
        let p = self.planned.as_ref();
        json!({
            "id": b.id, "kind": b.kind, "benefit": b.benefit, "source": b.source,
            "state": b.state, "file_name": b.file_name, "total_rows": b.total_rows,
            "accepted_rows": b.accepted_rows, "rejected_rows": b.rejected_rows,
            "duplicate_rows": b.duplicate_rows, "created_at": b.created_at,
            "finished_at": b.finished_at,
            "priority": self.priority,
            "counts": self.counts.0,
            "open": self.counts.open(),
            "rate_per_second": self.rate,
            "share": self.share().map(|s| s.0),
            "rate": self.share().map(|s| s.1),
            "backlog": p.and_then(|p| p.backlog),
            "eta_seconds": self.eta_secs(),
            "eta_basis": self.eta_basis().map(EtaBasis::as_str),
            "position": p.map(|p| p.programme_position),
            "active_in_programme": p.map(|_| self.programme_active),
        })
    }
}

/// `25%`, `0.5%`.
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p > 0.0 && p < 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// `1st`, `2nd`, `3rd`, `11th`, `22nd`.
pub fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
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

/// Reads the status of a batch, with its place among its programme's active batches: where
/// the scheduler is silent, only they are measured (their order is the batch's `position`;
/// other programmes' batches matter only through their shares).
pub async fn status(store: &Store, batch: &BatchInfo) -> Result<BatchStatus, StoreError> {
    status_measuring(store, batch, |p| p == batch.benefit).await
}

/// [`status`], measuring the batches of the programmes `measure` accepts where no share is
/// known (every programme for a place among all active batches).
pub async fn status_measuring(
    store: &Store,
    batch: &BatchInfo,
    measure: impl Fn(&str) -> bool,
) -> Result<BatchStatus, StoreError> {
    let counts = store.batch_counts(batch.id).await?;
    let known = HashMap::from([(batch.id, counts.open())]);
    let plan = Plan::load(store, &known, measure).await?;
    status_in(store, batch, counts, &plan).await
}

/// The status of a batch whose jobs were just counted, in a plan already loaded (a list
/// loads the plan once for all its batches).
pub async fn status_in(
    store: &Store,
    batch: &BatchInfo,
    counts: StateCounts,
    plan: &Plan,
) -> Result<BatchStatus, StoreError> {
    let window = store.batch_rate(batch.id).await?;
    let batch = store
        .batch(batch.id)
        .await?
        .unwrap_or_else(|| batch.clone());
    let planned = plan.batches.get(&batch.id).cloned();
    let priority = match &planned {
        Some(p) => p.priority.clone(),
        None => store.batch_priority(batch.id).await?,
    };
    let programme_active = planned
        .as_ref()
        .map(|p| plan.programme_size(&p.programme))
        .unwrap_or(0);
    Ok(BatchStatus {
        batch,
        counts,
        rate: window.per_sec(),
        window,
        priority,
        planned,
        active: plan.active,
        programme_active,
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

    fn batch_status(state: &str, planned: Option<Planned>, open: i64) -> BatchStatus {
        BatchStatus {
            batch: BatchInfo {
                id: uuid::Uuid::nil(),
                kind: "benefit-link".into(),
                benefit: "PMJAY".into(),
                source: "csv".into(),
                file_name: None,
                state: state.into(),
                total_rows: 10,
                accepted_rows: 10,
                rejected_rows: 0,
                duplicate_rows: 0,
                created_at: chrono::Utc::now(),
                finished_at: None,
            },
            counts: StateCounts([("queued".to_string(), open)].into()),
            rate: 0.5,
            window: RateWindow {
                finished: 30,
                secs: 60.0,
            },
            priority: "high".into(),
            planned,
            active: 3,
            programme_active: 1,
        }
    }

    fn planned(share: Option<f64>, eta: Option<f64>, basis: Option<EtaBasis>) -> Planned {
        Planned {
            programme: "PMJAY".into(),
            priority: "high".into(),
            share,
            rate: share.map(|s| s * 20.0),
            backlog: share.map(|_| 10),
            open: 10,
            eta_secs: eta,
            basis,
            position: 2,
            programme_position: 1,
        }
    }

    #[test]
    fn status_says_where_its_eta_comes_from() {
        // Scheduled: the plan's ETA, not open / own rate (10 / 0.5 = 20 s).
        let s = batch_status(
            "active",
            Some(planned(Some(0.5), Some(1.5), Some(EtaBasis::Scheduled))),
            10,
        );
        assert_eq!(
            (s.eta_secs(), s.eta_basis()),
            (Some(1.5), Some(EtaBasis::Scheduled))
        );
        let text = s.render();
        assert!(text.contains("ETA 2s"), "{text}");
        assert!(
            text.contains("priority high; share 50% of the rate (10.0 calls/s); expected to finish 2nd of the 3 active batches (PMJAY's only one)"),
            "{text}"
        );
        let v = s.to_json();
        assert_eq!(
            (v["share"].as_f64(), v["position"].as_u64()),
            (Some(0.5), Some(1))
        );
        // No share: its own rate, said so.
        let s = batch_status(
            "active",
            Some(planned(None, Some(20.0), Some(EtaBasis::Measured))),
            10,
        );
        assert_eq!(
            (s.eta_secs(), s.eta_basis()),
            (Some(20.0), Some(EtaBasis::Measured))
        );
        assert!(s.render().contains("share unknown"), "{}", s.render());
        assert!(s.to_json()["share"].is_null());
        // Not active: no share, no place; done or still being submitted.
        let s = batch_status("finished", None, 0);
        assert_eq!((s.eta_secs(), s.eta_basis()), (None, None));
        assert!(
            s.render().ends_with("ETA done\n  priority high"),
            "{}",
            s.render()
        );
        assert!(s.to_json()["position"].is_null());
        let s = batch_status("submitting", None, 10);
        assert!(
            s.render()
                .ends_with("priority high; no share yet (still being submitted)")
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(5.2), "5s");
        assert_eq!(format_duration(125.0), "2m 05s");
        assert_eq!(format_duration(3723.0), "1h 02m 03s");
        assert_eq!(percent(0.25), "25%");
        assert_eq!(percent(0.004), "0.4%");
        let ords: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal).into();
        assert_eq!(
            ords,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"
            ]
        );
    }
}
