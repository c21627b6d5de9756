//! The outbox's recheck rows: what backs a job once its message is published.
//!
//! Why: the relay deletes a job row, or moves a batch row's cursor past a job, once RabbitMQ
//! confirmed the job's message. From then on the message was the only thing that would ever
//! run the job: a message purged, acked unrun after a bounded hold (`worker.hold_max_secs`,
//! Postgres or ABDM down for hours) or dead-lettered after the queue's delivery limit left the
//! job `queued` for ever. So the message is a hint, and Postgres stays the truth until the
//! claim: every settled round leaves a *recheck row* covering the ids it published, shaped
//! like a batch row (`batch_id`, `after_job`, `upto_job`, `recheck = true`) and due
//! `relay.republish_after_secs` later. When it falls due the relay expands it like a batch
//! row, but only into jobs still waiting to run (`queued`, or `retrying` and due) that have
//! no outbox job row of their own (a retry or postponement is published by its job row, in
//! its programme's turn), publishes
//! those again (a duplicate is harmless: the claim runs a job once) and leaves a new recheck
//! row for them.
//!
//! Cost: a round's ids are merged per batch into ranges (ids closer than [`GAP`] share one),
//! and a range joins a recheck row of the same batch written less than a tenth of
//! `republish_after` ago (at most a minute) when they lie within [`GAP`]: a batch publishing
//! for ten minutes leaves about ten rows, not one per round. A due row's expansion reads at
//! most [`CHUNK`] ids of its range per query, filtered in Postgres.
//!
//! Recheck rows are not backlog: `outbox_stats`, the scheduler's candidates and shares leave
//! them out, and the fair plan never leases them (the relay expands them in a step of its own,
//! `publish_rechecks`). A previous-release relay (before migration 0017's column) reads one as
//! a batch row: it republishes the range's `queued` jobs at once, a harmless duplicate.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use super::outbox::{Cursor, Leased, OutboxRow};
use super::{QueryContext, Store, StoreError};

/// Ids of one batch closer than this share a recheck range (their scan costs less than
/// another row's query).
pub const GAP: i64 = 10_000;

/// Most ids of a recheck range read by one query.
const CHUNK: i64 = 50_000;

/// The default of `relay.republish_after_secs` (for callers without settings: the reconcile
/// repair's publish when no relay runs).
pub const REPUBLISH_AFTER: Duration = Duration::from_secs(600);

/// What a round published, per batch: its kind and the job ids.
pub(super) type Sent = BTreeMap<Uuid, (String, Vec<i64>)>;

/// The `(after_job, upto_job]` ranges that cover `ids`, ids closer than [`GAP`] in one.
pub fn ranges(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for id in ids {
        match out.last_mut() {
            Some((_, hi)) if id - *hi <= GAP => *hi = id.max(*hi),
            _ => out.push((id - 1, id)),
        }
    }
    out
}

