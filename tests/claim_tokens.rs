//! A lease belongs to a claim, not to a process (issue 18, item 1), against the real Postgres
//! statements: the claim's token fences the call and the outcome write, so a late write of a
//! first claim never lands on a second claim of the same job by the same worker. The same
//! sequence on tokio's paused clock, through the gate, is in `tests/gate_races.rs`.

mod common;

use std::time::Duration;

use abha_bulk::store::jobs::{Claim, ClaimedJob, Fence, Outcome};
use common::TestEnv;

const LEASE: Duration = Duration::from_secs(30);

async fn claim(env: &TestEnv, id: i64, owner: &str) -> ClaimedJob {
    match env.store.claim(id, owner, LEASE).await.expect("claim") {
        Claim::Run(job) => job,
        other => panic!("{owner} could not claim: {other:?}"),
    }
}

/// The lease runs out (as it does while Postgres is down for longer than the lease) and
/// housekeeping requeues the job; no wall-clock wait.
async fn expire_and_requeue(env: &TestEnv, id: i64) {
    sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&env.store.pool)
        .await
        .expect("expire");
    assert_eq!(
        env.store.requeue_expired_leases().await.expect("requeue"),
        1
    );
}

fn linked() -> Outcome {
    Outcome::Succeeded {
        outcome: "linked".into(),
        code: None,
        result: None,
        result_masked: None,
    }
}

#[derive(Debug, PartialEq)]
struct Row {
    state: String,
    owner: Option<String>,
    token: Option<uuid::Uuid>,
    intent: bool,
    attempts: i32,
}

async fn row(env: &TestEnv, id: i64) -> Row {
    let (state, owner, token, intent, attempts) = sqlx::query_as(
        "SELECT state, lease_owner, claim_token, effect_started_at IS NOT NULL, attempts
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.store.pool)
    .await
    .expect("row");
    Row {
        state,
        owner,
        token,
        intent,
        attempts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_outcome_of_a_first_claim_is_refused_and_keeps_the_intent() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("T", 400..401).await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    // Task 1 of worker W claims the link (the claim records the intent) and sends it.
    let first = claim(&env, id, "W").await;
    assert!(!first.effect_may_have_happened);
    // Postgres goes away for longer than the lease while task 1 retries its outcome write;
    // the job is requeued and task 2 of the same worker W claims it again.
    expire_and_requeue(&env, id).await;
    let second = claim(&env, id, "W").await;
    assert_ne!(first.claim_token, second.claim_token, "one token per claim");
    assert!(second.effect_may_have_happened, "task 2 must look first");
    // Task 1's write reaches Postgres at last. Its answer was clear (it would clear the
    // intent): refused, nothing written, the intent kept for task 2.
    let written = env
        .store
        .record_outcome(&first, "W", &linked(), &[])
        .await
        .expect("write");
    assert!(
        !written,
        "the first claim's late write matched the second claim"
    );
    assert_eq!(
        row(&env, id).await,
        Row {
            state: "running".into(),
            owner: Some("W".into()),
            token: Some(second.claim_token),
            intent: true,
            attempts: 2,
        }
    );
    // Task 1's fence (a retry inside its client) is refused; task 2's passes.
    let fence = |job: &ClaimedJob| env.store.fence(id, "W", job.claim_token, LEASE, true);
    assert_eq!(fence(&first).await.unwrap(), Fence::Lost);
    assert_eq!(fence(&second).await.unwrap(), Fence::Held);
    // Task 2 records its own outcome; the row finishes once.
    assert!(
        env.store
            .record_outcome(&second, "W", &linked(), &[])
            .await
            .unwrap()
    );
    assert_eq!(row(&env, id).await.state, "succeeded");
    assert!(
        !env.store
            .record_outcome(&first, "W", &linked(), &[])
            .await
            .unwrap(),
        "nor after the row finished"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_release_claim_beside_this_one_fences_this_one_out() {
    // During a rolling deploy the previous release claims with its own statement: it sets
    // lease_owner and leaves claim_token as it was. Its owner name (HOSTNAME-pid) never equals
    // this release's (HOSTNAME-pid-suffix), so this release's late write is refused by the
    // owner match even though the token still matches.
    let env = TestEnv::new().await;
    let batch = env.submit_links("P", 401..402).await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    let new = claim(&env, id, "host-1-a1b2c3").await;
    expire_and_requeue(&env, id).await;
    // The previous release's claim statement (0010's columns only).
    let old = sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = 'host-1',
                lease_until = now() + interval '30 seconds', updated_at = now()
         WHERE id = $1 AND state IN ('queued', 'retrying')",
    )
    .bind(id)
    .execute(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(old.rows_affected(), 1);
    assert!(
        !env.store
            .record_outcome(&new, "host-1-a1b2c3", &linked(), &[])
            .await
            .unwrap()
    );
    assert_eq!(
        env.store
            .fence(id, "host-1-a1b2c3", new.claim_token, LEASE, true)
            .await
            .unwrap(),
        Fence::Lost
    );
    let r = row(&env, id).await;
    assert_eq!(
        (r.state.as_str(), r.owner.as_deref()),
        ("running", Some("host-1"))
    );
    env.cleanup().await;
}
