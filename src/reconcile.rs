//! `abha-bulk reconcile`: the nightly comparison of what a programme believes is linked (its
//! roster) with what ABDM says, and the repair of abha-bulk's own state.
//!
//! Every distinct roster ABHA is looked up (`GET /v3/profile/benefit/abha/{n}`) once, at the
//! operator's rate, and classified: `linked` (as expected), `missing_link`, `unknown`
//! (ABDM-1114) or `error` (ABDM); a roster row that is not valid is `invalid`, one that repeats
//! an earlier row's ABHA is `repeated` (pointing to the first). With `sweep_unexpected`, the
//! ABHAs this service linked before and that are absent from the roster are looked up too:
//! still linked → `unexpected_link`. Links other integrators made are not known to this
//! service and cannot be swept.
//!
//! Built for a state's roster (a million rows): the roster is streamed, never held; repeats
//! are found in Postgres (`reconcile_rows`, keyed by the ABHA's keyed hash), where each answer
//! is also recorded as it comes, so a run that is interrupted (SIGTERM, a deadline) and
//! started again with the same roster continues where it stopped (the run is found by the
//! roster's SHA-256). The report is written at the end, in roster order, from those answers.
//!
//! Passes: hash the file; stage its rows; look up what has no answer yet (progress totals
//! count exactly that); stage and look up the sweep; write the report (and, with `apply`,
//! queue link and de-link batches through the normal pipeline, never twice for the same
//! drift). Before all that the run repairs abha-bulk's own state (expired leases, lost
//! messages, batch counters). Safe to run twice, and while workers run.

use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use crate::abdm::AbdmClient;
use crate::jobs::kind::JobKind;
use crate::queue::Topology;
use crate::store::Store;
use crate::store::reconcile::RunCounts;

mod check;
mod fixes;
mod output;
mod repair;
mod roster;
mod sweep;
mod write;
pub use check::ReconcileGate;
use fixes::FixQueue;
pub use output::COLUMNS;
pub use output::prune_reports;
use output::{Progress, ReportWriter};
pub use repair::repair;

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct ReconcileRequest {
    /// Benefit name.
    pub benefit: String,
    /// Roster CSV: `abha_number` (+ optional `external_ref`), one row per beneficiary the
    /// programme believes is linked.
    pub roster: PathBuf,
    /// Queue link/de-link jobs that fix the drift.
    pub apply: bool,
    /// Where the CSV report goes.
    pub out: PathBuf,
    /// Replace an existing report file.
    pub force: bool,
    /// Start afresh even if an unfinished run of the same roster could be continued.
    pub restart: bool,
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// Also look up the ABHAs this service linked that the roster lacks (slow: one call
    /// each, over the whole history of the benefit).
    pub sweep_unexpected: bool,
}

/// What a run found and did.
#[derive(Debug, Clone)]
pub struct ReconcileSummary {
    /// Run id (table `reconcile_runs`).
    pub run: Uuid,
    /// Counts by class.
    pub counts: RunCounts,
    /// The CSV report.
    pub report: PathBuf,
    /// Batch of link jobs queued by `apply`.
    pub link_batch: Option<Uuid>,
    /// Batch of de-link jobs queued by `apply`.
    pub delink_batch: Option<Uuid>,
    /// Jobs whose lease had expired, jobs whose message was lost, batches whose counters or
    /// state were fixed.
    pub repairs: (u64, u64, u64),
    /// An unfinished run of the same roster was continued.
    pub resumed: bool,
    /// The progress totals: roster ABHA numbers and earlier links (with the sweep) this run
    /// looked up (repeats, and answers an interrupted run recorded, left out).
    pub looked_up: (u64, Option<u64>),
}

impl ReconcileSummary {
    /// The summary lines printed by the command.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let unexpected = match c.unexpected_link {
            Some(n) => format!(
                "{n} (only links abha-bulk made can be swept: links other integrators made are not known to it)"
            ),
            None => "not checked (--sweep-unexpected)".to_string(),
        };
        let mut s = format!(
            "reconciliation {}{}: {} roster rows ({} repeated, {} invalid)\n\
             drift (distinct ABHA numbers): linked as expected {}, missing link {}, unknown to ABDM {}, linked but not in roster {}\n\
             ABDM errors {} (lookups to check again), invalid roster rows {} (fix the roster)\n\
             report: {}\n\
             repaired: {} expired lease(s), {} unpublished or lost message(s), {} batch counter(s)",
            self.run,
            if self.resumed { " (continued)" } else { "" },
            c.roster_rows,
            c.repeated_rows,
            c.invalid_rows,
            c.linked_ok,
            c.missing_link,
            c.unknown,
            unexpected,
            c.abdm_errors,
            c.invalid_rows,
            self.report.display(),
            self.repairs.0,
            self.repairs.1,
            self.repairs.2
        );
        if let Some(b) = self.link_batch {
            s.push_str(&format!("\nqueued link jobs: batch {b}"));
        }
        if let Some(b) = self.delink_batch {
            s.push_str(&format!("\nqueued de-link jobs: batch {b}"));
        }
        s
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Postgres.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The roster cannot be read.
    #[error("roster {path}: {reason}")]
    Roster {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The report cannot be written.
    #[error("cannot write {0}: {1}")]
    Report(String, String),
}

