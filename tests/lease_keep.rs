//! Issue 18, item 2, against Postgres: a claimed job that waits for a rate token longer than
//! its lease keeps the lease (`Store::fence` without intent, every quarter lease), so the
//! housekeeping requeue (`requeue_expired_leases`, which takes only expired leases) never
//! takes it, no other worker claims it, and its attempt count stays at the one claim. The
//! same race in paused time is in `tests/gate_races.rs`.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abha_bulk::abdm::{CallGate, Operation};
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::store::jobs::Claim;
use abha_bulk::worker::JobGate;
use common::TestEnv;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_lease_is_not_requeued_and_costs_no_attempt() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("K", 300..301).await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    let lease = Duration::from_secs(2);
    let Claim::Run(a) = env.store.claim(id, "A", lease).await.unwrap() else {
        panic!("A claims")
    };
    assert_eq!(a.attempt, 1);
    // One call every 5 s, burst spent: A's next request waits 5 s, 2.5 leases.
    let limiter = RateLimiter::new(0.2, 1, None);
    limiter.acquire().await;
    let gate = JobGate {
        limiter,
        leases: Arc::new(env.store.clone()),
        job_id: id,
        owner: "A".into(),
        claim_token: a.claim_token,
        lease,
        prepaid: AtomicBool::new(false),
        token_at: Instant::now(),
        claimed_at: Instant::now(),
        extended_at: Mutex::new(Instant::now()),
    };
    // Meanwhile housekeeping requeues expired leases every 300 ms and B tries to claim.
    let rivals = {
        let store = env.store.clone();
        tokio::spawn(async move {
            let (mut requeued, mut claimed) = (0, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(4800) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                requeued += store.requeue_expired_leases().await.unwrap();
                if let Claim::Run(_) = store.claim(id, "B", lease).await.unwrap() {
                    claimed += 1;
                }
            }
            (requeued, claimed)
        })
    };
    let start = Instant::now();
    gate.before_send(Operation::Link)
        .await
        .expect("the lease was kept: sent");
    assert!(
        start.elapsed() >= Duration::from_millis(4900),
        "waited for the token"
    );
    let (requeued, claimed) = rivals.await.unwrap();
    assert_eq!((requeued, claimed), (0, 0), "the waiting job was taken");
    let (state, attempts, owner, left): (String, i32, Option<String>, f64) = sqlx::query_as(
        "SELECT state, attempts, lease_owner, EXTRACT(EPOCH FROM lease_until - now())::float8
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), attempts, owner.as_deref()),
        ("running", 1, Some("A"))
    );
    assert!(
        left > 1.5,
        "the fence at the send extended the lease ({left} s left)"
    );
    env.cleanup().await;
}
