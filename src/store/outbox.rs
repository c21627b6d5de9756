//! The outbox: rows to publish, leased under `FOR UPDATE SKIP LOCKED` and deleted once
//! RabbitMQ confirmed their messages.
//!
//! A row is either one job (a retry, an expired lease, retry-failed, a repaired message) or a
//! whole submitted batch: `finish_submit` makes a file due with one row, which the relay
//! expands into the batch's queued jobs in id order, a round at a time, keeping its place in
//! `after_job`. One row instead of a million keeps activation O(1) (issue 10: the per-job rows
//! and their foreign-key checks cost more than storing the jobs).
//!
//! What a settled round published is then backed by a recheck row (`store::recheck`), so a
//! lost message never strands its job.

use std::future::Future;

use sqlx::Row;
use uuid::Uuid;

use super::recheck::Sent;
use super::{QueryContext, Store, StoreError};

/// One message to publish: a job to run.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// The outbox row it came from (a batch row yields many).
    pub id: i64,
    /// Job to run.
    pub job_id: i64,
    /// Its kind (the routing key).
    pub kind: String,
}

/// Outbox backlog.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxStats {
    /// Jobs not yet published (due or not); a batch still being expanded counts the ids left
    /// in its range, an upper bound. Recheck rows are not counted: their jobs were published.
    pub pending: i64,
    /// Rows due now (a batch row counts once; recheck rows do not count).
    pub due: i64,
    /// Age of the oldest due row, seconds (0 when none is due; recheck rows left out).
    pub lag_secs: f64,
    /// Recheck rows due now and not yet expanded: a figure that grows while the relay
    /// publishes nothing (the ABDM breaker is open, RabbitMQ is unreachable).
    pub recheck_due: i64,
}

/// A leased outbox row.
pub(super) struct Leased {
    pub(super) id: i64,
    pub(super) job_id: Option<i64>,
    pub(super) batch: Option<Uuid>,
    pub(super) after_job: i64,
    pub(super) upto_job: i64,
    pub(super) kind: String,
    /// A recheck row (`store::recheck`): expands into jobs still waiting, not every queued one.
    pub(super) recheck: bool,
}

impl Leased {
    /// A leased batch or recheck row, from `RETURNING id, batch_id, after_job, upto_job, kind`.
    pub(super) fn batch_row(r: &sqlx::postgres::PgRow, recheck: bool) -> Self {
        Self {
            id: r.get(0),
            job_id: None,
            batch: r.get(1),
            after_job: r.get(2),
            upto_job: r.get(3),
            kind: r.get(4),
            recheck,
        }
    }
}

/// Where a batch row stands after a round.
pub(super) struct Cursor {
    pub(super) id: i64,
    /// The last job id scanned; `None` when the range is exhausted (the row goes).
    pub(super) after: Option<i64>,
}

