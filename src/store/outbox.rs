//! The outbox: rows to publish, leased under `FOR UPDATE SKIP LOCKED` and deleted once
//! RabbitMQ confirmed their messages.

use std::future::Future;

use sqlx::Row;

use super::{QueryContext, Store, StoreError};

/// One due outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Job to run.
    pub job_id: i64,
    /// Its kind (the routing key).
    pub kind: String,
}

/// Outbox backlog.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxStats {
    /// Rows not yet published (due or not).
    pub pending: i64,
    /// Rows due now.
    pub due: i64,
    /// Age of the oldest due row, seconds (0 when none is due).
    pub lag_secs: f64,
}

impl Store {
    /// Takes up to `limit` due rows, hands them to `publish` and deletes them when it succeeds
    /// (makes them due again at once when it fails). Returns how many were published.
    ///
    /// No transaction is held while RabbitMQ confirms: the rows are first leased (their
    /// `due_at` moved `lease` ahead, one short statement), so a relay that dies or hangs
    /// mid-publish leaves them to be published again when the lease runs out. A message
    /// published twice is harmless: the worker's claim runs a job once.
    pub async fn publish_due<F, Fut, E>(
        &self,
        limit: i64,
        lease: std::time::Duration,
        publish: F,
    ) -> Result<Result<usize, E>, StoreError>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let rows: Vec<OutboxRow> = sqlx::query(
            "UPDATE outbox SET due_at = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM outbox WHERE due_at <= now()
                          ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, job_id, kind",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .ctx("leasing due outbox rows")?
        .into_iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            job_id: r.get(1),
            kind: r.get(2),
        })
        .collect();
        if rows.is_empty() {
            return Ok(Ok(0));
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let n = rows.len();
        if let Err(e) = publish(rows).await {
            sqlx::query("UPDATE outbox SET due_at = now() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&self.pool)
                .await
                .ctx("releasing outbox rows after a failed publish")?;
            return Ok(Err(e));
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await
            .ctx("deleting published outbox rows")?;
        Ok(Ok(n))
    }

    /// Backlog figures for metrics and `status`.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let r = sqlx::query(
            "SELECT count(*), count(*) FILTER (WHERE due_at <= now()),
                    COALESCE(EXTRACT(EPOCH FROM now() - min(due_at) FILTER (WHERE due_at <= now())), 0)::float8
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("reading outbox figures")?;
        Ok(OutboxStats {
            pending: r.get(0),
            due: r.get(1),
            lag_secs: r.get(2),
        })
    }
}
