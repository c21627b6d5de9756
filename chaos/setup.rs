//! Brings the run up (servers, sandbox, proxy, migrate, workers, relay), submits the samples,
//! collects the figures and brings everything down again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::Opts;
use crate::error::{ChaosError, Result, io};
use crate::fleet::Fleet;
use crate::inject::Chaos;
use crate::measure::Figures;
use crate::procs::{Launcher, Proc, Spec};
use crate::proxy::Proxy;
use crate::rabbit::Rabbit;
use crate::releases::{Release, Releases};
use crate::sandbox_api::Admin;
use crate::schedule::{CONSUMER_TIMEOUT_MS, LEASE_SECS, now};
use crate::services::Postgres;

/// The nine job kinds, as `submit --kind` names them; the sandbox writes `<kind>.csv`.
pub const KINDS: [&str; 9] = [
    "benefit-link",
    "benefit-search",
    "benefit-lookup",
    "benefit-delink",
    "profile-update",
    "abha-find",
    "abha-create-demo",
    "child-create",
    "child-update",
];

/// The benefit the sandbox seeds for `--write-samples` (the first of sandbox.benefits).
pub const BENEFIT: &str = "DEMO-BENEFIT";
/// The client secret the sandbox accepts by default, which the workers use.
pub const SECRET: &str = "sandbox-secret";

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// Everything running.
pub struct Env {
    /// What the schedule acts on.
    pub chaos: Arc<Chaos>,
    /// The launcher of `submit` and of the second programme.
    tools: Launcher,
    sandbox: Proc,
    samples: PathBuf,
}

/// Which releases a run's processes start on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every process on the new release.
    New,
    /// Workers and relay start on the previous release and the schema is the previous
    /// release's; the plan's upgrade steps move them to the new one.
    Upgrade,
    /// Every process on the previous release, throughout (the "before" figures).
    AllPrevious,
}

