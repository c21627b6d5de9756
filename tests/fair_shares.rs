//! Fair shares and the bounded broker (issue 17) against the real Postgres (and RabbitMQ for
//! the relay tests): the scheduler's plan becomes the order of publication, one relay
//! schedules at a time, RabbitMQ holds only the target depth, and a relay or worker killed
//! mid-run loses nothing and runs nothing twice.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::relay::RelayConfig;
use abha_bulk::scheduler::{Priority, Scheduler};
use abha_bulk::submit::{SubmitRequest, submit};
use common::{PipelineOpts, TestEnv};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Submits `n` benefit-link rows for `programme` (people `from..from + n`).
async fn submit_for(env: &TestEnv, programme: &str, from: u64, n: u64, priority: Priority) -> Uuid {
    let pop = env.pop();
    let rows: Vec<Vec<String>> = (from..from + n)
        .map(|i| vec![format!("r{i}"), pop.abha(i).expose().to_string()])
        .collect();
    let path = env.write_csv(
        &format!("{programme}-{}.csv", Uuid::new_v4()),
        &["external_ref", "abha_number"],
        &rows,
    );
    submit(
        &env.store,
        &SubmitRequest {
            path,
            kind: JobKind::BenefitLink,
            benefit: programme.into(),
            force: false,
            priority,
        },
        Arc::new(()),
    )
    .await
    .expect("submit")
    .batch
}

