//! The three workers and the relay, supervised like a deployment would: what the schedule
//! kills is started again at once, and what exits on its own is started again too (and
//! counted: a process that dies of a fault it should have ridden out is a finding).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::procs::{Launcher, Proc, Spec};

/// Workers + relay.
pub struct Fleet {
    launcher: Launcher,
    /// Workers, in order (`worker-1`, ...).
    pub workers: Vec<Proc>,
    /// The relay.
    pub relay: Proc,
    /// Exits nobody asked for, per process name.
    pub unplanned_exits: BTreeMap<String, u32>,
    /// Kills done by the schedule.
    pub kills: u32,
}

/// The lease owner name a worker started with `HOSTNAME=<name>` records: `<name>-<pid>`.
pub fn lease_owner(name: &str, pid: u32) -> String {
    format!("{name}-{pid}")
}

impl Fleet {
    /// Specs of `n` workers listening for `/healthz` on `ports`, and of the relay.
    pub fn specs(ports: &[u16]) -> (Vec<Spec>, Spec) {
        let workers = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("worker-{}", i + 1);
                Spec {
                    args: vec!["worker".into(), "--no-relay".into()],
                    env: vec![
                        (
                            "ABHA_BULK__WORKER__HTTP_LISTEN".into(),
                            format!("127.0.0.1:{port}"),
                        ),
                        // The lease owner is HOSTNAME-pid: makes a killed worker's leases
                        // countable.
                        ("HOSTNAME".into(), format!("chaos-{name}")),
                    ],
                    name,
                    health_port: Some(*port),
                }
            })
            .collect();
        let relay = Spec {
            name: "relay".into(),
            args: vec!["relay".into()],
            env: Vec::new(),
            health_port: None,
        };
        (workers, relay)
    }

    /// Starts every process and waits until each is ready.
    pub async fn start(launcher: Launcher, ports: &[u16], http: &reqwest::Client) -> Result<Self> {
        let (worker_specs, relay_spec) = Self::specs(ports);
        let mut relay = launcher.spawn(&relay_spec)?;
        let mut workers = Vec::new();
        for s in &worker_specs {
            workers.push(launcher.spawn(s)?);
        }
        relay.ready(http, 30).await?;
        for w in &mut workers {
            w.ready(http, 60).await?;
        }
        Ok(Self {
            launcher,
            workers,
            relay,
            unplanned_exits: BTreeMap::new(),
            kills: 0,
        })
    }

    /// `kill -9` worker `i` and start it again at once; the killed worker's lease owner name.
    pub async fn kill_worker(&mut self, i: usize) -> Result<String> {
        let w = &mut self.workers[i];
        let owner = lease_owner(
            &format!("chaos-{}", w.spec.name),
            w.pid().unwrap_or_default(),
        );
        w.kill9().await;
        let spec = w.spec.clone();
        *w = self.launcher.spawn(&spec)?;
        self.kills += 1;
        Ok(owner)
    }

    /// `kill -9` the relay and start it again at once.
    pub async fn kill_relay(&mut self) -> Result<()> {
        self.relay.kill9().await;
        let spec = self.relay.spec.clone();
        self.relay = self.launcher.spawn(&spec)?;
        self.kills += 1;
        Ok(())
    }

    /// Starts again whatever exited on its own; the names restarted.
    pub fn supervise(&mut self) -> Result<Vec<String>> {
        let mut restarted = Vec::new();
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.relay))
        {
            if p.exited() {
                let spec = p.spec.clone();
                *self.unplanned_exits.entry(spec.name.clone()).or_default() += 1;
                *p = self.launcher.spawn(&spec)?;
                restarted.push(spec.name);
            }
        }
        Ok(restarted)
    }

    /// SIGTERM everything (SIGKILL after a grace period).
    pub async fn stop(&mut self) {
        for p in self.workers.iter_mut() {
            p.stop(Duration::from_secs(10)).await;
        }
        self.relay.stop(Duration::from_secs(10)).await;
    }
}