impl Env {
    /// Starts servers, sandbox (which writes the samples), proxy, schema, relay and workers.
    /// `consumer_timeout`: lower the broker's to [`CONSUMER_TIMEOUT_MS`].
    pub async fn start(
        opts: &Opts,
        mode: Mode,
        consumer_timeout: bool,
        stop: CancellationToken,
    ) -> Result<Self> {
        let work = &opts.work_dir;
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs).map_err(io("creating the logs folder"))?;
        let config = work.join("config");
        std::fs::create_dir_all(&config).map_err(io("creating the config folder"))?;
        std::fs::write(config.join("chaos.toml"), crate::second::config_toml())
            .map_err(io("writing the run's settings"))?;
        eprintln!(
            "[chaos] starting the run's own PostgreSQL (port {})",
            opts.pg_port
        );
        let pg = Postgres::start(work, opts.pg_port).await?;
        eprintln!(
            "[chaos] starting the run's own RabbitMQ node (port {})",
            opts.amqp_port
        );
        let rabbit = Rabbit::start(
            work,
            opts.amqp_port,
            opts.amqp_dist_port,
            consumer_timeout.then_some(CONSUMER_TIMEOUT_MS),
        )
        .await?;
        let sandbox_port = free_port()?;
        let proxy_port = free_port()?;
        let db = pg.url("abha_chaos");
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(io("locating this binary"))?
                .with_file_name("abha-bulk"),
        };
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let rate = opts.rate();
        let abdm = format!("http://127.0.0.1:{proxy_port}");
        let env: Vec<(String, String)> = [
            ("ABHA_BULK_ENV", "chaos".to_string()),
            ("ABHA_BULK_CONFIG_DIR", config.display().to_string()),
            ("ABHA_BULK__DATABASE__URL", db.clone()),
            ("ABHA_BULK__RABBITMQ__URL", rabbit.url()),
            ("ABHA_BULK__RABBITMQ__PASSWORD", "guest".into()),
            ("ABHA_BULK__ABDM__BASE_URL", format!("{abdm}/abha/api")),
            (
                "ABHA_BULK__ABDM__SESSION_URL",
                format!("{abdm}/api/hiecm/gateway/v3/sessions"),
            ),
            ("ABHA_BULK__ABDM__CLIENT_SECRET", SECRET.into()),
            // Below the sandbox's 3 s hold of a "lost answer" fault: the answer is lost.
            ("ABHA_BULK__ABDM__REQUEST_TIMEOUT_MS", "2000".into()),
            ("ABHA_BULK__ABDM__CONNECT_TIMEOUT_MS", "1000".into()),
            (
                "ABHA_BULK__PII__KEY",
                base64::engine::general_purpose::STANDARD.encode(key),
            ),
            ("ABHA_BULK__WORKER__RATE_PER_SECOND", rate.to_string()),
            (
                "ABHA_BULK__WORKER__BURST",
                ((rate / 10.0).ceil().max(1.0) as u32).to_string(),
            ),
            ("ABHA_BULK__WORKER__IN_FLIGHT", "16".into()),
            // Short leases and backoff so a killed worker's jobs and the retries after an
            // outage come back within the run (defaults: 120 s, 2 s .. 300 s).
            ("ABHA_BULK__WORKER__LEASE_SECS", LEASE_SECS.to_string()),
            ("ABHA_BULK__WORKER__BACKOFF_BASE_MS", "500".into()),
            ("ABHA_BULK__WORKER__BACKOFF_CAP_MS", "8000".into()),
            ("ABHA_BULK__WORKER__GRACE_PERIOD_SECS", "5".into()),
            ("ABHA_BULK__TELEMETRY__LOG_FORMAT", "json".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let launcher = Launcher {
            bin,
            env,
            dir: logs,
        };
        let samples = work.join("samples");
        let sandbox = start_sandbox(&launcher, opts, sandbox_port, &samples).await?;
        let releases = releases(opts, mode, &launcher).await?;
        let start_on = match mode {
            Mode::New => Release::New,
            Mode::Upgrade | Mode::AllPrevious => Release::Previous,
        };
        let proxy = Proxy::start(
            proxy_port,
            std::net::SocketAddr::from(([127, 0, 0, 1], sandbox_port)),
        )
        .await?;
        eprintln!(
            "[chaos] migrate ({} release), then the relay and {} workers",
            start_on.label(),
            opts.workers
        );
        let tools = releases.get(start_on).clone();
        tools.run("migrate", &["migrate".to_string()], 120).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(crate::error::http("building a client"))?;
        let ports = (0..opts.workers)
            .map(|_| free_port())
            .collect::<Result<Vec<_>>>()?;
        let fleet = Fleet::start(releases.clone(), start_on, &ports, &http).await?;
        let chaos = Arc::new(Chaos {
            fleet: Arc::new(Mutex::new(fleet)),
            pg: Arc::new(Mutex::new(pg)),
            rabbit: Arc::new(Mutex::new(rabbit)),
            proxy: Arc::new(proxy),
            admin: Admin::new(sandbox_port),
            http,
            db,
            secret: SECRET.into(),
            windows: Mutex::new(Vec::new()),
            cut_by_kills: AtomicI64::new(0),
            stop,
        });
        // After the schema is the new release's (the upgrade migrates at t+5), the second
        // programme's submit and reconcile run on the new release.
        let tools = match mode {
            Mode::AllPrevious => tools,
            _ => releases.new.clone(),
        };
        Ok(Self {
            chaos,
            tools,
            sandbox,
            samples,
        })
    }

    /// How the run starts the second programme's submit and reconcile.
    pub fn launcher(&self) -> &Launcher {
        &self.tools
    }

    /// Submits the nine files with `abha-bulk submit` of the release the fleet starts on;
    /// the unix second after the last.
    pub async fn submit_all(&mut self) -> Result<f64> {
        let launcher = {
            let fleet = self.chaos.fleet.lock().await;
            fleet.releases().get(fleet.relay_release).clone()
        };
        for kind in KINDS {
            let file = self.samples.join(format!("{kind}.csv"));
            let out = launcher
                .run(
                    &format!("submit-{kind}"),
                    &[
                        "submit".into(),
                        file.display().to_string(),
                        "--kind".into(),
                        kind.into(),
                        "--benefit".into(),
                        BENEFIT.into(),
                    ],
                    300,
                )
                .await?;
            eprintln!(
                "[chaos] submit {kind}: {}",
                out.lines().next().unwrap_or("").trim()
            );
        }
        Ok(now())
    }

    /// Reads every figure (Postgres polls are retried: the run may end right after a
    /// restart). `end` is when the drive loop stopped.
    pub async fn figures(&self, t0: f64, end: Option<f64>) -> Result<Figures> {
        let c = &self.chaos;
        let mut last = None;
        for _ in 0..10 {
            match read_db(&c.db).await {
                Ok(v) => {
                    last = Some(Ok(v));
                    break;
                }
                Err(e) => last = Some(Err(e)),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (progress, outcomes, finished) = last.expect("at least one attempt")?;
        let elapsed = match finished.keys().next_back() {
            Some(t) if progress.open == 0 => *t as f64 + 1.0 - t0,
            _ => end.unwrap_or_else(now) - t0,
        };
        let windows = Figures {
            windows: c.windows.lock().await.clone(),
            ..Figures::default()
        };
        let mut spent_by_waits = Vec::new();
        for w in &windows.windows {
            if !matches!(w.action, crate::schedule::Action::LongRetryAfter(_)) {
                continue;
            }
            let to = w.end + crate::fault_bounds::long_wait_tail();
            let spent = crate::db::throttled_then_reclaimed(&c.db, w.start, to).await?;
            let allowed = crate::fault_bounds::cut_between(&windows, w.start, to);
            spent_by_waits.push((spent, allowed));
        }
        let (dead_letters, consumer_timeouts) = {
            let rabbit = c.rabbit.lock().await;
            let depth = rabbit.depth(crate::rabbit::DEAD_LETTER_QUEUE).await;
            if let Err(e) = &depth {
                eprintln!("[chaos] reading the dead-letter queue: {e}");
            }
            (depth.ok().flatten(), rabbit.consumer_timeouts())
        };
        let fleet = c.fleet.lock().await;
        Ok(Figures {
            dead_letters,
            consumer_timeouts,
            spent_by_waits,
            releases: fleet.describe(),
            progress,
            outcomes,
            attempts: crate::db::attempts(&c.db).await.unwrap_or_default(),
            calls: c.admin.calls().await?,
            windows: windows.windows,
            finished,
            timeline: c.admin.timeline((t0 as u64).saturating_sub(60)).await?,
            cut_by_kills: c.cut_by_kills.load(Ordering::Relaxed),
            unplanned_exits: fleet.unplanned_exits.clone(),
            t0,
            elapsed,
            second: None,
        })
    }

    /// Stops every process and both servers (cleanly; dropping would kill them).
    pub async fn shutdown(&mut self) {
        self.chaos.fleet.lock().await.stop().await;
        self.sandbox.stop(Duration::from_secs(5)).await;
        if let Err(e) = self.chaos.rabbit.lock().await.stop().await {
            eprintln!("[chaos] stopping RabbitMQ: {e}");
        }
        if let Err(e) = self.chaos.pg.lock().await.stop().await {
            eprintln!("[chaos] stopping Postgres: {e}");
        }
    }
}

type DbFigures = (
    crate::db::Progress,
    Vec<(String, String, i64)>,
    std::collections::BTreeMap<i64, i64>,
);

async fn read_db(url: &str) -> Result<DbFigures> {
    Ok((
        crate::db::progress(url).await?,
        crate::db::outcomes(url).await?,
        crate::db::finished_per_second(url).await?,
    ))
}

/// Starts the sandbox with faults on; it writes the samples (seeding its world) before it
/// reports ready, so the files are complete once all nine exist.
async fn start_sandbox(
    launcher: &Launcher,
    opts: &Opts,
    port: u16,
    samples: &std::path::Path,
) -> Result<Proc> {
    eprintln!(
        "[chaos] starting the sandbox ({}-bit key) and writing {} sample rows",
        opts.key_bits,
        opts.rows()
    );
    let rows = opts.rows();
    let spec = Spec {
        name: "sandbox".into(),
        args: [
            "sandbox",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--key-bits",
            &opts.key_bits.to_string(),
            // Every kind needs its own beneficiaries: 9 × (a quarter of the rows + 1 000).
            "--population",
            &(1_000_000.max(rows as u64 * 3)).to_string(),
            "--seed",
            "42",
            "--rate-limit",
            &opts.rate().to_string(),
            "--fault-5xx",
            "1",
            "--fault-timeout",
            "0.3",
            "--fault-drop",
            "0.3",
            "--timeout-hold-ms",
            "3000",
            "--write-samples",
            &samples.display().to_string(),
            "--rows",
            &rows.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: Vec::new(),
        health_port: None,
    };
    let mut sandbox = launcher.spawn(&spec)?;
    let admin = Admin::new(port);
    let deadline = now() + 120.0;
    loop {
        if sandbox.exited() {
            return Err(ChaosError::Command {
                what: "the sandbox".into(),
                detail: format!(
                    "exited during start:\n{}",
                    crate::procs::log_tail(&launcher.dir, "sandbox", 10)
                ),
            });
        }
        let all_written = KINDS
            .iter()
            .all(|k| samples.join(format!("{k}.csv")).exists());
        if all_written && admin.up().await {
            return Ok(sandbox);
        }
        if now() > deadline {
            return Err(ChaosError::Timeout {
                what: "the sandbox and its samples".into(),
                secs: 120,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The launchers of the run: the new release, and the previous one when `mode` uses it.
async fn releases(opts: &Opts, mode: Mode, base: &Launcher) -> Result<Releases> {
    let (new, accepted) = crate::releases::launcher_for(base, &base.bin, "new").await?;
    eprintln!(
        "[chaos] new release: {} (newer settings it accepts: {accepted:?})",
        base.bin.display()
    );
    let previous = match mode {
        Mode::New => None,
        Mode::Upgrade | Mode::AllPrevious => {
            let bin = crate::releases::previous_binary(opts.previous_bin.as_deref()).await?;
            let (l, accepted) = crate::releases::launcher_for(base, &bin, "previous").await?;
            eprintln!(
                "[chaos] previous release: {} (newer settings it accepts: {accepted:?})",
                bin.display()
            );
            Some(l)
        }
    };
    Ok(Releases { new, previous })
}
