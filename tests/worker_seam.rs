//! The worker's consume loop through its queue seam ([`MemoryQueue`]), no broker: every
//! settlement (ack, requeue) is recorded, so the races of redelivery, a lease held elsewhere,
//! a stop mid-call and malformed input are checked exactly, not inferred from queue depths.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::envelope::Envelope;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::worker::{MemoryQueue, Settled, Worker, WorkerConfig};
use common::TestEnv;
use tokio_util::sync::CancellationToken;

fn worker(env: &TestEnv, grace: Duration) -> Arc<Worker> {
    Worker::new(
        env.store.clone(),
        env.client.clone(),
        RateLimiter::new(1000.0, 100, None),
        env.topology.clone(),
        WorkerConfig {
            grace,
            ..common::seam_config("seam-worker")
        },
    )
}

/// Runs the worker on `q` until `stop`; the task returns the loop's result.
fn serve(
    w: Arc<Worker>,
    q: &MemoryQueue,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<bool> {
    let (q, stop) = (q.clone(), stop.clone());
    tokio::spawn(async move {
        w.serve(q.stream(), Arc::new(q.clone()), &stop)
            .await
            .is_ok()
    })
}

/// Waits (up to 30 s) until `q` has recorded `n` settlements.
async fn settled(q: &MemoryQueue, n: usize) -> Vec<(u64, Settled)> {
    for _ in 0..600 {
        let s = q.settled();
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {:?} settled, expected {n}", q.settled());
}

async fn one_link_job(env: &TestEnv) -> i64 {
    env.submit_links("S-", 0..1).await;
    sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&env.store.pool)
        .await
        .expect("job id")
}

fn link_requests(env: &TestEnv) -> u64 {
    let log = env.sandbox.state().call_log();
    log.requests
        .iter()
        .filter(|(op, _)| op.contains("link") && !op.contains("delink"))
        .map(|(_, n)| *n)
        .sum()
}

#[tokio::test]
async fn a_message_redelivered_after_its_job_finished_is_acked_without_calling_abdm() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let job = one_link_job(&env).await;
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve(worker(&env, Duration::from_secs(5)), &q, &stop);
    let first = q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, job));
    settled(&q, 1).await;
    let again = q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, job));
    let s = settled(&q, 2).await;
    stop.cancel();
    assert!(task.await.unwrap(), "a stop ends the loop with Ok");
    assert_eq!(s, vec![(first, Settled::Ack), (again, Settled::Ack)]);
    assert_eq!(link_requests(&env), 1, "one ABDM call for one job");
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(state, "succeeded");
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_leased_by_another_worker_is_acked_and_not_called() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let job = one_link_job(&env).await;
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = 1, lease_owner = 'other', \
         lease_until = now() + interval '60 seconds' WHERE id = $1",
    )
    .bind(job)
    .execute(&env.store.pool)
    .await
    .unwrap();
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve(worker(&env, Duration::from_secs(5)), &q, &stop);
    let id = q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, job));
    assert_eq!(settled(&q, 1).await, vec![(id, Settled::Ack)]);
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        link_requests(&env),
        0,
        "the lease holder makes the call, not us"
    );
    let owner: String = sqlx::query_scalar("SELECT lease_owner FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(owner, "other");
    env.cleanup().await;
}

#[tokio::test]
async fn a_stop_during_a_call_beyond_the_grace_period_leaves_the_message_unsettled() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let job = one_link_job(&env).await;
    env.set_faults(abha_bulk::sandbox::Faults {
        latency_ms: 3_000,
        ..common::no_faults()
    });
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve(worker(&env, Duration::from_millis(200)), &q, &stop);
    q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, job));
    // The call is in flight once the job is running under this worker's lease.
    for _ in 0..200 {
        let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
        if state == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    assert!(task.await.unwrap());
    // Neither acked (its outcome is not recorded) nor requeued (that would count towards the
    // delivery limit): the broker gives it back when the channel closes, and the lease makes
    // the next worker look first.
    assert!(q.settled().is_empty(), "{:?}", q.settled());
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_redacted_and_acked() {
    let env = TestEnv::new().await;
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve(worker(&env, Duration::from_secs(5)), &q, &stop);
    let garbage = q.publish(b"not json");
    let aadhaar = env.pop().aadhaar(3).expose().to_string();
    let bad_payload = q.publish(
        serde_json::json!({
            "v": 1, "kind": "benefit-link", "idempotency_key": "k-1", "benefit": common::BENEFIT,
            "payload": {"abha_number": format!("{aadhaar}x")}
        })
        .to_string()
        .as_bytes(),
    );
    let s = settled(&q, 2).await;
    stop.cancel();
    task.await.unwrap();
    assert!(s.contains(&(garbage, Settled::Ack)) && s.contains(&(bad_payload, Settled::Ack)));
    let dead = q.dead_letters();
    assert_eq!(dead.len(), 2);
    for (body, reason) in &dead {
        assert!(!reason.is_empty());
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains(&aadhaar),
            "identifier in a dead letter: {text}"
        );
        assert!(
            !reason.contains(&aadhaar),
            "identifier in a reason: {reason}"
        );
    }
    env.cleanup().await;
}

/// At a slow rate a worker holds messages that wait for tokens; stopping hands them back at
/// once (requeued) instead of sitting on them for the whole grace period (issue 17: at 5/s a
/// SIGTERMed worker used its 30 s grace and handed 23 of 60 back).
#[tokio::test]
async fn a_stopping_worker_hands_back_at_once_what_has_not_started() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let batch = env.submit_links("SLOW-", 0..8).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY id")
        .bind(batch)
        .fetch_all(&env.store.pool)
        .await
        .unwrap();
    // 2 calls/s, burst 1: of 8 held messages, one or two start within the first second.
    let w = Worker::new(
        env.store.clone(),
        env.client.clone(),
        RateLimiter::new(2.0, 1, None),
        env.topology.clone(),
        WorkerConfig {
            in_flight: 8,
            grace: Duration::from_secs(30),
            ..common::seam_config("slow-worker")
        },
    );
    let q = MemoryQueue::default();
    for id in &ids {
        q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, *id));
    }
    let stop = CancellationToken::new();
    let task = serve(w, &q, &stop);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let asked = std::time::Instant::now();
    stop.cancel();
    assert!(task.await.unwrap());
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let s = q.settled();
    let requeued = s.iter().filter(|(_, how)| *how == Settled::Requeue).count();
    let acked = s.iter().filter(|(_, how)| *how == Settled::Ack).count();
    assert_eq!(requeued + acked, 8, "{s:?}");
    assert!(requeued >= 5, "only {requeued} handed back: {s:?}");
    // What was handed back never ran: its jobs are still queued.
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE batch_id = $1 AND state = 'queued'")
            .bind(batch)
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    assert_eq!(queued as usize, requeued);
    env.cleanup().await;
}
