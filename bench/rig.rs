//! One benchmark run's processes: the shipped `abha-bulk` binary as a sandbox, N workers and
//! (optionally) a separate relay, configured only through the documented `ABHA_BULK__*`
//! settings, against the machine's PostgreSQL and RabbitMQ with a database and queue names of
//! the run's own. Everything not named here keeps its shipped default (`config/default.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use sqlx::{Connection, PgConnection};

use crate::error::{ChaosError, Result, io, sql};
use crate::procs::{Launcher, Proc, Spec};
use crate::sandbox_api::Admin;

/// The seeded population of the sandbox and of `gen` (the same seed makes the same people).
pub const POPULATION: u64 = 2_000_000;
/// The population's seed.
pub const SEED: u64 = 42;
/// A benefit the sandbox knows by default.
pub const BENEFIT: &str = "DEMO-BENEFIT";

/// Where the shared services are.
#[derive(Debug, Clone)]
pub struct Services {
    /// Postgres host:port (trust or password-less user `postgres`).
    pub pg: String,
    /// RabbitMQ host:port (user and password `guest`).
    pub amqp: String,
    /// The `abha-bulk` binary.
    pub bin: PathBuf,
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct RigOpts {
    /// Worker processes.
    pub workers: usize,
    /// Run the relay as its own process (`worker --no-relay` + `relay`) instead of inside
    /// every worker (the shipped default).
    pub separate_relay: bool,
    /// `worker.rate_per_second`; `None` = far above anything this machine reaches.
    pub rate: Option<f64>,
    /// The sandbox's limit (ABDM-1022 above it); 0 = none.
    pub sandbox_limit: f64,
    /// Extra settings for every process (tuning experiments).
    pub env: Vec<(String, String)>,
    /// Written as the run's `config/bench.toml` (settings that are tables, such as
    /// `benefits.weights`).
    pub config_toml: Option<String>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// Running processes of one run.
pub struct Rig {
    launcher: Launcher,
    sandbox: Proc,
    /// The sandbox's admin endpoints.
    pub admin: Admin,
    /// Worker processes.
    pub workers: Vec<Proc>,
    /// The separate relay, when asked for.
    pub relay: Option<Proc>,
    services: Services,
    /// The run's database name.
    pub db: String,
    /// Its URL.
    pub db_url: String,
    prefix: String,
    work: PathBuf,
}

impl Rig {
    /// Creates the database, starts the sandbox, migrates, starts relay and workers and waits
    /// until each answers `/healthz`.
    pub async fn start(services: &Services, opts: &RigOpts) -> Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let db = format!("abha_bench_{id}");
        let prefix = format!("bench-{id}");
        let admin_url = format!("postgres://postgres@{}/postgres", services.pg);
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .map_err(sql("connecting to Postgres"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .map_err(sql("creating the run's database"))?;
        let _ = admin.close().await;
        let db_url = format!("postgres://postgres@{}/{db}", services.pg);
        let work = std::env::temp_dir().join(format!("abha-bench-{id}"));
        std::fs::create_dir_all(work.join("config")).map_err(io("creating the work folder"))?;
        if let Some(toml) = &opts.config_toml {
            std::fs::write(work.join("config").join("bench.toml"), toml)
                .map_err(io("writing the run's settings"))?;
        }
        let sandbox_port = free_port()?;
        let abdm = format!("http://127.0.0.1:{sandbox_port}");
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let mut env: Vec<(String, String)> = [
            ("ABHA_BULK_ENV", "bench".to_string()),
            (
                "ABHA_BULK_CONFIG_DIR",
                work.join("config").display().to_string(),
            ),
            ("ABHA_BULK__DATABASE__URL", db_url.clone()),
            (
                "ABHA_BULK__RABBITMQ__URL",
                format!("amqp://guest@{}/%2f", services.amqp),
            ),
            ("ABHA_BULK__RABBITMQ__PASSWORD", "guest".into()),
            ("ABHA_BULK__RABBITMQ__EXCHANGE", format!("{prefix}.jobs")),
            ("ABHA_BULK__RABBITMQ__QUEUE_PREFIX", prefix.clone()),
            ("ABHA_BULK__ABDM__BASE_URL", format!("{abdm}/abha/api")),
            (
                "ABHA_BULK__ABDM__SESSION_URL",
                format!("{abdm}/api/hiecm/gateway/v3/sessions"),
            ),
            ("ABHA_BULK__ABDM__CLIENT_SECRET", "sandbox-secret".into()),
            (
                "ABHA_BULK__PII__KEY",
                base64::engine::general_purpose::STANDARD.encode(key),
            ),
            ("ABHA_BULK__TELEMETRY__LOG_FORMAT", "json".into()),
            (
                "ABHA_BULK__WORKER__RATE_PER_SECOND",
                opts.rate.unwrap_or(1_000_000.0).to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(opts.env.iter().cloned());
        let launcher = Launcher {
            bin: services.bin.clone(),
            env,
            dir: work.clone(),
        };
        let sandbox = launcher.spawn(&Spec {
            name: "sandbox".into(),
            args: [
                "sandbox",
                "--listen",
                &format!("127.0.0.1:{sandbox_port}"),
                // ABDM's key is 4096 bits, and its decryption runs on ABDM's machines; here it
                // would share two cores with the worker it measures.
                "--key-bits",
                "1024",
                "--population",
                &POPULATION.to_string(),
                "--seed",
                &SEED.to_string(),
                "--rate-limit",
                &opts.sandbox_limit.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            env: Vec::new(),
            health_port: None,
        })?;
        let admin = Admin::new(sandbox_port);
        let mut rig = Self {
            launcher,
            sandbox,
            admin,
            workers: Vec::new(),
            relay: None,
            services: services.clone(),
            db,
            db_url,
            prefix,
            work,
        };
        rig.wait_sandbox().await?;
        rig.launcher
            .run("migrate", &["migrate".to_string()], 120)
            .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(crate::error::http("building a client"))?;
        if opts.separate_relay {
            let mut relay = rig.launcher.spawn(&Spec {
                name: "relay".into(),
                args: vec!["relay".into()],
                env: Vec::new(),
                health_port: None,
            })?;
            relay.ready(&http, 30).await?;
            rig.relay = Some(relay);
        }
        for i in 0..opts.workers {
            let port = free_port()?;
            let mut args = vec!["worker".to_string()];
            if opts.separate_relay {
                args.push("--no-relay".into());
            }
            let mut w = rig.launcher.spawn(&Spec {
                name: format!("worker-{}", i + 1),
                args,
                env: vec![(
                    "ABHA_BULK__WORKER__HTTP_LISTEN".into(),
                    format!("127.0.0.1:{port}"),
                )],
                health_port: Some(port),
            })?;
            w.ready(&http, 60).await?;
            rig.workers.push(w);
        }
        Ok(rig)
    }

    /// The sum over the worker processes of a counter from their `/metrics` (0 where a
    /// worker does not answer: the figure is informative, never a pass/fail bound).
    pub async fn worker_counter(&self, name: &str) -> u64 {
        let Ok(http) = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
        else {
            return 0;
        };
        let mut sum = 0;
        for port in self.workers.iter().filter_map(|w| w.spec.health_port) {
            let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
            else {
                continue;
            };
            let body = r.text().await.unwrap_or_default();
            sum += body
                .lines()
                .filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        sum
    }

    async fn wait_sandbox(&mut self) -> Result<()> {
        for _ in 0..300 {
            if self.admin.up().await {
                return Ok(());
            }
            if self.sandbox.exited() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ChaosError::Command {
            what: "starting the sandbox".into(),
            detail: format!("see {}", self.work.join("sandbox.log").display()),
        })
    }

    fn submit_args(file: &Path) -> Vec<String> {
        Self::submit_args_for(file, BENEFIT)
    }

    fn submit_args_for(file: &Path, benefit: &str) -> Vec<String> {
        [
            "submit",
            &file.display().to_string(),
            "--kind",
            "benefit-link",
            "--benefit",
            benefit,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `abha-bulk submit FILE --kind benefit-link --benefit BENEFIT` to completion.
    pub async fn submit_for(&self, file: &Path, benefit: &str) -> Result<()> {
        self.launcher
            .run("submit", &Self::submit_args_for(file, benefit), 3600)
            .await?;
        Ok(())
    }

    /// Starts `abha-bulk ARGS` in the background (a reconcile beside a batch).
    pub fn spawn_cmd(&self, name: &str, args: &[&str]) -> Result<Proc> {
        self.launcher.spawn(&Spec {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            health_port: None,
        })
    }

    /// The shared work queue's name.
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// The run's work folder.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// `abha-bulk submit FILE --kind benefit-link` to completion; its wall time in seconds.
    pub async fn submit(&self, file: &Path) -> Result<f64> {
        let t = std::time::Instant::now();
        self.launcher
            .run("submit", &Self::submit_args(file), 3600)
            .await?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// The same submit in the background (to sample its memory while it runs).
    pub fn spawn_submit(&self, file: &Path) -> Result<Proc> {
        self.launcher.spawn(&Spec {
            name: "submit".into(),
            args: Self::submit_args(file),
            env: Vec::new(),
            health_port: None,
        })
    }

    /// Any other `abha-bulk` command in the background, with settings of its own.
    pub fn spawn(&self, name: &str, args: &[&str], env: &[(&str, String)]) -> Result<Proc> {
        self.launcher.spawn(&Spec {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            health_port: None,
        })
    }

    /// The last `lines` lines of a process's log (its stdout).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        crate::procs::log_tail(&self.work, name, lines)
    }

    /// Pids of the processes whose CPU is the pipeline's (workers and the relay).
    pub fn pipeline_pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .chain(self.relay.iter())
            .filter_map(Proc::pid)
            .collect()
    }

    /// Stops every process (SIGTERM), drops the database and the run's queues.
    pub async fn stop(mut self) {
        for p in self.workers.iter_mut().chain(self.relay.iter_mut()) {
            p.stop(Duration::from_secs(10)).await;
        }
        self.sandbox.stop(Duration::from_secs(5)).await;
        let topology =
            abha_bulk::queue::Topology::named(&format!("{}.jobs", self.prefix), &self.prefix, 20);
        let amqp = format!("amqp://guest:guest@{}/%2f", self.services.amqp);
        if let Ok(conn) = abha_bulk::queue::connect(&amqp).await {
            if let Ok(ch) = conn.create_channel().await {
                let _ = topology.delete(&ch).await;
            }
            let _ = conn.close(200, "bench done".into()).await;
        }
        let admin_url = format!("postgres://postgres@{}/postgres", self.services.pg);
        if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db
            )))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}
