//! The faults ABDM and real deployments have every week (issue 8): a refused client secret
//! or an unreachable ABDM must not kill rows, a worker that lost its lease makes no call,
//! a lost answer is never acted on twice (retry-failed included) and is reported as done by
//! this run, and an interrupted submit runs none of its rows.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use abha_bulk::abdm::{AbdmClient, CallGate, Operation};
use abha_bulk::jobs::kind::JobKind;
use abha_bulk::pii::format_date;
use abha_bulk::sandbox::settings_for_sandbox;
use abha_bulk::store::jobs::Claim;
use abha_bulk::submit::{SubmitError, SubmitRequest, submit_until};
use abha_bulk::worker::JobGate;
use chrono::{NaiveDate, Utc};
use common::{BENEFIT, PipelineOpts, REQUEST_TIMEOUT_MS, TestEnv, by_ref, no_faults, s};
use tokio_util::sync::CancellationToken;

const CHILD_CREATE: &[&str] = &[
    "external_ref",
    "parent_x_token",
    "parent_abha_number",
    "child_name",
    "child_dob",
    "child_gender",
];

/// A client of the env's sandbox with another secret or base URL.
fn client_with(env: &TestEnv, secret: Option<&str>, base: Option<&str>) -> Arc<AbdmClient> {
    let mut settings = settings_for_sandbox(base.unwrap_or(&env.sandbox.url()));
    settings.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    settings.connect_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    if let Some(secret) = secret {
        settings.client_secret = abha_bulk::config::SecretString::from(secret);
    }
    Arc::new(AbdmClient::new(&settings).expect("client"))
}

async fn circuit(env: &TestEnv) -> abha_bulk::store::circuit::CircuitRow {
    env.store
        .circuit(abha_bulk::sandbox::DEFAULT_CLIENT_ID)
        .await
        .expect("circuit")
}

