//! `abha-bulk reconcile`: the nightly comparison of what a programme believes is linked (its
//! roster) with what ABDM says, and the repair of abha-bulk's own state.
//!
//! Every roster ABHA is looked up (`GET /v3/profile/benefit/abha/{n}`) at a low rate and
//! classified: `linked` (as expected), `missing_link`, `unknown` (ABDM-1114), `error`, or
//! `invalid` (the roster row itself). With `sweep_unexpected`, ABHAs this service linked
//! before and that are absent from the roster are looked up too (streamed from Postgres, one
//! ABDM call each): still linked → `unexpected_link`. Progress and an ETA are shown from the
//! start (a bar on a terminal, a log line every 10 s otherwise). With `apply`, a batch of link
//! jobs (missing links) and one of de-link jobs (unexpected links) go through the normal
//! pipeline; fixes already queued are not queued again. Before that, the run re-queues jobs
//! whose lease expired, jobs whose message was lost (only for kinds whose queue is empty), and
//! recomputes batch counters. Safe to run twice, and while workers run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use uuid::Uuid;

use crate::abdm::benefit::Beneficiary;
use crate::abdm::{AbdmClient, CallTrace};
use crate::ingest::csv::{CsvIngest, RowResult};
use crate::jobs::kind::{Job, JobKind};
use crate::pii::AbhaNumber;
use crate::queue::Topology;
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::store::reconcile::RunCounts;

mod fixes;
mod output;
mod repair;
use fixes::queue_fixes;
use output::{Progress, ReportWriter, count_records};
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
    /// Whether unexpected links were looked for.
    pub swept: bool,
}

impl ReconcileSummary {
    /// The summary lines printed by the command.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "reconciliation {}: {} roster rows; linked as expected {}, missing link {}, linked but not in roster {}, unknown to ABDM {}, errors {}\nreport: {}\nrepaired: {} expired lease(s), {} unpublished or lost message(s), {} batch counter(s)",
            self.run,
            c.roster_rows,
            c.linked_ok,
            c.missing_link,
            if self.swept {
                c.unexpected_link.to_string()
            } else {
                "not checked (--sweep-unexpected)".to_string()
            },
            c.unknown,
            c.errors,
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

enum Class {
    Linked,
    Missing,
    Unexpected,
    Unknown,
    Error,
    Invalid,
}

impl Class {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Linked => "linked",
            Self::Missing => "missing_link",
            Self::Unexpected => "unexpected_link",
            Self::Unknown => "unknown",
            Self::Error => "error",
            Self::Invalid => "invalid",
        }
    }
}

struct Line {
    row: Option<u64>,
    external_ref: Option<String>,
    abha: Option<AbhaNumber>,
    class: Class,
    code: String,
    detail: String,
}

async fn check(
    client: &AbdmClient,
    limiter: &Arc<RateLimiter>,
    benefit: &str,
    abha: &AbhaNumber,
) -> (bool, Result<(), (Class, String, String)>) {
    // Every request (a session refresh or certificate fetch included) takes a token.
    let mut trace = CallTrace::gated(limiter.clone());
    match client.benefit_lookup(&mut trace, benefit, abha).await {
        Ok(p) => (p.has(benefit), Ok(())),
        Err(e) if e.code() == "ABDM-1114" => (
            false,
            Err((
                Class::Unknown,
                e.code(),
                "ABHA number not found at ABDM".into(),
            )),
        ),
        Err(e) => {
            if e.disposition() == crate::abdm::Disposition::Throttled {
                limiter.on_throttled(e.retry_after()).await;
            }
            let msg = e
                .abdm()
                .map_or_else(|| e.to_string(), |a| a.message.clone());
            (false, Err((Class::Error, e.code(), msg)))
        }
    }
}

