//! Reconciliation as an operator meets it at scale (issue 22), against real Postgres and the
//! sandbox: repeated roster rows, invalid rows and ABDM errors kept apart, classes not checked,
//! `--out` without `--force`, roster order, progress totals and the rate after a slower run
//! (the binary, a run killed with SIGTERM included: tests/reconcile_cli.rs).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::ratelimit::{Aimd, RateLimiter};
use abha_bulk::reconcile::{ReconcileError, ReconcileGate, ReconcileRequest, ReconcileSummary};
use abha_bulk::sandbox::ScriptedResponse;
use abha_bulk::telemetry::metrics;
use common::{BENEFIT, TestEnv};
use sqlx::Row;

fn request(env: &TestEnv, roster: &Path, out: &str) -> ReconcileRequest {
    ReconcileRequest {
        benefit: BENEFIT.into(),
        roster: roster.to_path_buf(),
        apply: false,
        out: env.dir.path().join(out),
        force: false,
        restart: false,
        concurrency: 4,
        sweep_unexpected: false,
    }
}

async fn try_run(
    env: &TestEnv,
    gate: std::sync::Arc<ReconcileGate>,
    req: &ReconcileRequest,
) -> Result<ReconcileSummary, ReconcileError> {
    abha_bulk::reconcile::run(
        &env.store,
        env.client.clone(),
        gate,
        Some(&env.amqp_url),
        &env.topology,
        req,
    )
    .await
}

async fn run(env: &TestEnv, req: &ReconcileRequest) -> ReconcileSummary {
    try_run(
        env,
        ReconcileGate::local(RateLimiter::new(500.0, 20, None)),
        req,
    )
    .await
    .expect("reconciliation runs")
}

/// Lookups the sandbox has answered so far.
fn lookups(env: &TestEnv) -> u64 {
    let log = env.sandbox.state().call_log();
    log.requests.get("benefit_lookup").copied().unwrap_or(0)
}

fn report(path: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(path).expect("report");
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        abha_bulk::reconcile::COLUMNS
    );
    r.records().map(|r| r.expect("record")).collect()
}

fn roster(env: &TestEnv, name: &str, people: &[u64]) -> PathBuf {
    let pop = env.pop();
    let rows: Vec<Vec<String>> = people
        .iter()
        .enumerate()
        .map(|(i, p)| vec![format!("r-{}", i + 1), pop.abha(*p).expose().to_string()])
        .collect();
    env.write_csv(name, &["external_ref", "abha_number"], &rows)
}

