//! Rotating `pii.key` across a fleet (issue 18): a process whose keys are older than the
//! newest recorded key postpones what it cannot read (no `invalid_stored_job`, no attempt
//! spent), goes stale and stops taking work; `rekey` rewrites every encrypted column, so
//! everything (webhook deliveries included) works with the new key alone; the X-token sweep
//! flags only what it rewrote. Two stores with different key sets share one database, as two
//! pods of a rolling deploy would.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::{Job, JobKind};
use abha_bulk::queue::envelope::Envelope;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::store::jobs::ExternalJob;
use abha_bulk::store::vault::{Aad, ENCRYPTED_COLUMNS};
use abha_bulk::store::{Store, StoreError, Vault};
use abha_bulk::worker::{MemoryQueue, Settled, Worker, WorkerConfig};
use common::TestEnv;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

const OLD: [u8; 32] = [7; 32];
const NEW: [u8; 32] = [9; 32];

async fn connect(env: &TestEnv, vault: Vault) -> Result<Store, StoreError> {
    Store::connect_url(&env.db_url, 3, Duration::from_secs(30), Arc::new(vault)).await
}

/// A pod rolled out with the new key (the old one still decrypts).
async fn new_pod(env: &TestEnv) -> Store {
    connect(env, Vault::from_bytes(&NEW).with_previous(&OLD))
        .await
        .expect("a rotation starts: the recorded key is a previous key")
}

fn worker(store: &Store, env: &TestEnv, rate: f64, id: &str) -> Arc<Worker> {
    Worker::new(
        store.clone(),
        env.client.clone(),
        RateLimiter::new(rate, 1, None),
        env.topology.clone(),
        WorkerConfig {
            id: id.into(),
            in_flight: 4,
            lease: Duration::from_secs(15),
            max_attempts: 5,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(200),
            grace: Duration::from_secs(5),
            kinds: JobKind::ALL.to_vec(),
            prefetch_horizon: Duration::from_millis(500),
        },
    )
}

/// Queue jobs written by `store` (so under its `pii.key`): one benefit link per person.
async fn link_jobs(env: &TestEnv, store: &Store, people: std::ops::Range<u64>) -> Vec<i64> {
    let pop = env.pop();
    let mut ids = Vec::new();
    for i in people {
        let abha = pop.abha(i).expose().to_string();
        let job = Job::from_fields(
            JobKind::BenefitLink,
            |k| (k == "abha_number").then_some(abha.as_str()),
            chrono::Utc::now().date_naive(),
        )
        .unwrap();
        let key = format!("rot-{i}");
        let ext = ExternalJob {
            idempotency_key: &key,
            benefit: common::BENEFIT,
            external_ref: None,
            job: &job,
        };
        ids.push(
            store
                .upsert_external(JobKind::BenefitLink, ext)
                .await
                .unwrap(),
        );
    }
    ids
}

async fn job_row(store: &Store, id: i64) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT state, attempts, last_code FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

