//! How each fault of [`crate::schedule`] is done and undone.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::{ChaosError, Result};
use crate::fleet::Fleet;
use crate::proxy::Proxy;
use crate::rabbit::Rabbit;
use crate::releases::Release;
use crate::sandbox_api::Admin;
use crate::schedule::{Action, CLOCK_OFFSET_SECS, LEASE_SECS, Plan, Window, now};
use crate::services::Postgres;

/// The setting that skews a worker's `TIMESTAMP` clock (present in the previous release too).
pub const CLOCK_VAR: &str = "ABHA_BULK__ABDM__CLOCK_OFFSET_SECS";

/// Everything the faults act on.
pub struct Chaos {
    /// Workers and relay.
    pub fleet: Arc<Mutex<Fleet>>,
    /// The run's Postgres.
    pub pg: Arc<Mutex<Postgres>>,
    /// The run's RabbitMQ.
    pub rabbit: Arc<Mutex<Rabbit>>,
    /// The proxy in front of the sandbox.
    pub proxy: Arc<Proxy>,
    /// The sandbox's admin endpoints.
    pub admin: Admin,
    /// For `/healthz` polls.
    pub http: reqwest::Client,
    /// The run's database URL.
    pub db: String,
    /// The client secret the workers use (restored after the wrong-secret phase).
    pub secret: String,
    /// Faults as they happened.
    pub windows: Mutex<Vec<Window>>,
    /// Jobs whose call was cut by a worker kill (still leased by the killed worker).
    pub cut_by_kills: AtomicI64,
    /// Cancelled on Ctrl-C or when the run's time is up.
    pub stop: CancellationToken,
}

impl Chaos {
    /// Sleeps `d`; Err when the run is stopped meanwhile.
    pub async fn sleep(&self, d: Duration) -> Result<()> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(ChaosError::Interrupted),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    async fn sleep_until(&self, t: f64) -> Result<()> {
        let left = t - now();
        if left > 0.0 {
            self.sleep(Duration::from_secs_f64(left)).await?;
        }
        Ok(())
    }

    /// Runs the plan's steps from `t0` (unix seconds).
    pub async fn run_steps(&self, plan: &Plan, t0: f64) -> Result<()> {
        for (at, action) in &plan.steps {
            self.sleep_until(t0 + *at as f64).await?;
            let start = now();
            eprintln!("[chaos] t+{:.0}s {}", start - t0, action.name());
            let cut = self.act(*action).await?;
            let end = now();
            self.windows.lock().await.push(Window {
                action: *action,
                start,
                end,
                cut,
            });
        }
        Ok(())
    }

    /// Kills a worker (in turn) every `every` s from `t0 + every` until `until`.
    pub async fn kill_loop(&self, every: u64, t0: f64, until: f64) -> Result<()> {
        let workers = self.fleet.lock().await.workers.len().max(1);
        let mut k = 1u64;
        loop {
            let at = t0 + (k * every) as f64;
            if at > until {
                return Ok(());
            }
            self.sleep_until(at).await?;
            let action = Action::KillWorker(((k - 1) as usize) % workers);
            let start = now();
            let cut = self.act(action).await?;
            self.windows.lock().await.push(Window {
                action,
                start,
                end: now(),
                cut,
            });
            k += 1;
        }
    }

