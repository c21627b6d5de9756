//! The broker's or the database's connections drop mid-batch: the worker and the relay
//! reconnect, and every job still ends final exactly once, with no side effect done twice.
//!
//! The pipeline reaches RabbitMQ (or Postgres) through a small TCP proxy owned by the test;
//! cutting it closes every connection at once, as a restart or a network fault would, without
//! disturbing other tests that share the services.

mod common;

use std::time::Duration;

use abha_bulk::sandbox::Faults;
use common::proxy::Proxy;
use common::{PipelineOpts, TestEnv};

/// Twice: waits until jobs are in flight, cuts every proxied connection, waits for progress
/// after the cut; then waits until every job is final.
async fn cut_twice_mid_batch(env: &TestEnv, proxy: &Proxy, batch: uuid::Uuid) {
    for _ in 0..2 {
        env.wait_for(&[batch], "some progress", |c| {
            c.done() >= 20 && c.open() > 0
        })
        .await;
        let before = env.counts(batch).await.done();
        proxy.cut_all();
        env.wait_for(&[batch], "progress after the cut", |c| {
            c.done() > before + 10 || c.open() == 0
        })
        .await;
    }
    env.wait_until_done(&[batch]).await;
}

#[tokio::test]
async fn broker_connections_cut_mid_batch_lose_nothing() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let mut broker = reqwest::Url::parse(&env.amqp_url).unwrap();
    let upstream = format!(
        "{}:{}",
        broker.host_str().unwrap(),
        broker.port().unwrap_or(5672)
    );
    let proxy = Proxy::start(upstream).await;
    broker.set_port(Some(proxy.port)).unwrap();
    let via_proxy = broker.to_string();

    env.set_faults(Faults {
        latency_ms: 40,
        ..common::no_faults()
    });
    let batch = env.submit_links("r", 1000..1150).await;
    let pipeline = env.start_via(
        PipelineOpts {
            rate: 300.0,
            lease: Duration::from_secs(4),
            ..PipelineOpts::default()
        },
        &via_proxy,
    );
    // Cut every broker connection twice while jobs are in flight.
    cut_twice_mid_batch(&env, &proxy, batch).await;
    pipeline.stop().await;

    let counts = env.counts(batch).await;
    assert_eq!(counts.get("succeeded"), 150, "{counts:?}");
    let log = env.sandbox.state().call_log();
    assert!(
        log.duplicate_side_effects.is_empty(),
        "{:?}",
        log.duplicate_side_effects
    );
    for i in 0..150u64 {
        assert_eq!(
            env.sandbox
                .state()
                .side_effect_count("link", &pop.abha(1000 + i).digits()),
            1,
            "row {i} linked exactly once"
        );
    }
    proxy.task.abort();
    env.cleanup().await;
}

#[tokio::test]
async fn postgres_connections_cut_mid_batch_lose_nothing() {
    let env = TestEnv::new().await;
    let mut db = reqwest::Url::parse(&env.db_url).unwrap();
    let upstream = format!("{}:{}", db.host_str().unwrap(), db.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream).await;
    db.set_port(Some(proxy.port)).unwrap();
    let proxied = abha_bulk::store::Store::connect_url(
        db.as_str(),
        5,
        Duration::from_secs(30),
        env.store.vault.clone(),
    )
    .await
    .unwrap();

    env.set_faults(Faults {
        latency_ms: 40,
        ..common::no_faults()
    });
    let batch = env.submit_links("p", 3000..3120).await;
    let pipeline = env.start_with(
        PipelineOpts {
            rate: 300.0,
            lease: Duration::from_secs(3),
            ..PipelineOpts::default()
        },
        &env.amqp_url,
        proxied.clone(),
    );
    cut_twice_mid_batch(&env, &proxy, batch).await;
    pipeline.stop().await;
    proxied.pool.close().await;

    let counts = env.counts(batch).await;
    assert_eq!(counts.get("succeeded"), 120, "{counts:?}");
    let log = env.sandbox.state().call_log();
    assert!(
        log.duplicate_side_effects.is_empty(),
        "{:?}",
        log.duplicate_side_effects
    );
    proxy.task.abort();
    env.cleanup().await;
}

/// Postgres is down for longer than RabbitMQ's delivery limit would tolerate if the worker
/// requeued every message it could not claim (the limit is 2 here): the worker holds the
/// messages instead, so none is dead-lettered and every job still ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_dead_letters_nothing_and_strands_no_job() {
    let env = TestEnv::new().await;
    let mut db = reqwest::Url::parse(&env.db_url).unwrap();
    let upstream = format!("{}:{}", db.host_str().unwrap(), db.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream).await;
    db.set_port(Some(proxy.port)).unwrap();
    let proxied = abha_bulk::store::Store::connect_url(
        db.as_str(),
        5,
        Duration::from_secs(2),
        env.store.vault.clone(),
    )
    .await
    .unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let topology =
        abha_bulk::queue::Topology::named(&format!("t-{tag}.jobs"), &format!("t-{tag}"), 2);

    env.set_faults(Faults {
        latency_ms: 100,
        ..common::no_faults()
    });
    let batch = env.submit_links("o", 5000..5040).await;
    let pipeline = env.start_with(
        PipelineOpts {
            in_flight: 4,
            topology: Some(topology.clone()),
            ..PipelineOpts::default()
        },
        &env.amqp_url,
        proxied.clone(),
    );
    env.wait_for(&[batch], "some progress", |c| c.done() >= 4)
        .await;
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.set_down(false);
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    proxied.pool.close().await;

    assert_eq!(env.counts(batch).await.get("succeeded"), 40);
    let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let depths = topology.depths(&ch).await.unwrap();
    let dead = depths
        .iter()
        .find(|(q, _)| *q == topology.dead_letter_queue)
        .map_or(0, |(_, n)| *n);
    assert_eq!(dead, 0, "dead-lettered during the outage: {depths:?}");
    assert!(
        env.sandbox
            .state()
            .call_log()
            .duplicate_side_effects
            .is_empty()
    );
    topology.delete(&ch).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    proxy.task.abort();
    env.cleanup().await;
}
