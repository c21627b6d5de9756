//! What the run reads from its Postgres: progress, outcomes, finish times, orphaned leases.
//! A fresh connection per query, so a Postgres restart costs a failed poll, not a broken pool.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::error::{ChaosError, Result, sql};

pub async fn connect(url: &str) -> Result<PgConnection> {
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url))
        .await
        .map_err(|_| ChaosError::Timeout {
            what: "connecting to the run's Postgres".into(),
            secs: 5,
        })?
        .map_err(sql("connect"))
}

/// Jobs by progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Rows accepted by `submit` (what must end as jobs).
    pub accepted: i64,
    /// Jobs.
    pub jobs: i64,
    /// Jobs queued, running or retrying.
    pub open: i64,
}

impl Progress {
    /// Jobs in a final state.
    pub fn done(&self) -> i64 {
        self.jobs - self.open
    }
}

/// Current progress.
pub async fn progress(url: &str) -> Result<Progress> {
    let mut c = connect(url).await?;
    let (accepted,): (i64,) =
        sqlx::query_as("SELECT coalesce(sum(accepted_rows), 0)::bigint FROM batches")
            .fetch_one(&mut c)
            .await
            .map_err(sql("accepted rows"))?;
    let (jobs, open): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state IN ('queued', 'running', 'retrying')) FROM jobs",
    )
    .fetch_one(&mut c)
    .await
    .map_err(sql("job counts"))?;
    let _ = c.close().await;
    Ok(Progress {
        accepted,
        jobs,
        open,
    })
}

/// Jobs still leased by `owner` (a worker just killed: their calls were cut). The previous
/// release names an owner `HOSTNAME-pid`, the new one `HOSTNAME-pid-<random suffix>`.
pub async fn leased_by(url: &str, owner: &str) -> Result<i64> {
    let mut c = connect(url).await?;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM jobs WHERE state = 'running' \
         AND (lease_owner = $1 OR lease_owner LIKE $1 || '-%')",
    )
    .bind(owner)
    .fetch_one(&mut c)
    .await
    .map_err(sql("leased jobs"))?;
    let _ = c.close().await;
    Ok(n)
}

/// Final jobs by (state, last code).
pub async fn outcomes(url: &str) -> Result<Vec<(String, String, i64)>> {
    let mut c = connect(url).await?;
    let rows = sqlx::query_as(
        "SELECT state, coalesce(last_code, ''), count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&mut c)
    .await
    .map_err(sql("outcomes"))?;
    let _ = c.close().await;
    Ok(rows)
}

/// Jobs finished per unix second.
pub async fn finished_per_second(url: &str) -> Result<BTreeMap<i64, i64>> {
    let mut c = connect(url).await?;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT floor(extract(epoch FROM finished_at))::bigint, count(*) FROM jobs \
         WHERE finished_at IS NOT NULL GROUP BY 1",
    )
    .fetch_all(&mut c)
    .await
    .map_err(sql("finish times"))?;
    let _ = c.close().await;
    Ok(rows.into_iter().collect())
}

/// Attempts the workers recorded, by (operation, disposition): their view of the traffic,
/// beside the sandbox's.
pub async fn attempts(url: &str) -> Result<Vec<(String, String, i64)>> {
    let mut c = connect(url).await?;
    let rows = sqlx::query_as(
        "SELECT operation, disposition, count(*) FROM attempts GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(&mut c)
    .await
    .map_err(sql("attempts"))?;
    let _ = c.close().await;
    Ok(rows)
}

/// Throttled calls sent between `from` and `to` (unix seconds) whose job was claimed again
/// afterwards (a later `job_attempt`): attempts a throttling wait spent.
pub async fn throttled_then_reclaimed(url: &str, from: f64, to: f64) -> Result<i64> {
    let mut c = connect(url).await?;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT (a.job_id, a.job_attempt)) FROM attempts a \
         WHERE a.disposition = 'throttled' \
           AND a.created_at BETWEEN to_timestamp($1) AND to_timestamp($2) \
           AND EXISTS (SELECT 1 FROM attempts b \
                       WHERE b.job_id = a.job_id AND b.job_attempt > a.job_attempt)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&mut c)
    .await
    .map_err(sql("throttled attempts"))?;
    let _ = c.close().await;
    Ok(n)
}