    /// Does `action` and undoes it; for a worker kill, the jobs the killed worker still held.
    async fn act(&self, action: Action) -> Result<i64> {
        match action {
            Action::KillWorker(i) => return self.kill_worker(i).await,
            Action::KillRelay => {
                self.fleet.lock().await.kill_relay().await?;
                self.sleep(Duration::from_secs(1)).await?;
            }
            Action::RestartRabbit => self.rabbit.lock().await.restart().await?,
            Action::RestartPostgres => self.pg.lock().await.restart().await?,
            Action::Outage(s) => {
                self.proxy.close().await;
                let slept = self.sleep(Duration::from_secs(s)).await;
                self.proxy.open().await?;
                slept?;
            }
            Action::WrongSecret(s) => {
                self.admin
                    .set_client_secret(&format!("wrong-{}", uuid::Uuid::new_v4().simple()))
                    .await?;
                let slept = self.sleep(Duration::from_secs(s)).await;
                self.admin.set_client_secret(&self.secret).await?;
                slept?;
            }
            Action::Storm(s) => {
                let normal = self.admin.rate_limit().await?;
                self.with_faults(s, &[("rate_limit", (normal / 2.0).into())])
                    .await?;
            }
            Action::AbhaOutage(s) => {
                let set = [
                    ("error_5xx_percent", 100.0.into()),
                    ("error_5xx_scope", "abha".into()),
                ];
                self.with_faults(s, &set).await?;
            }
            Action::HalfErrors(s) => {
                let set = [
                    ("error_5xx_percent", 50.0.into()),
                    ("error_5xx_scope", "abha".into()),
                ];
                self.with_faults(s, &set).await?;
            }
            Action::LongRetryAfter(s) => {
                let normal = self.admin.rate_limit().await?;
                let set = [
                    ("rate_limit", (normal / 2.0).into()),
                    ("retry_after_secs", (LEASE_SECS + 10).into()),
                ];
                self.with_faults(s, &set).await?;
            }
            Action::SkewedClock(s) => {
                let skew = vec![(CLOCK_VAR.to_string(), CLOCK_OFFSET_SECS.to_string())];
                self.replace_worker(0, None, skew).await?;
                let slept = self.sleep(Duration::from_secs(s)).await;
                self.replace_worker(0, None, Vec::new()).await?;
                slept?;
            }
            Action::PostgresDown(s) | Action::PastConsumerTimeout(s) => {
                self.pg.lock().await.stop().await?;
                let slept = self.sleep(Duration::from_secs(s)).await;
                self.pg.lock().await.boot().await?;
                slept?;
            }
            Action::Migrate => {
                let new = self.fleet.lock().await.releases().new.clone();
                let out = new
                    .run("migrate-new", &["migrate".to_string()], 120)
                    .await?;
                eprintln!("[chaos] migrate (new release): {}", out.trim());
            }
            Action::UpgradeWorker(i) => {
                self.replace_worker(i, Some(Release::New), Vec::new())
                    .await?
            }
            Action::UpgradeRelay => {
                self.fleet
                    .lock()
                    .await
                    .replace_relay(Release::New, &self.http)
                    .await?
            }
        }
        Ok(0)
    }

    async fn kill_worker(&self, i: usize) -> Result<i64> {
        let (owner, port) = {
            let mut fleet = self.fleet.lock().await;
            let owner = fleet.kill_worker(i).await?;
            (owner, fleet.workers[i].spec.health_port)
        };
        // Its leases show the calls the kill cut (each may be made again).
        let cut = match crate::db::leased_by(&self.db, &owner).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("[chaos] could not count the killed worker's leases: {e}");
                0
            }
        };
        self.cut_by_kills.fetch_add(cut, Ordering::Relaxed);
        if let Some(port) = port {
            self.wait_healthy(port, 60).await;
        }
        Ok(cut)
    }

    /// Worker `i` restarted gracefully on `release` (its current one when None) with `extra`.
    async fn replace_worker(
        &self,
        i: usize,
        release: Option<Release>,
        extra: Vec<(String, String)>,
    ) -> Result<()> {
        let mut fleet = self.fleet.lock().await;
        let release = release.unwrap_or(fleet.worker_release[i]);
        fleet.replace_worker(i, release, extra, &self.http).await
    }

    /// Sets the sandbox's faults `set` for `secs`, then puts back what they were (the faults
    /// are read and written back whole: a partial `PUT /sandbox/faults` resets what it leaves
    /// out).
    async fn with_faults(&self, secs: u64, set: &[(&str, Value)]) -> Result<()> {
        let before = self.admin.faults().await?;
        let mut during = before.clone();
        for (k, v) in set {
            during[*k] = v.clone();
        }
        self.admin.put_faults(&during).await?;
        let slept = self.sleep(Duration::from_secs(secs)).await;
        self.admin.put_faults(&before).await?;
        slept
    }

    /// Polls `/healthz` until it answers (bounded; a worker that cannot start, e.g. while
    /// Postgres restarts, is the supervisor's to restart).
    async fn wait_healthy(&self, port: u16, secs: u64) {
        let url = format!("http://127.0.0.1:{port}/healthz");
        let deadline = now() + secs as f64;
        while now() < deadline && !self.stop.is_cancelled() {
            if self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