impl Store {
    /// Leaves recheck rows for what a round published, due `after` from now: each range joins
    /// a recent recheck row of its batch within [`GAP`], or becomes a new row.
    pub(super) async fn leave_rechecks(
        conn: &mut sqlx::PgConnection,
        sent: &Sent,
        after: Duration,
    ) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        let batches: Vec<Uuid> = sent.keys().copied().collect();
        // "Recent": written within the window, i.e. due no earlier than `after - window` from
        // now. A row being expanded is leased (due `lease` from now), and config validation
        // keeps `after` at twice the lease or more, so a leased row never falls in the window.
        let window = (after / 10).min(Duration::from_secs(60));
        let recent: Vec<(i64, Uuid, i64, i64)> = sqlx::query_as(
            "SELECT id, batch_id, after_job, upto_job FROM outbox
             WHERE recheck AND batch_id = ANY($1)
               AND due_at > now() + make_interval(secs => $2) AND due_at <= now() + make_interval(secs => $3)",
        )
        .bind(&batches)
        .bind((after - window).as_secs_f64())
        .bind(after.as_secs_f64())
        .fetch_all(&mut *conn)
        .await
        .ctx("reading recent recheck rows")?;
        // Per existing row, the range it grows to; the rest are new rows.
        let mut grow: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        let (mut b_new, mut k_new, mut lo_new, mut hi_new) = (vec![], vec![], vec![], vec![]);
        for (batch, (kind, ids)) in sent {
            for (lo, hi) in ranges(ids) {
                let near = recent.iter().find(|(id, b, a, u)| {
                    let (a, u) = grow.get(id).copied().unwrap_or((*a, *u));
                    b == batch && a <= hi + GAP && u >= lo - GAP
                });
                match near {
                    Some((id, _, a, u)) => {
                        let e = grow.entry(*id).or_insert((*a, *u));
                        *e = (e.0.min(lo), e.1.max(hi));
                    }
                    None => {
                        b_new.push(*batch);
                        k_new.push(kind.clone());
                        lo_new.push(lo);
                        hi_new.push(hi);
                    }
                }
            }
        }
        if !grow.is_empty() {
            let ids: Vec<i64> = grow.keys().copied().collect();
            let los: Vec<i64> = grow.values().map(|r| r.0).collect();
            let his: Vec<i64> = grow.values().map(|r| r.1).collect();
            sqlx::query(
                "UPDATE outbox o SET after_job = LEAST(o.after_job, g.lo), upto_job = GREATEST(o.upto_job, g.hi)
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS g(id, lo, hi)
                 WHERE o.id = g.id AND o.recheck",
            )
            .bind(&ids)
            .bind(&los)
            .bind(&his)
            .execute(&mut *conn)
            .await
            .ctx("widening recheck rows")?;
        }
        if !b_new.is_empty() {
            sqlx::query(
                "INSERT INTO outbox (batch_id, batch_ref, kind, after_job, upto_job, due_at, recheck)
                 SELECT b, b, k, lo, hi, now() + make_interval(secs => $5), true
                 FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) AS n(b, k, lo, hi)",
            )
            .bind(&b_new)
            .bind(&k_new)
            .bind(&lo_new)
            .bind(&hi_new)
            .bind(after.as_secs_f64())
            .execute(&mut *conn)
            .await
            .ctx("leaving recheck rows")?;
        }
        Ok(())
    }

    /// The relay's recheck step: leases up to `limit` due recheck rows, publishes the jobs of
    /// their ranges still waiting to run (at most `limit` messages), and settles the rows as
    /// [`Store::publish_due`] does: a range done goes, the rest stays due, and what was
    /// published gets a new recheck row. Returns how many messages were published.
    pub async fn publish_rechecks<F, Fut, E>(
        &self,
        limit: i64,
        lease: Duration,
        republish_after: Duration,
        publish: F,
    ) -> Result<Result<usize, E>, StoreError>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        // `batch_id IS NOT NULL`: read through the partial index `outbox_batch` (batch and
        // recheck rows, a few per active batch), not through every due job row (after an ABDM
        // outage, every postponed job's).
        let leased: Vec<Leased> = sqlx::query(
            "UPDATE outbox SET due_at = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM outbox WHERE batch_id IS NOT NULL AND recheck AND due_at <= now()
                          ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, batch_id, after_job, upto_job, kind",
        )
        .bind(limit.max(1))
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .ctx("leasing due recheck rows")?
        .into_iter()
        .map(|r| Leased::batch_row(&r, true))
        .collect();
        if leased.is_empty() {
            return Ok(Ok(0));
        }
        let mut rows = Vec::new();
        let mut cursors = Vec::new();
        let mut sent = Sent::new();
        for l in &leased {
            let room = limit - rows.len() as i64;
            if room <= 0 {
                cursors.push(Cursor {
                    id: l.id,
                    after: Some(l.after_job),
                });
                continue;
            }
            let (jobs, cursor) = self.expand_recheck(l, room).await?;
            if let Some(batch) = l.batch
                && !jobs.is_empty()
            {
                let e = sent
                    .entry(batch)
                    .or_insert_with(|| (l.kind.clone(), vec![]));
                e.1.extend(jobs.iter().map(|j| j.job_id));
            }
            rows.extend(jobs);
            cursors.push(cursor);
        }
        let n = rows.len();
        let outcome = if rows.is_empty() {
            Ok(())
        } else {
            publish(rows).await
        };
        if let Err(e) = outcome {
            let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
            self.release_outbox(&ids).await?;
            return Ok(Err(e));
        }
        self.settle_outbox(&[], &cursors, &sent, republish_after)
            .await?;
        Ok(Ok(n))
    }

    /// The next jobs of a recheck row's range still waiting to run, at most `room`, reading at
    /// most [`CHUNK`] ids of the range. Waiting: `queued`, or `retrying` and due, with no
    /// outbox job row of its own. A job with one (a retry, a postponement, an expired lease)
    /// is published by that row in its programme's turn; republishing it as well made a
    /// duplicate that cost a rate token before the claim found it busy: after the breaker
    /// closed on an ABDM outage, every postponed job was due at once and the fleet spent its
    /// rate on duplicates (the chaos run's short storm fell to 0 jobs/s; migration 0019 indexes
    /// the lookup).
    pub(super) async fn expand_recheck(
        &self,
        l: &Leased,
        room: i64,
    ) -> Result<(Vec<OutboxRow>, Cursor), StoreError> {
        let end = l.upto_job.min(l.after_job.saturating_add(CHUNK));
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs j
             WHERE id > $1 AND id <= $2 AND batch_id = $3 AND state IN ('queued', 'retrying')
               AND (state = 'queued' OR next_due_at <= now())
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)
             ORDER BY id LIMIT $4",
        )
        .bind(l.after_job)
        .bind(end)
        .bind(l.batch)
        .bind(room)
        .fetch_all(&self.pool)
        .await
        .ctx("reading the waiting jobs of a due recheck row")?;
        let after = if ids.len() as i64 >= room {
            *ids.last().expect("room >= 1")
        } else {
            end
        };
        let rows = ids
            .into_iter()
            .map(|job_id| OutboxRow {
                id: l.id,
                job_id,
                kind: l.kind.clone(),
            })
            .collect();
        Ok((
            rows,
            Cursor {
                id: l.id,
                after: (after < l.upto_job).then_some(after),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_ids_share_a_range_far_ones_do_not() {
        assert_eq!(ranges(&[]), vec![]);
        assert_eq!(ranges(&[5]), vec![(4, 5)]);
        assert_eq!(ranges(&[7, 5, 6]), vec![(4, 7)]);
        assert_eq!(
            ranges(&[1, 1 + GAP, 2 + 3 * GAP]),
            vec![(0, 1 + GAP), (1 + 3 * GAP, 2 + 3 * GAP)]
        );
    }
}