#[tokio::test]
async fn repeated_rows_are_looked_up_once_reported_once_and_counted_once() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let state = env.sandbox.state().clone();
    for p in 0..3u64 {
        state.set_linked(BENEFIT, &pop.abha(p).digits(), true);
    }
    // Rows 3, 7 and 8 repeat rows 1, 2 and 6; persons 3 and 4 are not linked.
    let path = roster(&env, "roster.csv", &[0, 1, 0, 2, 3, 4, 1, 4]);
    let before = lookups(&env);
    let mut req = request(&env, &path, "rep.csv");
    req.apply = true;
    let s = run(&env, &req).await;
    assert_eq!(lookups(&env) - before, 5, "one lookup per distinct ABHA");
    assert_eq!(
        s.looked_up,
        (5, None),
        "the progress total is what was looked up"
    );
    let c = &s.counts;
    assert_eq!(
        (
            c.roster_rows,
            c.repeated_rows,
            c.linked_ok,
            c.missing_link,
            c.invalid_rows
        ),
        (8, 3, 3, 2, 0),
        "{}",
        s.render()
    );
    // In roster order; each repeat once, pointing to its first occurrence.
    let lines = report(&s.report);
    let rows: Vec<&str> = lines.iter().map(|l| &l[0]).collect();
    assert_eq!(rows, ["1", "2", "3", "4", "5", "6", "7", "8"]);
    for (row, first) in [(3, 1), (7, 2), (8, 6)] {
        let l = &lines[row - 1];
        assert_eq!(&l[3], "repeated");
        assert!(l[6].contains(&format!("row {first}")), "{:?}", l);
    }
    assert_eq!(&lines[4][3], "missing_link");
    // One link job per missing ABHA, not per row.
    assert_eq!(
        env.counts(s.link_batch.expect("link batch")).await.total(),
        2
    );
    // reconcile_runs and the drift gauge carry the distinct count.
    let r = sqlx::query(
        "SELECT missing_link, repeated_rows, roster_rows FROM reconcile_runs WHERE id = $1",
    )
    .bind(s.run)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            r.get::<i64, _>(0),
            r.get::<Option<i64>, _>(1),
            r.get::<i64, _>(2)
        ),
        (2, Some(3), 8)
    );
    abha_bulk::relay::housekeeping::batch_gauges(&env.store).await;
    assert_eq!(
        metrics::RECONCILE_DRIFT
            .with_label_values(&[BENEFIT, "missing_link"])
            .get(),
        2.0
    );
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_rows_abdm_errors_and_unchecked_classes_are_kept_apart() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let mut rows: Vec<Vec<String>> = (0..6u64)
        .map(|i| vec![format!("ok-{i}"), pop.abha(i).expose().to_string()])
        .collect();
    rows.insert(2, vec!["bad-1".into(), "91-123".into()]);
    rows.push(vec!["bad-2".into(), "not a number".into()]);
    let path = env.write_csv("roster.csv", &["external_ref", "abha_number"], &rows);
    env.warm_up().await;
    env.sandbox.state().push_script(ScriptedResponse {
        path_contains: "/benefit/abha/".into(),
        status: 503,
        body: String::new(),
        retry_after: None,
        times: 2,
    });
    let s = run(&env, &request(&env, &path, "apart.csv")).await;
    let c = &s.counts;
    assert_eq!(
        (
            c.invalid_rows,
            c.abdm_errors,
            c.unexpected_link,
            c.missing_link
        ),
        (2, 2, None, 4),
        "{}",
        s.render()
    );
    let text = s.render();
    assert!(text.contains("ABDM errors 2"), "{text}");
    assert!(text.contains("invalid roster rows 2"), "{text}");
    assert!(text.contains("not checked (--sweep-unexpected)"), "{text}");
    let r = sqlx::query(
        "SELECT invalid_rows, abdm_errors, errors, unexpected_checked FROM reconcile_runs WHERE id = $1",
    )
    .bind(s.run)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            r.get::<Option<i64>, _>(0),
            r.get::<Option<i64>, _>(1),
            r.get::<i64, _>(2),
            r.get::<Option<bool>, _>(3)
        ),
        (Some(2), Some(2), 2, Some(false))
    );
    let last = env.store.last_reconcile_runs().await.unwrap();
    assert_eq!(last[0].counts.unexpected_link, None);
    abha_bulk::relay::housekeeping::batch_gauges(&env.store).await;
    let drift = |c: &str| {
        metrics::RECONCILE_DRIFT
            .with_label_values(&[BENEFIT, c])
            .get()
    };
    let errors = |s: &str| {
        metrics::RECONCILE_ERRORS
            .with_label_values(&[BENEFIT, s])
            .get()
    };
    assert!(
        drift("unexpected_link").is_nan(),
        "not checked is NaN, not 0"
    );
    assert_eq!((errors("roster"), errors("abdm")), (2.0, 2.0));
    // The ABDM errors are in the report under their code, the invalid rows name a column.
    let lines = report(&s.report);
    assert_eq!(
        lines
            .iter()
            .filter(|l| &l[3] == "error" && &l[4] == "HTTP-503")
            .count(),
        2
    );
    assert_eq!(&lines[2][3], "invalid");
    assert_eq!(&lines[2][5], "abha_number");

    // With the sweep, unexpected links are checked: 0 is a real 0.
    let mut req = request(&env, &path, "swept.csv");
    req.sweep_unexpected = true;
    let s = run(&env, &req).await;
    assert_eq!(s.counts.unexpected_link, Some(0));
    abha_bulk::relay::housekeeping::batch_gauges(&env.store).await;
    assert_eq!(drift("unexpected_link"), 0.0);
    env.cleanup().await;
}