async fn max_attempts(env: &TestEnv, batch: uuid::Uuid) -> i32 {
    sqlx::query_scalar("SELECT COALESCE(max(attempts), 0) FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .expect("attempts")
}

/// A systemic fault for 4 s: no row may end dead, failed or even spend an attempt, the
/// gateway sees a handful of logins (not one per row attempt), and the breaker says why.
/// Then a worker with a working client probes, closes the breaker, and every row runs once.
async fn systemic_fault_then_recovery(env: &TestEnv, broken: Arc<AbdmClient>, why: &str) {
    let batch = env.submit_links("S", 100..110).await;
    let pipeline = env.start(PipelineOpts {
        client: Some(broken),
        max_attempts: 3,
        ..PipelineOpts::default()
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    pipeline.stop().await;
    let counts = env.counts(batch).await;
    assert_eq!(
        counts.open(),
        10,
        "no row may end during an outage: {counts:?}"
    );
    assert_eq!(
        max_attempts(env, batch).await,
        0,
        "outage attempts are refunded"
    );
    let c = circuit(env).await;
    assert!(c.open, "breaker open");
    let reason = c.reason.unwrap_or_default();
    assert!(
        reason.contains(why),
        "reason {reason:?} should name {why:?}"
    );
    let sessions = env
        .sandbox
        .state()
        .call_log()
        .requests
        .get("session")
        .copied()
        .unwrap_or(0);
    assert!(
        sessions <= 8,
        "{sessions} gateway logins for 10 rows in 4 s"
    );

    // The fix is deployed: a probe closes the breaker and the held rows run, once each.
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    assert_eq!(env.counts(batch).await.get("succeeded"), 10);
    assert!(
        !circuit(env).await.open,
        "breaker closed after a good probe"
    );
    assert_eq!(max_attempts(env, batch).await, 1, "one attempt per row");
    assert!(
        env.sandbox
            .state()
            .call_log()
            .duplicate_side_effects
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_secret_opens_the_breaker_and_no_row_dies() {
    let env = TestEnv::new().await;
    let wrong = client_with(&env, Some("not-the-secret"), None);
    systemic_fault_then_recovery(&env, wrong, "abdm.client_secret").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_abdm_opens_the_breaker_and_no_row_dies() {
    let env = TestEnv::new().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = client_with(&env, None, Some(&format!("http://127.0.0.1:{closed}")));
    systemic_fault_then_recovery(&env, unreachable, "cannot connect").await;
    env.cleanup().await;
}

async fn job_ids(env: &TestEnv, batch: uuid::Uuid) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY id")
        .bind(batch)
        .fetch_all(&env.store.pool)
        .await
        .expect("jobs")
}

fn gate(env: &TestEnv, job_id: i64, owner: &str, claim_token: uuid::Uuid) -> JobGate {
    JobGate {
        limiter: abha_bulk::ratelimit::RateLimiter::new(1000.0, 10, None),
        leases: Arc::new(env.store.clone()),
        job_id,
        owner: owner.into(),
        claim_token,
        lease: Duration::from_secs(30),
        prepaid: AtomicBool::new(true),
        token_at: tokio::time::Instant::now(),
        // Long after the claim: the gate runs its own fence.
        claimed_at: tokio::time::Instant::now() - Duration::from_secs(3600),
        extended_at: std::sync::Mutex::new(tokio::time::Instant::now()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_makes_no_call_and_the_fence_records_intent() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("L", 200..201).await;
    let id = job_ids(&env, batch).await[0];
    let Claim::Run(a) = env
        .store
        .claim(id, "A", Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("A claims")
    };
    // A waits (a long Retry-After, a slow limiter) past its lease; B takes the job over.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(env.store.requeue_expired_leases().await.unwrap(), 1);
    let Claim::Run(b) = env
        .store
        .claim(id, "B", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("B claims")
    };
    // A's claim recorded the intent (A may have sent its link): B must look first.
    assert!(b.effect_may_have_happened);
    // A's gate refuses the side effect; reads would still pass (they are harmless).
    let stale = gate(&env, id, "A", a.claim_token);
    assert!(stale.before_send(Operation::Link).await.is_err());
    assert!(stale.before_send(Operation::BenefitLookup).await.is_ok());
    // B's passes, and the intent is committed before B's call goes out.
    gate(&env, id, "B", b.claim_token)
        .before_send(Operation::Link)
        .await
        .expect("B holds the lease");
    let (intent, lease_left): (bool, f64) = sqlx::query_as(
        "SELECT effect_started_at IS NOT NULL, EXTRACT(EPOCH FROM lease_until - now())::float8
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert!(intent, "intent recorded");
    assert!(lease_left > 25.0, "lease extended: {lease_left}");
    // Whoever claims it next must look first, whatever its attempt counter says.
    env.store.retry_failed(batch, None).await.unwrap();
    sqlx::query("UPDATE jobs SET state = 'queued', lease_owner = NULL, attempts = 0 WHERE id = $1")
        .bind(id)
        .execute(&env.store.pool)
        .await
        .unwrap();
    let Claim::Run(c) = env
        .store
        .claim(id, "C", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("C claims")
    };
    assert!(c.effect_may_have_happened && c.attempt == 1);
    assert_eq!(
        env.sandbox.state().call_log().requests.get("link"),
        None,
        "no call reached ABDM"
    );
    env.cleanup().await;
}

/// Every call's answer is lost after ABDM acted, so the only attempt ends dead; retry-failed
/// then runs the rows again with a fresh attempt budget.
async fn lose_answers_then_retry_failed(env: &TestEnv, batch: uuid::Uuid) {
    env.warm_up().await;
    env.set_faults(abha_bulk::sandbox::Faults {
        timeout_percent: 100.0,
        ..no_faults()
    });
    let pipeline = env.start(PipelineOpts {
        max_attempts: 1,
        ..PipelineOpts::default()
    });
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    assert!(env.counts(batch).await.get("dead") > 0);
    env.set_faults(no_faults());
    assert!(env.store.retry_failed(batch, None).await.unwrap() > 0);
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_keeps_the_intent_so_a_lost_child_creation_is_not_repeated() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let parent = pop.abha(300);
    let dob = NaiveDate::from_ymd_opt(2021, 3, 4).unwrap();
    let token = pop.x_token(&parent, Utc::now().timestamp() + 3600);
    let rows = vec![vec![
        s("C-1"),
        token,
        s(parent.expose()),
        s("Meera Devi"),
        format_date(dob),
        s("F"),
    ]];
    let batch = env
        .submit_rows(JobKind::ChildCreate, CHILD_CREATE, &rows)
        .await
        .batch;
    lose_answers_then_retry_failed(&env, batch).await;
    let st = env.sandbox.state();
    let key = format!("{}|Meera Devi|{}", parent.digits(), format_date(dob));
    assert_eq!(
        st.side_effect_count("child_create", &key),
        1,
        "no twin child"
    );
    assert!(st.call_log().duplicate_side_effects.is_empty());
    let (_, report) = env.report(batch, None).await;
    let row = by_ref(&report, "C-1");
    assert_eq!(row["state"], "succeeded");
    assert_eq!(row["outcome"], "created_answer_lost");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_tells_a_link_made_by_this_run_from_one_made_before() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    // Linked before this service ever ran: `already_linked`.
    env.sandbox
        .state()
        .set_linked(BENEFIT, &pop.abha(401).digits(), true);
    let before = env.submit_links("B", 401..402).await;
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[before]).await;
    pipeline.stop().await;
    // Linked by this run, answer lost: `linked_answer_lost`.
    let lost = env.submit_links("A", 402..403).await;
    lose_answers_then_retry_failed(&env, lost).await;
    let (_, r) = env.report(before, None).await;
    assert_eq!(by_ref(&r, "B401")["outcome"], "already_linked");
    let (_, r) = env.report(lost, None).await;
    assert_eq!(by_ref(&r, "A402")["outcome"], "linked_answer_lost");
    assert_eq!(
        env.sandbox
            .state()
            .side_effect_count("link", &pop.abha(402).digits()),
        1
    );
    env.cleanup().await;
}

/// Cancels the submit as soon as the first chunk was read.
struct StopAfterFirstChunk(CancellationToken);

impl abha_bulk::submit::Progress for StopAfterFirstChunk {
    fn update(&self, _: u64, rows: u64) {
        if rows > 0 {
            self.0.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_submit_aborts_its_batch_and_none_of_its_rows_runs() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let rows: Vec<Vec<String>> = (0..12_000u64)
        .map(|i| vec![format!("R{i}"), s(pop.abha(i).expose())])
        .collect();
    let path = env.write_csv("big.csv", &["external_ref", "abha_number"], &rows);
    let req = SubmitRequest {
        path: path.clone(),
        kind: JobKind::BenefitLink,
        benefit: BENEFIT.into(),
        force: false,
        priority: Default::default(),
    };
    let stop = CancellationToken::new();
    let progress = Arc::new(StopAfterFirstChunk(stop.clone()));
    let batch = match submit_until(&env.store, &req, progress, &stop).await {
        Err(SubmitError::Interrupted { batch }) => batch,
        other => panic!("expected an interrupted submit, got {other:?}"),
    };
    let info = env.store.batch(batch).await.unwrap().unwrap();
    assert_eq!(info.state, "aborted");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "no row of an aborted batch is due");
    let counts = env.counts(batch).await;
    assert_eq!(counts.open(), 0, "{counts:?}");
    let pipeline = env.start(PipelineOpts::default());
    tokio::time::sleep(Duration::from_millis(800)).await;
    pipeline.stop().await;
    assert_eq!(env.sandbox.state().call_log().requests.get("link"), None);
    // The same file is accepted again: only completed batches count as "already submitted".
    let again = env.submit(JobKind::BenefitLink, &path).await;
    assert_eq!(again.accepted, 12_000);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_rejects_its_row_not_the_upload() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let text = format!(
        "external_ref,abha_number\nN1,{}\nN\u{0}2,{}\nN3,{}\n",
        pop.abha(1).expose(),
        pop.abha(2).expose(),
        pop.abha(3).expose()
    );
    let path = env.write_file("nul.csv", &text);
    let summary = env.submit(JobKind::BenefitLookup, &path).await;
    assert_eq!((summary.accepted, summary.rejected), (2, 1));
    let (_, report) = env.report(summary.batch, None).await;
    let rejected: Vec<_> = report.iter().filter(|r| r["state"] == "rejected").collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["row"], "2");
    assert!(rejected[0]["message"].contains("NUL"), "{:?}", rejected[0]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_the_metric_show_an_open_breaker() {
    use abha_bulk::breaker::{Breaker, BreakerConfig};
    let env = TestEnv::new().await;
    let breaker = Arc::new(Breaker::new(
        env.store.clone(),
        abha_bulk::sandbox::DEFAULT_CLIENT_ID,
        BreakerConfig::default(),
    ));
    let refused = abha_bulk::abdm::ClientError::Connect("refused".into());
    for _ in 0..3 {
        breaker.observe(Some(&refused)).await;
    }
    assert!(breaker.is_open());
    assert!(circuit(&env).await.open, "shared with every replica");
    let stop = CancellationToken::new();
    let addr = abha_bulk::http::serve(
        "127.0.0.1:0",
        abha_bulk::http::Readiness {
            store: env.store.clone(),
            client: env.client.clone(),
            amqp_url: env.amqp_url.clone(),
            breaker: Some(breaker.clone()),
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("abdm_circuit open"));
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("abha_abdm_circuit_open 1"), "{metrics}");
    stop.cancel();
    env.cleanup().await;
}
