//! API keys of the programme API and the answers kept for `Idempotency-Key` retries.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use super::{QueryContext, Store, StoreError};

/// A stored API key (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Id (logged with every request instead of the key).
    pub id: Uuid,
    /// The public part of the key (`abk_<prefix>_…`).
    pub prefix: String,
    /// Who it is for.
    pub name: Option<String>,
    /// The benefits it may see and act on.
    pub benefits: Vec<String>,
    /// `submit`, `read`, `reveal`.
    pub scopes: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Usable now: not revoked, not expired.
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > Utc::now())
    }

    /// Holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// May see batches of `benefit`.
    pub fn sees(&self, benefit: &str) -> bool {
        self.benefits.iter().any(|b| b == benefit)
    }
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn random_token(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn key_from_row(r: &sqlx::postgres::PgRow) -> ApiKey {
    ApiKey {
        id: r.get("id"),
        prefix: r.get("prefix"),
        name: r.get("name"),
        benefits: r.get("benefits"),
        scopes: r.get("scopes"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        revoked_at: r.get("revoked_at"),
    }
}

const KEY_COLUMNS: &str = "id, prefix, name, benefits, scopes, created_at, expires_at, revoked_at";

/// What an upload's `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Idempotency {
    /// First use: run the upload, then [`Store::idempotency_done`].
    Fresh,
    /// An earlier upload with this key answered this.
    Answered(u16, serde_json::Value),
    /// An earlier upload with this key is still running.
    Running,
    /// The key was first used for another request (another file or parameters): 422.
    Mismatch,
}

impl Store {
    /// Creates a key; returns it and the full key string, which is never stored and shown once.
    pub async fn create_api_key(
        &self,
        name: Option<&str>,
        benefits: &[String],
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(ApiKey, String), StoreError> {
        let prefix = random_token(4);
        let secret = random_token(24);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_keys (id, prefix, secret_sha256, name, benefits, scopes, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
        )))
        .bind(Uuid::new_v4())
        .bind(&prefix)
        .bind(sha256(&secret))
        .bind(name)
        .bind(benefits)
        .bind(scopes)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await
        .ctx("creating an API key")?;
        Ok((key_from_row(&row), format!("abk_{prefix}_{secret}")))
    }

    /// The key a full key string names, if its secret matches (live or not: the caller says
    /// why it is refused).
    pub async fn api_key_for(&self, presented: &str) -> Result<Option<ApiKey>, StoreError> {
        let Some((prefix, secret)) = presented
            .strip_prefix("abk_")
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS}, secret_sha256 FROM api_keys WHERE prefix = $1"
        )))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await
        .ctx("finding an API key")?;
        Ok(row
            .filter(|r| r.get::<Vec<u8>, _>("secret_sha256") == sha256(secret))
            .map(|r| key_from_row(&r)))
    }

    /// The key with this id (live or not).
    pub async fn api_key_by_id(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an API key")?;
        Ok(row.as_ref().map(key_from_row))
    }

    /// Every key, newest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC"
        )))
        .fetch_all(&self.pool)
        .await
        .ctx("listing API keys")?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    /// Revokes the key with this id or prefix, and ends its console sessions; returns whether
    /// one was revoked.
    pub async fn revoke_api_key(&self, id_or_prefix: &str) -> Result<bool, StoreError> {
        let id = Uuid::parse_str(id_or_prefix).ok();
        let mut tx = self.pool.begin().await.ctx("revoking an API key")?;
        let revoked: Option<Uuid> = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = now()
             WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2) RETURNING id",
        )
        .bind(id)
        .bind(id_or_prefix)
        .fetch_optional(&mut *tx)
        .await
        .ctx("revoking an API key")?;
        if let Some(k) = revoked {
            sqlx::query(
                "UPDATE console_sessions SET ended_at = now() WHERE key_id = $1 AND ended_at IS NULL",
            )
            .bind(k)
            .execute(&mut *tx)
            .await
            .ctx("ending a revoked key's console sessions")?;
        }
        tx.commit().await.ctx("revoking an API key")?;
        Ok(revoked.is_some())
    }

    /// Records the first use of an `Idempotency-Key` for a request with `fingerprint`, or says
    /// what the earlier use answered. A record still running after `running_ttl` (its `serve`
    /// died mid-upload) and an answer older than `answered_ttl` have expired: the key is
    /// taken over as fresh.
    pub async fn idempotency_begin(
        &self,
        key: Uuid,
        idempotency_key: &str,
        fingerprint: &[u8],
        running_ttl: std::time::Duration,
        answered_ttl: std::time::Duration,
    ) -> Result<Idempotency, StoreError> {
        let fresh = sqlx::query(
            "INSERT INTO api_idempotency (key_id, idempotency_key, fingerprint) VALUES ($1, $2, $3)
             ON CONFLICT (key_id, idempotency_key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL, created_at = now()
                WHERE (api_idempotency.status IS NULL
                       AND api_idempotency.created_at < now() - make_interval(secs => $4))
                   OR api_idempotency.created_at < now() - make_interval(secs => $5)",
        )
        .bind(key)
        .bind(idempotency_key)
        .bind(fingerprint)
        .bind(running_ttl.as_secs_f64())
        .bind(answered_ttl.as_secs_f64())
        .execute(&self.pool)
        .await
        .ctx("recording an idempotency key")?
        .rows_affected()
            == 1;
        if fresh {
            return Ok(Idempotency::Fresh);
        }
        let row = sqlx::query(
            "SELECT status, body, fingerprint FROM api_idempotency
             WHERE key_id = $1 AND idempotency_key = $2",
        )
        .bind(key)
        .bind(idempotency_key)
        .fetch_one(&self.pool)
        .await
        .ctx("reading an idempotency key")?;
        let stored: Option<Vec<u8>> = row.get(2);
        if stored.is_some_and(|f| f != fingerprint) {
            return Ok(Idempotency::Mismatch);
        }
        Ok(match (row.get::<Option<i32>, _>(0), row.get(1)) {
            (Some(status), Some(body)) => Idempotency::Answered(status as u16, body),
            _ => Idempotency::Running,
        })
    }

    /// Keeps the answer of an upload for its retries.
    pub async fn idempotency_done(
        &self,
        key: Uuid,
        idempotency_key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_idempotency SET status = $3, body = $4 WHERE key_id = $1 AND idempotency_key = $2",
        )
        .bind(key)
        .bind(idempotency_key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&self.pool)
        .await
        .ctx("keeping an upload's answer")?;
        Ok(())
    }

    /// Forgets an `Idempotency-Key` whose upload failed, so that a retry runs it again.
    pub async fn idempotency_forget(
        &self,
        key: Uuid,
        idempotency_key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM api_idempotency WHERE key_id = $1 AND idempotency_key = $2")
            .bind(key)
            .bind(idempotency_key)
            .execute(&self.pool)
            .await
            .ctx("forgetting an idempotency key")?;
        Ok(())
    }
}

