//! `abha-bulk-bench`: the benchmarks behind `bench/RESULTS.md`. Each prints its figures.
//!
//! ```text
//! abha-bulk-bench gen    --rows 1000000 --out /tmp/link-1m.csv     # a benefit-link file
//! abha-bulk-bench submit --file /tmp/link-1m.csv                    # rows/s and peak RSS
//! abha-bulk-bench e2e    --rows 20000                               # jobs/s, rate limit off
//! abha-bulk-bench e2e    --rows 3000 --rate 100 --sandbox-limit 100 # rate-limited run
//! ```
//! Every run uses its own database (`abha_bench_<id>`, dropped afterwards) and queue names
//! (`bench-<id>.*`), the real Postgres and RabbitMQ, and the embedded sandbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abha_bulk::abdm::AbdmClient;
use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::Topology;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::sandbox::{Faults, KeySource, Population, Sandbox, SandboxConfig};
use abha_bulk::store::{Store, Vault};
use abha_bulk::submit::{SubmitRequest, submit};
use abha_bulk::worker::{Worker, WorkerConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::migrate::MigrateDatabase;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "abha-bulk benchmarks")]
struct Cli {
    /// Admin Postgres URL (a database per run is created next to it).
    #[arg(
        long,
        env = "ABHA_BULK_TEST_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    database: String,
    /// AMQP URL.
    #[arg(
        long,
        env = "ABHA_BULK_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a benefit-link CSV of seeded beneficiaries.
    Gen {
        #[arg(long)]
        rows: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Submit a file into a fresh database; print rows/s and peak RSS.
    Submit {
        #[arg(long)]
        file: PathBuf,
    },
    /// Submit N link rows and run relay + worker against the sandbox until all are final.
    E2e {
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        /// Worker rate (calls/s); omitted = unlimited.
        #[arg(long)]
        rate: Option<f64>,
        /// Sandbox limit (ABDM-1022 above it); omitted = none.
        #[arg(long)]
        sandbox_limit: Option<f64>,
        /// Worker in-flight calls.
        #[arg(long, default_value_t = 64)]
        in_flight: u16,
    },
}

const POPULATION: u64 = 2_000_000;
const SEED: u64 = 42;

fn gen_file(rows: u64, out: &PathBuf) -> anyhow::Result<()> {
    let pop = Population::new(POPULATION, SEED);
    let mut w = csv::Writer::from_path(out)?;
    w.write_record(["external_ref", "abha_number"])?;
    for i in 0..rows {
        w.write_record([
            format!("B-{i:08}"),
            pop.abha(i % POPULATION).expose().to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

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
        },
        Arc::new(()),
    )
    .await?)
}

/// Peak resident set size of this process, MiB (Linux VmHWM).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Gen { rows, out } => {
            let t = Instant::now();
            gen_file(rows, &out)?;
            println!(
                "wrote {rows} rows to {} in {:.1} s",
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Cmd::Submit { file } => {
            let db = Db::create(&cli.database).await?;
            let store = Store::connect_url(
                &db.url,
                4,
                Duration::from_secs(30),
                Arc::new(Vault::from_bytes(&[3; 32])),
            )
            .await?;
            let rss_before = peak_rss_mib();
            let s = submit_links(&store, &file).await?;
            let secs = s.elapsed.as_secs_f64();
            println!(
                "submit {}: {} rows ({} accepted, {} rejected, {} duplicates) in {:.2} s = {:.0} rows/s; peak RSS {:.0} MiB (before submit {:.0} MiB)",
                file.display(),
                s.total,
                s.accepted,
                s.rejected,
                s.duplicates,
                secs,
                s.total as f64 / secs,
                peak_rss_mib(),
                rss_before
            );
            store.pool.close().await;
            db.drop().await;
        }
        Cmd::E2e {
            rows,
            rate,
            sandbox_limit,
            in_flight,
        } => {
            e2e(
                &cli.database,
                &cli.amqp,
                rows,
                rate,
                sandbox_limit,
                in_flight,
            )
            .await?
        }
    }
    Ok(())
}

async fn e2e(
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