async fn wait_settled(q: &MemoryQueue, n: usize) -> Vec<(u64, Settled)> {
    for _ in 0..600 {
        if q.settled().len() >= n {
            return q.settled();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {:?} settled, expected {n}", q.settled());
}

#[tokio::test]
async fn an_old_key_worker_postpones_new_rows_goes_stale_and_stops() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let check_before: Vec<u8> =
        sqlx::query_scalar("SELECT check_value FROM pii_key_check WHERE singleton")
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    // The old pod (env.store, pii.key = OLD) is running; a new pod starts and writes jobs.
    let new = new_pod(&env).await;
    let ids = link_jobs(&env, &new, 0..3).await;
    // The previous release's startup check reads pii_key_check: unchanged while the rotation
    // runs, so its old-key pods (and this release's new-key ones) still start.
    let check_during: Vec<u8> =
        sqlx::query_scalar("SELECT check_value FROM pii_key_check WHERE singleton")
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    assert_eq!(check_during, check_before);
    assert!(!env.store.key_stale(), "not checked yet");

    // One rate token: the first job runs, the other two wait for theirs, unstarted.
    let q = MemoryQueue::default();
    let stop = CancellationToken::new();
    let old_worker = worker(&env.store, &env, 0.2, "old-pod");
    let task = {
        let (q, stop, w) = (q.clone(), stop.clone(), old_worker.clone());
        tokio::spawn(async move { w.serve(q.stream(), Arc::new(q.clone()), &stop).await })
    };
    let msgs: Vec<u64> = ids
        .iter()
        .map(|id| q.publish(&Envelope::stored_bytes(JobKind::BenefitLink, *id)))
        .collect();
    let settled = wait_settled(&q, 3).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("a stale worker stops consuming without being stopped")
        .unwrap();
    assert!(ended.is_ok());
    assert!(!stop.is_cancelled());
    assert!(
        env.store.key_stale(),
        "the unknown key made it stale at once"
    );
    let acked: Vec<u64> = settled
        .iter()
        .filter(|(_, s)| *s == Settled::Ack)
        .map(|(m, _)| *m)
        .collect();
    let requeued = settled
        .iter()
        .filter(|(_, s)| *s == Settled::Requeue)
        .count();
    assert_eq!((acked.len(), requeued), (1, 2), "{settled:?}");
    let ran = ids[msgs.iter().position(|m| *m == acked[0]).unwrap()];
    let (state, attempts, code) = job_row(&env.store, ran).await;
    assert_eq!(
        (state.as_str(), attempts, code.as_deref()),
        ("retrying", 0, Some("pii_key_unknown")),
        "postponed, no attempt spent, never invalid_stored_job"
    );
    for id in &ids {
        assert_ne!(job_row(&env.store, *id).await.0, "failed");
    }
    let gauge = abha_bulk::telemetry::metrics::render();
    assert!(gauge.contains("abha_pii_key_stale 1"), "{gauge}");

    // /readyz says why.
    let http_stop = CancellationToken::new();
    let addr = abha_bulk::http::serve(
        "127.0.0.1:0",
        abha_bulk::http::Readiness {
            store: env.store.clone(),
            client: env.client.clone(),
            amqp_url: env.amqp_url.clone(),
            breaker: None,
        },
        http_stop.clone(),
    )
    .await
    .unwrap();
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("pii_key stale") && body.contains("pii.key"),
        "{body}"
    );
    http_stop.cancel();

    // Another old-key process finds out on its periodic check; a new one refuses to start.
    let other_old = connect(&env, Vault::from_bytes(&OLD)).await;
    let e = other_old.unwrap_err().to_string();
    assert!(e.contains("`pii.key`") && e.contains("stale"), "{e}");
    let late = Store::connect_url(
        &env.db_url,
        2,
        Duration::from_secs(30),
        Arc::new(Vault::from_bytes(&OLD).with_previous(&NEW)),
    )
    .await
    .expect("holding the newest key as a previous key is not stale");
    assert!(!late.check_key_set().await.unwrap());

    // The new pod runs all three: nothing was lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q2 = MemoryQueue::default();
    let new_worker = worker(&new, &env, 1000.0, "new-pod");
    let task = {
        let (q, stop, w) = (q2.clone(), stop.clone(), new_worker.clone());
        tokio::spawn(async move { w.serve(q.stream(), Arc::new(q.clone()), &stop).await })
    };
    for id in &ids {
        q2.publish(&Envelope::stored_bytes(JobKind::BenefitLink, *id));
    }
    wait_settled(&q2, 3).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    for id in &ids {
        assert_eq!(job_row(&new, *id).await.0, "succeeded");
    }
    assert!(!new.key_stale());
    env.cleanup().await;
}

#[tokio::test]
async fn a_stale_process_refuses_to_start_and_its_periodic_check_finds_out() {
    let env = TestEnv::new().await;
    assert!(!env.store.check_key_set().await.unwrap());
    let _new = new_pod(&env).await;
    assert!(
        env.store.check_key_set().await.unwrap(),
        "the periodic check"
    );
    let e = connect(&env, Vault::from_bytes(&OLD))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`pii.key`") && e.contains("stale"), "{e}");
    // rekey runs only with the newest key.
    let old_and_new = connect(&env, Vault::from_bytes(&OLD).with_previous(&NEW))
        .await
        .unwrap();
    assert!(old_and_new.rekey(10, |_| {}).await.is_err());
    env.cleanup().await;
}

