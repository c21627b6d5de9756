//! Server-side console sessions (migration 0014).
//!
//! The console's cookie carries a random session id, not the API key: a copied cookie dies
//! with its session, sign-out ends the session for every copy of the cookie, and the key
//! itself never travels after sign-in. Only the SHA-256 of the id is stored, so a read of the
//! table cannot be replayed as a cookie.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use super::api_keys::ApiKey;
use super::{QueryContext, Store, StoreError};

fn digest(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

impl Store {
    /// Starts a session for `key`; returns its id (64 hex characters, shown only in the cookie).
    pub async fn start_console_session(&self, key: Uuid) -> Result<String, StoreError> {
        let id: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        sqlx::query("INSERT INTO console_sessions (id_sha256, key_id) VALUES ($1, $2)")
            .bind(digest(&id))
            .bind(key)
            .execute(&self.pool)
            .await
            .ctx("starting a console session")?;
        Ok(id)
    }

    /// The live key of a live session, touching its idle clock; `None` when the session is
    /// unknown, ended, idle longer than `idle`, older than `absolute`, or its key is revoked or
    /// expired.
    pub async fn console_session(
        &self,
        id: &str,
        idle: Duration,
        absolute: Duration,
    ) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(
            "UPDATE console_sessions s SET last_seen_at = now()
             FROM api_keys k
             WHERE s.id_sha256 = $1 AND k.id = s.key_id AND s.ended_at IS NULL
               AND s.last_seen_at > now() - make_interval(secs => $2)
               AND s.created_at > now() - make_interval(secs => $3)
               AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
             RETURNING k.id",
        )
        .bind(digest(id))
        .bind(idle.as_secs_f64())
        .bind(absolute.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a console session")?;
        match row {
            Some(r) => self.api_key_by_id(r.get(0)).await,
            None => Ok(None),
        }
    }

    /// Ends a session (sign-out): every copy of its cookie stops working at once.
    pub async fn end_console_session(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE console_sessions SET ended_at = now() WHERE id_sha256 = $1 AND ended_at IS NULL",
        )
        .bind(digest(id))
        .execute(&self.pool)
        .await
        .ctx("ending a console session")?;
        Ok(())
    }
}
