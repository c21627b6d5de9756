//! Retention against real Postgres (issue 19): replicas racing over the same overdue batches,
//! per-programme overrides, the purges of the tables that only grew, and the report after.

mod common;

use std::time::Duration;

use abha_bulk::lifecycle::{RetentionPolicy, Sweeper};
use abha_bulk::store::retention::{IdentifierRetention, Purge};
use common::{BENEFIT, PipelineOpts, TestEnv, by_ref};
use sqlx::Row;
use uuid::Uuid;

const DAY: u64 = 86_400;

/// Moves a batch's end `days` into the past.
async fn finished_days_ago(env: &TestEnv, batch: Uuid, days: i64) {
    sqlx::query(
        "UPDATE batches SET finished_at = now() - make_interval(days => $2) WHERE id = $1 AND state = 'finished'",
    )
    .bind(batch)
    .bind(days as i32)
    .execute(&env.store.pool)
    .await
    .unwrap();
}

/// (jobs, jobs erased, payloads still non-empty, results still present) of a batch.
async fn erased_counts(env: &TestEnv, batch: Uuid) -> (i64, i64, i64, i64) {
    let r = sqlx::query(
        "SELECT count(*), count(erased_at), count(*) FILTER (WHERE length(payload) > 0),
                count(result) FROM jobs WHERE batch_id = $1",
    )
    .bind(batch)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn policy(default_days: u64, per_benefit: Vec<(String, Duration)>) -> IdentifierRetention {
    IdentifierRetention {
        default: Duration::from_secs(default_days * DAY),
        per_benefit,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_erase_each_overdue_batch_once_and_nothing_else() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let old1 = env.submit_links("a", 0..120).await;
    let old2 = env.submit_links("b", 120..240).await;
    let recent = env.submit_links("c", 240..300).await;
    let p = env.start(PipelineOpts::default());
    env.wait_until_done(&[old1, old2, recent]).await;
    p.stop().await;
    env.store.finish_batches().await.unwrap();
    finished_days_ago(&env, old1, 40).await;
    finished_days_ago(&env, old2, 31).await;
    finished_days_ago(&env, recent, 29).await;

    let retention = policy(30, vec![]);
    let before = env.store.retention_stats(&retention).await.unwrap();
    assert!(
        before.overdue_secs > 9.0 * DAY as f64 && before.oldest_unerased_secs > 39.0 * DAY as f64,
        "{before:?}"
    );

    // Four replicas, chunks of 7 job ids: each chunk is its own transaction, so they interleave.
    let mut racers = Vec::new();
    for _ in 0..4 {
        let store = env.store.clone();
        let retention = retention.clone();
        racers.push(tokio::spawn(async move {
            let mut erased = 0;
            let mut chunks = 0;
            let mut idle = 0;
            // Two empty answers in a row end it: another replica may hold the last batch.
            while idle < 2 {
                let c = store.sweep_identifiers(&retention, 7).await.unwrap();
                if c.batch.is_none() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                idle = 0;
                erased += c.jobs;
                chunks += 1;
            }
            (erased, chunks)
        }));
    }
    let mut total = 0;
    let mut busy = 0;
    for r in racers {
        let (erased, chunks) = r.await.unwrap();
        total += erased;
        busy += u32::from(chunks > 0);
    }
    assert_eq!(total, 240, "every overdue row erased exactly once");
    assert!(busy >= 2, "the replicas shared the work ({busy} worked)");
    for b in [old1, old2] {
        assert_eq!(erased_counts(&env, b).await, (120, 120, 0, 0), "batch {b}");
    }
    assert_eq!(erased_counts(&env, recent).await, (60, 0, 60, 60));
    let logged: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT batch_id, jobs_erased FROM erasure_log WHERE kind = 'retention' ORDER BY jobs_erased",
    )
    .fetch_all(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(logged.len(), 2, "one log row per batch: {logged:?}");
    assert!(logged.iter().all(|(_, n)| *n == 120));
    let after = env.store.retention_stats(&retention).await.unwrap();
    assert_eq!(after.overdue_secs, 0.0, "{after:?}");
    assert!(after.oldest_unerased_secs > 28.0 * DAY as f64);

    // A per-programme override (names compared without case) erases the recent batch too.
    let shorter = policy(
        30,
        vec![(BENEFIT.to_lowercase(), Duration::from_secs(7 * DAY))],
    );
    let c = env.store.sweep_identifiers(&shorter, 1000).await.unwrap();
    assert_eq!((c.batch, c.jobs, c.batch_done), (Some(recent), 60, true));

    // The report keeps rows, states and masked identifiers, and says `erased`.
    let (text, rows) = env.report(old1, None).await;
    assert_eq!(rows.len(), 120);
    let first = by_ref(&rows, "a0");
    assert_eq!(first["state"], "succeeded");
    assert_eq!(first["result_revealed"], "erased");
    assert!(
        first["identifier"].starts_with("XX-XXXX-XXXX-"),
        "{first:?}"
    );
    assert!(!text.contains(env.pop().abha(0).expose()));
    // retry-failed cannot bring an erased row back to life.
    sqlx::query("UPDATE jobs SET state = 'failed' WHERE batch_id = $1")
        .bind(old1)
        .execute(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(env.store.retry_failed(old1, None).await.unwrap(), 0);

    // The second stage: the erased rows themselves go (with their attempts) once
    // retention.rows_days passed since the erasure; the batches and their counts stay.
    let kept = Duration::from_secs(3600);
    let none = env.store.sweep_rows(kept, 50).await.unwrap();
    assert_eq!(none.batch, None, "erased just now: not due yet");
    let mut deleted = 0;
    while env
        .store
        .sweep_rows(Duration::ZERO, 50)
        .await
        .unwrap()
        .batch
        .is_some()
    {
        deleted += 1;
    }
    assert!(deleted >= 3);
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM attempts),
                (SELECT sum(accepted_rows)::int8 FROM batches WHERE rows_deleted_at IS NOT NULL)",
    )
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 300));
    env.cleanup().await;
}

