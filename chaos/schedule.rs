//! The faults, when they happen, and how each is done.
//!
//! Times are seconds after the last file was submitted. Faults of the plan run one after the
//! other (none overlaps another), except the full run's worker kills every 10 s, which run
//! beside them as in a cluster whose pods keep being rescheduled. Every fault is recorded as a
//! [`Window`] (from its start to the moment it was undone) for the recovery figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::{ChaosError, Result};
use crate::fleet::Fleet;
use crate::proxy::Proxy;
use crate::sandbox_api::Admin;
use crate::services::{Postgres, Rabbit};

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `kill -9` worker i (0-based), started again at once.
    KillWorker(usize),
    /// `kill -9` the relay, started again at once.
    KillRelay,
    /// Stop and start the RabbitMQ node.
    RestartRabbit,
    /// `pg_ctl restart`.
    RestartPostgres,
    /// ABDM refuses connections for this many seconds.
    Outage(u64),
    /// The sandbox refuses the workers' client secret for this many seconds.
    WrongSecret(u64),
    /// The sandbox's rate limit is halved for this many seconds.
    Storm(u64),
}

impl Action {
    /// Name in the figures.
    pub fn name(&self) -> String {
        match self {
            Self::KillWorker(i) => format!("kill -9 worker-{}", i + 1),
            Self::KillRelay => "kill -9 relay".into(),
            Self::RestartRabbit => "RabbitMQ restart".into(),
            Self::RestartPostgres => "Postgres restart".into(),
            Self::Outage(s) => format!("ABDM outage {s} s"),
            Self::WrongSecret(s) => format!("wrong secret {s} s"),
            Self::Storm(s) => format!("throttling storm {s} s"),
        }
    }
}

/// The schedule of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (seconds after the start, fault), in time order.
    pub steps: Vec<(u64, Action)>,
    /// Kill -9 a worker (in turn) this often until the last step has ended.
    pub kill_every: Option<u64>,
}

impl Plan {
    /// `--short`: each fault once, within 140 s (the work lasts about 190 s at 30/s, so every
    /// fault hits a busy pipeline). The storm starts 27 s after the wrong secret ends: the
    /// breaker's probe backs off, so that recovery takes 5 to 24 s, and a storm that begins
    /// while the breaker is still open measures a cold start, not convergence. The storm lasts 30 s, not 15: AIMD has to probe for the
    /// halved limit once, and a probe that finds it costs the two or three calls then in
    /// flight; over 13 s at 15/s (about 190 calls) that alone is 1 %, so a 15 s storm could not
    /// tell a converged rate from a sawing one (CI saw 2 of 191 on a run that had converged).
    pub fn short() -> Self {
        Self {
            steps: vec![
                (6, Action::KillWorker(0)),
                (12, Action::KillRelay),
                // A node stop takes about 10 s and drops the connections at its end: the
                // Postgres restart comes 10 s after that, and the outage 12 s after it, so each
                // recovery is measured on its own.
                (16, Action::RestartRabbit),
                (36, Action::RestartPostgres),
                (48, Action::Outage(15)),
                (73, Action::WrongSecret(10)),
                (110, Action::Storm(30)),
            ],
            kill_every: None,
        }
    }

    /// The full run: a worker killed every 10 s throughout, a 60 s outage; the work lasts
    /// about 9 minutes at 50/s.
    pub fn full() -> Self {
        Self {
            steps: vec![
                (25, Action::KillRelay),
                (45, Action::RestartRabbit),
                (75, Action::RestartPostgres),
                (100, Action::Outage(60)),
                (190, Action::WrongSecret(20)),
                (235, Action::Storm(30)),
                (280, Action::KillRelay),
            ],
            kill_every: Some(10),
        }
    }

    /// Seconds after the start when the last fault has ended (planned).
    pub fn end(&self) -> u64 {
        self.steps
            .iter()
            .map(|(at, a)| {
                at + match a {
                    Action::Outage(s) | Action::WrongSecret(s) | Action::Storm(s) => *s,
                    _ => 0,
                }
            })
            .max()
            .unwrap_or(0)
    }
}

/// A fault as it happened (unix seconds).
#[derive(Debug, Clone)]
pub struct Window {
    /// What.
    pub action: Action,
    /// When it began.
    pub start: f64,
    /// When it was undone (process ready again, server back, switch restored).
    pub end: f64,
}

/// Now, unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

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
            self.act(*action).await?;
            let end = now();
            self.windows.lock().await.push(Window {
                action: *action,
                start,
                end,
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
            self.act(action).await?;
            self.windows.lock().await.push(Window {
                action,
                start,
                end: now(),
            });
            k += 1;
        }
    }

    async fn act(&self, action: Action) -> Result<()> {
        match action {
            Action::KillWorker(i) => {
                let (owner, port) = {
                    let mut fleet = self.fleet.lock().await;
                    let owner = fleet.kill_worker(i).await?;
                    (owner, fleet.workers[i].spec.health_port)
                };
                // Its leases show the calls the kill cut (each may be made again).
                match crate::db::leased_by(&self.db, &owner).await {
                    Ok(n) => {
                        self.cut_by_kills.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("[chaos] could not count the killed worker's leases: {e}"),
                }
                if let Some(port) = port {
                    self.wait_healthy(port, 60).await;
                }
            }
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
                self.admin.set_rate_limit(normal / 2.0).await?;
                let slept = self.sleep(Duration::from_secs(s)).await;
                self.admin.set_rate_limit(normal).await?;
                slept?;
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_in_time_order_and_faults_do_not_overlap() {
        for plan in [Plan::short(), Plan::full()] {
            let mut free_from = 0;
            for (at, a) in &plan.steps {
                assert!(
                    *at >= free_from,
                    "{} starts before the previous fault ended",
                    a.name()
                );
                free_from = at
                    + match a {
                        Action::Outage(s) | Action::WrongSecret(s) | Action::Storm(s) => *s,
                        // A RabbitMQ restart takes several seconds.
                        Action::RestartRabbit => 8,
                        _ => 1,
                    };
            }
        }
        assert_eq!(Plan::short().end(), 140);
        let short = Plan::short();
        for kind in [
            "kill -9 worker",
            "relay",
            "RabbitMQ",
            "Postgres",
            "outage",
            "secret",
            "storm",
        ] {
            assert_eq!(
                short
                    .steps
                    .iter()
                    .filter(|(_, a)| a.name().contains(kind))
                    .count(),
                1,
                "short mode runs each fault once: {kind}"
            );
        }
    }
}
