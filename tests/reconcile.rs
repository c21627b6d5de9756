//! Nightly reconciliation against the sandbox: seeded drift is found exactly, `--apply` fixes it
//! through the normal pipeline, a second run is safe, and the service's own state is repaired.

mod common;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::reconcile::{ReconcileGate, ReconcileRequest, ReconcileSummary};
use common::{BENEFIT, PipelineOpts, TestEnv};

async fn reconcile(
    env: &TestEnv,
    roster: &std::path::Path,
    apply: bool,
    name: &str,
) -> ReconcileSummary {
    reconcile_with(env, roster, apply, name, true).await
}

async fn reconcile_with(
    env: &TestEnv,
    roster: &std::path::Path,
    apply: bool,
    name: &str,
    sweep_unexpected: bool,
) -> ReconcileSummary {
    abha_bulk::reconcile::run(
        &env.store,
        env.client.clone(),
        ReconcileGate::local(RateLimiter::new(200.0, 20, None)),
        Some(&env.amqp_url),
        &env.topology,
        &ReconcileRequest {
            benefit: BENEFIT.into(),
            roster: roster.to_path_buf(),
            apply,
            out: env.dir.path().join(name),
            force: false,
            restart: false,
            concurrency: 4,
            sweep_unexpected,
        },
    )
    .await
    .expect("reconciliation runs")
}

fn report_classes(path: &std::path::Path) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(path).expect("report");
    r.records()
        .map(|rec| {
            let rec = rec.expect("record");
            (rec[2].to_string(), rec[3].to_string())
        })
        .collect()
}