#[tokio::test]
async fn out_refuses_to_overwrite_without_force() {
    let env = TestEnv::new().await;
    let path = roster(&env, "roster.csv", &[0, 1]);
    let out = env.write_file("kept.csv", "last night's report\n");
    let before = lookups(&env);
    let e = try_run(
        &env,
        ReconcileGate::local(RateLimiter::new(500.0, 20, None)),
        &request(&env, &path, "kept.csv"),
    )
    .await
    .expect_err("an existing report is refused");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "last night's report\n"
    );
    assert_eq!(lookups(&env), before, "refused before any lookup");
    let mut req = request(&env, &path, "kept.csv");
    req.force = true;
    let s = run(&env, &req).await;
    assert_eq!(report(&s.report).len(), 2);
    assert!(!env.dir.path().join("kept.csv.partial").exists());
    env.cleanup().await;
}

#[tokio::test]
async fn progress_totals_count_what_is_looked_up_and_the_sweep_says_what_it_cannot_see() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    // Five earlier links of this service; two of them are in the roster.
    let batch = env.new_link_batch(None).await;
    let rows: Vec<_> = (300..305u64)
        .map(|i| {
            let job = abha_bulk::jobs::kind::Job::BenefitLink(
                abha_bulk::abdm::benefit::Beneficiary::Abha(pop.abha(i)),
            );
            env.store.prepare(i as i64, None, &job)
        })
        .collect();
    env.store
        .insert_jobs(batch, JobKind::BenefitLink, BENEFIT, &rows)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now()")
        .execute(&env.store.pool)
        .await
        .unwrap();
    for i in 300..305u64 {
        env.sandbox
            .state()
            .set_linked(BENEFIT, &pop.abha(i).digits(), true);
    }
    let path = roster(&env, "roster.csv", &[300, 301, 7, 300]);
    let mut req = request(&env, &path, "sweep.csv");
    req.sweep_unexpected = true;
    let before = lookups(&env);
    let s = run(&env, &req).await;
    // 3 distinct roster ABHAs, then the 3 earlier links the roster lacks: 6 lookups, not 3 + 5.
    assert_eq!(s.looked_up, (3, Some(3)));
    assert_eq!(lookups(&env) - before, 6);
    assert_eq!(s.counts.unexpected_link, Some(3));
    assert!(s.render().contains("other integrators"), "{}", s.render());
    // The swept links follow the roster's rows in the report.
    let lines = report(&s.report);
    assert_eq!(lines.len(), 4 + 3);
    assert!(
        lines[4..]
            .iter()
            .all(|l| &l[3] == "unexpected_link" && l[0].is_empty())
    );
    env.cleanup().await;
}

/// The "20/s configured ran at 4.97/s": a run at 5/s, then one at 20/s, both through
/// the shared budget as `abha-bulk reconcile` builds it. The second must run at about 20/s.
#[tokio::test]
async fn a_raised_rate_is_honoured_after_a_slower_run() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let client_id = abha_bulk::sandbox::DEFAULT_CLIENT_ID;
    let gate = |rate: f64| {
        ReconcileGate::new(
            &env.store,
            client_id,
            rate,
            Some((50.0, 5, Aimd::default())),
        )
    };
    let slow = roster(&env, "slow.csv", &[0, 1, 2, 3, 4]);
    try_run(&env, gate(5.0), &request(&env, &slow, "slow-report.csv"))
        .await
        .unwrap();
    let people: Vec<u64> = (100..160).collect();
    let fast = roster(&env, "fast.csv", &people);
    let g = gate(20.0);
    let started = Instant::now();
    try_run(&env, g.clone(), &request(&env, &fast, "fast-report.csv"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(g.pace_rate(), 20.0);
    assert_eq!(
        g.fleet_rate(),
        Some(50.0),
        "the shared row keeps the fleet's rate"
    );
    // 60 lookups: 3 s at 20/s, 12 s at 5/s. The lower bound is the limiter's promise; the
    // upper one leaves room for a loaded machine while still far below the 5/s figure.
    assert!(took >= Duration::from_millis(2_800), "{took:?}");
    assert!(took < Duration::from_secs(8), "ran at 5/s: {took:?}");
    env.cleanup().await;
}
