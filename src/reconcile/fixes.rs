//! `reconcile --apply`: the drift found becomes ordinary batches of link and de-link jobs
//! (source `reconcile`), so the fixes run through the same pipeline, rate and report as any
//! upload.

use uuid::Uuid;

use super::ReconcileError;
use crate::abdm::benefit::Beneficiary;
use crate::jobs::kind::{Job, JobKind};
use crate::pii::AbhaNumber;
use crate::store::Store;
use crate::store::batches::{NewBatch, PreparedRow};

type Fix = (Option<u64>, Option<String>, AbhaNumber);

/// Queues a batch of link or de-link jobs (source `reconcile`), skipping ABHAs that already
/// have an open job of that kind.
pub(super) async fn queue_fixes(
    store: &Store,
    benefit: &str,
    kind: JobKind,
    run: Uuid,
    fixes: &[Fix],
) -> Result<Option<Uuid>, ReconcileError> {
    let open = store.open_subjects(benefit, kind).await?;
    let rows: Vec<PreparedRow> = fixes
        .iter()
        .enumerate()
        .filter_map(|(i, (row, ext, abha))| {
            let who = Beneficiary::Abha(abha.clone());
            let job = match kind {
                JobKind::BenefitLink => Job::BenefitLink(who),
                _ => Job::BenefitDelink(who),
            };
            let p = store.prepare(row.map_or(i as i64 + 1, |r| r as i64), ext.clone(), &job);
            (!open.contains(&p.subject_hash)).then_some(p)
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let name = format!("reconcile-{run}");
    let batch = store
        .create_batch(NewBatch {
            kind,
            benefit,
            source: "reconcile",
            file_name: Some(&name),
            file_sha256: None,
            parent: None,
            // The fixes are side work of the programme: its default priority.
            priority: Default::default(),
        })
        .await?;
    let mut accepted = 0;
    let mut duplicates = 0;
    for chunk in rows.chunks(crate::submit::CHUNK_ROWS) {
        let o = store.insert_jobs(batch, kind, benefit, chunk).await?;
        accepted += o.accepted;
        duplicates += o.duplicates;
    }
    store
        .finish_submit(batch, rows.len() as u64, accepted, 0, duplicates)
        .await?;
    Ok(Some(batch))
}
