//! `abha-bulk rekey`: re-encrypts every encrypted column ([`super::vault::ENCRYPTED_COLUMNS`]:
//! `jobs.payload`, `jobs.result`, `api_keys.webhook_secret`) under `pii.key` (header, key id,
//! associated data) and recomputes the jobs' lookup hashes, online and in chunks, while the
//! keys in `pii.previous_keys` still decrypt; then records `pii.key`'s check value. Deleting
//! parents' X-tokens from finished child-create jobs lives here too (the housekeeping sweep).

use std::collections::BTreeMap;

use chrono::Utc;
use sqlx::Row;

use std::sync::atomic::Ordering;

use super::vault::{Aad, VaultError};
use super::{QueryContext, Store, StoreError};
use crate::jobs::kind::{Job, JobKind};

/// How far `rekey` got. Rows of every table with an encrypted column, counted together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyProgress {
    /// The table being rewritten (`jobs`, then `api_keys`).
    pub table: &'static str,
    /// Rows holding encrypted values when the run started (jobs not erased, API keys with a
    /// webhook secret).
    pub total: u64,
    /// Rows looked at.
    pub scanned: u64,
    /// Rows rewritten under `pii.key`.
    pub rewritten: u64,
    /// Rows changed meanwhile (by a worker, or a webhook secret set again) while being
    /// rewritten: done again next run; usually 0.
    pub raced: u64,
    /// Rows whose values decrypt with no configured key.
    pub undecryptable: u64,
}

impl RekeyProgress {
    /// True when every value is now under `pii.key`.
    pub fn complete(&self) -> bool {
        self.raced == 0 && self.undecryptable == 0
    }
}

/// How long a failed or dead child-create job keeps its parent's X-token (ABDM's X-tokens
/// expire well within it), so `retry-failed` can still run it.
pub const TOKEN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The payload field that holds a parent's X-token.
const X_TOKEN_FIELD: &str = "parent_x_token";

struct Rewrite {
    id: i64,
    old_payload: Vec<u8>,
    subject_hash: Vec<u8>,
    dedup_hash: Vec<u8>,
    payload: Vec<u8>,
    result: Option<Vec<u8>>,
}

