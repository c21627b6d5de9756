//! The programme API's `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header), its
//! batch list (a bounded number of queries whatever the page size) and its report (streamed,
//! never cached), through the real server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use abha_bulk::api::ApiSettings;
use common::api::{key, links, problem, retry_after, start};
use common::{BENEFIT, TestEnv};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_follow_the_ietf_draft() {
    let env = TestEnv::new().await;
    let api = start(&env, ApiSettings::default()).await;
    let http = reqwest::Client::new();
    let (id, k) = key(&env, &["submit", "read"]).await;
    let upload = |idem: &str, body: String| {
        http.post(format!(
            "{}/v1/batches?kind=benefit-link&benefit={BENEFIT}",
            api.base
        ))
        .bearer_auth(&k)
        .header("content-type", "text/csv")
        .header("idempotency-key", idem)
        .body(body)
        .send()
    };
    let first = upload("k-1", links(&env, 0..3)).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // The same request again: the first answer. Another file with the same key: 422.
    let again: Value = upload("k-1", links(&env, 0..3))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, first);
    let v = problem(upload("k-1", links(&env, 5..9)).await.unwrap(), 422).await;
    assert_eq!(v["type"], "docs/api.md#idempotency-key-reused");
    // Too long, or empty: 400.
    let v = problem(
        upload(&"x".repeat(256), links(&env, 5..9)).await.unwrap(),
        400,
    )
    .await;
    assert_eq!(v["field"], "Idempotency-Key");
    problem(upload("", links(&env, 5..9)).await.unwrap(), 400).await;
    // An upload whose serve died mid-way left its key "running": 409 while it is recent...
    for (idem, age) in [("k-dead", "11 minutes"), ("k-busy", "1 second")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_idempotency (key_id, idempotency_key, created_at)
             VALUES ($1, $2, now() - interval '{age}')"
        )))
        .bind(id)
        .bind(idem)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    let r = upload("k-busy", links(&env, 10..12)).await.unwrap();
    assert!(retry_after(&r) >= 1);
    problem(r, 409).await;
    // ... and free again once it expired (api.idempotency_running_secs): the retry works.
    let r = upload("k-dead", links(&env, 10..12)).await.unwrap();
    assert_eq!(r.status(), 201);
    api.task.abort();
    env.cleanup().await;
}

/// Counts the statements sqlx runs (its `sqlx::query` events).
struct CountQueries(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountQueries {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if e.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_list_takes_the_same_few_queries_whatever_the_page_size_and_reports_are_not_cached()
 {
    use tracing_subscriber::layer::SubscriberExt;
    let queries = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(CountQueries(queries.clone())),
    )
    .unwrap();
    let env = TestEnv::new().await;
    let api = start(&env, ApiSettings::default()).await;
    let http = reqwest::Client::new();
    let (_, k) = key(&env, &["read", "reveal"]).await;
    let mut last = None;
    for _ in 0..60 {
        last = Some(env.new_link_batch(None).await);
    }
    let mut counted = Vec::new();
    for per_page in [1, 500] {
        let before = queries.load(Ordering::SeqCst);
        let v: Value = http
            .get(format!("{}/v1/batches?per_page={per_page}", api.base))
            .bearer_auth(&k)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counted.push(queries.load(Ordering::SeqCst) - before);
        assert_eq!(v["batches"].as_array().unwrap().len(), per_page.min(60));
    }
    eprintln!(
        "queries for per_page=1: {}, per_page=500: {}",
        counted[0], counted[1]
    );
    assert!(counted[0] > 0, "the counter sees sqlx's statements");
    assert_eq!(counted[0], counted[1]);
    assert!(counted[1] <= 3, "{counted:?}");

    // The report, masked or revealed, is streamed (no file in the spool) and never cached.
    let batch = last.unwrap();
    for query in ["", "?reveal=true&reason=audit%20check"] {
        let r = http
            .get(format!("{}/v1/batches/{batch}/report{query}", api.base))
            .bearer_auth(&k)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let text = r.text().await.unwrap();
        assert!(text.starts_with("row,external_ref,"), "{text}");
        assert_eq!(std::fs::read_dir(env.dir.path()).unwrap().count(), 0);
    }
    api.task.abort();
    env.cleanup().await;
}