#[tokio::test]
async fn the_purges_delete_what_is_past_its_retention_only() {
    let env = TestEnv::new().await;
    let batch = env.new_link_batch(None).await;
    let job: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (batch_id, kind, benefit, subject_hash, subject_masked, dedup_hash, payload, state)
         VALUES ($1, 'benefit-link', $2, '\\x01', 'XX', '\\x02', '\\x03', 'succeeded') RETURNING id",
    )
    .bind(batch)
    .bind(BENEFIT)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    for days in [100, 95, 1] {
        sqlx::query(
            "INSERT INTO attempts (job_id, job_attempt, operation, request_id, disposition, duration_ms, created_at)
             VALUES ($1, 1, 'link', gen_random_uuid(), 'success', 5, now() - make_interval(days => $2))",
        )
        .bind(job)
        .bind(days)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    let key: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (id, prefix, secret_sha256, benefits, scopes)
         VALUES (gen_random_uuid(), 'p1', '\\x00', ARRAY[$1], ARRAY['submit']) RETURNING id",
    )
    .bind(BENEFIT)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    // (status, hours old): a crashed serve's running record, a fresh one, an old answer, a new one.
    for (i, (status, hours)) in [(None, 7), (None, 1), (Some(201), 24 * 8), (Some(201), 2)]
        .into_iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO api_idempotency (key_id, idempotency_key, status, created_at)
             VALUES ($1, $2, $3, now() - make_interval(hours => $4))",
        )
        .bind(key)
        .bind(format!("k{i}"))
        .bind(status)
        .bind(hours)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    for days in [400, 10] {
        sqlx::query(
            "INSERT INTO reveal_audit (batch_id, revealed_by, rows, created_at)
             VALUES ($1, 'test', 1, now() - make_interval(days => $2))",
        )
        .bind(batch)
        .bind(days)
        .execute(&env.store.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO erasure_log (kind, reason, created_at) VALUES ('request', 'test', now() - make_interval(days => $1))",
        )
        .bind(days)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    Sweeper::new(RetentionPolicy::default())
        .purge(&env.store)
        .await;
    let count = |sql: &'static str| {
        let pool = env.store.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM attempts").await, 1);
    assert_eq!(
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM api_idempotency"
        )
        .fetch_one(&env.store.pool)
        .await
        .unwrap(),
        "k1,k3"
    );
    assert_eq!(count("SELECT count(*) FROM reveal_audit").await, 1);
    assert_eq!(count("SELECT count(*) FROM erasure_log").await, 1);
    // Every table's label is a metric label the registry knows.
    for t in Purge::ALL {
        abha_bulk::telemetry::metrics::RETENTION_ERASED.with_label_values(&[t.label()]);
    }
    env.cleanup().await;
}
