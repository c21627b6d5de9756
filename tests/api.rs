//! The programme API (`abha-bulk serve`): keys scoped per programme, uploads through the same
//! atomic submit as the CLI, problem documents for every refusal, nothing stored twice.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use abha_bulk::api::{ApiSettings, ApiState, Guards, app};
use common::{BENEFIT, PipelineOpts, TestEnv};
use serde_json::Value;

struct Api {
    base: String,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

async fn start(env: &TestEnv, max_upload: u64) -> Api {
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload,
        read_timeout: Duration::from_secs(2),
        spool: env.dir.path().to_path_buf(),
        guards: Guards::new(&ApiSettings::default()),
        priorities: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app(state)).await.unwrap();
    });
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        task,
    }
}

async fn key(env: &TestEnv, benefit: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    env.store
        .create_api_key(Some("test"), &[benefit.to_string()], &scopes, None)
        .await
        .unwrap()
        .1
}

fn links_csv(env: &TestEnv, range: std::ops::Range<u64>) -> String {
    let pop = env.pop();
    let mut s = String::from("external_ref,abha_number\n");
    for i in range {
        s.push_str(&format!("L{i},{}\n", pop.abha(i).expose()));
    }
    s
}

async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], status);
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programme_uploads_watches_downloads_and_sees_only_its_own_batches() {
    let env = TestEnv::new().await;
    let api = start(&env, 1 << 20).await;
    let pmjay = key(&env, BENEFIT, &["submit", "read"]).await;
    let other = key(&env, "COVIN", &["submit", "read", "reveal"]).await;
    let url = |p: &str| format!("{}{p}", api.base);
    let upload = |k: &str, body: String, idem: Option<&str>| {
        let mut r = api
            .http
            .post(url(&format!(
                "/v1/batches?kind=benefit-link&benefit={BENEFIT}&file_name=links.csv"
            )))
            .bearer_auth(k)
            .header("content-type", "text/csv")
            .body(body);
        if let Some(i) = idem {
            r = r.header("idempotency-key", i);
        }
        r.send()
    };
    // A bad row is reported with its row, column and reason right away.
    let mut body = links_csv(&env, 100..120);
    body.push_str("BAD,12345\n");
    let r = upload(&pmjay, body.clone(), Some("u-1")).await.unwrap();
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["accepted_rows"], 20);
    assert_eq!(first["rejected"][0]["row"], 21);
    assert_eq!(first["rejected"][0]["column"], "abha_number");
    // The same upload retried with its Idempotency-Key gets the first answer; nothing twice.
    let again: Value = upload(&pmjay, body.clone(), Some("u-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, first);
    let id = first["batch"].as_str().unwrap().to_string();
    // Without the key, the same file is refused as already submitted.
    problem(upload(&pmjay, body, None).await.unwrap(), 409).await;

    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[id.parse().unwrap()]).await;
    pipeline.stop().await;
    let status: Value = api
        .http
        .get(url(&format!("/v1/batches/{id}")))
        .bearer_auth(&pmjay)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["counts"]["succeeded"], 20);
    let report = api
        .http
        .get(url(&format!("/v1/batches/{id}/report")))
        .bearer_auth(&pmjay)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    let text = report.text().await.unwrap();
    assert_eq!(text.lines().count(), 22, "header + 21 rows");
    assert!(
        !text.contains(env.pop().abha(100).expose()),
        "identifiers masked"
    );
    let list: Value = api
        .http
        .get(url("/v1/batches"))
        .bearer_auth(&pmjay)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["batches"].as_array().unwrap().len(), 1);

    // Another programme's key: 404 for the batch, an empty list, 403 to submit for PMJAY's benefit.
    for path in [
        format!("/v1/batches/{id}"),
        format!("/v1/batches/{id}/report"),
    ] {
        problem(
            api.http
                .get(url(&path))
                .bearer_auth(&other)
                .send()
                .await
                .unwrap(),
            404,
        )
        .await;
    }
    problem(
        api.http
            .post(url(&format!("/v1/batches/{id}/cancel")))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let list: Value = api
        .http
        .get(url("/v1/batches"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["batches"].as_array().unwrap().is_empty());
    problem(
        upload(&other, links_csv(&env, 1..2), None).await.unwrap(),
        403,
    )
    .await;
    // A finished batch cannot be cancelled.
    env.store.finish_batches().await.unwrap();
    problem(
        api.http
            .post(url(&format!("/v1/batches/{id}/cancel")))
            .bearer_auth(&pmjay)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    api.task.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_documents_and_store_nothing() {
    let env = TestEnv::new().await;
    let api = start(&env, 4096).await;
    let url = |p: &str| format!("{}{p}", api.base);
    let reader = key(&env, BENEFIT, &["read"]).await;
    let submitter = key(&env, BENEFIT, &["submit", "read"]).await;
    let revoked = key(&env, BENEFIT, &["submit", "read"]).await;
    let prefix = revoked.split('_').nth(1).unwrap().to_string();
    assert!(env.store.revoke_api_key(&prefix).await.unwrap());
    let post = |k: &str, q: &str, ct: &str, body: String| {
        api.http
            .post(url(&format!("/v1/batches?{q}")))
            .bearer_auth(k)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let q = format!("kind=benefit-link&benefit={BENEFIT}");
    let csv = links_csv(&env, 1..3);
    // 401 without a key, with an unknown one, with a revoked one.
    problem(api.http.get(url("/v1/batches")).send().await.unwrap(), 401).await;
    problem(
        api.http
            .get(url("/v1/batches"))
            .bearer_auth("abk_00000000_x")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        post(&revoked, &q, "text/csv", csv.clone()).await.unwrap(),
        401,
    )
    .await;
    // 403 without the scope.
    problem(
        post(&reader, &q, "text/csv", csv.clone()).await.unwrap(),
        403,
    )
    .await;
    // 400 for a bad kind, benefit or id; 415 for a wrong content type; 400 for an empty body;
    // 413 over the limit; 422 for a file without the kind's columns.
    let v = problem(
        post(
            &submitter,
            &format!("kind=teleport&benefit={BENEFIT}"),
            "text/csv",
            csv.clone(),
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["field"], "kind");
    let v = problem(
        post(
            &submitter,
            "kind=benefit-link&benefit=PMJAY%0D%0AX-Evil:%201",
            "text/csv",
            csv.clone(),
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["field"], "benefit");
    problem(
        post(&submitter, &q, "application/json", csv.clone())
            .await
            .unwrap(),
        415,
    )
    .await;
    problem(
        post(&submitter, &q, "text/csv", String::new())
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        post(&submitter, &q, "text/csv", "x".repeat(5000))
            .await
            .unwrap(),
        413,
    )
    .await;
    problem(
        post(&submitter, &q, "text/csv", "name\nAsha\n".into())
            .await
            .unwrap(),
        422,
    )
    .await;
    let v = problem(
        api.http
            .get(url("/v1/batches/not-a-uuid"))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["field"], "id");
    // A body that stops halfway (Content-Length promises more, then the client goes away):
    // the upload is dropped and no batch exists.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(api.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "POST /v1/batches?{q} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {submitter}\r\n\
             Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\nexternal_ref,abha_number\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    }
    assert!(
        env.store.list_batches(false, 10).await.unwrap().is_empty(),
        "nothing stored by refused uploads"
    );
    // Two uploads of one file at once make one batch.
    let body = links_csv(&env, 10..40);
    let (a, b) = tokio::join!(
        post(&submitter, &q, "text/csv", body.clone()),
        post(&submitter, &q, "text/csv", body.clone())
    );
    let mut codes = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    codes.sort();
    assert_eq!(codes, [201, 409]);
    assert_eq!(env.store.list_batches(false, 10).await.unwrap().len(), 1);
    // The description of the API is served.
    let doc: Value = api
        .http
        .get(url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    api.task.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_batch_is_told_to_the_keys_webhook_signed_and_without_identifiers() {
    use axum::routing::post;
    use base64::Engine;
    let env = TestEnv::new().await;
    let api = start(&env, 1 << 20).await;
    // The programme's receiver: answers 500 once (the delivery is retried), then 200.
    let got: std::sync::Arc<tokio::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>> =
        Default::default();
    let got2 = got.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let got = got2.clone();
            async move {
                let mut g = got.lock().await;
                g.push((headers, body));
                if g.len() == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let (k, secret) = env
        .store
        .create_api_key(
            None,
            &[BENEFIT.into()],
            &["submit".into(), "read".into()],
            None,
        )
        .await
        .unwrap();
    let signing = env.store.set_webhook(k.id, &hook).await.unwrap();
    let r: Value = api
        .http
        .post(format!(
            "{}/v1/batches?kind=benefit-link&benefit={BENEFIT}",
            api.base
        ))
        .bearer_auth(&secret)
        .header("content-type", "text/csv")
        .body(links_csv(&env, 500..505))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch = r["batch"].as_str().unwrap().to_string();
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[batch.parse().unwrap()]).await;
    // Housekeeping closes the batch and sends; the first answer is 500, so it is sent again
    // after the backoff; speed that up for the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.lock().await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "webhook not delivered twice"
        );
        sqlx::query("UPDATE webhook_deliveries SET next_at = now() WHERE delivered_at IS NULL")
            .execute(&env.store.pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.stop().await;
    let (headers, body) = got.lock().await[1].clone();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "batch.finished");
    assert_eq!(v["batch"], batch.as_str());
    assert_eq!(v["counts"]["succeeded"], 5);
    assert!(!body.contains(env.pop().abha(500).expose()));
    let id = headers["webhook-id"].to_str().unwrap();
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(signing.trim_start_matches("whsec_"))
        .unwrap();
    assert_eq!(
        headers["webhook-signature"].to_str().unwrap(),
        abha_bulk::api::webhooks::sign(&key, id, ts, &body)
    );
    let status: Value = api
        .http
        .get(format!("{}/v1/batches/{batch}", api.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["webhook"]["delivered"], true);
    assert_eq!(status["webhook"]["attempts"], 2);
    server.abort();
    api.task.abort();
    env.cleanup().await;
}

/// A batch's priority over the API (issue 17): given, refused when unknown (naming the
/// field), and by default the programme's `benefits.priorities`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_sets_its_priority_or_gets_the_programme_default() {
    let env = TestEnv::new().await;
    let mut api = start(&env, 1 << 20).await;
    api.task.abort();
    // The same server, with a programme default of `high`.
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload: 1 << 20,
        read_timeout: Duration::from_secs(2),
        spool: env.dir.path().to_path_buf(),
        guards: Guards::new(&ApiSettings::default()),
        priorities: [(BENEFIT.to_string(), abha_bulk::scheduler::Priority::High)].into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    api.base = format!("http://{}", listener.local_addr().unwrap());
    api.task = tokio::spawn(async move {
        axum::serve(listener, app(state)).await.unwrap();
    });
    let k = key(&env, BENEFIT, &["submit", "read"]).await;
    let upload = |query: &str, rows: std::ops::Range<u64>| {
        api.http
            .post(format!(
                "{}/v1/batches?kind=benefit-link&benefit={BENEFIT}{query}",
                api.base
            ))
            .bearer_auth(&k)
            .header("content-type", "text/csv")
            .body(links_csv(&env, rows))
            .send()
    };
    let pool = env.store.pool.clone();
    let priority_of = |r: reqwest::Response| {
        let pool = pool.clone();
        async move {
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            let id = uuid::Uuid::parse_str(v["batch"].as_str().unwrap()).unwrap();
            sqlx::query_scalar::<_, String>("SELECT priority FROM batches WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let urgent = priority_of(upload("&priority=urgent", 0..3).await.unwrap()).await;
    assert_eq!(urgent, "urgent");
    let default = priority_of(upload("", 3..6).await.unwrap()).await;
    assert_eq!(default, "high");
    let bad = problem(upload("&priority=soon", 6..9).await.unwrap(), 400).await;
    assert_eq!(bad["field"], "priority", "{bad}");
    env.cleanup().await;
}
