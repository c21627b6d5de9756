//! Issue 18, item 5, against the real Postgres bucket: tokens two replicas leased and did not
//! spend neither add to the bucket's burst after an idle spell nor go out during a shared
//! pause set by the other replica. Every call's instant is recorded and the busiest one-second
//! window is checked against R + C (the rate plus the bucket's capacity).
//!
//! These run on the wall clock (the bucket's refill is Postgres's `clock_timestamp()`); the
//! bounds hold by construction (`ratelimit::Leased`), not by timing margins. The only slack is
//! the few microseconds between a token's check and the recorded instant, worth far less than
//! one token at these rates.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abha_bulk::ratelimit::{GlobalBudget, RateLimiter};
use abha_bulk::telemetry::metrics::RATELIMIT_EXPIRED;
use common::TestEnv;

const RATE: f64 = 40.0;
const CAPACITY: f64 = 8.0;

fn replica(env: &TestEnv, client: &str) -> Arc<RateLimiter> {
    let global = GlobalBudget::new(env.store.clone(), client, RATE, CAPACITY);
    RateLimiter::new(RATE, CAPACITY as u32, Some(global))
}

/// Four tasks per replica take tokens for `run`; returns every call's instant.
async fn hammer(replicas: &[Arc<RateLimiter>], run: Duration) -> Vec<Instant> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in replicas {
        for _ in 0..4 {
            let (limiter, calls) = (limiter.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run {
                    limiter.acquire().await;
                    calls.lock().unwrap().push(Instant::now());
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut calls = calls.lock().unwrap().clone();
    calls.sort();
    calls
}

/// The most calls in any window of one second.
fn busiest_second(calls: &[Instant]) -> usize {
    let mut best = 0;
    let mut first = 0;
    for (i, t) in calls.iter().enumerate() {
        while *t - calls[first] >= Duration::from_secs(1) {
            first += 1;
        }
        best = best.max(i + 1 - first);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_idle_spell_no_second_carries_more_than_the_rate_and_the_bucket() {
    let env = TestEnv::new().await;
    let replicas = [replica(&env, "idle-client"), replica(&env, "idle-client")];
    // Each replica leases a block and spends one token of it; then both sit idle while the
    // bucket refills to its capacity.
    for r in &replicas {
        r.acquire().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = RATELIMIT_EXPIRED.get();
    let calls = hammer(&replicas, Duration::from_millis(2500)).await;
    let busiest = busiest_second(&calls);
    println!(
        "busiest second after an idle spell: {busiest} calls (R + C = {}); {} calls in 2.5 s, \
         {} leased tokens expired unspent",
        RATE + CAPACITY,
        calls.len(),
        RATELIMIT_EXPIRED.get() - expired
    );
    assert!(
        busiest as f64 <= RATE + CAPACITY,
        "{busiest} calls in one second > R + C = {}",
        RATE + CAPACITY
    );
    assert!(
        busiest as f64 >= RATE * 0.5,
        "only {busiest}: the budget starves"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_pause_set_by_the_other_replica_no_leftover_token_is_spent() {
    let env = TestEnv::new().await;
    let (x, y) = (replica(&env, "pause-client"), replica(&env, "pause-client"));
    // Y runs busy for a while, then makes one more call: it holds what is left of its block.
    hammer(std::slice::from_ref(&y), Duration::from_millis(500)).await;
    y.acquire().await;
    // X is throttled: a shared pause of 2 s starts and the shared rate halves.
    let pause = Duration::from_secs(2);
    x.on_throttled(Some(pause)).await;
    let paused_at = Instant::now();
    // Y's next call must wait for the pause's end (before: a leftover token went at once).
    tokio::time::sleep(Duration::from_millis(300)).await;
    y.acquire().await;
    let waited_until = paused_at.elapsed();
    println!("Y's call during the pause went {waited_until:?} after it began (pause {pause:?})");
    assert!(
        waited_until >= pause - Duration::from_millis(50),
        "Y called {waited_until:?} into a {pause:?} pause"
    );
    // Right after the pause both run: the first second carries at most the lowered rate and
    // the bucket (which refilled during the pause), nothing more.
    let lowered = x.current_rate();
    let calls = hammer(&[x, y], Duration::from_millis(2500)).await;
    let busiest = busiest_second(&calls);
    println!(
        "busiest second after the pause: {busiest} calls (R' + C = {})",
        lowered + CAPACITY
    );
    assert!(
        busiest as f64 <= lowered + CAPACITY,
        "{busiest} calls in one second > R' + C = {}",
        lowered + CAPACITY
    );
    env.cleanup().await;
}
