//! What the scheduling relay reads and writes: the due work of each batch (for the stride
//! scheduler), the publishing of a plan, the fleet's rate (for the broker's bound), and the
//! scheduler's view that `status`, the API and the console show (`batch_shares`,
//! `batch_minutes`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;

use sqlx::Row;
use uuid::Uuid;

use super::outbox::{Cursor, Leased, OutboxRow};
use super::{QueryContext, Store, StoreError};
use crate::scheduler::{Candidate, Plan, Priority};

/// One active batch's share, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchShare {
    /// The batch.
    pub batch: Uuid,
    /// Its programme.
    pub programme: String,
    /// Fraction of the fleet's rate it gets now (0..=1).
    pub share: f64,
    /// The calls/s that stands for.
    pub rate: f64,
    /// Messages it has left to publish (an upper bound while a file is being expanded).
    pub backlog: u64,
}

impl Store {
    /// The due work of every batch that has outbox rows: its programme, priority and how many
    /// messages it could publish now (due job rows, counted up to `cap`, plus what is left of
    /// its file's range). The distinct batches are found by a skip scan of
    /// `outbox_batch_ref_due` (a handful of index probes, however many rows are due). Recheck
    /// rows (`store::recheck`) are no backlog: a batch that has only those is no candidate,
    /// and they add nothing to a batch's work.
    pub async fn due_candidates(&self, cap: i64) -> Result<Vec<Candidate>, StoreError> {
        let rows = sqlx::query(
            "WITH RECURSIVE refs(b) AS (
                (SELECT batch_ref FROM outbox WHERE batch_ref IS NOT NULL ORDER BY batch_ref LIMIT 1)
                UNION ALL
                SELECT (SELECT o.batch_ref FROM outbox o WHERE o.batch_ref > refs.b
                        ORDER BY o.batch_ref LIMIT 1)
                FROM refs WHERE refs.b IS NOT NULL)
             SELECT b.id, b.benefit, b.priority,
                    (SELECT count(*) FROM (SELECT 1 FROM outbox o
                        WHERE o.batch_ref = b.id AND o.job_id IS NOT NULL AND o.due_at <= now()
                        LIMIT $1) x)::int8,
                    COALESCE((SELECT sum(o.upto_job - o.after_job) FROM outbox o
                        WHERE o.batch_ref = b.id AND o.batch_id IS NOT NULL AND NOT o.recheck
                          AND o.due_at <= now()), 0)::int8
             FROM refs JOIN batches b ON b.id = refs.b
             WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.batch_ref = b.id AND NOT o.recheck)",
        )
        .bind(cap)
        .fetch_all(&self.pool)
        .await
        .ctx("reading each batch's due work")?;
        Ok(rows
            .into_iter()
            .map(|r| Candidate {
                batch: r.get(0),
                programme: r.get(1),
                priority: Priority::parse(r.get::<&str, _>(2)).unwrap_or_default(),
                available: (r.get::<i64, _>(3) + r.get::<i64, _>(4)).max(0) as u64,
            })
            .collect())
    }

    /// Publishes `plan`: leases each batch's due job rows (retries first, oldest first) and,
    /// for what they do not cover, the next queued jobs of its file's row; hands the messages
    /// to `publish` in the plan's interleaved order; then settles the rows as
    /// [`Store::publish_due`] does (released at once when the publish failed). Returns the
    /// messages published per batch.
    pub async fn publish_plan<F, Fut, E>(
        &self,
        plan: &Plan,
        lease: std::time::Duration,
        republish_after: std::time::Duration,
        publish: F,
    ) -> Result<Result<BTreeMap<Uuid, u64>, E>, StoreError>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if plan.is_empty() {
            return Ok(Ok(BTreeMap::new()));
        }
        let (batches, wants): (Vec<Uuid>, Vec<i64>) =
            plan.counts.iter().map(|(b, n)| (*b, *n as i64)).unzip();
        let job_rows = sqlx::query(
            "UPDATE outbox SET due_at = now() + make_interval(secs => $3)
             WHERE id IN (
                SELECT o.id FROM UNNEST($1::uuid[], $2::int8[]) AS w(batch, n)
                CROSS JOIN LATERAL (
                    SELECT id FROM outbox
                    WHERE batch_ref = w.batch AND job_id IS NOT NULL AND due_at <= now()
                    ORDER BY due_at LIMIT w.n FOR UPDATE SKIP LOCKED) o)
             RETURNING id, job_id, batch_ref, kind",
        )
        .bind(&batches)
        .bind(&wants)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .ctx("leasing due outbox rows of the planned batches")?;
        let mut queues: HashMap<Uuid, VecDeque<OutboxRow>> = HashMap::new();
        let mut job_ids = Vec::with_capacity(job_rows.len());
        for r in job_rows {
            job_ids.push(r.get::<i64, _>(0));
            queues.entry(r.get(2)).or_default().push_back(OutboxRow {
                id: r.get(0),
                job_id: r.get(1),
                kind: r.get(3),
            });
        }
        // What the job rows did not cover comes from the batches' file rows.
        let short: Vec<Uuid> = plan
            .counts
            .iter()
            .filter(|(b, n)| queues.get(b).map_or(0, VecDeque::len) < **n as usize)
            .map(|(b, _)| *b)
            .collect();
        let mut cursors = Vec::new();
        let mut file_ids = Vec::new();
        if !short.is_empty() {
            let leased: Vec<Leased> = sqlx::query(
                "UPDATE outbox SET due_at = now() + make_interval(secs => $2)
                 WHERE id IN (SELECT id FROM outbox WHERE batch_id = ANY($1) AND due_at <= now()
                              AND NOT recheck FOR UPDATE SKIP LOCKED)
                 RETURNING id, batch_id, after_job, upto_job, kind",
            )
            .bind(&short)
            .bind(lease.as_secs_f64())
            .fetch_all(&self.pool)
            .await
            .ctx("leasing the planned batches' file rows")?
            .into_iter()
            .map(|r| Leased::batch_row(&r, false))
            .collect();
            for l in &leased {
                let batch = l.batch.expect("a file row names its batch");
                let have = queues.get(&batch).map_or(0, VecDeque::len) as i64;
                let room = plan.counts[&batch] as i64 - have;
                file_ids.push(l.id);
                if room <= 0 {
                    cursors.push(Cursor {
                        id: l.id,
                        after: Some(l.after_job),
                    });
                    continue;
                }
                let (jobs, cursor) = self.expand_batch(l, room).await?;
                queues.entry(batch).or_default().extend(jobs);
                cursors.push(cursor);
            }
        }
        // The plan's order, skipping batches that had less than planned.
        let mut rows = Vec::with_capacity(plan.len());
        let mut published: BTreeMap<Uuid, u64> = BTreeMap::new();
        let mut sent = super::recheck::Sent::new();
        for b in &plan.order {
            if let Some(row) = queues.get_mut(b).and_then(VecDeque::pop_front) {
                let e = sent.entry(*b).or_insert_with(|| (row.kind.clone(), vec![]));
                e.1.push(row.job_id);
                rows.push(row);
                *published.entry(*b).or_default() += 1;
            }
        }
        // Job rows leased beyond the plan (none: LIMIT w.n) would be released below with the
        // rest on failure; on success every leased job row was published.
        let outcome = if rows.is_empty() {
            Ok(())
        } else {
            publish(rows).await
        };
        if let Err(e) = outcome {
            let all: Vec<i64> = job_ids.iter().chain(&file_ids).copied().collect();
            self.release_outbox(&all).await?;
            return Ok(Err(e));
        }
        self.settle_outbox(&job_ids, &cursors, &sent, republish_after)
            .await?;
        Ok(Ok(published))
    }

    /// The fleet's current shared rate for `client` (calls/s): the AIMD rate when one is set,
    /// else the rate workers are configured with; `None` before any worker took a token.
    pub async fn fleet_rate(&self, client: &str) -> Result<Option<f64>, StoreError> {
        let r: Option<(Option<f64>,)> = sqlx::query_as(
            "SELECT COALESCE(LEAST(rate, fleet_rate), rate, fleet_rate) FROM rate_budget WHERE client = $1",
        )
        .bind(client)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading the fleet's rate")?;
        Ok(r.and_then(|r| r.0))
    }

    /// Replaces the scheduler's view (`batch_shares`) with `shares`, and forgets per-minute
    /// counts older than a day.
    pub async fn write_shares(&self, shares: &[BatchShare]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.ctx("opening a transaction")?;
        sqlx::query("DELETE FROM batch_shares WHERE batch_id <> ALL($1)")
            .bind(shares.iter().map(|s| s.batch).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .ctx("dropping finished batches' shares")?;
        sqlx::query(
            "INSERT INTO batch_shares (batch_id, programme, share, rate, backlog, updated_at)
             SELECT * , now() FROM UNNEST($1::uuid[], $2::text[], $3::float8[], $4::float8[], $5::int8[])
             ON CONFLICT (batch_id) DO UPDATE SET programme = EXCLUDED.programme,
                share = EXCLUDED.share, rate = EXCLUDED.rate, backlog = EXCLUDED.backlog,
                updated_at = now()",
        )
        .bind(shares.iter().map(|s| s.batch).collect::<Vec<_>>())
        .bind(shares.iter().map(|s| s.programme.clone()).collect::<Vec<_>>())
        .bind(shares.iter().map(|s| s.share).collect::<Vec<_>>())
        .bind(shares.iter().map(|s| s.rate).collect::<Vec<_>>())
        .bind(shares.iter().map(|s| s.backlog as i64).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .ctx("writing the batches' shares")?;
        sqlx::query("DELETE FROM batch_minutes WHERE minute < now() - interval '1 day'")
            .execute(&mut *tx)
            .await
            .ctx("forgetting per-minute counts older than a day")?;
        tx.commit().await.ctx("committing the batches' shares")?;
        Ok(())
    }

    /// Adds the messages published per batch to the current minute of `batch_minutes`.
    pub async fn add_minutes(&self, published: &BTreeMap<Uuid, u64>) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO batch_minutes (batch_id, minute, published)
             SELECT b, date_trunc('minute', now()), n FROM UNNEST($1::uuid[], $2::int8[]) AS t(b, n)
             ON CONFLICT (batch_id, minute) DO UPDATE
                SET published = batch_minutes.published + EXCLUDED.published",
        )
        .bind(published.keys().copied().collect::<Vec<_>>())
        .bind(published.values().map(|n| *n as i64).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .ctx("counting published messages per minute")?;
        Ok(())
    }
}

