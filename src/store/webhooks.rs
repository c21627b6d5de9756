//! Webhook deliveries of the programme API: queued when a batch uploaded with a key that has
//! a webhook finishes or is cancelled, leased by the webhook sender (`api::webhooks::run`),
//! retried with backoff. The body carries the batch id and counts, never an identifier.

use sqlx::Row;
use uuid::Uuid;

use super::vault::{Aad, VaultError};
use super::{QueryContext, Store, StoreError};

/// A delivery to attempt now.
#[derive(Debug, Clone)]
pub struct DueWebhook {
    /// Delivery id (the `webhook-id` header; the receiver's idempotency key).
    pub id: Uuid,
    /// The API key (programme) it belongs to.
    pub key: Uuid,
    /// Where to.
    pub url: String,
    /// The signing secret (decrypted).
    pub secret: Vec<u8>,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Attempts before this one.
    pub attempts: i32,
}

/// A batch's webhook delivery, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookStatus {
    /// `batch.finished` or `batch.cancelled`.
    pub event: String,
    /// Delivered (a 2xx answer).
    pub delivered: bool,
    /// Attempts so far.
    pub attempts: i32,
    /// HTTP status of the last attempt.
    pub last_status: Option<i32>,
    /// Error of the last attempt without an answer.
    pub last_error: Option<String>,
}

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i32 = 12;

impl Store {
    /// Gives a key a webhook; returns the signing secret (`whsec_…`, shown once).
    pub async fn set_webhook(&self, key: Uuid, url: &str) -> Result<String, StoreError> {
        self.refuse_if_stale()?;
        let raw: Vec<u8> = (0..24).map(|_| rand::random::<u8>()).collect();
        use base64::Engine;
        let secret = base64::engine::general_purpose::STANDARD.encode(&raw);
        sqlx::query("UPDATE api_keys SET webhook_url = $2, webhook_secret = $3 WHERE id = $1")
            .bind(key)
            .bind(url)
            .bind(self.vault.encrypt(&raw, Aad::WebhookSecret(key)))
            .execute(&self.pool)
            .await
            .ctx("setting a webhook")?;
        Ok(format!("whsec_{secret}"))
    }

    /// Records which key uploaded a batch (its webhook is told when the batch ends).
    pub async fn set_batch_key(&self, batch: Uuid, key: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE batches SET api_key_id = $2 WHERE id = $1")
            .bind(batch)
            .bind(key)
            .execute(&self.pool)
            .await
            .ctx("recording the batch's API key")?;
        Ok(())
    }

