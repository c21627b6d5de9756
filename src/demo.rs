//! `abha-bulk demo`: the whole pipeline in one process against the embedded sandbox.
//!
//! It starts the sandbox (faults on), recreates a demo database (`<database>_demo`) and a demo
//! topology (`abha-demo.*`) so it can never touch real jobs, generates a mixed sample of every
//! kind (about 5 % invalid rows, a few unknown beneficiaries and duplicate rows), submits one
//! file per kind through the normal `submit` path, runs relay + worker until every job is
//! final, writes a per-row report per batch and prints the outcome summary.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::abdm::AbdmClient;
use crate::config::{ExposeSecret, Settings};
use crate::jobs::kind::JobKind;
use crate::queue::Topology;
use crate::ratelimit::RateLimiter;
use crate::sandbox::samples::{SampleMix, write_samples};
use crate::sandbox::{Faults, KeySource, Sandbox, SandboxConfig};
use crate::store::{Store, Vault};
use crate::submit::{SubmitRequest, submit};
use crate::worker::{Worker, WorkerConfig};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Rows over all kinds.
    pub rows: usize,
    /// Where inputs and reports go.
    pub out_dir: PathBuf,
    /// ABDM calls per second.
    pub rate: f64,
    /// Fault percentages (5xx, timeout, drop) in the sandbox.
    pub faults: (f64, f64, f64),
    /// Benefit name.
    pub benefit: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            rows: 10_000,
            out_dir: PathBuf::from("reports")
                .join(format!("demo-{}", Utc::now().format("%Y%m%d-%H%M%S"))),
            rate: 500.0,
            faults: (1.0, 0.3, 0.3),
            benefit: "DEMO-BENEFIT".into(),
        }
    }
}

/// The demo database URL: the configured one with `_demo` appended to the database name.
fn demo_database_url(settings: &Settings) -> anyhow::Result<String> {
    let url = settings.database_url()?;
    let mut u = reqwest::Url::parse(url.expose_secret()).context("database.url")?;
    let name = u.path().trim_start_matches('/').to_string();
    let name = if name.is_empty() {
        "abha_bulk".to_string()
    } else {
        name
    };
    u.set_path(&format!("/{name}_demo"));
    Ok(u.to_string())
}

/// One batch's line in the summary.
#[derive(Debug, Clone)]
pub struct KindSummary {
    /// Kind.
    pub kind: JobKind,
    /// Batch.
    pub batch: Uuid,
    /// Rows in the file.
    pub rows: u64,
    /// Rejected rows.
    pub rejected: u64,
    /// Duplicate rows.
    pub duplicates: u64,
    /// Jobs by state.
    pub states: BTreeMap<String, i64>,
    /// Report file.
    pub report: PathBuf,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// Per kind.
    pub kinds: Vec<KindSummary>,
    /// Side effects the sandbox saw twice on the same subject (must be 0).
    pub duplicate_side_effects: u64,
    /// Wall time from first submit to last job.
    pub elapsed: Duration,
    /// Folder of inputs and reports.
    pub out_dir: PathBuf,
}

