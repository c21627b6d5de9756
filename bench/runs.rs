//! The benchmarks of issue 10, each on real processes (see [`crate::rig`]): throughput with
//! N workers, the rate held with N workers, overload, and `submit` on large files.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::measure::{Probe, cpu_secs, peak_rss_mib};
use crate::rig::{Rig, RigOpts, Services};

/// One throughput run.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Worker processes.
    pub workers: usize,
    /// Jobs final.
    pub jobs: i64,
    /// Jobs not succeeded (must be 0).
    pub not_succeeded: i64,
    /// Seconds from `submit` returning to the last job final.
    pub secs: f64,
    /// `submit`'s own wall time.
    pub submit_secs: f64,
    /// Milliseconds from `submit` returning to the sandbox's first ABHA API request
    /// (negative: it came before `submit` had exited).
    pub first_call_ms: f64,
    /// User + system CPU of the worker (and relay) processes, per job, ms.
    pub cpu_ms_per_job: f64,
    /// Postgres commits of the run's database per job (submit included).
    pub commits_per_job: f64,
}

impl Throughput {
    /// Jobs per second.
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.secs
    }
}

/// Polls the sandbox until its first ABHA API request; ms since `since`.
async fn first_call(rig: &Rig, since: Instant, before: u64) -> Result<f64> {
    let deadline = since + Duration::from_secs(30);
    loop {
        if api_requests(rig).await? > before {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        if Instant::now() > deadline {
            return Ok(f64::NAN);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// ABHA API requests the sandbox received so far.
async fn api_requests(rig: &Rig) -> Result<u64> {
    Ok(rig
        .admin
        .calls()
        .await?
        .received
        .get("api")
        .copied()
        .unwrap_or(0))
}

/// Rows of `file` (its lines minus the header).
pub fn rows_of(file: &Path) -> i64 {
    std::fs::read_to_string(file).map_or(0, |s| s.lines().count() as i64 - 1)
}

/// Submits `file` to a fresh rig of `opts` and measures until every job is final.
pub async fn throughput(services: &Services, opts: &RigOpts, file: &Path) -> Result<Throughput> {
    let rows = rows_of(file);
    let rig = Rig::start(services, opts).await?;
    let result = measure_throughput(&rig, opts, file, rows).await;
    rig.stop().await;
    result
}

async fn measure_throughput(
    rig: &Rig,
    opts: &RigOpts,
    file: &Path,
    rows: i64,
) -> Result<Throughput> {
    let mut probe = Probe::connect(&rig.db_url, &rig.db).await?;
    // Let the processes' start-up commits (migrate, sessions, budget rows) reach the counter.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits0 = probe.commits().await?;
    let own0 = probe.own_commits;
    let pids = rig.pipeline_pids();
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let api0 = api_requests(rig).await?;
    let submit_secs = rig.submit(file).await?;
    let t0 = Instant::now();
    let first_call_ms = if api_requests(rig).await? > api0 {
        -1.0
    } else {
        first_call(rig, t0, api0).await?
    };
    let p = probe
        .wait_final(rows, Duration::from_millis(50), Duration::from_secs(1800))
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits1 = probe.commits().await?;
    let own = probe.own_commits - own0;
    probe.close().await;
    let jobs = p.finished;
    let t = Throughput {
        workers: opts.workers,
        jobs,
        not_succeeded: p.not_succeeded,
        secs,
        submit_secs,
        first_call_ms,
        cpu_ms_per_job: (cpu1 - cpu0) * 1000.0 / jobs.max(1) as f64,
        commits_per_job: commits1.saturating_sub(commits0).saturating_sub(own) as f64
            / jobs.max(1) as f64,
    };
    println!(
        "throughput: {} worker process(es){}: {} jobs final in {:.2} s = {:.0} jobs/s ({} not succeeded); \
         submit {:.2} s; first ABDM call {}; worker CPU {:.3} ms/job; \
         {:.2} Postgres commits/job",
        t.workers,
        if opts.separate_relay { " + relay" } else { "" },
        t.jobs,
        t.secs,
        t.rate(),
        t.not_succeeded,
        t.submit_secs,
        if t.first_call_ms < 0.0 {
            // The relay publishes the batch's first jobs while `submit` is still exiting.
            "before submit returned".to_string()
        } else {
            format!("{:.0} ms after submit returned", t.first_call_ms)
        },
        t.cpu_ms_per_job,
        t.commits_per_job
    );
    Ok(t)
}

/// One rate-limited run.
#[derive(Debug, Clone)]
pub struct Rated {
    /// Worker processes.
    pub workers: usize,
    /// ABDM's (the sandbox's) limit, calls/s.
    pub limit: f64,
    /// `worker.rate_per_second`.
    pub configured: f64,
    /// Jobs.
    pub jobs: i64,
    /// Jobs not succeeded.
    pub not_succeeded: i64,
    /// Seconds from `submit` returning to the last job final.
    pub secs: f64,
    /// Requests the sandbox received (sessions and certificates included).
    pub calls: u64,
    /// Rate tokens the workers dropped because a claim outlasted `PREPAID_FRESH` (their
    /// `abha_ratelimit_stale_tokens_total`): each is a slot of the rate left unused.
    pub stale_tokens: u64,
    /// ABDM-1022 answers.
    pub throttled: u64,
    /// Per second of the run: (second, requests, throttled answers, the shared AIMD rate).
    pub timeline: Vec<(f64, u64, u64, Option<f64>)>,
}

impl Rated {
    /// Wall time against rows ÷ limit, in percent.
    pub fn over_ideal_percent(&self) -> f64 {
        (self.secs / (self.jobs as f64 / self.limit) - 1.0) * 100.0
    }

    /// Throttled answers in percent of every call.
    pub fn throttled_percent(&self) -> f64 {
        self.throttled as f64 * 100.0 / self.calls.max(1) as f64
    }
}

/// `rows` jobs with `configured` calls/s against a sandbox limit of `limit`.
pub async fn rated(
    services: &Services,
    workers: usize,
    configured: f64,
    limit: f64,
    file: &Path,
) -> Result<Rated> {
    let opts = RigOpts {
        workers,
        rate: Some(configured),
        sandbox_limit: limit,
        ..RigOpts::default()
    };
    let rig = Rig::start(services, &opts).await?;
    let result = measure_rated(&rig, &opts, limit, file).await;
    rig.stop().await;
    result
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn measure_rated(rig: &Rig, opts: &RigOpts, limit: f64, file: &Path) -> Result<Rated> {
    let rows = rows_of(file);
    let mut probe = Probe::connect(&rig.db_url, &rig.db).await?;
    let before = rig.admin.calls().await?;
    let received0: u64 = before.received.values().sum();
    let throttled0 = before.answers.get("ABDM-1022").copied().unwrap_or(0);
    rig.submit(file).await?;
    let t0 = Instant::now();
    let unix0 = now_unix();
    let mut rates = Vec::new();
    let mut next_sample = Instant::now();
    let p = loop {
        let p = probe.progress().await?;
        if p.total >= rows && p.finished >= p.total {
            break p;
        }
        if Instant::now() >= next_sample {
            rates.push((now_unix().floor() as u64, probe.shared_rate().await?));
            next_sample += Duration::from_secs(1);
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(crate::error::ChaosError::Timeout {
                what: format!("{} of {rows} rate-limited jobs final", p.finished),
                secs: 1800,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    probe.close().await;
    let after = rig.admin.calls().await?;
    let seconds = rig.admin.timeline(unix0 as u64).await?;
    let timeline = seconds
        .iter()
        .map(|s| {
            let rate = rates.iter().find(|(t, _)| *t == s.t).and_then(|(_, r)| *r);
            (
                s.t as f64 - unix0,
                s.received.values().sum::<u64>(),
                s.answers.get("ABDM-1022").copied().unwrap_or(0),
                rate,
            )
        })
        .collect();
    let stale_tokens = rig
        .worker_counter("abha_ratelimit_stale_tokens_total")
        .await;
    let r = Rated {
        stale_tokens,
        workers: opts.workers,
        limit,
        configured: opts.rate.unwrap_or(0.0),
        jobs: p.finished,
        not_succeeded: p.not_succeeded,
        secs,
        calls: after.received.values().sum::<u64>() - received0,
        throttled: after.answers.get("ABDM-1022").copied().unwrap_or(0) - throttled0,
        timeline,
    };
    println!(
        "rated: {} worker process(es), configured {}/s, ABDM limit {}/s: {} jobs in {:.2} s vs rows/limit {:.2} s ({:+.1} %); \
         {} calls, {} throttled ({:.2} %), {} stale tokens dropped; {} not succeeded",
        r.workers,
        r.configured,
        r.limit,
        r.jobs,
        r.secs,
        r.jobs as f64 / r.limit,
        r.over_ideal_percent(),
        r.calls,
        r.throttled,
        r.throttled_percent(),
        r.stale_tokens,
        r.not_succeeded
    );
    // Per second, for reading a run (the overload picture draws the same series).
    let seconds: Vec<String> = r
        .timeline
        .iter()
        .map(|(t, calls, throttled, rate)| match rate {
            Some(rate) => format!("{t:.0}:{calls}/{throttled}@{rate:.0}"),
            None => format!("{t:.0}:{calls}/{throttled}"),
        })
        .collect();
    println!(
        "  per second (s:calls/throttled@shared rate): {}",
        seconds.join(" ")
    );
    Ok(r)
}

/// One `abha-bulk submit` of a large file.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Rows in the file.
    pub rows: i64,
    /// Jobs stored.
    pub jobs: i64,
    /// Wall time of the process.
    pub secs: f64,
    /// Its peak resident set size, MiB.
    pub peak_rss_mib: f64,
}

/// Runs the shipped `abha-bulk submit` on `file` (no workers) and samples its memory.
pub async fn submit(services: &Services, file: &Path) -> Result<Submitted> {
    let rig = Rig::start(services, &RigOpts::default()).await?;
    let result = measure_submit(&rig, file).await;
    rig.stop().await;
    result
}

async fn measure_submit(rig: &Rig, file: &Path) -> Result<Submitted> {
    let rows = rows_of(file);
    let t0 = Instant::now();
    let mut p = rig.spawn_submit(file)?;
    let mut peak: f64 = 0.0;
    while !p.exited() {
        if let Some(pid) = p.pid() {
            peak = peak.max(peak_rss_mib(pid));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut probe = Probe::connect(&rig.db_url, &rig.db).await?;
    let jobs = probe.progress().await?.total;
    probe.close().await;
    let s = Submitted {
        rows,
        jobs,
        secs,
        peak_rss_mib: peak,
    };
    println!(
        "submit: {} rows ({} jobs stored) in {:.2} s = {:.0} rows/s; peak RSS {:.0} MiB",
        s.rows,
        s.jobs,
        s.secs,
        s.rows as f64 / s.secs,
        s.peak_rss_mib
    );
    Ok(s)
}
