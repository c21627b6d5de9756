//! The test environment of the end-to-end tests (zero2prod's `spawn_app` style): a database,
//! a RabbitMQ topology and an ABDM sandbox of its own per test, the pipeline (relay + worker)
//! started and stopped on demand, CSV and report helpers, and clean-up.
//!
//! Real services: `ABHA_BULK_TEST_DATABASE_URL` (an admin URL; each test creates and drops
//! `abha_test_<uuid>`) and `ABHA_BULK_TEST_AMQP_URL` (each test uses `t-<8 hex>.*` names).

#![allow(dead_code)]

pub mod api;
pub mod keys;
pub mod proxy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abha_bulk::abdm::AbdmClient;
use abha_bulk::jobs::kind::JobKind;
use abha_bulk::queue::Topology;
use abha_bulk::queue::publish::Publisher;
use abha_bulk::ratelimit::RateLimiter;
use abha_bulk::relay::RelayConfig;
use abha_bulk::sandbox::{
    Faults, KeySource, Population, Sandbox, SandboxConfig, settings_for_sandbox,
};
use abha_bulk::store::batches::StateCounts;
use abha_bulk::store::{Store, Vault};
use abha_bulk::submit::{SubmitError, SubmitRequest, SubmitSummary, submit};
use abha_bulk::worker::{Worker, WorkerConfig};
use sqlx::migrate::MigrateDatabase;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The benefit every test uses (the only one the sandbox knows).
pub const BENEFIT: &str = "DEMO-BENEFIT";
/// Seed of the sandbox population.
pub const SEED: u64 = 20_260_101;
/// Size of the sandbox population.
pub const POPULATION: u64 = 20_000;
/// The client's request timeout: a held ("timeout") answer is given up after this.
pub const REQUEST_TIMEOUT_MS: u64 = 800;
/// How long the sandbox holds a "timeout" answer (above the request timeout).
pub const TIMEOUT_HOLD_MS: u64 = 1_500;

const KEY: &str = include_str!("../fixtures/test-key-2048.pem");

/// Faults with the hold time above the client's timeout; nothing injected.
pub fn no_faults() -> Faults {
    Faults {
        timeout_hold_ms: TIMEOUT_HOLD_MS,
        ..Faults::default()
    }
}

/// Pipeline settings; the defaults suit most tests.
#[derive(Debug, Clone)]
pub struct PipelineOpts {
    /// Lease owner name (must differ between a killed worker and its successor).
    pub worker_id: String,
    /// Calls per second of the worker's limiter.
    pub rate: f64,
    /// Burst of the limiter.
    pub burst: u32,
    /// Calls in flight.
    pub in_flight: u16,
    /// Lease length.
    pub lease: Duration,
    /// Attempts before dead.
    pub max_attempts: u32,
    /// Graceful-shutdown grace period.
    pub grace: Duration,
    /// Another ABDM client (a wrong secret, an unreachable URL) instead of the env's.
    pub client: Option<Arc<AbdmClient>>,
    /// Circuit breaker tuning (the shipped defaults when `None`).
    pub breaker: Option<abha_bulk::breaker::BreakerConfig>,
    /// Another topology (a delivery limit of its own) instead of the env's.
    pub topology: Option<Topology>,
}

impl Default for PipelineOpts {
    fn default() -> Self {
        Self {
            worker_id: format!("worker-{}", &Uuid::new_v4().simple().to_string()[..8]),
            rate: 1000.0,
            burst: 100,
            in_flight: 8,
            lease: Duration::from_secs(15),
            max_attempts: 10,
            grace: Duration::from_secs(10),
            client: None,
            breaker: None,
            topology: None,
        }
    }
}

/// A running relay + worker.
pub struct Pipeline {
    /// Cancels both (graceful).
    pub stop: CancellationToken,
    /// The worker task.
    pub worker: JoinHandle<()>,
    /// The relay task.
    pub relay: JoinHandle<()>,
    /// The worker's limiter (tests read its rate).
    pub limiter: Arc<RateLimiter>,
    /// The worker's settings.
    pub cfg: WorkerConfig,
}

impl Pipeline {
    /// Graceful stop: cancels the token and waits for both tasks.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.worker.await;
        let _ = self.relay.await;
    }

    /// A crash: aborts both tasks without a graceful shutdown (unacked messages go back to
    /// the queue when the connection drops; leased jobs wait for their lease to expire).
    pub async fn kill(self) {
        self.worker.abort();
        self.relay.abort();
        let _ = self.worker.await;
        let _ = self.relay.await;
        // Only now: stops the aborted worker's background rate-recovery task.
        self.stop.cancel();
    }
}