/// Runs the demo.
pub async fn run(settings: &Settings, opts: &DemoOptions) -> anyhow::Result<DemoOutcome> {
    let stop = CancellationToken::new();
    eprintln!(
        "starting the embedded ABDM sandbox (faults on: {}% 5xx, {}% lost answers, {}% dropped connections)...",
        opts.faults.0, opts.faults.1, opts.faults.2
    );
    let sandbox = Sandbox::start(SandboxConfig {
        key: KeySource::Generate(2048),
        // Enough people for every kind to have its own (see samples::write_samples).
        population: 200_000.max(opts.rows as u64 * 3),
        seed: 42,
        benefits: vec![opts.benefit.clone()],
        faults: Faults {
            error_5xx_percent: opts.faults.0,
            timeout_percent: opts.faults.1,
            drop_percent: opts.faults.2,
            timeout_hold_ms: 3_000,
            latency_ms: 2,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    })
    .await?;
    let db_url = demo_database_url(settings)?;
    eprintln!("recreating the demo database and queues...");
    {
        use sqlx::migrate::MigrateDatabase;
        if sqlx::Postgres::database_exists(&db_url)
            .await
            .unwrap_or(false)
        {
            sqlx::Postgres::force_drop_database(&db_url)
                .await
                .context("dropping the previous demo database")?;
        }
    }
    Store::migrate(&db_url).await?;
    let vault = match Vault::from_secret(&settings.pii.key) {
        Ok(v) => v,
        Err(_) => {
            let mut key = [0u8; 32];
            rand::fill(&mut key);
            Vault::from_bytes(&key)
        }
    };
    let store = Store::connect_url(&db_url, 12, Duration::from_secs(30), Arc::new(vault)).await?;
    let amqp = settings.rabbitmq_url()?.expose_secret().to_string();
    let topology = Topology::named("abha-demo.jobs", "abha-demo", 20);
    reset_topology(&amqp, &topology, true).await?;
    let mut abdm = crate::sandbox::settings_for_sandbox(&sandbox.url());
    abdm.request_timeout = Duration::from_millis(1_500);
    let client = Arc::new(AbdmClient::new(&abdm)?);
    let mut wcfg = WorkerConfig::from_settings(&settings.worker);
    wcfg.in_flight = 48;
    wcfg.backoff_base = Duration::from_millis(200);
    wcfg.backoff_cap = Duration::from_secs(2);
    wcfg.lease = Duration::from_secs(30);
    wcfg.max_attempts = 6;
    let worker = Worker::new(
        store.clone(),
        client,
        RateLimiter::new(opts.rate, (opts.rate / 10.0).ceil() as u32, None),
        topology.clone(),
        wcfg,
    );
    let webhooks = tokio::spawn(crate::api::webhooks::run(
        store.clone(),
        settings.webhooks.clone(),
        stop.clone(),
    ));
    let relay = tokio::spawn(crate::relay::run(
        store.clone(),
        amqp.clone(),
        topology.clone(),
        // Housekeeping closes finished batches: faster than configured, so the demo's report
        // follows its last row without a visible pause.
        crate::relay::RelayConfig {
            housekeeping: Duration::from_millis(500),
            fallback_rate: Some(opts.rate),
            ..crate::relay::RelayConfig::from_settings(&settings.relay)
                .with_retention(&settings.retention)
        },
        stop.clone(),
    ));
    let consumer = tokio::spawn(worker.clone().run(amqp.clone(), stop.clone()));

    let input = opts.out_dir.join("input");
    std::fs::create_dir_all(&input).with_context(|| format!("creating {}", input.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let files = write_samples(
        sandbox.state(),
        &input,
        opts.rows,
        &opts.benefit,
        SampleMix::DEMO,
        &mut rng,
    )?;
    let mut batches = Vec::new();
    let started = Instant::now();
    for f in files {
        let (kind, path) = (f.kind, f.path);
        let s = submit(
            &store,
            &SubmitRequest {
                path: path.clone(),
                kind,
                benefit: opts.benefit.clone(),
                force: true,
                priority: Default::default(),
            },
            Arc::new(()),
        )
        .await?;
        println!(
            "submitted {:<17} {:>5} rows: {:>5} accepted, {:>3} rejected, {:>2} duplicates  (batch {})",
            kind.as_str(),
            s.total,
            s.accepted,
            s.rejected,
            s.duplicates,
            &s.batch.to_string()[..8]
        );
        batches.push((kind, s));
    }
    let total_jobs: u64 = batches.iter().map(|(_, s)| s.accepted).sum();
    let bar = progress_bar(total_jobs);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_line = Instant::now();
    loop {
        let mut done = 0i64;
        let mut open = 0i64;
        for (_, s) in &batches {
            let c = store.batch_counts(s.batch).await?;
            done += c.done();
            open += c.open();
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        match &bar {
            Some(b) => {
                b.set_position(done as u64);
                b.set_message(format!("{rate:.0} jobs/s"));
            }
            None if last_line.elapsed() >= Duration::from_secs(5) => {
                eprintln!(
                    "progress: {done}/{total_jobs} jobs final, {open} open, {rate:.0} jobs/s"
                );
                last_line = Instant::now();
            }
            None => {}
        }
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the demo did not finish within 5 minutes ({open} jobs still open)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(b) = bar {
        b.finish();
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = consumer.await;
    let _ = relay.await;
    let _ = webhooks.await;

    let mut kinds = Vec::new();
    for (kind, s) in &batches {
        let report = opts.out_dir.join(format!("report-{}.csv", kind.as_str()));
        let target = crate::report::ReportTarget::File {
            path: report.clone(),
            force: true,
        };
        crate::report::write_report(&store, s.batch, &target, None).await?;
        kinds.push(KindSummary {
            kind: *kind,
            batch: s.batch,
            rows: s.total,
            rejected: s.rejected,
            duplicates: s.duplicates,
            states: store.batch_counts(s.batch).await?.0,
            report,
        });
    }
    let log = sandbox.state().call_log();
    let outcome = DemoOutcome {
        kinds,
        duplicate_side_effects: log.duplicate_side_effects.values().sum(),
        elapsed,
        out_dir: opts.out_dir.clone(),
    };
    print_summary(&outcome, &log);
    reset_topology(&amqp, &topology, false).await?;
    sandbox.shutdown().await;
    Ok(outcome)
}

/// Deletes the demo's queues and exchanges (what a previous run left) and, with `declare`,
/// declares them afresh.
async fn reset_topology(amqp: &str, topology: &Topology, declare: bool) -> anyhow::Result<()> {
    let conn = crate::queue::connect(amqp).await?;
    // A failed delete (nothing to delete) closes the channel: each step gets its own.
    let ch = conn
        .create_channel()
        .await
        .context("opening a RabbitMQ channel")?;
    let _ = topology.delete(&ch).await;
    if declare {
        let ch = conn
            .create_channel()
            .await
            .context("opening a RabbitMQ channel")?;
        topology.declare(&ch).await?;
        let _ = ch.close(200, "demo".into()).await;
    }
    let _ = conn.close(200, "demo".into()).await;
    Ok(())
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} jobs final, {msg}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(b)
}

fn print_summary(o: &DemoOutcome, log: &crate::sandbox::CallLog) {
    println!("\noutcome by kind (rows → final state):");
    println!(
        "  {:<17} {:>6} {:>9} {:>5} {:>10} {:>7} {:>5}",
        "kind", "rows", "rejected", "dups", "succeeded", "failed", "dead"
    );
    let mut totals = [0i64; 6];
    for k in &o.kinds {
        let get = |s: &str| k.states.get(s).copied().unwrap_or(0);
        let row = [
            k.rows as i64,
            k.rejected as i64,
            k.duplicates as i64,
            get("succeeded"),
            get("failed"),
            get("dead"),
        ];
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
        println!(
            "  {:<17} {:>6} {:>9} {:>5} {:>10} {:>7} {:>5}",
            k.kind.as_str(),
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5]
        );
    }
    println!(
        "  {:<17} {:>6} {:>9} {:>5} {:>10} {:>7} {:>5}",
        "total", totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    let jobs = totals[3] + totals[4] + totals[5];
    println!(
        "\n{} jobs final in {:.1} s ({:.0} jobs/s); ABDM sandbox: {} requests, {} faults injected, {} side effects, {} done twice",
        jobs,
        o.elapsed.as_secs_f64(),
        jobs as f64 / o.elapsed.as_secs_f64().max(0.001),
        log.requests.values().sum::<u64>(),
        log.faults.values().sum::<u64>(),
        log.side_effects.values().sum::<u64>(),
        o.duplicate_side_effects
    );
    if o.duplicate_side_effects > 0 {
        println!(
            "side effects done twice, by operation: {:?}",
            log.duplicate_side_effects
        );
    }
    println!(
        "reports (one line per input row): {}/report-<kind>.csv",
        o.out_dir.display()
    );
}
