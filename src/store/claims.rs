//! Claiming jobs under a lease, many at once.
//!
//! Why many at once: like outcomes (`store::outcomes`), claims are grouped by the worker
//! (`worker::claims`) so that a busy worker pays one round trip and one commit for the jobs
//! whose messages arrived together.
//!
//! Every claim writes a fresh random `claim_token`: the fence ([`Store::fence`]) and the outcome
//! write (`store::outcomes`) match it as well as the owner, so a lease belongs to one claim, not
//! to a process. Without it, a task whose outcome write outlived its lease (Postgres down for
//! longer than the lease) could write over a second claim of the same job by another task of the
//! same process, and clear the intent flag that second claim relies on.
//!
//! The claim is also the first fence: it sets the lease to `lease` from now and, for a
//! kind whose call changes something at ABDM, records the durable intent
//! (`effect_started_at`). The worker takes the job's first rate token before claiming, so the
//! first call follows the claim at once; the gate runs a fresh fence only for calls made more
//! than a quarter of the lease after the claim.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row;

use super::jobs::{Claim, ClaimedJob};
use super::{QueryContext, Store, StoreError};
use crate::jobs::kind::JobKind;

/// Kinds whose ABDM call changes something (their claim records the intent).
fn state_changing_kinds() -> Vec<String> {
    JobKind::ALL
        .iter()
        .filter(|k| k.changes_state())
        .map(|k| k.as_str().to_string())
        .collect()
}

impl Store {
    /// Takes the lease on a job if it may run now.
    pub async fn claim(
        &self,
        job_id: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut claims = self.claim_many(&[job_id], owner, lease).await?;
        Ok(claims.remove(&job_id).unwrap_or(Claim::Missing))
    }

    /// Takes the lease on every job of `ids` that may run now, in one statement; the others
    /// say why not (finished, busy, not due, missing).
    pub async fn claim_many(
        &self,
        ids: &[i64],
        owner: &str,
        lease: Duration,
    ) -> Result<HashMap<i64, Claim>, StoreError> {
        // `effect_started_at < now()`: set by an earlier attempt, not by this statement (now()
        // is the statement's transaction time).
        let rows = sqlx::query(
            "WITH c AS (
                UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $2,
                       claim_token = gen_random_uuid(), lease_until = now() + make_interval(secs => $3), updated_at = now(),
                       effect_started_at = CASE WHEN kind = ANY($4) THEN COALESCE(effect_started_at, now())
                                                ELSE effect_started_at END
                WHERE id = ANY($1) AND (
                    (state IN ('queued', 'retrying') AND (next_due_at IS NULL OR next_due_at <= now() + interval '2 seconds'))
                    OR (state = 'running' AND lease_until < now()))
                RETURNING id, batch_id, kind, benefit, attempts, created_at, payload, dedup_hash,
                          COALESCE(effect_started_at < now(), false) AS effect, claim_token)
             SELECT id, batch_id, kind, benefit, attempts, created_at, payload, dedup_hash, effect, claim_token,
                    NULL::text AS state FROM c
             UNION ALL
             SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, state FROM jobs
             WHERE id = ANY($1) AND id NOT IN (SELECT id FROM c)",
        )
        .bind(ids)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(state_changing_kinds())
        .fetch_all(&self.pool)
        .await
        .ctx("claiming jobs")?;
        let mut out = HashMap::with_capacity(ids.len());
        for r in rows {
            let id: i64 = r.get("id");
            let claim = match r.get::<Option<String>, _>("state") {
                Some(state) => match state.as_str() {
                    "running" => Claim::Busy,
                    "queued" | "retrying" => Claim::NotDue,
                    other => Claim::Finished(other.to_string()),
                },
                None => {
                    let kind: String = r.get("kind");
                    let kind = JobKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
                        job_id: id,
                        reason: format!("unknown kind {kind:?}"),
                    })?;
                    Claim::Run(ClaimedJob {
                        id,
                        batch_id: r.get("batch_id"),
                        kind,
                        benefit: r.get("benefit"),
                        attempt: r.get("attempts"),
                        created_at: r.get("created_at"),
                        payload: r.get("payload"),
                        dedup_hash: r.get("dedup_hash"),
                        effect_may_have_happened: r.get("effect"),
                        claim_token: r.get("claim_token"),
                    })
                }
            };
            out.insert(id, claim);
        }
        for id in ids {
            out.entry(*id).or_insert(Claim::Missing);
        }
        Ok(out)
    }
}