impl Store {
    /// Takes up to `limit` due messages, hands them to `publish` and deletes (or, for a batch
    /// row, advances) their rows when it succeeds (makes them due again at once when it
    /// fails). Returns how many messages were published.
    ///
    /// No transaction is held while RabbitMQ confirms: the rows are first leased (their
    /// `due_at` moved `lease` ahead, one short statement), so a relay that dies or hangs
    /// mid-publish leaves them to be published again when the lease runs out. A message
    /// published twice is harmless: the worker's claim runs a job once.
    pub async fn publish_due<F, Fut, E>(
        &self,
        limit: i64,
        lease: std::time::Duration,
        republish_after: std::time::Duration,
        publish: F,
    ) -> Result<Result<usize, E>, StoreError>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut refs = std::collections::HashMap::new();
        let leased: Vec<Leased> = sqlx::query(
            "UPDATE outbox SET due_at = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM outbox WHERE due_at <= now()
                          ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, job_id, batch_id, after_job, upto_job, kind, recheck, batch_ref",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .ctx("leasing due outbox rows")?
        .into_iter()
        .map(|r| {
            (
                Leased {
                    id: r.get(0),
                    job_id: r.get(1),
                    batch: r.get(2),
                    after_job: r.get::<Option<i64>, _>(3).unwrap_or(0),
                    upto_job: r.get::<Option<i64>, _>(4).unwrap_or(0),
                    kind: r.get(5),
                    recheck: r.get(6),
                },
                r.get::<Option<Uuid>, _>(7),
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(l, batch_ref)| {
            if let (Some(job), Some(b)) = (l.job_id, batch_ref) {
                refs.insert(job, b);
            }
            l
        })
        .collect();
        if leased.is_empty() {
            return Ok(Ok(0));
        }
        let mut rows: Vec<OutboxRow> = leased
            .iter()
            .filter_map(|l| {
                l.job_id.map(|job_id| OutboxRow {
                    id: l.id,
                    job_id,
                    kind: l.kind.clone(),
                })
            })
            .collect();
        let mut cursors = Vec::new();
        for b in leased.iter().filter(|l| l.batch.is_some()) {
            let room = limit - rows.len() as i64;
            if room <= 0 {
                cursors.push(Cursor {
                    id: b.id,
                    after: Some(b.after_job),
                });
                continue;
            }
            let (jobs, cursor) = if b.recheck {
                self.expand_recheck(b, room).await?
            } else {
                self.expand_batch(b, room).await?
            };
            rows.extend(jobs);
            cursors.push(cursor);
        }
        let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
        let mut sent = Sent::new();
        for r in &rows {
            let batch = refs
                .get(&r.job_id)
                .copied()
                .or_else(|| leased.iter().find(|l| l.id == r.id).and_then(|l| l.batch));
            if let Some(b) = batch {
                let e = sent.entry(b).or_insert_with(|| (r.kind.clone(), vec![]));
                e.1.push(r.job_id);
            }
        }
        let n = rows.len();
        let outcome = if rows.is_empty() {
            Ok(())
        } else {
            publish(rows).await
        };
        if let Err(e) = outcome {
            self.release_outbox(&ids).await?;
            return Ok(Err(e));
        }
        let jobs: Vec<i64> = leased
            .iter()
            .filter(|l| l.job_id.is_some())
            .map(|l| l.id)
            .collect();
        self.settle_outbox(&jobs, &cursors, &sent, republish_after)
            .await?;
        Ok(Ok(n))
    }

    /// Makes leased rows due again at once (their publish failed).
    pub(super) async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET due_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .ctx("releasing outbox rows after a failed publish")?;
        Ok(())
    }

    /// After RabbitMQ confirmed a round: deletes the published job rows and the batch rows
    /// whose range is done, moves the other batch rows' cursors on (due again at once), and
    /// leaves recheck rows for what was `sent`, due `republish_after` from now.
    pub(super) async fn settle_outbox(
        &self,
        job_rows: &[i64],
        cursors: &[Cursor],
        sent: &Sent,
        republish_after: std::time::Duration,
    ) -> Result<(), StoreError> {
        let (moving, done): (Vec<&Cursor>, Vec<&Cursor>) =
            cursors.iter().partition(|c| c.after.is_some());
        let gone: Vec<i64> = job_rows
            .iter()
            .copied()
            .chain(done.iter().map(|c| c.id))
            .collect();
        // One transaction: a published job's outbox row goes only with its recheck row
        // written. Postgres stopping between the two (the chaos run's Postgres outages)
        // would otherwise leave jobs whose message was the only thing left to run them.
        let mut tx = self.pool.begin().await.ctx("starting an outbox settle")?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&gone)
            .execute(&mut *tx)
            .await
            .ctx("deleting published outbox rows")?;
        if !moving.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET after_job = c.after, due_at = now()
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS c(id, after) WHERE o.id = c.id",
            )
            .bind(moving.iter().map(|c| c.id).collect::<Vec<_>>())
            .bind(moving.iter().filter_map(|c| c.after).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .ctx("advancing a batch's outbox row")?;
        }
        Self::leave_rechecks(&mut tx, sent, republish_after).await?;
        tx.commit().await.ctx("committing an outbox settle")
    }

    /// The next queued jobs of a batch row: up to `room` of them after its cursor, scanned in
    /// id order over the primary key. The range may hold other batches' jobs (submits running
    /// side by side); they are skipped, and a few more scans are made so that a run of them
    /// does not cost the relay an idle pause.
    pub(super) async fn expand_batch(
        &self,
        b: &Leased,
        room: i64,
    ) -> Result<(Vec<OutboxRow>, Cursor), StoreError> {
        const SCANS: usize = 8;
        let mut after = b.after_job;
        let mut jobs = Vec::new();
        for _ in 0..SCANS {
            let scanned: Vec<(i64, Uuid, String)> = sqlx::query_as(
                "SELECT id, batch_id, state FROM jobs WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
            )
            .bind(after)
            .bind(b.upto_job)
            .bind(room)
            .fetch_all(&self.pool)
            .await
            .ctx("reading the next jobs of a due batch")?;
            after = scanned.last().map_or(after, |(id, _, _)| *id);
            // Done when the scan came up short, or reached the end of the range (a range
            // that ends exactly on a full scan would otherwise stay as a row with nothing left).
            let exhausted = (scanned.len() as i64) < room || after >= b.upto_job;
            jobs.extend(
                scanned
                    .into_iter()
                    .filter(|(_, batch, state)| Some(*batch) == b.batch && state == "queued")
                    .map(|(job_id, _, _)| OutboxRow {
                        id: b.id,
                        job_id,
                        kind: b.kind.clone(),
                    }),
            );
            if exhausted {
                return Ok((
                    jobs,
                    Cursor {
                        id: b.id,
                        after: None,
                    },
                ));
            }
            if !jobs.is_empty() {
                break;
            }
        }
        Ok((
            jobs,
            Cursor {
                id: b.id,
                after: Some(after),
            },
        ))
    }

    /// Backlog figures for metrics and `status`.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let r = sqlx::query(
            "SELECT (count(*) FILTER (WHERE job_id IS NOT NULL)
                     + COALESCE(sum(upto_job - after_job) FILTER (WHERE batch_id IS NOT NULL AND NOT recheck), 0))::int8,
                    count(*) FILTER (WHERE due_at <= now() AND NOT recheck),
                    COALESCE(EXTRACT(EPOCH FROM now() - min(due_at) FILTER (WHERE due_at <= now() AND NOT recheck)), 0)::float8,
                    count(*) FILTER (WHERE due_at <= now() AND recheck)
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("reading outbox figures")?;
        Ok(OutboxStats {
            pending: r.get(0),
            due: r.get(1),
            lag_secs: r.get(2),
            recheck_due: r.get(3),
        })
    }
}
