//! Old and new releases side by side (issue 18, item 7): a message this worker does not know
//! (a newer release's kind or envelope version) goes back to the queue for a worker that
//! knows it, through the in-memory queue seam with paused time; and a changed queue layout
//! (`rabbitmq.queue_per_kind`) is drained and removed on a real RabbitMQ.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::Topology;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::worker::{MemoryQueue, Settled, Worker, WorkerConfig};
use common::TestEnv;
use tokio_util::sync::CancellationToken;

/// A delivery limit of 5: a message goes back 3 times (counts 0, 1, 2), then at count 3
/// (`3 + 2 >= 5`) it is settled for good.
const LIMIT: u32 = 5;

fn worker(env: &TestEnv) -> Arc<Worker> {
    let topology = Topology {
        delivery_limit: LIMIT,
        ..env.topology.clone()
    };
    Worker::new(
        env.store.clone(),
        env.client.clone(),
        RateLimiter::new(1000.0, 100, None),
        topology,
        WorkerConfig {
            ..common::seam_config("old-worker")
        },
    )
}

/// The worker on `q` until `stop`, on paused time (the environment is set up on real time:
/// the sandbox session and certificate are fetched first, so the worker's warm-up does no I/O).
async fn serve_paused(
    env: &TestEnv,
    q: &MemoryQueue,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    env.warm_up().await;
    tokio::time::pause();
    let (w, q, stop) = (worker(env), q.clone(), stop.clone());
    tokio::spawn(async move {
        w.serve(q.stream(), Arc::new(q.clone()), &stop)
            .await
            .expect("stopped");
    })
}

/// Steps paused time by `ms` (letting every task run), then returns the settlements.
async fn after(ms: u64, q: &MemoryQueue) -> Vec<(u64, Settled)> {
    for _ in 0..ms / 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    q.settled()
}

fn requeued(n: usize, id: u64) -> Vec<(u64, Settled)> {
    vec![(id, Settled::Requeue); n]
}

async fn job_state(env: &TestEnv, id: i64) -> String {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&env.store.pool)
        .await
        .expect("job state")
}