    /// Queues a delivery for every ended batch of a key with a webhook that has none yet.
    pub async fn enqueue_webhooks(&self) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "INSERT INTO webhook_deliveries (id, key_id, batch_id, event, body)
             SELECT gen_random_uuid(), k.id, b.id, 'batch.' || b.state,
                    jsonb_build_object(
                        'type', 'batch.' || b.state, 'batch', b.id, 'kind', b.kind, 'benefit', b.benefit,
                        'total_rows', b.total_rows, 'accepted_rows', b.accepted_rows,
                        'rejected_rows', b.rejected_rows, 'duplicate_rows', b.duplicate_rows,
                        'finished_at', b.finished_at,
                        'counts', (SELECT COALESCE(jsonb_object_agg(state, n), '{}'::jsonb)
                                   FROM (SELECT state, count(*) AS n FROM jobs WHERE batch_id = b.id GROUP BY state) c))
             FROM batches b JOIN api_keys k ON k.id = b.api_key_id
             WHERE k.webhook_url IS NOT NULL AND b.state IN ('finished', 'cancelled')
               AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.batch_id = b.id)
             ON CONFLICT DO NOTHING",
        )
        .execute(&self.pool)
        .await
        .ctx("queueing webhooks")?
        .rows_affected();
        Ok(n)
    }

    /// Leases up to `limit` due deliveries for `lease_secs` (a sender that dies leaves them to
    /// be sent again after it; a sender's own deadline is shorter than the lease, so two
    /// senders never hold the same delivery at once). At most `per_key` deliveries of one key
    /// are leased, none of the keys in `busy` (those this sender is still delivering to), and
    /// none of a revoked or expired key: one programme's slow receiver holds only its own
    /// deliveries back.
    pub async fn due_webhooks(
        &self,
        limit: i64,
        lease_secs: f64,
        per_key: i64,
        busy: &[Uuid],
    ) -> Result<Vec<DueWebhook>, StoreError> {
        let rows = sqlx::query(
            "WITH candidates AS (
                 SELECT d.id, d.key_id, d.next_at FROM webhook_deliveries d
                 JOIN api_keys k ON k.id = d.key_id
                 WHERE d.delivered_at IS NULL AND d.next_at <= now() AND d.attempts < $3
                   AND k.webhook_url IS NOT NULL AND k.revoked_at IS NULL
                   AND (k.expires_at IS NULL OR k.expires_at > now())
                   AND NOT (d.key_id = ANY($5))
                 ORDER BY d.next_at LIMIT 1000 FOR UPDATE OF d SKIP LOCKED),
             picked AS (
                 SELECT id FROM (SELECT id, next_at,
                                        row_number() OVER (PARTITION BY key_id ORDER BY next_at) AS n
                                 FROM candidates) c
                 WHERE n <= $4 ORDER BY next_at LIMIT $1)
             UPDATE webhook_deliveries d SET next_at = now() + make_interval(secs => $2)
             FROM api_keys k
             WHERE d.id IN (SELECT id FROM picked) AND k.id = d.key_id
             RETURNING d.id, k.webhook_url, k.webhook_secret, d.body, d.attempts, k.id",
        )
        .bind(limit)
        .bind(lease_secs)
        .bind(MAX_ATTEMPTS)
        .bind(per_key)
        .bind(busy)
        .fetch_all(&self.pool)
        .await
        .ctx("leasing webhook deliveries")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (id, key): (Uuid, Uuid) = (r.get(0), r.get(5));
            let secret: Option<Vec<u8>> = r.get(2);
            // One secret this process cannot read holds back only its own delivery (leased:
            // tried again after the lease, no attempt spent), never every other one. A newer
            // key makes this process stale (store::keyset).
            let secret = match self
                .vault
                .decrypt(&secret.unwrap_or_default(), Aad::WebhookSecret(key))
            {
                Ok(secret) => secret,
                Err(e) => {
                    if let VaultError::UnknownKey(key_id) = &e {
                        self.saw_unknown_key(key_id);
                    }
                    tracing::warn!(delivery = %id, api_key = %key, error = %e, "webhook signing secret does not decrypt; delivery left for later");
                    continue;
                }
            };
            out.push(DueWebhook {
                id,
                key,
                url: r.get(1),
                secret,
                body: r.get(3),
                attempts: r.get(4),
            });
        }
        Ok(out)
    }

    /// Records an attempt: delivered, or due again after `retry_in_secs`.
    pub async fn webhook_attempted(
        &self,
        id: Uuid,
        status: Option<u16>,
        error: Option<&str>,
        retry_in_secs: f64,
    ) -> Result<(), StoreError> {
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $2, last_error = $3,
                    delivered_at = CASE WHEN $4 THEN now() END,
                    next_at = now() + make_interval(secs => $5)
             WHERE id = $1",
        )
        .bind(id)
        .bind(status.map(i32::from))
        .bind(error)
        .bind(delivered)
        .bind(retry_in_secs)
        .execute(&self.pool)
        .await
        .ctx("recording a webhook attempt")?;
        Ok(())
    }

    /// A batch's webhook delivery, if one was queued.
    pub async fn webhook_status(&self, batch: Uuid) -> Result<Option<WebhookStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT event, delivered_at IS NOT NULL, attempts, last_status, last_error
             FROM webhook_deliveries WHERE batch_id = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(batch)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a webhook delivery")?;
        Ok(row.map(|r| WebhookStatus {
            event: r.get(0),
            delivered: r.get(1),
            attempts: r.get(2),
            last_status: r.get(3),
            last_error: r.get(4),
        }))
    }
}