impl Store {
    /// Re-encrypts every job whose payload or result is not yet under `pii.key`, `chunk` rows
    /// at a time, calling `progress` after each chunk. Workers may keep running: a row a
    /// worker changed meanwhile is left for the next run (counted in `raced`). When every
    /// value is under `pii.key`, its check value replaces the stored one.
    pub async fn rekey(
        &self,
        chunk: i64,
        mut progress: impl FnMut(&RekeyProgress),
    ) -> Result<RekeyProgress, StoreError> {
        // Rewriting to a key the fleet has moved past would leave every value unreadable to it.
        if !self.is_newest_key().await? {
            return Err(StoreError::Refused(
                "rekey must run with the fleet's newest key as `pii.key` (table pii_keys): \
                 set pii.key to it and the old key in pii.previous_keys"
                    .into(),
            ));
        }
        // A reconciliation matches by lookup hash: none may run across the rewrite.
        let abandoned = self.abandon_reconciles_for_rekey().await?;
        if abandoned > 0 {
            tracing::info!(
                runs = abandoned,
                "unfinished reconciliations abandoned: their staged rows hold the old lookup hashes"
            );
        }
        // Erased rows hold nothing to re-encrypt (and their hashes match nothing).
        let total: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM jobs WHERE erased_at IS NULL)
                  + (SELECT count(*) FROM api_keys WHERE webhook_secret IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("counting rows to re-encrypt")?;
        let mut p = RekeyProgress {
            table: "jobs",
            total: total as u64,
            ..RekeyProgress::default()
        };
        let mut last = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT id, kind, subject_hash, dedup_hash, payload, result FROM jobs
                 WHERE id > $1 AND erased_at IS NULL ORDER BY id LIMIT $2",
            )
            .bind(last)
            .bind(chunk)
            .fetch_all(&self.pool)
            .await
            .ctx("reading jobs to re-encrypt")?;
            let Some(end) = rows.last().map(|r| r.get::<i64, _>("id")) else {
                break;
            };
            last = end;
            p.scanned += rows.len() as u64;
            for r in rows {
                match self.rewrite(&r) {
                    Ok(None) => {}
                    Ok(Some(w)) => {
                        if self.store_rewrite(&w).await? {
                            p.rewritten += 1;
                        } else {
                            p.raced += 1;
                        }
                    }
                    Err(_) => p.undecryptable += 1,
                }
            }
            progress(&p);
        }
        p.table = "api_keys";
        self.rekey_webhook_secrets(chunk, &mut p, &mut progress)
            .await?;
        if p.complete() {
            let mut conn = self.pool.acquire().await.ctx("recording the new key")?;
            super::startup::record_key(&mut conn, &self.vault, true).await?;
        }
        Ok(p)
    }

    fn rewrite(&self, r: &sqlx::postgres::PgRow) -> Result<Option<Rewrite>, StoreError> {
        let payload: Vec<u8> = r.get("payload");
        let result: Option<Vec<u8>> = r.get("result");
        if self.vault.is_current(&payload)
            && result.as_deref().is_none_or(|b| self.vault.is_current(b))
        {
            return Ok(None);
        }
        let id: i64 = r.get("id");
        let kind: String = r.get("kind");
        let old_dedup: Vec<u8> = r.get("dedup_hash");
        let old_subject: Vec<u8> = r.get("subject_hash");
        let plain = self.vault.decrypt(&payload, Aad::JobPayload(&old_dedup))?;
        let result = result
            .map(|b| self.vault.decrypt(&b, Aad::JobResult(id)))
            .transpose()?;
        // The lookup hashes are keyed by pii.key too: recompute them from the fields. A payload
        // that no longer validates (an X-token deleted after the job finished) gets hashes
        // derived from the old ones: unique as before, matching nothing new.
        let fields: BTreeMap<String, String> =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
                job_id: id,
                reason: format!("payload is not a field map: {e}"),
            })?;
        let job = JobKind::parse(&kind).and_then(|k| {
            Job::from_fields(
                k,
                |f| fields.get(f).map(String::as_str).filter(|v| !v.is_empty()),
                Utc::now().date_naive(),
            )
            .ok()
        });
        let (subject_hash, dedup_hash) = match &job {
            Some(job) => (
                self.vault.hash(&job.subject()),
                self.vault.hash(&job.dedup_key()),
            ),
            None => (
                self.vault.hash(&format!("rekeyed:{}", hex(&old_subject))),
                self.vault.hash(&format!("rekeyed:{}", hex(&old_dedup))),
            ),
        };
        Ok(Some(Rewrite {
            id,
            payload: self.vault.encrypt(&plain, Aad::JobPayload(&dedup_hash)),
            result: result.map(|b| self.vault.encrypt(&b, Aad::JobResult(id))),
            old_payload: payload,
            subject_hash,
            dedup_hash,
        }))
    }

    /// `api_keys.webhook_secret`, `chunk` keys at a time: a secret set again meanwhile is left
    /// for the next run (`raced`), like a job a worker changed.
    async fn rekey_webhook_secrets(
        &self,
        chunk: i64,
        p: &mut RekeyProgress,
        progress: &mut impl FnMut(&RekeyProgress),
    ) -> Result<(), StoreError> {
        let mut last = uuid::Uuid::nil();
        loop {
            let rows: Vec<(uuid::Uuid, Vec<u8>)> = sqlx::query_as(
                "SELECT id, webhook_secret FROM api_keys
                 WHERE id > $1 AND webhook_secret IS NOT NULL ORDER BY id LIMIT $2",
            )
            .bind(last)
            .bind(chunk)
            .fetch_all(&self.pool)
            .await
            .ctx("reading webhook secrets to re-encrypt")?;
            let Some((end, _)) = rows.last() else {
                break;
            };
            last = *end;
            p.scanned += rows.len() as u64;
            for (id, old) in rows {
                if self.vault.is_current(&old) {
                    continue;
                }
                let Ok(plain) = self.vault.decrypt(&old, Aad::WebhookSecret(id)) else {
                    p.undecryptable += 1;
                    continue;
                };
                let done = sqlx::query(
                    "UPDATE api_keys SET webhook_secret = $3 WHERE id = $1 AND webhook_secret = $2",
                )
                .bind(id)
                .bind(&old)
                .bind(self.vault.encrypt(&plain, Aad::WebhookSecret(id)))
                .execute(&self.pool)
                .await
                .ctx("re-encrypting a webhook secret")?;
                if done.rows_affected() == 1 {
                    p.rewritten += 1;
                } else {
                    p.raced += 1;
                }
            }
            progress(p);
        }
        Ok(())
    }

    /// Writes a rewrite unless the row changed since it was read. False when it did.
    async fn store_rewrite(&self, w: &Rewrite) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET payload = $3, subject_hash = $4, dedup_hash = $5,
                    result = COALESCE($6, result)
             WHERE id = $1 AND payload = $2 AND (result IS NULL) = ($6::bytea IS NULL)",
        )
        .bind(w.id)
        .bind(&w.old_payload)
        .bind(&w.payload)
        .bind(&w.subject_hash)
        .bind(&w.dedup_hash)
        .bind(&w.result)
        .execute(&self.pool)
        .await
        .ctx("re-encrypting a job")?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes parents' X-tokens (bearer credentials) from the payloads of finished
    /// child-create jobs, looking at up to `limit` jobs per call: succeeded and cancelled ones
    /// at once, failed and dead ones [`TOKEN_GRACE`] after they finished (`retry-failed` may
    /// run them again while the token is still valid). Returns how many were deleted.
    ///
    /// `token_deleted` is set only by the statement that writes the payload without the token:
    /// a payload this process cannot decrypt is left as it is, unflagged, and the next call
    /// goes on after it (a cursor that wraps around), so such a row never blocks the sweep. A
    /// payload under a key this process does not hold makes it stale (`store::keyset`) and ends
    /// the call.
    pub async fn delete_final_tokens(&self, limit: i64) -> Result<u64, StoreError> {
        let after = self.token_sweep.load(Ordering::Relaxed);
        let rows = sqlx::query(
            "SELECT id, dedup_hash, payload FROM jobs
             WHERE kind = 'child-create' AND NOT token_deleted AND id > $3
               AND state IN ('succeeded', 'failed', 'dead', 'cancelled')
               AND (state IN ('succeeded', 'cancelled')
                    OR finished_at < now() - make_interval(secs => $2))
             ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .bind(TOKEN_GRACE.as_secs_f64())
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .ctx("finding finished jobs holding an X-token")?;
        let next = match rows.last() {
            Some(r) if rows.len() as i64 >= limit => r.get::<i64, _>(0),
            _ => 0,
        };
        self.token_sweep.store(next, Ordering::Relaxed);
        let mut n = 0;
        for r in rows {
            let (id, dedup, payload): (i64, Vec<u8>, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
            let aad = Aad::JobPayload(&dedup);
            let plain = match self.vault.decrypt(&payload, aad) {
                Ok(plain) => plain,
                Err(VaultError::UnknownKey(key_id)) => {
                    self.saw_unknown_key(&key_id);
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        job_id = id,
                        "a finished job's payload does not decrypt; X-token not deleted (`rekey` reports such rows)"
                    );
                    continue;
                }
            };
            let mut fields: BTreeMap<String, String> =
                serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
                    job_id: id,
                    reason: format!("payload is not a field map: {e}"),
                })?;
            fields.remove(X_TOKEN_FIELD);
            let json = serde_json::to_vec(&fields).expect("a string map serialises");
            let done = sqlx::query(
                "UPDATE jobs SET payload = $3, token_deleted = true
                 WHERE id = $1 AND payload = $2
                   AND state IN ('succeeded', 'failed', 'dead', 'cancelled')
                   AND (state IN ('succeeded', 'cancelled')
                        OR finished_at < now() - make_interval(secs => $4))",
            )
            .bind(id)
            .bind(&payload)
            .bind(self.vault.encrypt(&json, aad))
            .bind(TOKEN_GRACE.as_secs_f64())
            .execute(&self.pool)
            .await
            .ctx("deleting a parent's X-token")?;
            n += done.rows_affected();
        }
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
