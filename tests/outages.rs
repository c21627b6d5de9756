//! Hour-long outages through the worker's queue seam ([`MemoryQueue`]), shortened: a delivery is
//! never held past `hold_max` while Postgres is down (acked unrun; its recheck row publishes the
//! job again once Postgres is back, and it runs once), and while the ABDM breaker is open
//! nothing is held at all (postponed, no attempt spent) and the breaker closes again with no
//! delivery to probe it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::envelope::Envelope;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::store::Store;
use abha_bulk::worker::{MemoryQueue, Settled, Worker, WorkerConfig};
use common::TestEnv;
use common::proxy::Proxy;
use tokio_util::sync::CancellationToken;

fn worker(env: &TestEnv, store: Store, hold_max: Duration) -> Arc<Worker> {
    Worker::new(
        store,
        env.client.clone(),
        RateLimiter::new(1000.0, 100, None),
        env.topology.clone(),
        WorkerConfig {
            grace: Duration::from_secs(2),
            hold_max,
            ..common::seam_config("outage-worker")
        },
    )
}

fn serve(w: Arc<Worker>, q: &MemoryQueue, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
    let (q, stop) = (q.clone(), stop.clone());
    tokio::spawn(async move {
        let _ = w.serve(q.stream(), Arc::new(q.clone()), &stop).await;
    })
}

async fn settled(q: &MemoryQueue, n: usize, within: Duration) -> Vec<(u64, Settled)> {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        let s = q.settled();
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {:?} settled, expected {n}", q.settled());
}

async fn job_row(env: &TestEnv, job: i64) -> (String, i32) {
    sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&env.store.pool)
        .await
        .unwrap()
}

fn link_requests(env: &TestEnv) -> u64 {
    let log = env.sandbox.state().call_log();
    log.requests
        .iter()
        .filter(|(op, _)| op.contains("link") && !op.contains("delink"))
        .map(|(_, n)| *n)
        .sum()
}

/// Publishes what is due (the file row, then due recheck rows) into `q`; the job ids.
async fn relay_into(env: &TestEnv, q: &MemoryQueue, rechecks: bool) -> Vec<i64> {
    let mut ids = Vec::new();
    let after = Duration::from_secs(1);
    let publish = |rows: Vec<abha_bulk::store::outbox::OutboxRow>| {
        for r in &rows {
            q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, r.job_id));
        }
        ids.extend(rows.iter().map(|r| r.job_id));
        async { Ok::<_, ()>(()) }
    };
    let lease = Duration::from_secs(60);
    if rechecks {
        env.store.publish_rechecks(100, lease, after, publish).await
    } else {
        env.store.publish_due(100, lease, after, publish).await
    }
    .unwrap()
    .unwrap();
    ids
}