/// The batch of each job id.
async fn batch_of(env: &TestEnv) -> HashMap<i64, Uuid> {
    sqlx::query_as::<_, (i64, Uuid)>("SELECT id, batch_id FROM jobs")
        .fetch_all(&env.store.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// One scheduling round without RabbitMQ: candidates → plan → publish into a Vec.
async fn round(
    env: &TestEnv,
    scheduler: &mut Scheduler,
    weights: &HashMap<String, f64>,
    credit: u64,
) -> Vec<i64> {
    let candidates = env.store.due_candidates(credit as i64).await.unwrap();
    let plan = scheduler.allocate(
        &candidates,
        |p| weights.get(p).copied().unwrap_or(1.0),
        credit,
    );
    let mut out = Vec::new();
    env.store
        .publish_plan(
            &plan,
            Duration::from_secs(60),
            Duration::from_secs(600),
            |rows| {
                out = rows.iter().map(|r| r.job_id).collect();
                async { Ok::<_, ()>(()) }
            },
        )
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn a_small_batch_behind_a_big_one_gets_half_the_rounds_and_every_job_goes_out_once() {
    let env = TestEnv::new().await;
    let big = submit_for(&env, "PMJAY", 0, 600, Priority::Normal).await;
    let small = submit_for(&env, "COVIN", 1000, 40, Priority::Normal).await;
    // A retry of the big batch (a per-job outbox row) joins its batch's flow.
    let retry: i64 = sqlx::query_scalar("SELECT min(id) FROM jobs WHERE batch_id = $1")
        .bind(big)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO outbox (job_id, kind) VALUES ($1, 'benefit-link')")
        .bind(retry)
        .execute(&env.store.pool)
        .await
        .unwrap();
    let cands = env.store.due_candidates(1000).await.unwrap();
    let by_batch: BTreeMap<Uuid, u64> = cands.iter().map(|c| (c.batch, c.available)).collect();
    assert_eq!(by_batch.get(&small), Some(&40));
    assert_eq!(
        by_batch.get(&big),
        Some(&601),
        "600 in the file's range + 1 retry row"
    );

    let owner = batch_of(&env).await;
    let mut scheduler = Scheduler::new();
    let weights = HashMap::new();
    let first = round(&env, &mut scheduler, &weights, 60).await;
    let split = |ids: &[i64]| {
        let b = ids.iter().filter(|id| owner[id] == small).count();
        (ids.len() - b, b)
    };
    assert_eq!(split(&first), (30, 30), "half each from the first round");
    assert!(
        first.contains(&retry),
        "a batch's retries go first within its share"
    );
    let second = round(&env, &mut scheduler, &weights, 60).await;
    assert_eq!(
        split(&second),
        (50, 10),
        "what the small batch cannot use goes to the big one"
    );
    let mut all: Vec<i64> = first.into_iter().chain(second).collect();
    loop {
        let r = round(&env, &mut scheduler, &weights, 200).await;
        if r.is_empty() {
            break;
        }
        all.extend(r);
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    // The retried job went out twice (its file row and its retry row): harmless, the claim
    // runs it once. Every other job went out exactly once.
    assert_eq!(all.len(), 640);
    assert_eq!(n, 641);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE NOT recheck")
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // What went out is backed by recheck rows (store::recheck), a few per batch, not one per
    // round: the two batches' ranges cover every job published.
    let rechecks: Vec<(Uuid, i64, i64)> =
        sqlx::query_as("SELECT batch_id, after_job, upto_job FROM outbox WHERE recheck")
            .fetch_all(&env.store.pool)
            .await
            .unwrap();
    assert!(
        (2..=4).contains(&rechecks.len()),
        "one or two recheck rows per batch: {rechecks:?}"
    );
    for id in &all {
        assert!(
            rechecks.iter().any(|(_, lo, hi)| id > lo && id <= hi),
            "job {id} is not covered by a recheck row"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn programme_weights_and_batch_priorities_set_the_shares() {
    let env = TestEnv::new().await;
    let a = submit_for(&env, "PMJAY", 0, 400, Priority::Normal).await;
    let b = submit_for(&env, "COVIN", 1000, 400, Priority::Low).await;
    let b_urgent = submit_for(&env, "COVIN", 2000, 400, Priority::Urgent).await;
    let owner = batch_of(&env).await;
    let weights = HashMap::from([("COVIN".to_string(), 3.0)]);
    let mut scheduler = Scheduler::new();
    let mut got: HashMap<Uuid, usize> = HashMap::new();
    for _ in 0..10 {
        for id in round(&env, &mut scheduler, &weights, 36).await {
            *got.entry(owner[&id]).or_default() += 1;
        }
    }
    // 360 messages: programme B (weight 3) 270, A 90; inside B urgent : low = 8 : 1.
    assert_eq!(got[&a], 90);
    assert_eq!(got[&b] + got[&b_urgent], 270);
    assert_eq!((got[&b], got[&b_urgent]), (30, 240));
    env.cleanup().await;
}

#[tokio::test]
async fn one_relay_schedules_at_a_time_and_another_takes_over_when_it_goes() {
    let env = TestEnv::new().await;
    let first = env.store.try_scheduler_lock().await.unwrap();
    assert!(first.is_some());
    assert!(env.store.try_scheduler_lock().await.unwrap().is_none());
    let mut first = first.unwrap();
    assert!(first.alive().await);
    drop(first);
    // The server sees the connection close a moment later.
    let mut taken = None;
    for _ in 0..50 {
        taken = env.store.try_scheduler_lock().await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        taken.is_some(),
        "the lock was not released with its connection"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_broker_holds_only_the_target_and_a_relay_or_worker_killed_mid_run_loses_nothing() {
    let env = TestEnv::new().await;
    let queue = env.topology.queue(JobKind::BenefitLink);
    // A relay alone (nothing consumes): RabbitMQ must hold the target, not the file.
    let stop = CancellationToken::new();
    let bounded = RelayConfig {
        idle: Duration::from_millis(20),
        broker_max: 100,
        broker_min: 20,
        ..Default::default()
    };
    let relay = tokio::spawn(abha_bulk::relay::run(
        env.store.clone(),
        env.amqp_url.clone(),
        env.topology.clone(),
        bounded,
        stop.clone(),
    ));
    let batch = submit_for(&env, "PMJAY", 0, 1500, Priority::Normal).await;
    let small = submit_for(&env, "COVIN", 1500, 30, Priority::Normal).await;
    let mut deepest = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        deepest = deepest.max(env.depth(&queue).await);
    }
    assert!(
        (75..=100).contains(&deepest),
        "ready messages {deepest}, expected the target of 100"
    );
    // A worker (with its own relay, standing by) works; the scheduling relay is killed, the
    // standby takes over; then the worker is killed and another starts.
    let opts = || PipelineOpts {
        rate: 400.0,
        burst: 40,
        ..Default::default()
    };
    let p1 = env.start(opts());
    env.wait_for(&[batch, small], "some rows final", |c| {
        c.get("succeeded") >= 300
    })
    .await;
    relay.abort();
    let _ = relay.await;
    env.wait_for(&[batch, small], "more rows final", |c| {
        c.get("succeeded") >= 700
    })
    .await;
    p1.kill().await;
    let p2 = env.start(opts());
    env.wait_until_done(&[batch, small]).await;
    p2.stop().await;
    stop.cancel();
    let c = env.counts(batch).await;
    assert_eq!(c.get("succeeded"), 1500, "{c:?}");
    assert_eq!(env.counts(small).await.get("succeeded"), 30);
    let twice = env.sandbox.state().call_log().duplicate_side_effects;
    assert!(twice.is_empty(), "side effects done twice: {twice:?}");
    env.cleanup().await;
}
