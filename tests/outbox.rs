//! A submitted batch becomes due as one outbox row, which the relay expands into the batch's
//! queued jobs in id order, round by round (issue 10). No RabbitMQ here: `publish_due` hands
//! its messages to a closure.

mod common;

use abha_bulk::jobs::kind::JobKind;
use common::{BENEFIT, TestEnv};
use uuid::Uuid;

async fn outbox_rows(env: &TestEnv) -> Vec<(Option<i64>, Option<Uuid>)> {
    sqlx::query_as("SELECT job_id, batch_id FROM outbox WHERE NOT recheck ORDER BY id")
        .fetch_all(&env.store.pool)
        .await
        .unwrap()
}

async fn job_ids(env: &TestEnv, batch: Uuid) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY id")
        .bind(batch)
        .fetch_all(&env.store.pool)
        .await
        .unwrap()
}

/// Publishes rounds of at most `limit` until nothing is due; the job ids, in order.
async fn drain(env: &TestEnv, limit: i64) -> Vec<i64> {
    let mut out = Vec::new();
    loop {
        let mut round = Vec::new();
        let n = env
            .store
            .publish_due(
                limit,
                std::time::Duration::from_secs(60),
                std::time::Duration::from_secs(600),
                |rows| {
                    round = rows.iter().map(|r| r.job_id).collect();
                    async { Ok::<_, ()>(()) }
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert!(n as i64 <= limit);
        assert_eq!(n, round.len());
        if n == 0 && outbox_rows(env).await.is_empty() {
            return out;
        }
        out.extend(round);
    }
}

fn link_rows(
    env: &TestEnv,
    people: std::ops::Range<u64>,
) -> Vec<abha_bulk::store::batches::PreparedRow> {
    let pop = env.pop();
    people
        .map(|i| {
            let job = abha_bulk::jobs::kind::Job::BenefitLink(
                abha_bulk::abdm::benefit::Beneficiary::Abha(pop.abha(i)),
            );
            env.store.prepare(i as i64 + 1, None, &job)
        })
        .collect()
}

#[tokio::test]
async fn a_submitted_file_is_one_outbox_row_published_in_id_order() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("R", 0..30).await;
    assert_eq!(outbox_rows(&env).await, vec![(None, Some(batch))]);
    // A failed publish leaves the cursor where it was: the same jobs go again.
    let mut first = Vec::new();
    let failed = env
        .store
        .publish_due(
            7,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(600),
            |rows| {
                first = rows.iter().map(|r| r.job_id).collect();
                async { Err::<(), _>("broker down") }
            },
        )
        .await
        .unwrap();
    assert!(failed.is_err());
    let published = drain(&env, 7).await;
    let jobs = job_ids(&env, batch).await;
    assert_eq!(first, jobs[..7]);
    assert_eq!(published, jobs, "every job once, in id order");
    assert!(outbox_rows(&env).await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn a_batch_row_skips_jobs_of_batches_stored_in_between_and_goes_on_cancel() {
    let env = TestEnv::new().await;
    let a = env.new_link_batch(None).await;
    let store = &env.store;
    let first = link_rows(&env, 0..10);
    store
        .insert_jobs(a, JobKind::BenefitLink, BENEFIT, &first)
        .await
        .unwrap();
    // Another submit stores its jobs between two chunks of `a`.
    let b = env.new_link_batch(None).await;
    let other = link_rows(&env, 100..112);
    assert!(
        store
            .insert_new_jobs(b, JobKind::BenefitLink, BENEFIT, &other)
            .await
            .unwrap()
            .is_some()
    );
    store.finish_submit(b, 12, 12, 0, 0).await.unwrap();
    // A repeated row: the plain insert refuses the chunk and writes nothing.
    let again = link_rows(&env, 5..15);
    assert!(
        store
            .insert_new_jobs(a, JobKind::BenefitLink, BENEFIT, &again)
            .await
            .unwrap()
            .is_none()
    );
    let out = store
        .insert_jobs(a, JobKind::BenefitLink, BENEFIT, &again)
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (5, 5));
    store.finish_submit(a, 20, 15, 0, 5).await.unwrap();

    // Both rows are due: rounds alternate between them, each batch's jobs in id order.
    let published = drain(&env, 4).await;
    assert_eq!(published.len(), 27, "every job once");
    for batch in [a, b] {
        let ids = job_ids(&env, batch).await;
        let mine: Vec<i64> = published
            .iter()
            .copied()
            .filter(|j| ids.contains(j))
            .collect();
        assert_eq!(mine, ids);
    }

    // Cancel removes a batch's row: nothing of it is published.
    let c = env.submit_links("C", 200..210).await;
    assert_eq!(outbox_rows(&env).await, vec![(None, Some(c))]);
    assert_eq!(store.cancel_batch(c).await.unwrap(), 10);
    assert!(outbox_rows(&env).await.is_empty());
    env.cleanup().await;
}

/// Publishes the due recheck rows once; the job ids republished.
async fn recheck(env: &TestEnv) -> Vec<i64> {
    let mut round = Vec::new();
    env.store
        .publish_rechecks(
            100,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(600),
            |rows| {
                round = rows.iter().map(|r| r.job_id).collect();
                async { Ok::<_, ()>(()) }
            },
        )
        .await
        .unwrap()
        .unwrap();
    round
}

#[tokio::test]
async fn a_published_job_whose_message_was_lost_is_published_again_by_its_recheck_row() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("L", 0..12).await;
    let before = env.store.outbox_stats().await.unwrap();
    let candidates = env.store.due_candidates(1000).await.unwrap();
    let published = drain(&env, 5).await;
    let jobs = job_ids(&env, batch).await;
    assert_eq!(published, jobs);
    // Every message is lost (a purged queue): nothing ran. Recheck rows cover what went out,
    // and they are no backlog: no pending job, no due row, no scheduler candidate.
    let after = env.store.outbox_stats().await.unwrap();
    assert_eq!(
        (before.pending, after.pending),
        (12, 0),
        "{before:?} {after:?}"
    );
    assert_eq!((after.due, after.recheck_due), (0, 0));
    assert_eq!(candidates.len(), 1);
    assert!(env.store.due_candidates(1000).await.unwrap().is_empty());
    assert!(
        recheck(&env).await.is_empty(),
        "not due before republish_after"
    );
    // Meanwhile: one job finished, one waits for its retry (not yet due), one's retry is due
    // (its message lost), and one was postponed and is due with its own outbox job row (the
    // row publishes it in its programme's turn: a recheck copy would be a duplicate, each
    // costing a rate token; after an ABDM outage, every postponed job's).
    for (id, state, due) in [
        (jobs[0], "succeeded", None),
        (jobs[1], "retrying", Some(3600.0)),
        (jobs[2], "retrying", Some(-1.0)),
        (jobs[3], "retrying", Some(-1.0)),
    ] {
        sqlx::query(
            "UPDATE jobs SET state = $2, next_due_at = now() + make_interval(secs => $3) WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(due)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO outbox (job_id, kind, batch_ref, due_at) SELECT id, kind, batch_id, now() + interval '1 hour' FROM jobs WHERE id = $1")
        .bind(jobs[3])
        .execute(&env.store.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET due_at = now() WHERE recheck")
        .execute(&env.store.pool)
        .await
        .unwrap();
    assert!(env.store.outbox_stats().await.unwrap().recheck_due >= 1);
    let again = recheck(&env).await;
    let mut want = vec![jobs[2]];
    want.extend(&jobs[4..]);
    assert_eq!(
        again, want,
        "the waiting jobs go again, once; not the finished one, the early retry, nor the one \
         its own outbox row publishes"
    );
    sqlx::query("DELETE FROM outbox WHERE job_id = $1")
        .bind(jobs[3])
        .execute(&env.store.pool)
        .await
        .unwrap();
    // What went out again is backed again; a second look finds nothing new before it is due.
    assert!(recheck(&env).await.is_empty());
    let covered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j WHERE j.batch_id = $1 AND EXISTS (
            SELECT 1 FROM outbox o WHERE o.recheck AND o.batch_id = j.batch_id
              AND j.id > o.after_job AND j.id <= o.upto_job AND o.due_at > now())",
    )
    .bind(batch)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert!(covered >= want.len() as i64);
    // Run them: the next recheck finds nothing to publish, and its row goes.
    sqlx::query("UPDATE jobs SET state = 'succeeded', next_due_at = NULL WHERE batch_id = $1")
        .bind(batch)
        .execute(&env.store.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET due_at = now() WHERE recheck")
        .execute(&env.store.pool)
        .await
        .unwrap();
    assert!(recheck(&env).await.is_empty());
    assert!(recheck(&env).await.is_empty());
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE recheck AND due_at <= now()")
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    assert_eq!(left, 0, "a recheck row with nothing left to publish goes");
    env.cleanup().await;
}
