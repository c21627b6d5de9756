//! The races between a job's rate-token wait, its lease and another worker's claim, on
//! tokio's paused clock: the gate ([`JobGate`]), the limiter and [`MemoryLeases`] all read
//! tokio's time, so every wait below is virtual and every assertion is exact (no Postgres, no
//! broker, no wall-clock sleeps). The same rules against Postgres are covered in
//! `tests/faults.rs`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use abha_bulk::abdm::{CallGate, ClientError, Operation};
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::telemetry::metrics::RATELIMIT_STALE;
use abha_bulk::worker::{JobGate, MemoryLeases, gate::PREPAID_FRESH};
use tokio::time::{Instant, advance};

const JOB: i64 = 7;
const LEASE: Duration = Duration::from_secs(8);

/// A gate for worker `owner`, whose claim (and prepaid token) is now.
fn gate(limiter: &Arc<RateLimiter>, leases: &Arc<MemoryLeases>, owner: &str) -> JobGate {
    JobGate {
        limiter: limiter.clone(),
        leases: leases.clone(),
        job_id: JOB,
        owner: owner.into(),
        claim_token: leases.token(JOB).expect("claimed"),
        lease: LEASE,
        prepaid: AtomicBool::new(true),
        token_at: Instant::now(),
        claimed_at: Instant::now(),
        extended_at: std::sync::Mutex::new(Instant::now()),
    }
}

/// A limiter of one call every `every`, its burst already spent: the next token is `every`
/// away.
async fn slow_limiter(every: Duration) -> Arc<RateLimiter> {
    let limiter = RateLimiter::new(1.0 / every.as_secs_f64(), 1, None);
    limiter.acquire().await;
    limiter
}

/// Worker A's gate on a job it has just claimed, its prepaid token spent: its next request
/// waits `every` for the limiter.
async fn waiting_gate(every: Duration) -> (Arc<MemoryLeases>, JobGate) {
    let limiter = slow_limiter(every).await;
    let leases = Arc::new(MemoryLeases::default());
    assert!(leases.claim(JOB, "A", LEASE));
    let g = gate(&limiter, &leases, "A");
    g.prepaid.store(false, std::sync::atomic::Ordering::Release);
    (leases, g)
}