/// Runs a reconciliation (or continues an interrupted one of the same roster).
pub async fn run(
    store: &Store,
    client: Arc<AbdmClient>,
    gate: Arc<ReconcileGate>,
    amqp_url: Option<&str>,
    topology: &Topology,
    req: &ReconcileRequest,
) -> Result<ReconcileSummary, ReconcileError> {
    // Refused before any work, and again when the report is moved into place.
    output::check_target(&req.out, req.force)?;
    let sha = {
        let path = req.roster.clone();
        tokio::task::spawn_blocking(move || roster::sha256(&path))
            .await
            .expect("roster hash")
            .map_err(|e| ReconcileError::Roster {
                path: req.roster.clone(),
                reason: e.to_string(),
            })?
    };
    let start = store
        .start_or_resume_reconcile(
            &req.benefit,
            &req.roster.display().to_string(),
            &sha,
            req.restart,
        )
        .await?;
    let run_id = start.id;
    if start.resumed {
        tracing::info!(run = %run_id, "reconciliation: continuing the unfinished run of this roster");
    }
    tracing::info!("reconciliation: repairing leases, unpublished messages and batch counters");
    let repairs = repair(store, amqp_url, topology).await;

    if !start.roster_staged {
        tracing::info!("reconciliation: reading the roster");
        roster::stage(store, run_id, &req.roster).await?;
    }
    let todo = store.reconcile_todo(run_id, false).await?;
    let mut looked_up = (todo, None);
    let progress = Progress::start("roster ABHA numbers looked up", todo);
    roster::check(
        store,
        &client,
        &gate,
        &req.benefit,
        run_id,
        &req.roster,
        req.concurrency,
        &progress,
    )
    .await?;
    progress.finish();

    if req.sweep_unexpected {
        if !start.sweep_staged {
            store.stage_sweep(run_id, &req.benefit).await?;
            store.mark_staged(run_id, true).await?;
        }
        // Only the earlier links the roster lacks and not yet answered: what will be looked up.
        let todo = store.reconcile_todo(run_id, true).await?;
        looked_up.1 = Some(todo);
        let progress = Progress::start("earlier links looked up", todo);
        sweep::check(
            store,
            &client,
            &gate,
            &req.benefit,
            run_id,
            req.concurrency,
            &progress,
        )
        .await?;
        progress.finish();
    }

    if req.apply {
        fixes::abort_unfinished(store, start.batches).await?;
        store.mark_open_fixes(run_id, &req.benefit).await?;
    }
    let mut links = req
        .apply
        .then(|| FixQueue::new(store, &req.benefit, JobKind::BenefitLink, run_id));
    let mut delinks = req
        .apply
        .then(|| FixQueue::new(store, &req.benefit, JobKind::BenefitDelink, run_id));
    let mut out = ReportWriter::create(&req.out, req.force)?;
    let rows = write::roster_lines(store, run_id, &req.roster, &mut out, links.as_mut()).await?;
    if req.sweep_unexpected {
        write::swept_lines(store, run_id, &mut out, delinks.as_mut()).await?;
    }
    out.finish()?;
    let link_batch = match links {
        Some(q) => q.finish().await?,
        None => None,
    };
    let delink_batch = match delinks {
        Some(q) => q.finish().await?,
        None => None,
    };

    let counts = counts(store, run_id, &rows, req.sweep_unexpected).await?;
    store
        .finish_reconcile(
            run_id,
            &counts,
            &req.out.display().to_string(),
            link_batch,
            delink_batch,
            repairs,
        )
        .await?;
    Ok(ReconcileSummary {
        run: run_id,
        counts,
        report: req.out.clone(),
        link_batch,
        delink_batch,
        repairs,
        resumed: start.resumed,
        looked_up,
    })
}

/// The run's counts: classes per distinct ABHA from Postgres, rows from the report pass.
async fn counts(
    store: &Store,
    run: Uuid,
    rows: &write::RowCounts,
    swept: bool,
) -> Result<RunCounts, ReconcileError> {
    let mut c = RunCounts {
        roster_rows: rows.roster_rows,
        repeated_rows: rows.repeated,
        invalid_rows: rows.invalid,
        unexpected_link: swept.then_some(0),
        ..RunCounts::default()
    };
    for (class, from_sweep, n) in store.reconcile_class_counts(run).await? {
        // Rows an interrupted attempt with the sweep staged do not count in a run without it.
        if from_sweep && !swept {
            continue;
        }
        match (class.as_deref(), from_sweep) {
            (Some(check::class::LINKED), false) => c.linked_ok += n,
            (Some(check::class::MISSING), false) => c.missing_link += n,
            (Some(check::class::UNKNOWN), _) => c.unknown += n,
            (Some(check::class::UNEXPECTED), true) => {
                c.unexpected_link = Some(c.unexpected_link.unwrap_or(0) + n)
            }
            (Some(check::class::ERROR), _) => c.abdm_errors += n,
            _ => {}
        }
    }
    Ok(c)
}
