//! The three workers and the relay, supervised like a deployment would: what the schedule
//! kills is started again at once, and what exits on its own is started again too (and
//! counted: a process that dies of a fault it should have ridden out is a finding).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::procs::{Proc, Spec};
use crate::releases::{Release, Releases};

/// Workers + relay.
pub struct Fleet {
    releases: Releases,
    /// Workers, in order (`worker-1`, ...).
    pub workers: Vec<Proc>,
    /// The release each worker runs.
    pub worker_release: Vec<Release>,
    /// The relay.
    pub relay: Proc,
    /// The release the relay runs.
    pub relay_release: Release,
    /// Exits nobody asked for, per process name.
    pub unplanned_exits: BTreeMap<String, u32>,
    /// Kills done by the schedule.
    pub kills: u32,
}

/// The lease owner name a worker started with `HOSTNAME=<name>` records: `<name>-<pid>`
/// (the new release appends `-<random suffix>`: [`crate::db::leased_by`] matches both).
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

    /// Starts every process on `release` and waits until each is ready.
    pub async fn start(
        releases: Releases,
        release: Release,
        ports: &[u16],
        http: &reqwest::Client,
    ) -> Result<Self> {
        let (worker_specs, relay_spec) = Self::specs(ports);
        let launcher = releases.get(release);
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
            worker_release: vec![release; workers.len()],
            relay_release: release,
            releases,
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
        *w = self.releases.get(self.worker_release[i]).spawn(&spec)?;
        self.kills += 1;
        Ok(owner)
    }

    /// `kill -9` the relay and start it again at once.
    pub async fn kill_relay(&mut self) -> Result<()> {
        self.relay.kill9().await;
        let spec = self.relay.spec.clone();
        self.relay = self.releases.get(self.relay_release).spawn(&spec)?;
        self.kills += 1;
        Ok(())
    }

    /// Starts again whatever exited on its own; the names restarted.
    pub fn supervise(&mut self) -> Result<Vec<String>> {
        let mut restarted = Vec::new();
        let releases = self
            .worker_release
            .iter()
            .copied()
            .chain(std::iter::once(self.relay_release));
        for (p, release) in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.relay))
            .zip(releases)
        {
            if p.exited() {
                let spec = p.spec.clone();
                *self.unplanned_exits.entry(spec.name.clone()).or_default() += 1;
                *p = self.releases.get(release).spawn(&spec)?;
                restarted.push(spec.name);
            }
        }
        Ok(restarted)
    }

    /// Worker `i` stopped gracefully (SIGTERM, as a rolling deploy does) and started again on
    /// `release` with `extra` settings (kept for its restarts until the next call).
    pub async fn replace_worker(
        &mut self,
        i: usize,
        release: Release,
        extra: Vec<(String, String)>,
        http: &reqwest::Client,
    ) -> Result<()> {
        let w = &mut self.workers[i];
        w.stop(Duration::from_secs(10)).await;
        let mut spec = w.spec.clone();
        spec.env.retain(|(k, _)| k != crate::inject::CLOCK_VAR);
        spec.env.extend(extra);
        self.worker_release[i] = release;
        *w = self.releases.get(release).spawn(&spec)?;
        w.ready(http, 60).await
    }

    /// The relay stopped gracefully and started again on `release`.
    pub async fn replace_relay(&mut self, release: Release, http: &reqwest::Client) -> Result<()> {
        self.relay.stop(Duration::from_secs(10)).await;
        let spec = self.relay.spec.clone();
        self.relay_release = release;
        self.relay = self.releases.get(release).spawn(&spec)?;
        self.relay.ready(http, 30).await
    }

    /// Which release each process runs (`worker-1 new, ..., relay new`).
    pub fn describe(&self) -> String {
        self.workers
            .iter()
            .zip(&self.worker_release)
            .map(|(w, r)| format!("{} {}", w.spec.name, r.label()))
            .chain(std::iter::once(format!(
                "relay {}",
                self.relay_release.label()
            )))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How the run starts its one-shot commands, per release.
    pub fn releases(&self) -> &Releases {
        &self.releases
    }

    /// SIGTERM everything (SIGKILL after a grace period).
    pub async fn stop(&mut self) {
        for p in self.workers.iter_mut() {
            p.stop(Duration::from_secs(10)).await;
        }
        self.relay.stop(Duration::from_secs(10)).await;
    }
}