/// The advisory lock key of the scheduling relay ("ABHASCHD").
const SCHEDULER_LOCK: i64 = 0x4142_4841_5343_4844;

/// Leadership of the scheduling relay: a session-level advisory lock held on a connection of
/// its own. Only the holder publishes, so the bounded broker's depth is read and filled by one
/// relay at a time and the stride scheduler's memory is one; the others keep their
/// housekeeping, try the lock again on the same connection every second (no connection churn
/// however many replicas stand by), and take over within a second of the holder's death (its
/// connection closes, which releases the lock).
pub struct SchedulerLock {
    conn: sqlx::PgConnection,
    held: bool,
}

impl Store {
    /// A connection for the scheduling lock, not holding it yet.
    pub async fn scheduler_lock(&self) -> Result<SchedulerLock, StoreError> {
        use sqlx::Connection;
        let opts = self.pool.connect_options();
        let conn = sqlx::PgConnection::connect_with(&opts)
            .await
            .ctx("opening the scheduler's lock connection")?;
        Ok(SchedulerLock { conn, held: false })
    }

    /// Takes the scheduling lock when nobody holds it (a connection of its own each time:
    /// for one-off callers and tests; the relay keeps one [`SchedulerLock`]).
    pub async fn try_scheduler_lock(&self) -> Result<Option<SchedulerLock>, StoreError> {
        let mut lock = self.scheduler_lock().await?;
        Ok(lock.try_take().await?.then_some(lock))
    }
}

impl SchedulerLock {
    /// Takes the lock if it is free; true while this connection holds it.
    pub async fn try_take(&mut self) -> Result<bool, StoreError> {
        if !self.held {
            let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(SCHEDULER_LOCK)
                .fetch_one(&mut self.conn)
                .await
                .ctx("taking the scheduler's lock")?;
            self.held = got;
        }
        Ok(self.held)
    }

    /// True while this connection holds the lock.
    pub fn held(&self) -> bool {
        self.held
    }

    /// True while the lock's connection answers (and so the lock, if taken, is held).
    pub async fn alive(&mut self) -> bool {
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&mut self.conn),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}