#[tokio::test(start_paused = true)]
async fn within_a_quarter_lease_the_claim_is_the_fence() {
    let limiter = slow_limiter(Duration::from_secs(1)).await;
    let leases = Arc::new(MemoryLeases::default());
    assert!(leases.claim(JOB, "A", LEASE));
    let g = gate(&limiter, &leases, "A");
    let start = Instant::now();
    // The prepaid token is fresh: the call goes at once and needs no fence.
    g.before_send(Operation::Link).await.expect("sent");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(leases.fences(), 0);
    // A second request of the job (a retry) waits for its own token, 1 s < a quarter lease.
    g.before_send(Operation::Link).await.expect("sent");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(leases.fences(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_token_wait_past_a_quarter_lease_fences_and_extends_the_lease_from_the_send() {
    let claimed = Instant::now();
    let (leases, g) = waiting_gate(Duration::from_secs(3)).await;
    g.before_send(Operation::Link)
        .await
        .expect("lease held: sent");
    // 3 s of waiting (> 8 s / 4): the fence ran at the send and the lease runs 8 s from it.
    assert_eq!(leases.fences(), 1);
    let (owner, until) = leases.holder(JOB).expect("held");
    assert_eq!(owner, "A");
    assert_eq!(until, claimed + Duration::from_secs(3) + LEASE);
}

#[tokio::test(start_paused = true)]
async fn a_read_after_a_long_wait_needs_no_fence() {
    let (leases, g) = waiting_gate(Duration::from_secs(3)).await;
    g.before_send(Operation::BenefitSearch).await.expect("sent");
    assert_eq!(leases.fences(), 0, "a read changes nothing at ABDM");
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_over_while_waiting_for_a_token_makes_no_call() {
    // A waits 10 s for its token (a long Retry-After) and cannot reach the leases meanwhile
    // (Postgres down for A), so it cannot keep its 8 s lease: it runs out at 8 s and B claims
    // the job at 9 s. When A reaches the leases again, its next keep finds B: no call, and B
    // keeps the job.
    let (leases, g) = waiting_gate(Duration::from_secs(10)).await;
    leases.set_unreachable(true);
    let takeover = {
        let leases = leases.clone();
        tokio::spawn(async move {
            advance(Duration::from_secs(7)).await;
            let early = leases.claim(JOB, "B", LEASE);
            advance(Duration::from_secs(2)).await;
            let late = leases.claim(JOB, "B", LEASE);
            leases.set_unreachable(false);
            (early, late)
        })
    };
    let start = Instant::now();
    let sent = g.before_send(Operation::Link).await;
    let (early, late) = takeover.await.expect("takeover");
    assert!(!early, "A's lease still ran at 7 s");
    assert!(late, "A's lease had run out at 9 s");
    assert!(
        matches!(sent, Err(ClientError::NotSent("lease lost"))),
        "{sent:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the keep found B before the token came"
    );
    assert_eq!(leases.holder(JOB).expect("held").0, "B");
    assert_eq!(leases.keeps(), 0, "every keep before 9 s failed");
}

/// Issue 18, item 2: a `Retry-After` of 300 s (ABDM's longest) holds a claimed job far past
/// its lease. The gate keeps the lease alive every quarter lease while it waits, so no other
/// worker (nor housekeeping's requeue, which takes only expired leases) can claim the job
/// again: no new claim, so no attempt is spent, and the call goes when ABDM allows it.
#[tokio::test(start_paused = true)]
async fn a_wait_far_longer_than_the_lease_keeps_it_and_costs_no_attempt() {
    let limiter = RateLimiter::new(10.0, 1, None);
    let leases = Arc::new(MemoryLeases::default());
    assert!(leases.claim(JOB, "A", LEASE));
    let claimed = Instant::now();
    limiter.on_throttled(Some(Duration::from_secs(300))).await;
    let g = gate(&limiter, &leases, "A");
    g.prepaid.store(false, std::sync::atomic::Ordering::Release);
    let rivals = {
        let leases = leases.clone();
        tokio::spawn(async move {
            let mut claimed = 0;
            // Another worker (or the requeue after expiry) tries every 0.7 s for 299 s.
            for _ in 0..427 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                claimed += usize::from(leases.claim(JOB, "B", LEASE));
            }
            claimed
        })
    };
    g.before_send(Operation::Link)
        .await
        .expect("the lease was kept: sent");
    assert_eq!(
        claimed.elapsed(),
        Duration::from_secs(300),
        "sent when allowed"
    );
    assert_eq!(
        rivals.await.expect("rivals"),
        0,
        "nobody could claim the job"
    );
    // A keep every 2 s (8 s / 4) of the 300 s wait, then the fence at the send.
    assert_eq!(leases.keeps(), 149);
    assert_eq!(leases.fences(), 1);
    let (owner, until) = leases.holder(JOB).expect("held");
    assert_eq!(owner, "A");
    assert_eq!(until, claimed + Duration::from_secs(300) + LEASE);
}

/// Keeping a lease while waiting records no intent: a job that only waited has changed
/// nothing at ABDM, and its next attempt need not look first.
#[tokio::test(start_paused = true)]
async fn a_kept_lease_records_no_intent() {
    let (leases, g) = waiting_gate(Duration::from_secs(5)).await;
    g.before_send(Operation::BenefitSearch).await.expect("sent");
    assert_eq!(leases.keeps(), 2, "kept at 2 s and 4 s");
    assert_eq!(leases.fences(), 0);
    assert!(!leases.intent(JOB));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_nobody_took_is_still_held() {
    // The fence rule: expiry alone does not take the job away; only another claim does.
    let (leases, g) = waiting_gate(Duration::from_secs(10)).await;
    g.before_send(Operation::Link)
        .await
        .expect("nobody took it: sent");
    assert!(
        !leases.claim(JOB, "B", LEASE),
        "the fence extended A's lease"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_prepaid_token_is_dropped_and_a_fresh_one_taken() {
    // 20 calls/s, burst spent: the next token is 50 ms away.
    let limiter = slow_limiter(Duration::from_millis(50)).await;
    let leases = Arc::new(MemoryLeases::default());
    assert!(leases.claim(JOB, "A", LEASE));
    let fresh = gate(&limiter, &leases, "A");
    advance(PREPAID_FRESH).await;
    let before = RATELIMIT_STALE.get();
    let start = Instant::now();
    fresh.before_send(Operation::Link).await.expect("sent");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a token 100 ms old is spent"
    );
    let stale = gate(&limiter, &leases, "A");
    advance(PREPAID_FRESH + Duration::from_millis(1)).await;
    let start = Instant::now();
    stale.before_send(Operation::Link).await.expect("sent");
    // The limiter's next slot came 50 ms after its burst, already passed: a fresh token costs
    // no wait here, but one token more than the prepaid one was taken and counted stale.
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(RATELIMIT_STALE.get() > before);
    // That fresh token was the limiter's: the next call waits a whole slot.
    let start = Instant::now();
    limiter.acquire().await;
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_pause_holds_every_job_of_the_worker() {
    // One throttling answer pauses the whole limiter: a second job's retry waits out the
    // pause to the millisecond, then both go paced at the lowered rate.
    let limiter = RateLimiter::new(10.0, 1, None);
    let leases = Arc::new(MemoryLeases::default());
    assert!(leases.claim(JOB, "A", LEASE));
    limiter.on_throttled(Some(Duration::from_secs(2))).await;
    let g = gate(&limiter, &leases, "A");
    g.prepaid.store(false, std::sync::atomic::Ordering::Release);
    let start = Instant::now();
    g.before_send(Operation::BenefitSearch).await.expect("sent");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    limiter.acquire().await;
    // Halved to 5 calls/s: 200 ms between calls.
    assert_eq!(start.elapsed(), Duration::from_millis(2200));
}

#[tokio::test(start_paused = true)]
async fn a_late_outcome_of_a_first_claim_cannot_touch_a_second_claim_by_the_same_process() {
    // Issue 18, item 1. Worker W's task 1 claims the job and fences before its link (the
    // intent is recorded). Postgres goes away for longer than the lease while task 1 retries
    // its outcome write; meanwhile the lease runs out, housekeeping requeues the job and task 2
    // of the same worker W claims it again. Task 1's write finally reaches Postgres: it is
    // refused (same owner, other claim) and the intent stays for task 2 to look first.
    let limiter = slow_limiter(Duration::from_secs(3)).await;
    let leases = Arc::new(MemoryLeases::default());
    let first = leases.claim_token(JOB, "W", LEASE).expect("free");
    let task1 = gate(&limiter, &leases, "W");
    task1
        .prepaid
        .store(false, std::sync::atomic::Ordering::Release);
    task1.before_send(Operation::Link).await.expect("sent");
    assert_eq!(leases.fences(), 1);
    assert!(leases.intent(JOB), "the fence recorded the intent");
    // The outage: longer than the lease; task 1's write keeps failing meanwhile.
    advance(LEASE * 3).await;
    let second = leases
        .claim_token(JOB, "W", LEASE)
        .expect("the lease ran out");
    assert_ne!(first, second);
    let task2 = gate(&limiter, &leases, "W");
    // Postgres is back: task 1's outcome write (which would clear the intent: its own answer
    // came back) is refused, and nothing of it is written.
    assert!(
        !leases.finish(JOB, "W", first, true),
        "a late write of the first claim"
    );
    assert!(leases.intent(JOB), "the intent flag is not cleared");
    assert_eq!(leases.token(JOB), Some(second));
    // A second request of task 1 (a retry inside its client) makes no call either.
    advance(LEASE).await;
    let sent = task1.before_send(Operation::Link).await;
    assert!(
        matches!(sent, Err(ClientError::NotSent("lease lost"))),
        "{sent:?}"
    );
    // Task 2 holds the job: its fence passes and its own outcome is written.
    task2
        .before_send(Operation::Link)
        .await
        .expect("task 2 holds it");
    assert!(leases.finish(JOB, "W", second, false));
    assert!(
        leases.intent(JOB),
        "task 2's answer was lost: the intent stays"
    );
}

/// A keep that cannot reach the leases (a Postgres blip) is tried again a sixteenth of the
/// lease later, so a blip shorter than three quarters of the lease loses nothing: unreachable
/// from 0 to 2.9 s, the keeps at 2 s and 2.5 s fail, the one at 3 s holds, and the wait goes on
/// with the lease kept.
#[tokio::test(start_paused = true)]
async fn a_keep_that_fails_is_retried_and_a_short_blip_loses_nothing() {
    let (leases, g) = waiting_gate(Duration::from_secs(10)).await;
    leases.set_unreachable(true);
    let rivals = {
        let leases = leases.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2900)).await;
            leases.set_unreachable(false);
            let mut claimed = 0;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                claimed += usize::from(leases.claim(JOB, "B", LEASE));
            }
            claimed
        })
    };
    let start = Instant::now();
    g.before_send(Operation::Link).await.expect("kept: sent");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(rivals.await.expect("rivals"), 0);
    // Kept at 3 s (after the failures at 2 s and 2.5 s), 5 s, 7 s and 9 s.
    assert_eq!(leases.keeps(), 4);
    assert_eq!(leases.fences(), 1);
}