#[tokio::test]
async fn seeded_drift_is_found_exactly_and_apply_fixes_it() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let state = env.sandbox.state().clone();

    // The service links persons 100..106 through the pipeline; later 104 is de-linked by the
    // service and 105 is de-linked outside the service (ABDM no longer has it).
    let pipeline = env.start(PipelineOpts::default());
    let rows: Vec<Vec<String>> = (100..106u64)
        .map(|i| vec![format!("svc-{i}"), pop.abha(i).expose().to_string()])
        .collect();
    let linked = env
        .submit_rows(
            JobKind::BenefitLink,
            &["external_ref", "abha_number"],
            &rows,
        )
        .await;
    env.wait_until_done(&[linked.batch]).await;
    let delinked = env
        .submit_rows(
            JobKind::BenefitDelink,
            &["external_ref", "abha_number"],
            &[vec![
                "svc-104-off".into(),
                pop.abha(104).expose().to_string(),
            ]],
        )
        .await;
    env.wait_until_done(&[delinked.batch]).await;
    let lookup = env
        .submit_rows(
            JobKind::BenefitLookup,
            &["external_ref", "abha_number"],
            &[vec!["look-0".into(), pop.abha(0).expose().to_string()]],
        )
        .await;
    env.wait_until_done(&[lookup.batch]).await;
    pipeline.stop().await;
    state.set_linked(BENEFIT, &pop.abha(105).digits(), false);

    // The roster: persons 0..20; ABDM has 0..15 linked (5 missing links), plus one ABHA ABDM
    // does not know and one invalid row. Persons 100..103 are linked but absent: 4 unexpected.
    for i in 0..15u64 {
        state.set_linked(BENEFIT, &pop.abha(i).digits(), true);
    }
    let mut roster: Vec<Vec<String>> = (0..20u64)
        .map(|i| vec![format!("r-{i}"), pop.abha(i).expose().to_string()])
        .collect();
    roster.push(vec![
        "r-unknown".into(),
        pop.abha(9_000_000).expose().to_string(),
    ]);
    roster.push(vec!["r-invalid".into(), "91-123".into()]);
    let roster_path = env.write_csv("roster.csv", &["external_ref", "abha_number"], &roster);

    // A job stuck "running" past its lease (its worker died): the run repairs it. (The de-link
    // of 104: re-running it later is answered ABDM-1138, already de-linked.)
    sqlx::query(
        "UPDATE jobs SET state = 'running', lease_owner = 'dead-worker', lease_until = now() - interval '1 minute'
         WHERE id = (SELECT id FROM jobs WHERE batch_id = $1 ORDER BY id LIMIT 1)",
    )
    .bind(delinked.batch)
    .execute(&env.store.pool)
    .await
    .unwrap();

    // A job whose message was lost (queued, no outbox row, untouched for an hour).
    sqlx::query(
        "UPDATE jobs SET state = 'queued', updated_at = now() - interval '1 hour', next_due_at = NULL
         WHERE batch_id = $1",
    )
    .bind(lookup.batch)
    .execute(&env.store.pool)
    .await
    .unwrap();
    // Its batch is still active (housekeeping, which runs beside the relay, may have closed it
    // while its jobs were final).
    sqlx::query("UPDATE batches SET state = 'active', finished_at = NULL WHERE id = $1")
        .bind(lookup.batch)
        .execute(&env.store.pool)
        .await
        .unwrap();

    // The lost-message repair acts only on an empty work queue (a message still queued may be
    // the job's own). Messages the stopped pipeline handed back (redeliveries of finished
    // jobs, returned by its closed channel) may still be there under load: drop them, so the
    // queue is as it is after a quiet night.
    {
        use lapin::options::QueuePurgeOptions;
        let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        for q in env.topology.job_queues() {
            ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
                .await
                .unwrap();
        }
        let _ = conn.close(200, "purged".into()).await;
    }
    let first = reconcile(&env, &roster_path, false, "first.csv").await;
    let c = &first.counts;
    assert_eq!(
        (
            c.roster_rows,
            c.linked_ok,
            c.missing_link,
            c.unexpected_link,
            c.unknown,
            c.abdm_errors,
            c.invalid_rows
        ),
        (22, 15, 5, Some(4), 1, 0, 1),
        "{}",
        first.render()
    );
    assert_eq!(first.repairs.0, 1, "the expired lease is repaired");
    // The re-queued lease job's outbox row is published, and the lost message gets a new one.
    assert_eq!(first.repairs.1, 2, "{}", first.render());
    let lost_has_outbox: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox o JOIN jobs j ON j.id = o.job_id WHERE j.batch_id = $1",
    )
    .bind(lookup.batch)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    // Repaired before this run published anything, so it went out with the rest: both
    // messages wait in the (shared) work queue.
    assert_eq!(lost_has_outbox, 0);
    assert_eq!(
        env.depth(
            &env.topology
                .queue(abha_bulk::jobs::kind::JobKind::BenefitLookup)
        )
        .await,
        2
    );
    assert!(first.link_batch.is_none() && first.delink_batch.is_none());
    // The invalid roster row names its column in rejected_column, not under abdm_code.
    let mut r = csv::Reader::from_path(env.dir.path().join("first.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let invalid = r
        .records()
        .map(Result::unwrap)
        .find(|rec| &rec[1] == "r-invalid")
        .unwrap();
    assert_eq!(&invalid[col("class")], "invalid");
    assert_eq!(&invalid[col("rejected_column")], "abha_number");
    assert_eq!(&invalid[col("abdm_code")], "");
    let classes = report_classes(&first.report);
    let missing: Vec<&String> = classes
        .iter()
        .filter(|(_, c)| c == "missing_link")
        .map(|(id, _)| id)
        .collect();
    let expected_missing: Vec<String> = (15..20u64).map(|i| pop.abha(i).masked()).collect();
    assert_eq!(missing.len(), 5);
    assert!(
        missing.iter().all(|m| expected_missing.contains(m)),
        "{missing:?}"
    );
    let unexpected: Vec<&String> = classes
        .iter()
        .filter(|(_, c)| c == "unexpected_link")
        .map(|(id, _)| id)
        .collect();
    let expected_unexpected: Vec<String> = (100..104u64).map(|i| pop.abha(i).masked()).collect();
    assert_eq!(unexpected.len(), 4);
    assert!(
        unexpected.iter().all(|m| expected_unexpected.contains(m)),
        "{unexpected:?}"
    );
    let report_text = std::fs::read_to_string(&first.report).unwrap();
    assert!(
        !report_text.contains(pop.abha(15).expose()),
        "identifiers are masked"
    );

    // --apply queues exactly the fixes; a second --apply before they ran queues nothing new.
    let applied = reconcile(&env, &roster_path, true, "apply.csv").await;
    let link_batch = applied.link_batch.expect("link batch");
    let delink_batch = applied.delink_batch.expect("de-link batch");
    assert_eq!(env.counts(link_batch).await.total(), 5);
    assert_eq!(env.counts(delink_batch).await.total(), 4);
    let again = reconcile(&env, &roster_path, true, "again.csv").await;
    assert!(
        again.link_batch.is_none() && again.delink_batch.is_none(),
        "{}",
        again.render()
    );

    // The pipeline runs the fixes; afterwards ABDM agrees with the roster.
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[link_batch, delink_batch, delinked.batch, lookup.batch])
        .await;
    pipeline.stop().await;
    for i in 0..20u64 {
        assert!(
            state.is_linked(BENEFIT, &pop.abha(i).digits()),
            "person {i}"
        );
    }
    for i in 100..106u64 {
        assert!(
            !state.is_linked(BENEFIT, &pop.abha(i).digits()),
            "person {i}"
        );
    }
    let after = reconcile(&env, &roster_path, false, "after.csv").await;
    let c = &after.counts;
    assert_eq!(
        (
            c.linked_ok,
            c.missing_link,
            c.unexpected_link,
            c.unknown,
            c.abdm_errors,
            c.invalid_rows
        ),
        (20, 0, Some(0), 1, 0, 1),
        "{}",
        after.render()
    );
    // The last run per benefit is what the gauges export.
    let runs = env.store.last_reconcile_runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].counts.missing_link, 0);
    assert_eq!(
        state
            .call_log()
            .duplicate_side_effects
            .values()
            .sum::<u64>(),
        0
    );
    env.cleanup().await;
}

/// Lookups the sandbox has answered so far.
fn lookups(env: &TestEnv) -> u64 {
    let log = env.sandbox.state().call_log();
    log.requests.get("benefit_lookup").copied().unwrap_or(0)
}

#[tokio::test]
async fn earlier_links_are_swept_only_on_request() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    // The service's history: five succeeded links, none of them in the roster.
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
    sqlx::query("DELETE FROM outbox")
        .execute(&env.store.pool)
        .await
        .unwrap();
    let roster = env.write_file(
        "roster3.csv",
        &format!(
            "abha_number\n{}\n{}\n{}\n",
            pop.abha(1).expose(),
            pop.abha(2).expose(),
            pop.abha(3).expose()
        ),
    );
    // By default only the three roster rows are looked up.
    let before = lookups(&env);
    let s = reconcile_with(&env, &roster, false, "plain.csv", false).await;
    assert_eq!(lookups(&env) - before, 3);
    assert_eq!(s.counts.roster_rows, 3);
    assert!(
        s.render().contains("not checked (--sweep-unexpected)"),
        "{}",
        s.render()
    );
    // With the sweep, the five earlier links too.
    let before = lookups(&env);
    let s = reconcile_with(&env, &roster, false, "swept.csv", true).await;
    assert_eq!(lookups(&env) - before, 3 + 5);
    assert!(!s.render().contains("not checked"));
    env.cleanup().await;
}
