//! `POST /v1/erasures` against real Postgres: a programme erases its own rows about a person,
//! never another programme's, and an item that is no identifier is answered with its index.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::api::{ApiState, app};
use abha_bulk::jobs::kind::JobKind;
use abha_bulk::submit::{SubmitRequest, submit};
use common::{BENEFIT, TestEnv};
use serde_json::{Value, json};
use uuid::Uuid;

const OTHER: &str = "OTHER-PROG";

async fn link_batch(env: &TestEnv, benefit: &str, name: &str, people: &[u64]) -> Uuid {
    let pop = env.pop();
    let rows: Vec<Vec<String>> = people
        .iter()
        .map(|i| vec![format!("{name}{i}"), pop.abha(*i).expose().to_string()])
        .collect();
    let path = env.write_csv(
        &format!("{name}.csv"),
        &["external_ref", "abha_number"],
        &rows,
    );
    let req = SubmitRequest {
        path,
        kind: JobKind::BenefitLink,
        benefit: benefit.into(),
        force: true,
        priority: Default::default(),
    };
    submit(&env.store, &req, Arc::new(())).await.unwrap().batch
}

async fn erased(env: &TestEnv, batch: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(erased_at) FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programme_erases_its_own_rows_only() {
    let env = TestEnv::new().await;
    let mine = link_batch(&env, BENEFIT, "m", &[1, 2]).await;
    let theirs = link_batch(&env, OTHER, "t", &[1]).await;
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload: 1 << 20,
        read_timeout: Duration::from_secs(5),
        spool: env.dir.path().to_path_buf(),
        guards: abha_bulk::api::Guards::new(&abha_bulk::api::ApiSettings::default()),
        priorities: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    let (_, key) = env
        .store
        .create_api_key(None, &[BENEFIT.into()], &["submit".into()], None)
        .await
        .unwrap();
    let (_, reader) = env
        .store
        .create_api_key(None, &[BENEFIT.into()], &["read".into()], None)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let post = |key: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://{addr}/v1/erasures"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let abha = env.pop().abha(1).expose().to_string();

    let (status, body) = post(reader, json!({"identifiers": [abha], "reason": "x"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(
        key.clone(),
        json!({"identifiers": ["12345"], "reason": "asked"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"][0]["index"], 0, "{body}");
    assert!(!body.to_string().contains("12345"), "{body}");
    assert_eq!(erased(&env, mine).await, 0, "nothing named, nothing erased");

    let (status, body) = post(
        key.clone(),
        json!({"identifiers": [abha], "reason": "asked"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["people"].as_u64(), body["erased"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(erased(&env, mine).await, 1);
    assert_eq!(
        erased(&env, theirs).await,
        0,
        "another programme's row is not the key's"
    );
    let by: String =
        sqlx::query_scalar("SELECT requested_by FROM erasure_log WHERE batch_id IS NULL")
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    assert!(by.starts_with("api-key:"), "{by}");
    server.abort();
    env.cleanup().await;
}