/// A store that reaches the test's database through a [`Proxy`] the test can take down; its
/// pool waits `acquire` for a connection.
async fn proxied_store(env: &TestEnv, acquire: Duration) -> (Proxy, Store) {
    let mut db = reqwest::Url::parse(&env.db_url).unwrap();
    let upstream = format!("{}:{}", db.host_str().unwrap(), db.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream).await;
    db.set_port(Some(proxy.port)).unwrap();
    let store = Store::connect_url(db.as_str(), 3, acquire, env.store.vault.clone())
        .await
        .unwrap();
    (proxy, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_past_hold_max_acks_unrun_and_the_recheck_row_runs_the_job_once() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let (proxy, proxied) = proxied_store(&env, Duration::from_secs(1)).await;
    env.submit_links("H-", 0..1).await;
    let q = MemoryQueue::default();
    let published = relay_into(&env, &q, false).await;
    assert_eq!(published.len(), 1);
    let job = published[0];
    proxy.set_down(true);
    let stop = CancellationToken::new();
    let task = serve(
        worker(&env, proxied.clone(), Duration::from_secs(2)),
        &q,
        &stop,
    );
    // Held no longer than hold_max: acked unrun, nothing requeued or dead-lettered.
    let s = settled(&q, 1, Duration::from_secs(15)).await;
    assert_eq!(s[0].1, Settled::Ack);
    assert_eq!(job_row(&env, job).await, ("queued".into(), 0));
    assert_eq!(link_requests(&env), 0);
    proxy.set_down(false);
    // Postgres is back: the recheck row (due 1 s after the publish) publishes the job again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(relay_into(&env, &q, true).await, vec![job]);
    let s = settled(&q, 2, Duration::from_secs(30)).await;
    assert_eq!(s[1].1, Settled::Ack);
    assert_eq!(job_row(&env, job).await, ("succeeded".into(), 1));
    assert_eq!(link_requests(&env), 1, "run once");
    assert!(q.dead_letters().is_empty());
    assert!(q.settled().iter().all(|(_, how)| *how == Settled::Ack));
    stop.cancel();
    task.await.unwrap();
    proxied.pool.close().await;
    proxy.task.abort();
    env.cleanup().await;
}

#[tokio::test]
async fn an_open_breaker_holds_nothing_spends_no_attempt_and_closes_without_deliveries() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    env.submit_links("B-", 0..1).await;
    let client = env.client.client_id().to_string();
    // ABDM is "down": the breaker is open, its next probe an hour away.
    assert!(
        env.store
            .open_circuit(&client, "test outage", 3600.0)
            .await
            .unwrap()
    );
    let q = MemoryQueue::default();
    let job = relay_into(&env, &q, false).await[0];
    let stop = CancellationToken::new();
    let task = serve(
        worker(&env, env.store.clone(), Duration::from_secs(600)),
        &q,
        &stop,
    );
    // Not held until hold_max (600 s): postponed in Postgres and acked at once.
    let s = settled(&q, 1, Duration::from_secs(10)).await;
    assert_eq!(s[0].1, Settled::Ack);
    assert_eq!(
        job_row(&env, job).await,
        ("retrying".into(), 0),
        "no attempt spent"
    );
    let (rows, due_after_probe): (i64, bool) = sqlx::query_as(
        "SELECT count(*), bool_and(o.due_at >= c.next_probe_at) FROM outbox o, abdm_circuit c
         WHERE o.job_id = $1 AND c.client = $2",
    )
    .bind(job)
    .bind(&client)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, due_after_probe),
        (1, true),
        "due around the next probe"
    );
    assert_eq!(link_requests(&env), 0);
    // ABDM is back and the probe falls due: the worker's background probe closes the breaker
    // with no delivery in sight.
    sqlx::query("UPDATE abdm_circuit SET next_probe_at = now() WHERE client = $1")
        .bind(&client)
        .execute(&env.store.pool)
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..100 {
        if !env.store.circuit(&client).await.unwrap().open {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the background probe closed the breaker");
    assert_eq!(q.settled().len(), 1, "no delivery was needed");
    stop.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduling_relay_publishes_nothing_while_the_breaker_is_open() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("R-", 0..5).await;
    let client = env.client.client_id().to_string();
    assert!(
        env.store
            .open_circuit(&client, "test outage", 3600.0)
            .await
            .unwrap()
    );
    let stop = CancellationToken::new();
    let relay = tokio::spawn(abha_bulk::relay::run(
        env.store.clone(),
        env.amqp_url.clone(),
        env.topology.clone(),
        abha_bulk::relay::RelayConfig {
            idle: Duration::from_millis(20),
            circuit_client: Some(client.clone()),
            ..Default::default()
        },
        stop.clone(),
    ));
    let unpublished = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE(sum(upto_job - after_job), 0)::int8 FROM outbox WHERE batch_id = $1 AND NOT recheck",
        )
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .unwrap()
    };
    let before = unpublished().await;
    assert!(before >= 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        unpublished().await,
        before,
        "published while the breaker was open"
    );
    env.store.close_circuit(&client).await.unwrap();
    let mut published = false;
    for _ in 0..100 {
        if unpublished().await == 0 {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        published,
        "the relay publishes again once the breaker closed"
    );
    stop.cancel();
    relay.await.unwrap();
    env.cleanup().await;
}

