//! `reconcile --apply`: the drift found becomes ordinary batches of link and de-link jobs
//! (source `reconcile`), so the fixes run through the same pipeline, rate and report as any
//! upload. Fixes are written in chunks as the report pass finds them (memory stays bounded at
//! a million missing links); drift that already has an open fix job was marked in Postgres
//! beforehand and is not queued again.

use uuid::Uuid;

use super::ReconcileError;
use crate::abdm::benefit::Beneficiary;
use crate::jobs::kind::{Job, JobKind};
use crate::pii::AbhaNumber;
use crate::store::Store;
use crate::store::batches::{NewBatch, PreparedRow};

/// One batch of fixes being written.
pub(super) struct FixQueue<'a> {
    store: &'a Store,
    benefit: &'a str,
    kind: JobKind,
    run: Uuid,
    batch: Option<Uuid>,
    pending: Vec<PreparedRow>,
    total: u64,
    accepted: u64,
    duplicates: u64,
}

impl<'a> FixQueue<'a> {
    pub(super) fn new(store: &'a Store, benefit: &'a str, kind: JobKind, run: Uuid) -> Self {
        Self {
            store,
            benefit,
            kind,
            run,
            batch: None,
            pending: Vec::new(),
            total: 0,
            accepted: 0,
            duplicates: 0,
        }
    }

    /// Adds the fix of `abha` (from roster `row`, or numbered in order for swept links).
    pub(super) async fn push(
        &mut self,
        row: Option<u64>,
        external_ref: Option<String>,
        abha: AbhaNumber,
    ) -> Result<(), ReconcileError> {
        self.total += 1;
        let who = Beneficiary::Abha(abha);
        let job = match self.kind {
            JobKind::BenefitLink => Job::BenefitLink(who),
            _ => Job::BenefitDelink(who),
        };
        let row = row.map_or(self.total as i64, |r| r as i64);
        self.pending
            .push(self.store.prepare(row, external_ref, &job));
        if self.pending.len() >= crate::submit::CHUNK_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ReconcileError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = match self.batch {
            Some(b) => b,
            None => {
                let name = format!("reconcile-{}", self.run);
                let b = self
                    .store
                    .create_batch(NewBatch {
                        kind: self.kind,
                        benefit: self.benefit,
                        source: "reconcile",
                        file_name: Some(&name),
                        file_sha256: None,
                        parent: None,
                        // The fixes are the programme's own work: its default priority.
                        priority: Default::default(),
                    })
                    .await?;
                // Recorded at once: a resumed run aborts this batch if it was left half
                // written, and queues its fixes again.
                self.store
                    .set_reconcile_batch(self.run, self.kind == JobKind::BenefitDelink, b)
                    .await?;
                self.batch = Some(b);
                b
            }
        };
        let o = self
            .store
            .insert_jobs(batch, self.kind, self.benefit, &self.pending)
            .await?;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.pending.clear();
        Ok(())
    }

    /// Writes the rest and makes the batch due. `None` when there was nothing to fix.
    pub(super) async fn finish(mut self) -> Result<Option<Uuid>, ReconcileError> {
        self.flush().await?;
        let Some(batch) = self.batch else {
            return Ok(None);
        };
        self.store
            .finish_submit(batch, self.total, self.accepted, 0, self.duplicates)
            .await?;
        Ok(Some(batch))
    }
}

/// A resumed run whose earlier `--apply` was interrupted while writing a fix batch: that
/// batch never became due; abort it (its jobs are cancelled) so this run queues the fixes
/// again in one batch.
pub(super) async fn abort_unfinished(
    store: &Store,
    batches: (Option<Uuid>, Option<Uuid>),
) -> Result<(), ReconcileError> {
    for b in [batches.0, batches.1].into_iter().flatten() {
        store
            .abort_submit(b, "reconciliation interrupted while queueing fixes")
            .await?;
    }
    Ok(())
}
