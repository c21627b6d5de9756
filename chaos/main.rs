//! `abha-bulk-chaos`: the chaos run behind `scripts/chaos.sh` and docs/reliability.md.
//!
//! It runs the shipped `abha-bulk` binary as real processes (a sandbox with faults on, three
//! `worker --no-relay`, one `relay`) against a PostgreSQL and a RabbitMQ of its own, submits
//! one sample file per job kind with `abha-bulk submit`, injects faults on a schedule (worker
//! and relay kills, server restarts, an ABDM outage, a wrong client secret, a throttling
//! storm; in the full run also the long and partial faults of issue 18 and a rolling upgrade
//! from the previous release), waits until every job is final and checks the bounds. Only the
//! binary's CLI and `ABHA_BULK__*` settings drive the pipeline, so the run keeps working while
//! the internals change; figures come from Postgres, RabbitMQ and the sandbox's admin
//! endpoints.
//!
//! ```text
//! abha-bulk-chaos --work-dir /tmp/chaos [--short] [--only FAULT,...] [--rows N] [--rate R]
//!                 [--upgrade | --no-upgrade | --binary-all-previous] [--previous-bin PATH]
//! ```
//! Exit status: 0 when every bound held, 1 when one broke, 2 when the run itself failed.

mod db;
mod error;
mod fault_bounds;
mod fleet;
mod inject;
mod measure;
mod procs;
mod proxy;
mod rabbit;
mod releases;
mod report;
mod sandbox_api;
mod schedule;
mod second;
mod services;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::inject::Chaos;
use crate::schedule::{FAULT_IDS, Plan, now};
use crate::setup::Mode;

/// Options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "abha-bulk-chaos",
    about = "Chaos run of abha-bulk against real processes"
)]
pub struct Opts {
    /// Each fault once on 3 000 rows (CI; about 3 minutes).
    #[arg(long)]
    pub short: bool,
    /// Folder for the run's servers, logs and samples (scripts/chaos.sh creates and removes it).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// The abha-bulk binary (default: the one beside this binary).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Rows over the nine kinds (default 20 000, short 3 000, --only: enough for its plan).
    #[arg(long)]
    pub rows: Option<usize>,
    /// The sandbox's normal rate limit, and the workers' worker.rate_per_second (default 50,
    /// short 30).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// The sandbox's RSA key size (small: its decryption would dominate a 2-core machine).
    #[arg(long, default_value_t = 1024)]
    pub key_bits: usize,
    /// Port of the run's own PostgreSQL.
    #[arg(long, default_value_t = 5433)]
    pub pg_port: u16,
    /// AMQP port of the run's own RabbitMQ node.
    #[arg(long, default_value_t = 5673)]
    pub amqp_port: u16,
    /// Erlang distribution port of that node.
    #[arg(long, default_value_t = 25673)]
    pub amqp_dist_port: u16,
    /// Longest recovery after a fault that passes.
    #[arg(long, default_value_t = 30.0)]
    pub max_recovery_secs: f64,
    /// Give up this many seconds after the start when jobs are still open (default 1200,
    /// short 240, --only: its last fault's end + 200). The short run's work lasts 175 to 190 s
    /// on a quiet machine (CI's 2 cores build and test beside nothing); 200 left no room for
    /// the AIMD's slow climb back after the storm on a busier one, and the limit guards
    /// against a hang, not the pace (the recoveries are bounded on their own).
    #[arg(long)]
    pub time_limit_secs: Option<u64>,
    /// Only these faults (comma-separated), each once with the full run's duration, 20 s
    /// apart, at 30/s on enough rows to last until 40 s after the last (at least 3 000)
    /// unless --rows/--rate say otherwise: worker-kill,
    /// relay-kill, rabbit-restart, postgres-restart, outage, wrong-secret, storm,
    /// abha-outage, half-errors, skewed-clock, postgres-down, consumer-timeout,
    /// long-retry-after, upgrade.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(FAULT_IDS))]
    pub only: Option<Vec<String>>,
    /// Start workers and relay on the previous release (56dcb3c) and replace them one by one
    /// mid-run, after the new release's `migrate` (on by default in the full run).
    #[arg(long, conflicts_with_all = ["no_upgrade", "binary_all_previous"])]
    pub upgrade: bool,
    /// No rolling upgrade: every process on the new release from the start.
    #[arg(long, conflicts_with = "binary_all_previous")]
    pub no_upgrade: bool,
    /// Every process (workers, relay, migrate, submit, the second programme) on the previous
    /// release throughout, the same faults: the "before" figures.
    #[arg(long)]
    pub binary_all_previous: bool,
    /// The previous release's `abha-bulk` (default: what scripts/previous-release.sh prints,
    /// building it once).
    #[arg(long)]
    pub previous_bin: Option<PathBuf>,
}