/// Bytea columns that hold no ciphertext: keyed hashes, SHA-256 digests, key check values.
const NOT_ENCRYPTED: &[(&str, &str)] = &[
    ("jobs", "subject_hash"),
    ("jobs", "dedup_hash"),
    ("pii_key_check", "check_value"),
    ("pii_keys", "check_value"),
    ("api_keys", "secret_sha256"),
    ("console_sessions", "id_sha256"),
    ("api_idempotency", "fingerprint"),
    ("reconcile_runs", "roster_sha256"),
    ("reconcile_rows", "subject_hash"),
    ("_sqlx_migrations", "checksum"),
];

/// Every value of an encrypted column, with its associated data, decrypts with `store`'s keys.
async fn check_column(store: &Store, table: &str, column: &str) -> usize {
    let rows = match (table, column) {
        ("jobs", "payload") => {
            sqlx::query("SELECT id, dedup_hash, payload FROM jobs WHERE erased_at IS NULL")
        }
        ("jobs", "result") => sqlx::query(
            "SELECT id, dedup_hash, result FROM jobs WHERE result IS NOT NULL AND erased_at IS NULL",
        ),
        ("api_keys", "webhook_secret") => sqlx::query(
            "SELECT id, NULL::bytea, webhook_secret FROM api_keys WHERE webhook_secret IS NOT NULL",
        ),
        _ => panic!("{table}.{column} is encrypted but this test cannot check it: add it here"),
    }
    .fetch_all(&store.pool)
    .await
    .unwrap();
    for r in &rows {
        let blob: Vec<u8> = r.get(2);
        let plain = match column {
            "payload" => {
                let dedup: Vec<u8> = r.get(1);
                store.vault.decrypt(&blob, Aad::JobPayload(&dedup))
            }
            "result" => store.vault.decrypt(&blob, Aad::JobResult(r.get(0))),
            _ => store.vault.decrypt(&blob, Aad::WebhookSecret(r.get(0))),
        };
        assert!(plain.is_ok(), "{table}.{column}: {plain:?}");
        assert!(store.vault.is_current(&blob), "{table}.{column} rewritten");
    }
    rows.len()
}

