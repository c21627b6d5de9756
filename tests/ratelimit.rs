//! The rate contract across replicas: two workers' limiters, each allowed the full rate
//! locally, share one Postgres token bucket and together stay within the configured rate.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use abha_bulk::ratelimit::{GlobalBudget, RateLimiter};
use common::TestEnv;

#[tokio::test]
async fn two_replicas_share_the_configured_rate() {
    let env = TestEnv::new().await;
    let rate = 40.0;
    let capacity = 4.0;
    let replicas: Vec<Arc<RateLimiter>> = (0..2)
        .map(|_| {
            let global = GlobalBudget::new(env.store.clone(), "shared-client", rate, capacity);
            RateLimiter::new(rate, 4, Some(global))
        })
        .collect();
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let window = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for limiter in &replicas {
        // Several tasks per replica, like a worker's in-flight calls.
        for _ in 0..4 {
            let limiter = limiter.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < window {
                    limiter.acquire().await;
                    if started.elapsed() <= window {
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = calls.load(Ordering::Relaxed) as f64;
    let secs = window.as_secs_f64();
    // At most rate × time plus the bucket's capacity and one leased block per replica.
    let block = (rate * 0.1).floor().max(1.0);
    let ceiling = rate * secs + capacity + 2.0 * block;
    assert!(
        n <= ceiling,
        "{n} calls in {secs} s exceed the shared {rate}/s (ceiling {ceiling})"
    );
    // Without the shared bucket the two replicas would make about twice the rate; with it they
    // still make progress (a loose floor: this is not a speed test).
    assert!(
        n >= rate * secs * 0.25,
        "only {n} calls in {secs} s: the shared budget starves"
    );
    env.cleanup().await;
}

/// Throttling seen by one replica lowers the rate of every replica (AIMD acts on the shared
/// budget row), and a steady storm keeps lowering it once a second: the limit is counted
/// from the last decrease, not the last throttled answer, which never stops coming in a storm.
#[tokio::test]
async fn throttling_lowers_the_shared_rate_for_every_replica_and_a_storm_converges() {
    let env = TestEnv::new().await;
    let rate = 100.0;
    let replica = |_| {
        let global = GlobalBudget::new(env.store.clone(), "storm-client", rate, 10.0);
        RateLimiter::new(rate, 10, Some(global))
    };
    let (a, b) = (replica(0), replica(1));
    a.acquire().await;
    b.acquire().await;
    a.on_throttled(None).await;
    assert!(
        (a.current_rate() - 50.0).abs() < 1e-6,
        "{}",
        a.current_rate()
    );
    // B never saw a throttled answer, yet its next token comes at the shared, lowered rate.
    for _ in 0..30 {
        b.acquire().await;
    }
    assert!(
        (b.current_rate() - 50.0).abs() < 1e-6,
        "{}",
        b.current_rate()
    );
    // A storm: both replicas get throttled answers every 100 ms for 2.5 s.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        a.on_throttled(None).await;
        b.on_throttled(None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.acquire().await;
    let after = b.current_rate();
    // 50 → 25 → 12.5 (one decrease per second for the whole fleet, not one per throttled
    // answer of either replica, which would sink it to the floor of 5).
    assert!(
        (6.0..=25.0).contains(&after),
        "after a 2.5 s storm the shared rate is {after}"
    );
    env.cleanup().await;
}

/// Over-configured against ABDM's limit, the shared rate settles on the last rate that held:
/// throttled after a recovery step, it goes back to the rate before the step (not half of
/// it); throttled at that rate soon after, ABDM's limit has fallen, so it halves and forgets
/// it; throttled at a rate that ran longer than `quiet`, near a limit met recently, it steps
/// down by the ceiling margin.
#[tokio::test]
async fn a_throttled_step_goes_back_to_the_rate_that_held() {
    let env = TestEnv::new().await;
    let quiet = Duration::from_millis(150);
    let aimd = abha_bulk::ratelimit::Aimd {
        quiet,
        increase_every: Duration::ZERO,
        ..Default::default()
    };
    let client = "good-rate-client";
    env.store.ensure_budget(client, 10.0).await.unwrap();
    let throttled = || {
        env.store
            .throttled(client, Some(100.0), &aimd, None, Duration::ZERO)
    };
    assert_eq!(
        throttled().await.unwrap(),
        (50.0, true),
        "no rate held yet: halve"
    );
    tokio::time::sleep(quiet + Duration::from_millis(20)).await;
    let stepped = env.store.recover_rate(client, 100.0, &aimd).await.unwrap();
    assert_eq!(stepped, Some(55.0));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        throttled().await.unwrap(),
        (50.0, true),
        "back to what held"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        throttled().await.unwrap(),
        (25.0, true),
        "the limit fell: halve"
    );
    tokio::time::sleep(quiet + Duration::from_millis(20)).await;
    let (rate, lowered) = throttled().await.unwrap();
    assert!(lowered);
    assert!(
        (rate - 22.5).abs() < 1e-9,
        "ran longer than quiet near a recent limit: 0.9 × 25, got {rate}"
    );
    env.cleanup().await;
}

/// Side work (reconcile at 5/s) spends from the fleet's bucket at its own rate and never
/// lowers the rate every replica refills at (issue 17: a 5/s reconcile beside a 100/s batch
/// dragged the batch down to 16.9 jobs/s, the shared row keeping the lowest caller's rate).
/// Measured over 2 s: the fleet's limiter keeps about R − 5.
#[tokio::test]
async fn side_work_takes_a_share_of_the_fleet_rate_never_a_ceiling() {
    let env = TestEnv::new().await;
    let (rate, client) = (100.0, "side-client");
    let fleet = RateLimiter::new(
        rate,
        10,
        Some(GlobalBudget::new(env.store.clone(), client, rate, 10.0)),
    );
    let side = RateLimiter::new(
        5.0,
        1,
        Some(GlobalBudget::new(env.store.clone(), client, rate, 10.0).side()),
    );
    // The fleet has taken a token first (it records its rate); the side caller, configured
    // lower, must not lower it.
    fleet.acquire().await;
    let started = Instant::now();
    let window = Duration::from_secs(2);
    let count = |l: Arc<RateLimiter>, tasks: usize| {
        let n = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (l, n) = (l.clone(), n.clone());
                tokio::spawn(async move {
                    while started.elapsed() < window {
                        l.acquire().await;
                        if started.elapsed() <= window {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        (n, handles)
    };
    let (fleet_calls, a) = count(fleet.clone(), 8);
    let (side_calls, b) = count(side.clone(), 2);
    for h in a.into_iter().chain(b) {
        h.await.unwrap();
    }
    let (f, s) = (
        fleet_calls.load(Ordering::Relaxed) as f64 / 2.0,
        side_calls.load(Ordering::Relaxed) as f64 / 2.0,
    );
    assert!(s <= 6.5, "side work ran at {s}/s, configured 5/s");
    assert!(
        f >= 0.85 * (rate - 5.0),
        "the fleet kept {f}/s beside side work at {s}/s"
    );
    assert!(f + s <= rate * 1.1 + 10.0, "together {}/s", f + s);
    let (shared, fleet_rate): (Option<f64>, Option<f64>) =
        sqlx::query_as("SELECT rate, fleet_rate FROM rate_budget WHERE client = $1")
            .bind(client)
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    assert_eq!((shared, fleet_rate), (Some(rate), Some(rate)));
    assert_eq!(side.current_rate(), 5.0);
    env.cleanup().await;
}