impl Opts {
    fn mode(&self) -> &'static str {
        if self.only.is_some() {
            "custom"
        } else if self.short {
            "short"
        } else {
            "full"
        }
    }
    /// Short and custom runs are small.
    fn small(&self) -> bool {
        self.short || self.only.is_some()
    }
    /// A custom run has work until 40 s after its last fault (at least 3 000 rows).
    fn rows(&self) -> usize {
        self.rows.unwrap_or(if self.only.is_some() {
            let needed = self.rate() * (self.plan().end() + 40) as f64;
            ((needed / 1000.0).ceil() as usize * 1000).max(3_000)
        } else if self.short {
            3_000
        } else {
            20_000
        })
    }
    fn rate(&self) -> f64 {
        self.rate.unwrap_or(if self.small() { 30.0 } else { 50.0 })
    }
    fn releases(&self) -> Mode {
        let only_upgrade = self
            .only
            .as_ref()
            .is_some_and(|o| o.iter().any(|i| i == "upgrade"));
        if self.binary_all_previous {
            Mode::AllPrevious
        } else if self.upgrade || only_upgrade || (!self.small() && !self.no_upgrade) {
            Mode::Upgrade
        } else {
            Mode::New
        }
    }
    fn plan(&self) -> Plan {
        let plan = match &self.only {
            Some(ids) => Plan::only(&Plan::full(), ids),
            None if self.short => Plan::short(),
            None => Plan::full(),
        };
        if self.releases() == Mode::Upgrade {
            plan.with_upgrade(self.workers)
        } else {
            plan
        }
    }
    fn time_limit(&self) -> u64 {
        self.time_limit_secs.unwrap_or(if self.only.is_some() {
            self.plan().end() + 200
        } else if self.short {
            240
        } else {
            1200
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Opts::parse();
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    match run(&opts, stop).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            eprintln!("chaos: logs of the run: {}/logs", opts.work_dir.display());
            ExitCode::from(2)
        }
    }
}

fn spawn_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        eprintln!("chaos: interrupted, cleaning up");
        stop.cancel();
    });
}

