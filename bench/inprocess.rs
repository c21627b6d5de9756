//! The in-process figures (labelled as such in `bench/RESULTS.md`): relay, worker and sandbox
//! in this one process with tuned settings (relay batch 1 000 / idle 20 ms, 16 connections,
//! in-flight 64). They show the pipeline's ceiling without process and config overheads; the
//! figures users get are those of [`crate::runs`], on the shipped binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abha_bulk::abdm::AbdmClient;
use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::Topology;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::sandbox::{Faults, KeySource, Sandbox, SandboxConfig};
use abha_bulk::store::{Store, Vault};
use abha_bulk::submit::{SubmitRequest, submit};
use abha_bulk::worker::{Worker, WorkerConfig};
use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use tokio_util::sync::CancellationToken;

use crate::gen_file;
use crate::rig::{POPULATION, SEED};

/// Submits a benefit-link file through the normal path.
async fn submit_links(
    store: &Store,
    file: &std::path::Path,
) -> anyhow::Result<abha_bulk::submit::SubmitSummary> {
    Ok(submit(
        store,
        &SubmitRequest {
            path: file.to_path_buf(),
            kind: JobKind::BenefitLink,
            benefit: "BENCH".into(),
            force: false,
            priority: Default::default(),
        },
        Arc::new(()),
    )
    .await?)
}

struct Db {
    url: String,
}

impl Db {
    async fn create(admin: &str) -> anyhow::Result<Self> {
        let mut u = reqwest::Url::parse(admin).context("--database")?;
        u.set_path(&format!("/abha_bench_{}", uuid::Uuid::new_v4().simple()));
        let url = u.to_string();
        Store::migrate(&url).await?;
        Ok(Self { url })
    }
    async fn drop(self) {
        let _ = sqlx::Postgres::force_drop_database(&self.url).await;
    }
}

/// Submits `rows` link rows and runs relay + worker in this process until all are final.
pub async fn e2e(
    admin: &str,
    amqp: &str,
    rows: u64,
    rate: Option<f64>,
    sandbox_limit: Option<f64>,
    in_flight: u16,
) -> anyhow::Result<()> {
    // A 1024-bit sandbox key: the sandbox's RSA decryption would otherwise dominate a 2-core
    // machine that also runs Postgres, RabbitMQ and the worker (ABDM's own key is 4096 bits,
    // and its decryption happens on ABDM's machines, not ours).
    let sandbox = Sandbox::start(SandboxConfig {
        key: KeySource::Generate(1024),
        population: POPULATION,
        seed: SEED,
        benefits: vec!["BENCH".into()],
        faults: Faults {
            rate_limit: sandbox_limit.unwrap_or(0.0),
            ..Faults::default()
        },
        ..SandboxConfig::default()
    })
    .await?;
    let db = Db::create(admin).await?;
    let store = Store::connect_url(
        &db.url,
        16,
        Duration::from_secs(30),
        Arc::new(Vault::from_bytes(&[3; 32])),
    )
    .await?;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let topology = Topology::named(&format!("bench-{id}.jobs"), &format!("bench-{id}"), 20);
    let conn = abha_bulk::queue::connect(amqp).await?;
    topology.declare(&conn.create_channel().await?).await?;
    let file = std::env::temp_dir().join(format!("abha-bench-{id}.csv"));
    gen_file(rows, &file)?;
    let client = Arc::new(AbdmClient::new(&abha_bulk::sandbox::settings_for_sandbox(
        &sandbox.url(),
    ))?);
    let limited = rate.unwrap_or(1_000_000.0);
    let burst = rate.map_or(1000, |r| (r / 10.0).ceil().max(1.0) as u32);
    let limiter = RateLimiter::new(limited, burst, None);
    let mut cfg = WorkerConfig::from_settings(
        &abha_bulk::config::Settings::load_with_env(
            &abha_bulk::config::ConfigSource {
                dir: PathBuf::from("/nonexistent"),
                env: "bench".into(),
                file: None,
            },
            Vec::new(),
        )?
        .worker,
    );
    cfg.in_flight = in_flight;
    cfg.backoff_base = Duration::from_millis(200);
    cfg.backoff_cap = Duration::from_secs(2);
    let worker = Worker::new(
        store.clone(),
        client,
        limiter.clone(),
        topology.clone(),
        cfg,
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(abha_bulk::relay::run(
        store.clone(),
        amqp.to_string(),
        topology.clone(),
        abha_bulk::relay::RelayConfig {
            batch: 1000,
            idle: Duration::from_millis(20),
            housekeeping: Duration::from_secs(1),
            ..Default::default()
        },
        stop.clone(),
    ));
    let consumer = tokio::spawn(worker.clone().run(amqp.to_string(), stop.clone()));
    let s = submit_links(&store, &file).await?;
    let _ = std::fs::remove_file(&file);
    let submitted = started.elapsed();
    loop {
        let c = store.batch_counts(s.batch).await?;
        if c.open() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = consumer.await;
    let _ = relay.await;
    let counts = store.batch_counts(s.batch).await?;
    let log = sandbox.state().call_log();
    let throttled = log.answers.get("ABDM-1022").copied().unwrap_or(0);
    let jobs = counts.done();
    println!(
        "e2e: {jobs} jobs final in {:.2} s = {:.0} jobs/s (submit took {:.2} s); succeeded {}, failed {}, dead {}; worker rate {}, sandbox limit {}, in-flight {}; ABDM-1022 answers {throttled}; sandbox requests {}",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64(),
        submitted.as_secs_f64(),
        counts.get("succeeded"),
        counts.get("failed"),
        counts.get("dead"),
        rate.map_or("off".to_string(), |r| format!("{r}/s")),
        sandbox_limit.map_or("off".to_string(), |r| format!("{r}/s")),
        in_flight,
        log.requests.values().sum::<u64>(),
    );
    if let Some(r) = rate {
        let ideal = rows as f64 / r;
        println!(
            "rate-limited: wall {:.2} s vs rows/rate {:.2} s ({:+.1} %)",
            elapsed.as_secs_f64(),
            ideal,
            (elapsed.as_secs_f64() / ideal - 1.0) * 100.0
        );
    }
    topology.delete(&conn.create_channel().await?).await?;
    let _ = conn.close(200, "bench done".into()).await;
    store.pool.close().await;
    db.drop().await;
    sandbox.shutdown().await;
    Ok(())
}