/// A claimed job's delivery is bounded by `hold_max` too: Postgres goes down while the job's
/// ABDM call is in flight, so its outcome write waits. At `hold_max` the delivery is acked
/// (RabbitMQ's `consumer_timeout` would otherwise close the channel), the job goes on under
/// its lease, and once Postgres is back its outcome is recorded: at most one call, the
/// message settled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_job_held_past_hold_max_is_acked_and_its_outcome_still_recorded() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let (proxy, proxied) = proxied_store(&env, Duration::from_secs(1)).await;
    // Each ABDM call takes 1.5 s: time to cut Postgres once the job is claimed.
    let mut faults = env.sandbox.state().faults();
    faults.latency_ms = 1500;
    env.sandbox.state().set_faults(faults);
    env.submit_links("C-", 0..1).await;
    let q = MemoryQueue::default();
    let job = relay_into(&env, &q, false).await[0];
    let stop = CancellationToken::new();
    let task = serve(
        worker(&env, proxied.clone(), Duration::from_secs(3)),
        &q,
        &stop,
    );
    let claimed_at = tokio::time::Instant::now();
    while job_row(&env, job).await.0 != "running" {
        assert!(
            claimed_at.elapsed() < Duration::from_secs(10),
            "never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_down(true);
    // Acked at hold_max (3 s after the delivery), while the outcome write still waits; not
    // only once the write itself has waited its own 5 s past the call (6.5 s and more).
    let s = settled(
        &q,
        1,
        (claimed_at + Duration::from_millis(4500)) - tokio::time::Instant::now(),
    )
    .await;
    assert_eq!(s[0].1, Settled::Ack);
    assert_eq!(
        job_row(&env, job).await.0,
        "running",
        "the outcome waits for Postgres"
    );
    proxy.set_down(false);
    // Postgres back: the held write commits. The outcome is `succeeded`, or `retrying` when
    // the lease fence before the link call could not reach Postgres (no call is made
    // unfenced); either way recorded once, after the ack, with at most one link call.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let recorded = loop {
        let row = job_row(&env, job).await;
        if row.0 != "running" {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "outcome never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        recorded == ("succeeded".into(), 1) || recorded == ("retrying".into(), 1),
        "{recorded:?}"
    );
    assert!(link_requests(&env) <= 1, "never twice");
    assert_eq!(q.settled().len(), 1, "settled once: {:?}", q.settled());
    assert!(q.dead_letters().is_empty());
    stop.cancel();
    task.await.unwrap();
    proxied.pool.close().await;
    proxy.task.abort();
    env.cleanup().await;
}

/// The breaker gate reads the shared state from Postgres. With Postgres down that read waits
/// for the pool's acquire timeout (30 s here, as in production): one delivery reads, for one
/// refresh period at most, and every other goes on with the last known state at once. Before,
/// each delivery waited the whole acquire timeout, a hold past RabbitMQ's `consumer_timeout`
/// in the chaos run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_gate_never_waits_for_a_postgres_that_is_down() {
    use abha_bulk::breaker::{Breaker, BreakerConfig, Gate};
    let env = TestEnv::new().await;
    let (proxy, proxied) = proxied_store(&env, Duration::from_secs(30)).await;
    let breaker = Arc::new(Breaker::new(
        proxied.clone(),
        abha_bulk::sandbox::DEFAULT_CLIENT_ID,
        BreakerConfig::default(),
    ));
    // The pool's connections are all taken (other deliveries' tries, as in the chaos run),
    // and Postgres is down: a read waits for the acquire timeout.
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(proxied.pool.acquire().await.unwrap());
    }
    proxy.set_down(true);
    let stop = CancellationToken::new();
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    let gates: Vec<_> = (0..8)
        .map(|_| {
            let (b, c, stop) = (breaker.clone(), env.client.clone(), stop.clone());
            tokio::spawn(async move { b.gate(&c, &stop, deadline).await })
        })
        .collect();
    for g in gates {
        assert_eq!(g.await.unwrap(), Gate::Closed, "the last known state");
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(taken);
    proxy.set_down(false);
    proxied.pool.close().await;
    proxy.task.abort();
    env.cleanup().await;
}