/// The whole run; true when every bound held.
async fn run(opts: &Opts, stop: CancellationToken) -> anyhow::Result<bool> {
    let started = now();
    let plan = opts.plan();
    let mode = opts.releases();
    let mut env = setup::Env::start(opts, mode, plan.has("consumer-timeout"), stop.clone())
        .await
        .context("setting up the run")?;
    println!(
        "chaos {} run ({}): {} rows of 9 kinds, {} workers + relay, sandbox limit {}/s (workers at the same rate), \
         faults 1 % 5xx, 0.3 % lost answers, 0.3 % dropped connections; schedule {:?}{}",
        opts.mode(),
        match mode {
            Mode::New => "new release",
            Mode::Upgrade => "rolling upgrade from the previous release",
            Mode::AllPrevious => "every process on the previous release",
        },
        opts.rows(),
        opts.workers,
        opts.rate(),
        plan.steps
            .iter()
            .map(|(t, a)| format!("t+{t}s {}", a.name()))
            .collect::<Vec<_>>(),
        plan.kill_every
            .map(|s| format!(", a worker killed every {s} s"))
            .unwrap_or_default()
    );
    let t0 = env.submit_all().await.context("submitting the samples")?;
    let chaos = env.chaos.clone();
    // The second programme joins during the faults (its submit happens inside drive's time).
    let second = tokio::spawn({
        let (launcher, work) = (env.launcher().clone(), opts.work_dir.clone());
        let population = 1_000_000.max(opts.rows() as u64 * 3);
        let rows = if opts.small() { 150 } else { 600 };
        async move { second::run(&launcher, &work, population, rows, t0).await }
    });
    let outcome = drive(&chaos, &plan, t0, opts.time_limit()).await;
    let mut figures = env.figures(t0, outcome.as_ref().ok().copied()).await;
    let second = match second.await {
        Ok(Ok((mut s, mut reconcile))) => {
            reconcile.stop(Duration::from_secs(5)).await;
            s.finished = second::finished(&chaos.db).await.ok().flatten();
            Some(s)
        }
        Ok(Err(e)) => {
            eprintln!("[chaos] the second programme could not run: {e}");
            None
        }
        Err(e) => {
            eprintln!("[chaos] the second programme's task failed: {e}");
            None
        }
    };
    if let Ok(f) = &mut figures {
        f.second = second;
    }
    env.shutdown().await;
    outcome.context("running the schedule")?;
    let figures = figures.context("reading the figures")?;
    let bounds = measure::bounds(&figures, opts.max_recovery_secs, opts.rate());
    println!(
        "\nwall time: {:.0} s (setup and submit {:.0} s)",
        now() - started,
        t0 - started
    );
    report::print(opts.mode(), &figures, &bounds);
    Ok(bounds.iter().all(|b| b.ok))
}

/// Runs the schedule beside a supervisor and a progress line until every job is final or the
/// time limit passes; the unix second the last job was seen final (or the limit hit).
async fn drive(chaos: &Arc<Chaos>, plan: &Plan, t0: f64, limit: u64) -> error::Result<f64> {
    let steps = tokio::spawn({
        let (c, p) = (chaos.clone(), plan.clone());
        async move { c.run_steps(&p, t0).await }
    });
    let killer = plan.kill_every.map(|every| {
        let (c, until) = (chaos.clone(), t0 + plan.end() as f64);
        tokio::spawn(async move { c.kill_loop(every, t0, until).await })
    });
    let mut last_print = now();
    let mut last_done = 0i64;
    let result = loop {
        if chaos.sleep(Duration::from_secs(1)).await.is_err() {
            break Err(error::ChaosError::Interrupted);
        }
        match chaos.fleet.lock().await.supervise() {
            Ok(restarted) if !restarted.is_empty() => {
                eprintln!("[chaos] restarted after an unplanned exit: {restarted:?}");
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        let faults_done = steps.is_finished() && killer.as_ref().is_none_or(|k| k.is_finished());
        let progress = crate::db::progress(&chaos.db).await.ok();
        if let Some(p) = progress
            && now() - last_print >= 5.0
        {
            eprintln!(
                "[chaos] t+{:.0}s: {}/{} jobs final, {} open, {:.1} jobs/s",
                now() - t0,
                p.done(),
                p.accepted,
                p.open,
                (p.done() - last_done) as f64 / (now() - last_print)
            );
            last_print = now();
            last_done = p.done();
        }
        if faults_done
            && progress.is_some_and(|p| p.open == 0 && p.jobs == p.accepted && p.accepted > 0)
        {
            break Ok(now());
        }
        if now() - t0 > limit as f64 {
            eprintln!("[chaos] time limit of {limit} s reached with jobs still open");
            break Ok(now());
        }
    };
    // Ends the schedule (restoring any switch it had turned) when the run stops early.
    if result.is_err() || !steps.is_finished() {
        chaos.stop.cancel();
    }
    for task in std::iter::once(steps).chain(killer) {
        match task.await {
            Ok(Err(error::ChaosError::Interrupted)) | Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(error::ChaosError::Command {
                    what: "the schedule".into(),
                    detail: e.to_string(),
                });
            }
        }
    }
    result
}
