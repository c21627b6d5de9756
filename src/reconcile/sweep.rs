//! `--sweep-unexpected`: the ABHAs this service linked earlier that the roster lacks. Only
//! this service's own links are known (its succeeded link jobs); links other integrators made
//! for the benefit cannot be found this way, so after `--apply` ABDM may still hold links the
//! roster lacks.

use std::sync::Arc;

use uuid::Uuid;

use super::ReconcileError;
use super::check::{ReconcileGate, class, lookup};
use super::output::Progress;
use super::roster::Lookups;
use crate::abdm::AbdmClient;
use crate::abdm::benefit::Beneficiary;
use crate::jobs::kind::{Job, JobKind};
use crate::pii::AbhaNumber;
use crate::store::Store;
use crate::store::reconcile_rows::CheckResult;

/// Swept rows read from Postgres at a time.
pub(super) const PAGE: i64 = 500;

/// The ABHA number of an earlier link job: from its result, else from its payload.
pub(super) fn link_abha(
    store: &Store,
    job_id: i64,
    dedup: &[u8],
    payload: &[u8],
    result: Option<Vec<u8>>,
) -> Option<AbhaNumber> {
    let aad = crate::store::vault::Aad::JobResult(job_id);
    match result.and_then(|r| store.vault.decrypt(&r, aad).ok()) {
        Some(raw) => AbhaNumber::parse(&String::from_utf8_lossy(&raw)).ok(),
        None => match store.decrypt_job(job_id, JobKind::BenefitLink, dedup, payload) {
            Ok(Job::BenefitLink(Beneficiary::Abha(a))) => Some(a),
            _ => None,
        },
    }
}

/// Looks up the staged earlier links that have no answer yet, in job order.
pub(super) async fn check(
    store: &Store,
    client: &Arc<AbdmClient>,
    gate: &Arc<ReconcileGate>,
    benefit: &str,
    run: Uuid,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), ReconcileError> {
    let mut lookups = Lookups::new(store, run, concurrency);
    let mut after = 0i64;
    loop {
        let page = store.swept_page(run, after, PAGE, true).await?;
        let Some(last) = page.last() else { break };
        after = last.0.job_id.unwrap_or(i64::MAX);
        for (row, dedup, payload, result) in page {
            let job = row.job_id.unwrap_or_default();
            let hash = row.subject_hash;
            match link_abha(store, job, &dedup, &payload, result) {
                Some(abha) => {
                    let (client, gate, benefit) =
                        (client.clone(), gate.clone(), benefit.to_string());
                    lookups
                        .spawn(
                            async move { lookup(&client, &gate, &benefit, hash, &abha, true).await },
                            progress,
                        )
                        .await?
                }
                None => {
                    lookups
                        .spawn(
                            async move {
                                CheckResult {
                                    subject_hash: hash,
                                    class: class::SKIPPED,
                                    code: String::new(),
                                    detail: String::new(),
                                    masked: None,
                                }
                            },
                            progress,
                        )
                        .await?
                }
            }
        }
    }
    lookups.finish(progress).await
}
