//! Honest views (issue 17): `status`, `submit --output json` and `GET /v1/batches` show each
//! active batch's share of the rate, its priority, its place in the order of expected
//! completion and an ETA that counts the other batches' work; without a fresh share they fall
//! back to the batch's own rate and say so. The scheduler's tables (`batch_shares`) are
//! written here directly, so every figure is exact; the real binary prints them.

mod common;

use std::process::Output;
use std::time::Duration;

use abha_bulk::api::{ApiState, app};
use abha_bulk::jobs::kind::JobKind;
use common::{BENEFIT, TestEnv};
use serde_json::Value;
use uuid::Uuid;

/// A second programme (the sandbox needs not know it: nothing runs here).
const OTHER: &str = "COVIN";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let o = env.cli(args, &[]).output().expect("abha-bulk runs");
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    o
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o.stdout)))
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 0.05)
}

/// An active batch of `benefit` with `n` queued benefit-link jobs and no outbox rows (nothing
/// publishes them), created `age_secs` ago.
async fn active_batch(env: &TestEnv, benefit: &str, n: u64, age_secs: i64) -> Uuid {
    let pop = env.pop();
    let batch = env
        .store
        .create_batch(abha_bulk::store::batches::NewBatch {
            kind: JobKind::BenefitLink,
            benefit,
            source: "csv",
            file_name: Some("x.csv"),
            file_sha256: None,
            parent: None,
            priority: Default::default(),
        })
        .await
        .unwrap();
    let rows: Vec<_> = (0..n)
        .map(|i| {
            let job = abha_bulk::jobs::kind::Job::BenefitLink(
                abha_bulk::abdm::benefit::Beneficiary::Abha(pop.abha(i)),
            );
            env.store.prepare(i as i64 + 1, None, &job)
        })
        .collect();
    env.store
        .insert_jobs(batch, JobKind::BenefitLink, benefit, &rows)
        .await
        .unwrap();
    env.store.finish_submit(batch, n, n, 0, 0).await.unwrap();
    sqlx::query(
        "UPDATE batches SET created_at = now() - make_interval(secs => $2),
                submitted_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(batch)
    .bind(age_secs as f64)
    .execute(&env.store.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM outbox WHERE batch_ref = $1 OR batch_id = $1")
        .bind(batch)
        .execute(&env.store.pool)
        .await
        .unwrap();
    batch
}

/// The scheduler's row for a batch, written `age_secs` ago.
async fn share(env: &TestEnv, batch: Uuid, programme: &str, share: f64, rate: f64, backlog: i64) {
    sqlx::query(
        "INSERT INTO batch_shares (batch_id, programme, share, rate, backlog) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (batch_id) DO UPDATE SET share = $3, rate = $4, backlog = $5, updated_at = now()",
    )
    .bind(batch)
    .bind(programme)
    .bind(share)
    .bind(rate)
    .bind(backlog)
    .execute(&env.store.pool)
    .await
    .unwrap();
}

/// Three active batches over a fleet rate of 20 calls/s: `a` (10 jobs, 2 of them done in the
/// last minute, so its own rate is 2/60 per second) and `b` (100 jobs, high priority) of `BENEFIT` at 5/s each, `c` (30 jobs) of
/// `OTHER` at 10/s (3 done in the last minute: its own rate is 3/60 per second). Played
/// forward: a ends at 2 s (10 / 5: the scheduler's backlog of 10 is
/// larger than its 8 open jobs), c at 3 s (30 / 10), and b, at 10/s from 2 s and 20/s from
/// 3 s, at 7 s.
async fn three_batches(env: &TestEnv) -> (Uuid, Uuid, Uuid) {
    let a = active_batch(env, BENEFIT, 10, 120).await;
    let b = active_batch(env, BENEFIT, 100, 5).await;
    let c = active_batch(env, OTHER, 30, 100).await;
    for (batch, done) in [(a, 2), (c, 3)] {
        sqlx::query(
            "UPDATE jobs SET state = 'succeeded', outcome = 'linked', finished_at = now() - interval '1 second'
             WHERE batch_id = $1 AND row_number <= $2",
        )
        .bind(batch)
        .bind(done)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE batches SET priority = 'high' WHERE id = $1")
        .bind(b)
        .execute(&env.store.pool)
        .await
        .unwrap();
    share(env, a, BENEFIT, 0.25, 5.0, 10).await;
    share(env, b, BENEFIT, 0.25, 5.0, 100).await;
    share(env, c, OTHER, 0.5, 10.0, 30).await;
    (a, b, c)
}

#[tokio::test]
async fn status_shows_shares_positions_and_etas_in_prose_and_json() {
    let env = TestEnv::new().await;
    let (a, b, c) = three_batches(&env).await;
    let finished = active_batch(&env, BENEFIT, 1, 100).await;
    sqlx::query("UPDATE batches SET state = 'finished', finished_at = now() WHERE id = $1")
        .bind(finished)
        .execute(&env.store.pool)
        .await
        .unwrap();

    // One batch, as JSON: the API's fields plus its place among every programme's batches.
    let v = json(&run(&env, &["status", &a.to_string(), "--output", "json"]));
    assert_eq!(v["id"], a.to_string());
    assert_eq!(v["priority"], "normal");
    assert!(close(&v["share"], 0.25) && close(&v["rate"], 5.0), "{v}");
    assert_eq!(v["eta_basis"], "scheduled");
    assert!(close(&v["eta_seconds"], 2.0), "{v}");
    assert_eq!(
        (v["position"].as_u64(), v["active_in_programme"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (v["fleet_position"].as_u64(), v["active_batches"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(v["counts"]["succeeded"], 2);
    assert_eq!(v["open"], 8);
    // Its own rate is still measured: 2 jobs in the last minute.
    let own = v["rate_per_second"].as_f64().unwrap();
    assert!((own - 2.0 / 60.0).abs() < 1e-3, "{v}");

    // The list, as JSON: active batches in order of expected completion, then the others.
    let v = json(&run(&env, &["status", "--all", "--output", "json"]));
    let list = v["batches"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let want = [a, c, b, finished].map(|id| id.to_string());
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    let etas: Vec<f64> = list[..3]
        .iter()
        .map(|b| b["eta_seconds"].as_f64().unwrap())
        .collect();
    for (got, want) in etas.iter().zip([2.0, 3.0, 7.0]) {
        assert!((got - want).abs() < 0.05, "{etas:?}");
    }
    assert_eq!(list[2]["priority"], "high");
    assert_eq!(list[2]["position"], 2, "b is 2nd of its programme");
    assert_eq!(list[1]["position"], 1, "c is 1st of its own");
    assert!(list[3]["position"].is_null() && list[3]["eta_seconds"].is_null());
    assert_eq!(list[3]["state"], "finished");

    // The same in prose: a header, the same order, shares and ETAs.
    let o = run(&env, &["status"]);
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("POS  BATCH"), "{out}");
    for (line, (id, share, eta)) in
        lines[1..]
            .iter()
            .zip([(a, "25%", "2s"), (c, "50%", "3s"), (b, "25%", "7s")])
    {
        assert!(line.contains(&id.to_string()[..8]), "{out}");
        assert!(line.contains(share) && line.contains(eta), "{line}");
    }
    assert!(!out.contains(&finished.to_string()[..8]), "{out}");
    let one = text(&run(&env, &["status", &b.to_string()]).stdout);
    assert!(
        one.contains("priority high; share 25% of the rate (5.0 calls/s); expected to finish 3rd of the 3 active batches (2nd of DEMO-BENEFIT's 2)"),
        "{one}"
    );
    assert!(one.contains("ETA 7s"), "{one}");

    // No fresh share (the scheduler stopped a while ago): the batch's own rate, said so.
    sqlx::query("UPDATE batch_shares SET updated_at = now() - interval '5 minutes'")
        .execute(&env.store.pool)
        .await
        .unwrap();
    let v = json(&run(&env, &["status", &a.to_string(), "--output", "json"]));
    assert!(v["share"].is_null() && v["rate"].is_null(), "{v}");
    assert_eq!(v["eta_basis"], "measured");
    // 8 open at 2/60 per second.
    assert!(close(&v["eta_seconds"], 240.0), "{v}");
    let one = text(&run(&env, &["status", &a.to_string()]).stdout);
    assert!(one.contains("share unknown"), "{one}");
    let list = text(&run(&env, &["status"]).stdout);
    assert!(
        list.contains("no scheduler has reported the shares"),
        "{list}"
    );
    // Every programme's batches are measured for the operator; b, where nothing finished,
    // has no ETA and comes last.
    let v = json(&run(&env, &["status", "--output", "json"]));
    let ids: Vec<&Value> = v["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["id"])
        .collect();
    assert_eq!(ids, [&a.to_string(), &c.to_string(), &b.to_string()]);
    assert!(
        close(&v["batches"][1]["eta_seconds"], 540.0),
        "27 open at 3/60 per second: {v}"
    );
    assert!(v["batches"][2]["eta_seconds"].is_null());
    let v = json(&run(&env, &["status", &c.to_string(), "--output", "json"]));
    assert_eq!(
        (v["fleet_position"].as_u64(), v["position"].as_u64()),
        (Some(2), Some(1))
    );
    env.cleanup().await;
}

#[tokio::test]
async fn submit_answers_in_json_for_scripts() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let csv = format!(
        "external_ref,abha_number\nR1,{}\nR2,{}\nBAD,12345\nR1,{}\n",
        pop.abha(1).expose(),
        pop.abha(2).expose(),
        pop.abha(1).expose()
    );
    let file = env.write_file("links.csv", &csv);
    let args = [
        "submit",
        file.to_str().unwrap(),
        "--kind",
        "benefit-link",
        "--benefit",
        BENEFIT,
        "--output",
        "json",
    ];
    let o = run(&env, &args);
    // Nothing but the document on standard output, and no identifier in it.
    assert!(!text(&o.stdout).contains(pop.abha(1).expose()));
    let v = json(&o);
    let batch: Uuid = v["batch"].as_str().unwrap().parse().expect("a batch id");
    let stored = env
        .store
        .batch(batch)
        .await
        .unwrap()
        .expect("the batch exists");
    assert_eq!(stored.state, "active");
    assert_eq!(v["kind"], "benefit-link");
    assert_eq!(v["benefit"], BENEFIT);
    assert_eq!(
        [
            &v["total_rows"],
            &v["accepted_rows"],
            &v["rejected_rows"],
            &v["duplicate_rows"]
        ],
        [4, 2, 1, 1]
    );
    assert!(v["warnings"].as_array().unwrap().is_empty());
    assert!(v["overlaps"].as_array().unwrap().is_empty());
    assert!(v["elapsed_seconds"].as_f64().unwrap() >= 0.0);

    // The same rows in another file: the overlap is in the document too.
    let again = env.write_file("again.csv", &csv.replace("BAD,12345\n", ""));
    let mut args2 = args;
    args2[1] = again.to_str().unwrap();
    let v = json(&run(&env, &args2));
    let overlap = &v["overlaps"][0];
    assert_eq!(overlap["batch"], batch.to_string(), "{v}");
    assert_eq!(overlap["rows"], 2);
    assert_eq!(overlap["exact"], true);

    // A refusal: an error on stderr, nothing on stdout, a failing status.
    let o = env.cli(&args, &[]).output().unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("already submitted"),
        "{}",
        text(&o.stderr)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_share_rate_priority_position_and_eta() {
    let env = TestEnv::new().await;
    let (a, b, c) = three_batches(&env).await;
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload: 1 << 20,
        read_timeout: Duration::from_secs(2),
        spool: env.dir.path().to_path_buf(),
        guards: abha_bulk::api::Guards::new(&abha_bulk::api::ApiSettings::default()),
        priorities: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    let (_, key) = env
        .store
        .create_api_key(None, &[BENEFIT.into()], &["read".into()], None)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let r = http.get(format!("{base}{path}")).bearer_auth(&key).send();
        async move {
            let r = r.await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };

    let v = get(format!("/v1/batches/{b}")).await;
    described(&v);
    assert_eq!(v["priority"], "high");
    assert!(close(&v["share"], 0.25) && close(&v["rate"], 5.0), "{v}");
    assert!(close(&v["eta_seconds"], 7.0), "{v}");
    assert_eq!(v["eta_basis"], "scheduled");
    assert_eq!(
        (v["position"].as_u64(), v["active_in_programme"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(
        v.get("fleet_position").is_none(),
        "a key learns nothing of other programmes"
    );
    assert_eq!(v["open"], 100);

    let v = get("/v1/batches?state=active".into()).await;
    let list = v["batches"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    for item in list {
        described(item);
        let (position, eta) = if item["id"] == a.to_string() {
            (1, 2.0)
        } else {
            (2, 7.0)
        };
        assert_eq!(item["position"], position, "{item}");
        assert!(close(&item["eta_seconds"], eta), "{item}");
        assert!(item["share"].is_number() && item["priority"].is_string());
    }
    assert!(!v.to_string().contains(&c.to_string()));

    // The scheduler gone quiet: no share, and the ETA from the batch's own rate.
    sqlx::query("DELETE FROM batch_shares")
        .execute(&env.store.pool)
        .await
        .unwrap();
    let v = get(format!("/v1/batches/{a}")).await;
    assert!(v["share"].is_null() && v["rate"].is_null(), "{v}");
    assert_eq!(v["eta_basis"], "measured");
    assert!(close(&v["eta_seconds"], 240.0), "{v}");
    assert_eq!(v["position"], 1);
    server.abort();
    env.cleanup().await;
}

/// Every field of a batch answer is in the OpenAPI description's `Batch`, with a type it
/// allows (schemathesis checks the same on its own requests, which seldom meet an active
/// batch with a share).
fn described(batch: &Value) {
    let spec: Value = serde_json::from_str(include_str!("../src/api/openapi.json")).unwrap();
    let props = &spec["components"]["schemas"]["Batch"]["properties"];
    for (field, value) in batch.as_object().unwrap() {
        let prop = &props[field];
        assert!(prop.is_object(), "{field} is not in openapi.json's Batch");
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let allowed: Vec<&str> = match &prop["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let ok = allowed.contains(&kind) || (kind == "integer" && allowed.contains(&"number"));
        assert!(ok, "{field}: {value} is not {allowed:?}");
    }
}