/// A rejected row, for the upload's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedSample {
    /// Data row number.
    pub row_number: i64,
    /// Column (`*`: the whole row).
    pub column: String,
    /// Why (never the value).
    pub reason: String,
}

impl Store {
    /// The first `limit` rejected (invalid) rows of a batch.
    pub async fn rejected_sample(
        &self,
        batch: Uuid,
        limit: i64,
    ) -> Result<Vec<RejectedSample>, StoreError> {
        let rows = sqlx::query(
            "SELECT row_number, column_name, reason FROM rejected_rows
             WHERE batch_id = $1 AND duplicate_of IS NULL ORDER BY row_number LIMIT $2",
        )
        .bind(batch)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("reading rejected rows")?;
        Ok(rows
            .iter()
            .map(|r| RejectedSample {
                row_number: r.get(0),
                column: r.get(1),
                reason: r.get(2),
            })
            .collect())
    }

    /// Batches of `benefits`, newest first, optionally in one `state`, a page at a time.
    pub async fn batches_of(
        &self,
        benefits: &[String],
        state: Option<&str>,
        per_page: u32,
        page: u32,
    ) -> Result<Vec<super::batches::BatchInfo>, StoreError> {
        // One query whatever the page size (not one per batch).
        let sql = format!(
            "SELECT {} FROM batches WHERE benefit = ANY($1) AND ($2::text IS NULL OR state = $2)
             ORDER BY created_at DESC LIMIT $3 OFFSET $4",
            super::batches::BATCH_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(benefits)
            .bind(state)
            .bind(i64::from(per_page))
            .bind(i64::from(page) * i64::from(per_page))
            .fetch_all(&self.pool)
            .await
            .ctx("listing batches")?;
        Ok(rows.iter().map(super::batches::batch_from_row).collect())
    }
}
