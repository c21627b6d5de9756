//! Rotating `pii.key` across a fleet (issue 18): a process whose keys are older than the
//! newest recorded key postpones what it cannot read (no `invalid_stored_job`, no attempt
//! spent), goes stale and stops taking work, and refuses to start again; a webhook secret it
//! cannot read holds back only its own delivery. Two stores with different key sets share one
//! database, as two pods of a rolling deploy would. `rekey` and the X-token sweep:
//! tests/key_rotation_rekey.rs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::envelope::Envelope;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::store::{Store, Vault};
use abha_bulk::worker::{MemoryQueue, Settled, Worker, WorkerConfig};
use common::TestEnv;
use common::keys::{NEW, OLD, connect, job_row, link_jobs, new_pod};
use tokio_util::sync::CancellationToken;

fn worker(store: &Store, env: &TestEnv, rate: f64, id: &str) -> Arc<Worker> {
    Worker::new(
        store.clone(),
        env.client.clone(),
        RateLimiter::new(rate, 1, None),
        env.topology.clone(),
        WorkerConfig {
            ..common::seam_config(id)
        },
    )
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

    // A stale `serve` writes no identifiers under its old key: an upload gets 503 with a
    // Retry-After (the retry reaches a replica with the fleet's key), and no batch is made.
    let api = common::api::start(&env, abha_bulk::api::ApiSettings::default()).await;
    let (_, key) = common::api::key(&env, &["submit"]).await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/batches?kind=benefit-link&benefit={}&file_name=links.csv",
            api.base,
            common::BENEFIT
        ))
        .bearer_auth(&key)
        .header("content-type", "text/csv")
        .body(common::api::links(&env, 0..3))
        .send()
        .await
        .unwrap();
    assert_eq!(common::api::retry_after(&r), 5);
    let p = common::api::problem(r, 503).await;
    assert!(
        p["detail"].as_str().unwrap().contains("key is out of date"),
        "{p}"
    );
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(batches, 0);
    let e = env
        .store
        .set_webhook(uuid::Uuid::new_v4(), "https://example.org/hook")
        .await;
    assert!(e.unwrap_err().to_string().contains("stale"));
    api.task.abort();
    env.cleanup().await;
}

#[tokio::test]
async fn a_webhook_secret_under_a_newer_key_holds_back_only_its_own_delivery() {
    let env = TestEnv::new().await;
    let new = new_pod(&env).await;
    let mut keys = Vec::new();
    for store in [&env.store, &new] {
        let (k, _) = store
            .create_api_key(None, &[common::BENEFIT.into()], &["read".into()], None)
            .await
            .unwrap();
        store
            .set_webhook(k.id, "http://127.0.0.1:9/hook")
            .await
            .unwrap();
        let b = env.new_link_batch(None).await;
        sqlx::query("UPDATE batches SET state = 'finished', finished_at = now() WHERE id = $1")
            .bind(b)
            .execute(&env.store.pool)
            .await
            .unwrap();
        store.set_batch_key(b, k.id).await.unwrap();
        keys.push(k.id);
    }
    env.store.enqueue_webhooks().await.unwrap();
    let due = env.store.due_webhooks(10, 30.0, 5, &[]).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.key).collect::<Vec<_>>(),
        vec![keys[0]],
        "the old pod sends what it can read"
    );
    assert!(env.store.key_stale(), "a newer key id seen: stale at once");
    env.cleanup().await;
}