/// Webhook settings of tests: loopback receivers allowed, a short poll.
pub fn test_webhooks() -> abha_bulk::api::webhooks::WebhookSettings {
    abha_bulk::api::webhooks::WebhookSettings {
        poll: Duration::from_millis(100),
        deadline: Duration::from_secs(3),
        allow_private_hosts: vec!["127.0.0.1".into()],
        ..Default::default()
    }
}

/// One test's world.
pub struct TestEnv {
    /// The test's store.
    pub store: Store,
    /// Its database URL.
    pub db_url: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// The test's RabbitMQ names.
    pub topology: Topology,
    /// The ABDM sandbox.
    pub sandbox: Sandbox,
    /// A client of the sandbox with short timeouts.
    pub client: Arc<AbdmClient>,
    /// Temporary files (CSV inputs, reports).
    pub dir: tempfile::TempDir,
}

fn admin_url() -> String {
    std::env::var("ABHA_BULK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("ABHA_BULK_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ABHA_BULK_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .try_init();
}

impl TestEnv {
    /// An empty benefit-link batch of `BENEFIT`, created directly (no submit), for tests that
    /// insert their jobs themselves.
    pub async fn new_link_batch(&self, file_name: Option<&str>) -> Uuid {
        self.store
            .create_batch(abha_bulk::store::batches::NewBatch {
                kind: JobKind::BenefitLink,
                benefit: BENEFIT,
                source: "csv",
                file_name,
                file_sha256: None,
                parent: None,
                priority: Default::default(),
            })
            .await
            .expect("batch")
    }

    /// The `abha-bulk` binary on this test's database (no config files, the test vault's key,
    /// warnings only), run in the test's folder.
    pub fn cli(&self, args: &[&str], extra_env: &[(&str, &str)]) -> std::process::Command {
        let mut url = reqwest::Url::parse(&self.db_url).expect("db url");
        let password = url.password().unwrap_or("").to_string();
        url.set_password(None).expect("no password");
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_abha-bulk"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ABHA_BULK_CONFIG_DIR", self.dir.path().join("no-config"))
            .env("ABHA_BULK__DATABASE__URL", url.to_string())
            .env("ABHA_BULK__DATABASE__PASSWORD", password)
            // The key of the test vault: 32 bytes of 7.
            .env(
                "ABHA_BULK__PII__KEY",
                "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
            )
            .env("ABHA_BULK__TELEMETRY__LOG_FILTER", "warn");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c
    }

    /// Database, topology, sandbox and client of a new test.
    pub async fn new() -> Self {
        init_tracing();
        let mut url = reqwest::Url::parse(&admin_url()).expect("ABHA_BULK_TEST_DATABASE_URL");
        url.set_path(&format!("/abha_test_{}", Uuid::new_v4().simple()));
        let db_url = url.to_string();
        Store::migrate(&db_url).await.expect("test database");
        let store = Store::connect_url(
            &db_url,
            5,
            Duration::from_secs(30),
            Arc::new(Vault::from_bytes(&[7; 32])),
        )
        .await
        .expect("store");

        let amqp_url = amqp_url();
        let tag = &Uuid::new_v4().simple().to_string()[..8];
        let topology = Topology::named(&format!("t-{tag}.jobs"), &format!("t-{tag}"), 20);
        let conn = abha_bulk::queue::connect(&amqp_url)
            .await
            .expect("RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        topology.declare(&ch).await.expect("topology");
        let _ = conn.close(200, "declared".into()).await;

        let sandbox = Sandbox::start(SandboxConfig {
            key: KeySource::Pem(KEY.into()),
            population: POPULATION,
            seed: SEED,
            // Two more programmes for the fair-share tests (tests/fair_shares.rs).
            benefits: vec![BENEFIT.into(), "PMJAY".into(), "COVIN".into()],
            faults: no_faults(),
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox");
        let mut settings = settings_for_sandbox(&sandbox.url());
        settings.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        settings.connect_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let client = Arc::new(AbdmClient::new(&settings).expect("client"));
        Self {
            store,
            db_url,
            amqp_url,
            topology,
            sandbox,
            client,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Opens the client's session and fetches the encryption key now, so that the attempts
    /// recorded for jobs are their own operation's only (the first job would otherwise also
    /// carry the session and certificate requests).
    pub async fn warm_up(&self) {
        self.client.ensure_session().await.expect("session");
        self.client
            .encryptor(&mut abha_bulk::abdm::CallTrace::default())
            .await
            .expect("certificate");
    }

    /// The sandbox's population.
    pub fn pop(&self) -> Population {
        self.sandbox.state().population().clone()
    }

    /// Replaces the sandbox faults (the hold time stays above the client's timeout unless set).
    pub fn set_faults(&self, f: Faults) {
        self.sandbox.state().set_faults(f);
    }

    /// Starts relay + worker.
    pub fn start(&self, o: PipelineOpts) -> Pipeline {
        self.start_via(o, &self.amqp_url)
    }

    /// Starts relay + worker connecting to RabbitMQ at `amqp_url` (a proxy, in resilience
    /// tests).
    pub fn start_via(&self, o: PipelineOpts, amqp_url: &str) -> Pipeline {
        self.start_with(o, amqp_url, self.store.clone())
    }

    /// Starts relay + worker with their own `store` (connected through a proxy, in resilience
    /// tests) and RabbitMQ URL.
    pub fn start_with(&self, o: PipelineOpts, amqp_url: &str, store: Store) -> Pipeline {
        let stop = CancellationToken::new();
        let limiter = RateLimiter::new(o.rate, o.burst, None);
        let cfg = WorkerConfig {
            id: o.worker_id.clone(),
            in_flight: o.in_flight,
            lease: o.lease,
            max_attempts: o.max_attempts,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(200),
            grace: o.grace,
            kinds: JobKind::ALL.to_vec(),
            prefetch_horizon: Duration::from_millis(500),
            hold_max: Duration::from_secs(600),
        };
        let worker = Worker::with_breaker(
            store.clone(),
            o.client.clone().unwrap_or_else(|| self.client.clone()),
            limiter.clone(),
            o.topology.clone().unwrap_or_else(|| self.topology.clone()),
            cfg.clone(),
            o.breaker.clone().unwrap_or_default(),
        );
        // Webhooks go out beside the relay (as `worker` and `relay` start them); tests' receivers
        // listen on loopback, which the operator's allow-list must name.
        tokio::spawn(abha_bulk::api::webhooks::run(
            store.clone(),
            test_webhooks(),
            stop.clone(),
        ));
        let relay = tokio::spawn(abha_bulk::relay::run(
            store.clone(),
            amqp_url.to_string(),
            o.topology.clone().unwrap_or_else(|| self.topology.clone()),
            RelayConfig {
                batch: 500,
                idle: Duration::from_millis(50),
                housekeeping: Duration::from_millis(300),
                ..Default::default()
            },
            stop.clone(),
        ));
        let worker = tokio::spawn(worker.run(amqp_url.to_string(), stop.clone()));
        Pipeline {
            stop,
            worker,
            relay,
            limiter,
            cfg,
        }
    }

    /// Writes a CSV file (header + rows) in the test's folder.
    pub fn write_csv(&self, name: &str, header: &[&str], rows: &[Vec<String>]) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut w = csv::Writer::from_path(&path).expect("csv file");
        w.write_record(header).expect("header");
        for r in rows {
            w.write_record(r).expect("row");
        }
        w.flush().expect("flush");
        path
    }

    /// Writes a file verbatim.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("file");
        path
    }

    /// Submits a file through the normal path.
    pub async fn try_submit(
        &self,
        kind: JobKind,
        path: &Path,
        force: bool,
    ) -> Result<SubmitSummary, SubmitError> {
        submit(
            &self.store,
            &SubmitRequest {
                path: path.to_path_buf(),
                kind,
                benefit: BENEFIT.into(),
                force,
                priority: Default::default(),
            },
            Arc::new(()),
        )
        .await
    }

    /// Submits a file that must be accepted.
    pub async fn submit(&self, kind: JobKind, path: &Path) -> SubmitSummary {
        self.try_submit(kind, path, false)
            .await
            .unwrap_or_else(|e| panic!("submit {kind}: {e}"))
    }

    /// Writes and submits rows of `kind`.
    pub async fn submit_rows(
        &self,
        kind: JobKind,
        header: &[&str],
        rows: &[Vec<String>],
    ) -> SubmitSummary {
        let path = self.write_csv(&format!("{kind}-{}.csv", Uuid::new_v4()), header, rows);
        self.submit(kind, &path).await
    }

    /// Submits one benefit-link row per person in `people` (external refs `<prefix><i>`);
    /// returns the batch.
    pub async fn submit_links(&self, prefix: &str, people: std::ops::Range<u64>) -> Uuid {
        let pop = self.pop();
        let rows: Vec<Vec<String>> = people
            .map(|i| vec![format!("{prefix}{i}"), pop.abha(i).expose().to_string()])
            .collect();
        self.submit_rows(
            JobKind::BenefitLink,
            &["external_ref", "abha_number"],
            &rows,
        )
        .await
        .batch
    }

    /// Job counts of a batch.
    pub async fn counts(&self, batch: Uuid) -> StateCounts {
        self.store.batch_counts(batch).await.expect("counts")
    }

    /// Waits (up to 60 s) until every job of the batches is final.
    pub async fn wait_until_done(&self, batches: &[Uuid]) {
        self.wait_for(batches, "every job final", |c| c.open() == 0)
            .await;
    }

    /// Waits (up to 60 s) until `ok` holds for the summed counts of the batches.
    pub async fn wait_for(
        &self,
        batches: &[Uuid],
        what: &str,
        ok: impl Fn(&StateCounts) -> bool,
    ) -> StateCounts {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut sum = StateCounts::default();
            for b in batches {
                for (state, n) in self.counts(*b).await.0 {
                    *sum.0.entry(state).or_default() += n;
                }
            }
            if ok(&sum) {
                return sum;
            }
            assert!(
                Instant::now() < deadline,
                "gave up after 60 s waiting for {what}; job counts: {:?}",
                sum.0
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the report of a batch and reads it back: the raw text and one map per line.
    pub async fn report(
        &self,
        batch: Uuid,
        reveal: Option<abha_bulk::report::Reveal<'_>>,
    ) -> (String, Vec<HashMap<String, String>>) {
        let path = self
            .dir
            .path()
            .join(format!("report-{batch}-{}.csv", Uuid::new_v4()));
        let target = abha_bulk::report::ReportTarget::File {
            path: path.clone(),
            force: false,
        };
        abha_bulk::report::write_report(&self.store, batch, &target, reveal)
            .await
            .expect("report");
        let text = std::fs::read_to_string(&path).expect("report file");
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r
            .headers()
            .expect("report header")
            .iter()
            .map(str::to_string)
            .collect();
        assert_eq!(header, abha_bulk::report::REPORT_HEADER);
        let rows = r
            .records()
            .map(|rec| {
                let rec = rec.expect("report line");
                header
                    .iter()
                    .cloned()
                    .zip(rec.iter().map(str::to_string))
                    .collect()
            })
            .collect();
        (text, rows)
    }

    /// A publisher on the test's topology (its connection is kept alive by the channel).
    pub async fn publisher(&self) -> (lapin::Connection, Publisher) {
        let conn = abha_bulk::queue::connect(&self.amqp_url)
            .await
            .expect("RabbitMQ");
        let p = Publisher::open(&conn, self.topology.clone())
            .await
            .expect("publisher");
        (conn, p)
    }

    /// Ready messages in one queue.
    pub async fn depth(&self, queue: &str) -> u32 {
        let conn = abha_bulk::queue::connect(&self.amqp_url)
            .await
            .expect("RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        let d = self
            .topology
            .depths(&ch)
            .await
            .expect("depths")
            .into_iter()
            .find(|(q, _)| q == queue)
            .map(|(_, n)| n)
            .expect("known queue");
        let _ = conn.close(200, "depth read".into()).await;
        d
    }

    /// Drops the database, deletes the topology and stops the sandbox. Call at the end of a
    /// passing test (a failing one leaves everything for inspection).
    pub async fn cleanup(self) {
        self.store.pool.close().await;
        sqlx::Postgres::force_drop_database(&self.db_url)
            .await
            .expect("dropping the test database");
        let conn = abha_bulk::queue::connect(&self.amqp_url)
            .await
            .expect("RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        self.topology.delete(&ch).await.expect("deleting topology");
        let _ = conn.close(200, "cleanup".into()).await;
        self.sandbox.shutdown().await;
    }
}

/// The line of a report whose `external_ref` is `r`.
pub fn by_ref<'a>(rows: &'a [HashMap<String, String>], r: &str) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|row| row["external_ref"] == r)
        .unwrap_or_else(|| panic!("no report line with external_ref {r}: {rows:#?}"))
}

/// Strings helper.
pub fn s(v: &str) -> String {
    v.to_string()
}

/// The settings of a worker driven through the in-memory seam (`MemoryQueue`): 4 in flight,
/// a 15 s lease, 5 attempts, fast backoff, a 5 s grace, every kind, a 10-minute hold; tests
/// override what they are about with `..seam_config(id)`.
pub fn seam_config(id: &str) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        in_flight: 4,
        lease: Duration::from_secs(15),
        max_attempts: 5,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        grace: Duration::from_secs(5),
        kinds: JobKind::ALL.to_vec(),
        prefetch_horizon: Duration::from_millis(500),
        hold_max: Duration::from_secs(600),
    }
}