/// Runs a reconciliation.
pub async fn run(
    store: &Store,
    client: Arc<AbdmClient>,
    limiter: Arc<RateLimiter>,
    amqp_url: Option<&str>,
    topology: &Topology,
    req: &ReconcileRequest,
) -> Result<ReconcileSummary, ReconcileError> {
    let run_id = store
        .start_reconcile(&req.benefit, &req.roster.display().to_string())
        .await?;
    tracing::info!("reconciliation: repairing leases, unpublished messages and batch counters");
    let repairs = repair(store, amqp_url, topology).await;
    let roster_err = |reason: String| ReconcileError::Roster {
        path: req.roster.clone(),
        reason,
    };
    let roster_rows = {
        let path = req.roster.clone();
        tokio::task::spawn_blocking(move || count_records(&path))
            .await
            .expect("roster count")
            .map_err(|e| roster_err(e.to_string()))?
    };
    let progress = Progress::start("roster rows checked", roster_rows);
    let file = std::fs::File::open(&req.roster).map_err(|e| roster_err(e.to_string()))?;
    let ingest = CsvIngest::new(
        std::io::BufReader::new(file),
        JobKind::BenefitLookup,
        Utc::now().date_naive(),
    )
    .map_err(|e| roster_err(e.to_string()))?;
    // Roster rows stream from a blocking reader; lookups run `concurrency` at a time under the
    // rate limiter.
    let (tx, rx) = tokio::sync::mpsc::channel::<RowResult>(1024);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        for row in ingest {
            let row = row.map_err(|e| e.to_string())?;
            if tx.blocking_send(row).is_err() {
                break;
            }
        }
        Ok(())
    });
    let benefit = req.benefit.clone();
    let lines = tokio_stream_from(rx)
        .map(|row| {
            let client = client.clone();
            let limiter = limiter.clone();
            let benefit = benefit.clone();
            async move {
                match row {
                    RowResult::Rejected(r) => Line {
                        row: Some(r.row_number),
                        external_ref: r.external_ref,
                        abha: None,
                        class: Class::Invalid,
                        code: r.column,
                        detail: r.reason,
                    },
                    RowResult::Accepted(r) => {
                        let Job::BenefitLookup(abha) = r.job else {
                            unreachable!("benefit-lookup rows hold an ABHA number")
                        };
                        let (linked, result) = check(&client, &limiter, &benefit, &abha).await;
                        let (class, code, detail) = match result {
                            Ok(()) if linked => (Class::Linked, String::new(), String::new()),
                            Ok(()) => (
                                Class::Missing,
                                String::new(),
                                format!("not linked to {benefit} at ABDM"),
                            ),
                            Err(e) => e,
                        };
                        Line {
                            row: Some(r.row_number),
                            external_ref: r.external_ref,
                            abha: Some(abha),
                            class,
                            code,
                            detail,
                        }
                    }
                }
            }
        })
        .buffer_unordered(req.concurrency.max(1));
    let mut lines = std::pin::pin!(lines);
    let mut out = ReportWriter::create(&req.out)?;
    let mut counts = RunCounts::default();
    let mut roster_hashes: HashSet<Vec<u8>> = HashSet::new();
    let mut to_link = Vec::new();
    while let Some(line) = lines.next().await {
        counts.roster_rows += 1;
        if let Some(a) = &line.abha {
            roster_hashes.insert(store.vault.hash(a.expose()));
        }
        match line.class {
            Class::Linked => counts.linked_ok += 1,
            Class::Missing => {
                counts.missing_link += 1;
                if let Some(a) = &line.abha {
                    to_link.push((line.row, line.external_ref.clone(), a.clone()));
                }
            }
            Class::Unknown => counts.unknown += 1,
            Class::Error | Class::Invalid => counts.errors += 1,
            Class::Unexpected => {}
        }
        out.write(&line)?;
        progress.set(
            counts.roster_rows as u64,
            &format!("{} missing", counts.missing_link),
        );
    }
    progress.finish();
    reader.await.expect("roster reader").map_err(roster_err)?;

    // ABHAs this service linked before that the roster no longer has (opt-in: one ABDM call
    // each over the benefit's whole history).
    let mut to_delink = Vec::new();
    let sweep = if req.sweep_unexpected {
        let total = store.service_links_count(&req.benefit).await?;
        Some(Progress::start("earlier links checked", total))
    } else {
        None
    };
    let mut links = std::pin::pin!(
        futures::stream::iter(
            req.sweep_unexpected
                .then(|| store.service_links(&req.benefit))
        )
        .flatten()
    );
    let mut swept = 0u64;
    while let Some(link) = links.next().await {
        let (job_id, dedup, payload, result) = link?;
        swept += 1;
        if let Some(p) = &sweep {
            p.set(swept, &format!("{} unexpected", counts.unexpected_link));
        }
        let aad = crate::store::vault::Aad::JobResult(job_id);
        let abha = match result.and_then(|r| store.vault.decrypt(&r, aad).ok()) {
            Some(raw) => AbhaNumber::parse(&String::from_utf8_lossy(&raw)).ok(),
            None => match store.decrypt_job(job_id, JobKind::BenefitLink, &dedup, &payload) {
                Ok(Job::BenefitLink(Beneficiary::Abha(a))) => Some(a),
                _ => None,
            },
        };
        let Some(abha) = abha else { continue };
        if roster_hashes.contains(&store.vault.hash(abha.expose())) {
            continue;
        }
        let (linked, result) = check(&client, &limiter, &req.benefit, &abha).await;
        if result.is_ok() && linked {
            counts.unexpected_link += 1;
            out.write(&Line {
                row: None,
                external_ref: None,
                abha: Some(abha.clone()),
                class: Class::Unexpected,
                code: String::new(),
                detail: format!(
                    "linked to {} by abha-bulk (job {job_id}), not in the roster",
                    req.benefit
                ),
            })?;
            to_delink.push((None, None, abha));
        }
    }
    if let Some(p) = sweep {
        p.finish();
    }
    out.finish()?;

    let (mut link_batch, mut delink_batch) = (None, None);
    if req.apply {
        link_batch =
            queue_fixes(store, &req.benefit, JobKind::BenefitLink, run_id, &to_link).await?;
        delink_batch = queue_fixes(
            store,
            &req.benefit,
            JobKind::BenefitDelink,
            run_id,
            &to_delink,
        )
        .await?;
    }
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
        swept: req.sweep_unexpected,
    })
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