#[tokio::test]
async fn rekey_covers_every_encrypted_column_and_webhooks_work_with_the_new_key_alone() {
    let env = TestEnv::new().await;
    // Every bytea column is either encrypted (and listed) or known not to be.
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type = 'bytea' ORDER BY 1, 2",
    )
    .fetch_all(&env.store.pool)
    .await
    .unwrap();
    for (t, c) in &columns {
        let tc = (t.as_str(), c.as_str());
        assert!(
            ENCRYPTED_COLUMNS.contains(&tc) || NOT_ENCRYPTED.contains(&tc),
            "{t}.{c}: a new bytea column; if it holds ciphertexts, add it to \
             vault::ENCRYPTED_COLUMNS and to rekey"
        );
    }
    // Values under the old key in every encrypted column.
    let ids = link_jobs(&env, &env.store, 0..5).await;
    for id in &ids[..2] {
        sqlx::query("UPDATE jobs SET result = $2 WHERE id = $1")
            .bind(id)
            .bind(
                env.store
                    .vault
                    .encrypt(b"{\"x\":\"1\"}", Aad::JobResult(*id)),
            )
            .execute(&env.store.pool)
            .await
            .unwrap();
    }
    let got: Arc<tokio::sync::Mutex<u32>> = Arc::default();
    let url = {
        let got = got.clone();
        let app = axum::Router::new().fallback(move || {
            let got = got.clone();
            async move {
                *got.lock().await += 1;
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let (k, _) = env
        .store
        .create_api_key(None, &[common::BENEFIT.into()], &["read".into()], None)
        .await
        .unwrap();
    env.store.set_webhook(k.id, &url).await.unwrap();
    for (t, c) in ENCRYPTED_COLUMNS {
        assert!(check_column(&env.store, t, c).await > 0, "{t}.{c} seeded");
    }

    let rotating = new_pod(&env).await;
    let mut tables = Vec::new();
    let p = rotating.rekey(2, |p| tables.push(p.table)).await.unwrap();
    assert!(p.complete(), "{p:?}");
    assert_eq!(
        (p.total, p.rewritten),
        (6, 6),
        "5 jobs and 1 webhook secret"
    );
    assert!(
        tables.contains(&"api_keys") && tables.len() >= 4,
        "{tables:?}"
    );
    rotating.pool.close().await;

    // The previous key removed: every value of every encrypted column decrypts.
    let new = connect(&env, Vault::from_bytes(&NEW))
        .await
        .expect("the new key alone matches after rekey");
    for (t, c) in ENCRYPTED_COLUMNS {
        assert!(
            check_column(&new, t, c).await > 0,
            "{t}.{c} has no value to check"
        );
    }
    // And a webhook goes out, signed with the secret read under the new key.
    let b = env.new_link_batch(None).await;
    sqlx::query("UPDATE batches SET state = 'finished', finished_at = now() WHERE id = $1")
        .bind(b)
        .execute(&new.pool)
        .await
        .unwrap();
    new.set_batch_key(b, k.id).await.unwrap();
    let stop = CancellationToken::new();
    let sender = tokio::spawn(abha_bulk::api::webhooks::run(
        new.clone(),
        common::test_webhooks(),
        stop.clone(),
    ));
    let mut delivered = false;
    for _ in 0..100 {
        delivered = sqlx::query_scalar::<_, bool>(
            "SELECT count(*) > 0 FROM webhook_deliveries WHERE key_id = $1 AND delivered_at IS NOT NULL",
        )
        .bind(k.id)
        .fetch_one(&new.pool)
        .await
        .unwrap();
        if delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = sender.await;
    assert!(
        delivered && *got.lock().await >= 1,
        "the webhook was delivered"
    );
    env.cleanup().await;
}

/// A finished child-create job (its own child name, so its own `dedup_hash`).
async fn child_job(store: &Store, key: &str, name: &str) -> i64 {
    let fields = [
        ("parent_x_token", "sbx1.token-of-the-parent"),
        ("parent_abha_number", "91-1234-5678-9012"),
        ("child_name", name),
        ("child_dob", "05-03-2019"),
        ("child_gender", "F"),
    ];
    let job = Job::from_fields(
        JobKind::ChildCreate,
        |k| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v),
        chrono::Utc::now().date_naive(),
    )
    .unwrap();
    let ext = ExternalJob {
        idempotency_key: key,
        benefit: common::BENEFIT,
        external_ref: None,
        job: &job,
    };
    let id = store
        .upsert_external(JobKind::ChildCreate, ext)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&store.pool)
        .await
        .unwrap();
    id
}

async fn flagged(store: &Store, id: i64) -> bool {
    sqlx::query_scalar("SELECT token_deleted FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_token_sweep_flags_only_what_it_rewrote() {
    let env = TestEnv::new().await;
    let corrupt = child_job(&env.store, "c-1", "Asha Devi").await;
    let good = child_job(&env.store, "c-2", "Meena Kumari").await;
    // A payload that fails under a key this process holds (another row's value).
    sqlx::query("UPDATE jobs SET payload = (SELECT payload FROM jobs WHERE id = $2) WHERE id = $1")
        .bind(corrupt)
        .bind(good)
        .execute(&env.store.pool)
        .await
        .unwrap();
    // One row a call: the unreadable row is skipped, unflagged, and does not block the next.
    assert_eq!(env.store.delete_final_tokens(1).await.unwrap(), 0);
    assert_eq!(env.store.delete_final_tokens(1).await.unwrap(), 1);
    assert_eq!(env.store.delete_final_tokens(1).await.unwrap(), 0);
    assert!(
        !flagged(&env.store, corrupt).await,
        "not rewritten, not flagged"
    );
    assert!(flagged(&env.store, good).await);

    // A row under a newer key: not flagged, and this process goes stale.
    let new = new_pod(&env).await;
    let newer = child_job(&new, "c-3", "Ravi Kumar").await;
    assert_eq!(env.store.delete_final_tokens(100).await.unwrap(), 0);
    assert!(!flagged(&env.store, newer).await);
    assert!(env.store.key_stale());
    // Stale: the housekeeping sweep skips, even a row it could read.
    let readable = child_job(&env.store, "c-4", "Sita Ram").await;
    abha_bulk::relay::housekeeping::round(&env.store).await;
    assert!(!flagged(&env.store, readable).await);
    // The up-to-date process deletes both.
    assert_eq!(new.delete_final_tokens(100).await.unwrap(), 2);
    assert!(flagged(&new, newer).await && flagged(&new, readable).await);
    assert!(!flagged(&new, corrupt).await);
    env.cleanup().await;
}