#[tokio::test]
async fn a_stored_job_of_an_unknown_kind_goes_back_each_second_then_is_left_to_postgres() {
    let env = TestEnv::new().await;
    env.submit_links("U-", 0..1).await;
    let job: i64 = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve_paused(&env, &q, &stop).await;
    // A newer release's kind, and a newer envelope version of a kind this release knows.
    let kind = q.publish(format!(r#"{{"v":1,"kind":"benefit-unlink","job_id":{job}}}"#).as_bytes());
    let version = q
        .publish(format!(r#"{{"v":2,"kind":"benefit-link","job_id":{job},"shard":1}}"#).as_bytes());
    // Held for the pause, not handed back at once (a lone old worker would spin on it).
    assert_eq!(after(900, &q).await, vec![]);
    let s = after(200, &q).await;
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s.iter().all(|(_, how)| *how == Settled::Requeue), "{s:?}");
    // Counts 1 and 2 go back too; at count 3 the message is acked, with no dead letter.
    let s = after(3_000, &q).await;
    let of = |id| {
        s.iter()
            .filter(|(m, _)| *m == id)
            .map(|(_, how)| *how)
            .collect::<Vec<_>>()
    };
    for id in [kind, version] {
        let mut want: Vec<Settled> = requeued(3, id).into_iter().map(|(_, h)| h).collect();
        want.push(Settled::Ack);
        assert_eq!(of(id), want);
    }
    assert!(q.dead_letters().is_empty(), "{:?}", q.dead_letters());
    stop.cancel();
    task.await.unwrap();
    tokio::time::resume();
    // Nothing touched the job: it stays queued for the outbox recheck to publish again.
    assert_eq!(job_state(&env, job).await, "queued");
    env.cleanup().await;
}

#[tokio::test]
async fn a_producer_s_envelope_of_an_unknown_kind_is_dead_lettered_redacted_at_the_limit() {
    let env = TestEnv::new().await;
    let abha = env.pop().abha(4).expose().to_string();
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve_paused(&env, &q, &stop).await;
    let body = serde_json::json!({
        "v": 1, "kind": "benefit-unlink", "idempotency_key": "unk-1", "benefit": common::BENEFIT,
        "payload": {"abha_number": abha}
    })
    .to_string();
    let id = q.publish(body.as_bytes());
    let s = after(5_000, &q).await;
    let mut want = requeued(3, id);
    want.push((id, Settled::Ack));
    assert_eq!(s, want);
    let dead = q.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (summary, reason) = &dead[0];
    let summary = String::from_utf8_lossy(summary);
    assert!(
        summary.contains("\"redacted\":true") && summary.contains("unk-1"),
        "{summary}"
    );
    assert!(
        !summary.contains(&abha) && !reason.contains(&abha),
        "{summary} / {reason}"
    );
    assert!(reason.contains("unknown kind"), "{reason}");
    stop.cancel();
    task.await.unwrap();
    tokio::time::resume();
    env.cleanup().await;
}

#[tokio::test]
async fn a_stop_during_the_pause_hands_the_unknown_message_back_at_once() {
    let env = TestEnv::new().await;
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let task = serve_paused(&env, &q, &stop).await;
    let id = q.publish(br#"{"v":3,"kind":"benefit-link","job_id":1}"#);
    assert_eq!(after(100, &q).await, vec![]);
    stop.cancel();
    task.await.unwrap();
    assert_eq!(q.settled(), vec![(id, Settled::Requeue)]);
    tokio::time::resume();
    env.cleanup().await;
}

/// Whether `queue` exists (a passive declare on a connection of its own).
async fn exists(env: &TestEnv, queue: &str) -> bool {
    let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
    let seen = abha_bulk::queue::drain::look(&conn, queue).await.unwrap();
    let _ = conn.close(200, "looked".into()).await;
    seen.is_some()
}

/// The previous release ran the `old` layout and left a producer's message in it; a worker
/// of the `new` layout consumes it, and the old layout's queues are unbound and deleted.
async fn a_layout_change_drains_the_old_queues(worker_per_kind: bool) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    let env = TestEnv::new().await; // declares the shared layout
    let (old, new) = if worker_per_kind {
        (env.topology.clone(), env.topology.clone().per_kind())
    } else {
        (env.topology.clone().per_kind(), env.topology.clone())
    };
    let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    old.declare(&ch).await.unwrap();
    let abha = env.pop().abha(9).expose().to_string();
    let body = serde_json::to_vec(&serde_json::json!({
        "v": 1, "kind": "benefit-link", "idempotency_key": "drain-1",
        "benefit": common::BENEFIT, "payload": {"abha_number": abha}
    }))
    .unwrap();
    // Straight into the old queue (the default exchange routes by queue name).
    ch.basic_publish(
        "".into(),
        old.queue(JobKind::BenefitLink).as_str().into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "published".into()).await;

    let pipeline = env.start(common::PipelineOpts {
        topology: Some(new.clone()),
        ..Default::default()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM jobs WHERE idempotency_key = 'drain-1'")
                .fetch_optional(&env.store.pool)
                .await
                .unwrap();
        if state.as_deref() == Some("succeeded") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job not run: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every old queue goes: the empty ones at once, the drained one two rounds later.
    let deadline =
        std::time::Instant::now() + 3 * abha_bulk::queue::drain::ROUND + Duration::from_secs(10);
    for q in old.job_queues() {
        while exists(&env, &q).await {
            assert!(std::time::Instant::now() < deadline, "{q} still exists");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for q in new.job_queues() {
        assert!(exists(&env, &q).await, "{q} of the new layout is missing");
    }
    pipeline.stop().await;
    if worker_per_kind {
        let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        for q in new.job_queues() {
            ch.queue_delete(q.as_str().into(), Default::default())
                .await
                .unwrap();
        }
        let _ = conn.close(200, "cleanup".into()).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_layout_worker_drains_and_deletes_the_per_kind_queues() {
    a_layout_change_drains_the_old_queues(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_kind_worker_of_every_kind_drains_and_deletes_the_shared_queue() {
    a_layout_change_drains_the_old_queues(true).await;
}

/// `abha-bulk migrate` beside a long transaction: the migration gives up on its lock after
/// the session's lock_timeout (so the fleet's queries on the table do not queue behind it),
/// and succeeds when tried again once the transaction ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_gives_up_on_a_held_lock_lets_queries_through_and_succeeds_on_retry() {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use sqlx::{Connection, Executor, SqlSafeStr};
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE lock_probe (id int)")
        .execute(&env.store.pool)
        .await
        .unwrap();
    // A long reader: holds ACCESS SHARE on the table until it commits.
    let mut reader = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    reader.execute("BEGIN").await.unwrap();
    reader.execute("SELECT * FROM lock_probe").await.unwrap();
    let mut migrator = Migrator::with_migrations(vec![Migration::new(
        90017,
        "lock probe".into(),
        MigrationType::Simple,
        "ALTER TABLE lock_probe ADD COLUMN x int".into_sql_str(),
        false,
    )]);
    // The database holds this release's migrations; the test runs one more.
    migrator.set_ignore_missing(true);
    let opts: sqlx::postgres::PgConnectOptions = env.db_url.parse().unwrap();
    let started = std::time::Instant::now();
    // After the lock timeout (5 s), during the pause before the retry, the fleet's queries on
    // the table run (a waiting ALTER would queue them behind it).
    let fleet_and_reader = async {
        tokio::time::sleep(Duration::from_millis(5_600)).await;
        let mut fleet = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
        fleet.execute("SET statement_timeout = '1s'").await.unwrap();
        fleet
            .execute("SELECT count(*) FROM lock_probe")
            .await
            .expect("a query queued behind the migration's ALTER");
        reader.execute("COMMIT").await.unwrap();
    };
    let (migrated, ()) = tokio::join!(
        abha_bulk::store::migrations::run(&opts, "test", &migrator),
        fleet_and_reader
    );
    migrated.expect("migrated on retry");
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "no retry happened"
    );
    let has_x: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'lock_probe' AND column_name = 'x')",
    )
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert!(has_x);
    env.cleanup().await;
}

/// A `-- no-transaction` migration runs as one query string: a lone `CREATE INDEX
/// CONCURRENTLY` applies (under the migrator session's lock_timeout), while the same with a
/// `SET lock_timeout` before it is refused by Postgres (an implicit transaction). This is why
/// the lint wants such a file to hold the one statement only.
#[tokio::test]
async fn a_no_transaction_migration_is_one_concurrent_index_and_nothing_else() {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let env = TestEnv::new().await;
    let opts: sqlx::postgres::PgConnectOptions = env.db_url.parse().unwrap();
    let one = |version: i64, sql: &'static str| {
        let mut m = Migrator::with_migrations(vec![Migration::new(
            version,
            "index".into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            true,
        )]);
        m.set_ignore_missing(true);
        m
    };
    let two_statements = one(
        90018,
        "SET lock_timeout = '5s';\nCREATE INDEX CONCURRENTLY jobs_probe_a ON jobs (created_at);",
    );
    let refused = abha_bulk::store::migrations::run(&opts, "test", &two_statements).await;
    assert!(
        format!("{refused:?}").contains("transaction block"),
        "{refused:?}"
    );
    let alone = one(
        90019,
        "CREATE INDEX CONCURRENTLY jobs_probe_b ON jobs (created_at);",
    );
    abha_bulk::store::migrations::run(&opts, "test", &alone)
        .await
        .expect("a lone CREATE INDEX CONCURRENTLY applies");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'jobs_probe_b'::regclass",
    )
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert!(valid);
    env.cleanup().await;
}
