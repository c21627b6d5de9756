//! The fair-share benchmarks of issue 17, on real processes with shipped defaults (one worker
//! at R, the sandbox limited to R): a small batch of another programme behind a big one, two
//! backlogged programmes with weights 1 and 3, a batch beside a running reconcile, and the
//! messages RabbitMQ holds while a 20 000-row batch runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::error::{ChaosError, Result, sql};
use crate::rig::{Rig, RigOpts, Services};

/// A programme of the sandbox's defaults (besides `DEMO-BENEFIT`).
const BIG: &str = "PMJAY";
/// The other one.
const SMALL: &str = "COVIN";

/// A generated link file, removed when dropped.
struct File(PathBuf);

impl File {
    fn people(from: u64, rows: u64) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "abha-fair-{from}-{rows}-{}.csv",
            uuid::Uuid::new_v4().simple()
        ));
        crate::gen_people(from, rows, &path).map_err(|e| ChaosError::Command {
            what: "generating a file".into(),
            detail: e.to_string(),
        })?;
        Ok(Self(path))
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Extra settings of this run (`--set`), for every process.
static EXTRA: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

fn rig_opts(rate: f64) -> RigOpts {
    RigOpts {
        workers: 1,
        rate: Some(rate),
        sandbox_limit: rate,
        env: EXTRA.get().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

async fn db(rig: &Rig) -> Result<PgConnection> {
    PgConnection::connect(&rig.db_url)
        .await
        .map_err(sql("connecting to the run's database"))
}

/// Final jobs of `programme`'s batches.
async fn finals(c: &mut PgConnection, programme: &str) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE benefit = $1
         AND state IN ('succeeded', 'failed', 'dead', 'cancelled')",
    )
    .bind(programme)
    .fetch_one(c)
    .await
    .map_err(sql("counting final jobs"))
}

/// Ready messages in the run's work queue.
async fn ready(services: &Services, queue: &str) -> u32 {
    tokio::time::timeout(Duration::from_secs(2), ready_now(services, queue))
        .await
        .unwrap_or(0)
}

async fn ready_now(services: &Services, queue: &str) -> u32 {
    let url = format!("amqp://guest:guest@{}/%2f", services.amqp);
    let Ok(conn) = abha_bulk::queue::connect(&url).await else {
        return 0;
    };
    let n = match conn.create_channel().await {
        Ok(ch) => ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .map_or(0, |q| q.message_count()),
        Err(_) => 0,
    };
    let _ = conn.close(200, "depth read".into()).await;
    n
}

/// A 50-row batch of another programme submitted 3 s after a `big`-row batch: seconds from
/// its `submit` returning until its last row is final.
pub async fn small_behind(services: &Services, rate: f64, big: u64) -> Result<f64> {
    let big_file = File::people(0, big)?;
    let small_file = File::people(1_900_000, 50)?;
    let rig = Rig::start(services, &rig_opts(rate)).await?;
    let result = async {
        let t = Instant::now();
        rig.submit_for(&big_file.0, BIG).await?;
        eprintln!(
            "[fair] {big} rows of {BIG} submitted in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        rig.submit_for(&small_file.0, SMALL).await?;
        let returned = Instant::now();
        let mut c = db(&rig).await?;
        let mut deepest = 0;
        let mut first = None;
        loop {
            let n = finals(&mut c, SMALL).await?;
            if n > 0 && first.is_none() {
                first = Some(returned.elapsed().as_secs_f64());
            }
            if n >= 50 {
                break;
            }
            if returned.elapsed() > Duration::from_secs(600) {
                return Err(ChaosError::Timeout {
                    what: "the small batch".into(),
                    secs: 600,
                });
            }
            deepest = deepest.max(ready(services, &rig.work_queue()).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = returned.elapsed().as_secs_f64();
        let done_big = finals(&mut c, BIG).await?;
        let (attempts, spread): (i32, f64) = sqlx::query_as(
            "SELECT max(attempts), EXTRACT(EPOCH FROM max(finished_at) - min(finished_at))::float8
             FROM jobs WHERE benefit = $1",
        )
        .bind(SMALL)
        .fetch_one(&mut c)
        .await
        .map_err(sql("the small batch's attempts"))?;
        eprintln!("[fair] small batch: at most {attempts} attempts per row; first to last final {spread:.2} s");
        println!(
            "small batch (50 rows of {SMALL}) behind {big} rows of {BIG}, R = {rate}: final {secs:.2} s after its submit returned (first row final after {:.2} s; {done_big} rows of the big batch final meanwhile; at most {deepest} ready messages seen)",
            first.unwrap_or(f64::NAN)
        );
        Ok(secs)
    }
    .await;
    rig.stop().await;
    result
}

/// Two backlogged programmes with weights 1 and 3: their rates over `secs` after both run.
pub async fn weights(services: &Services, rate: f64, secs: u64) -> Result<(f64, f64)> {
    let rows = (rate * (secs as f64 + 20.0)) as u64;
    let a = File::people(0, rows)?;
    let b = File::people(1_000_000, rows)?;
    let opts = RigOpts {
        config_toml: Some(format!("[benefits]\nweights = {{ \"{SMALL}\" = 3 }}\n")),
        ..rig_opts(rate)
    };
    let rig = Rig::start(services, &opts).await?;
    let result = async {
        rig.submit_for(&a.0, BIG).await?;
        rig.submit_for(&b.0, SMALL).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut c = db(&rig).await?;
        let (a0, b0) = (finals(&mut c, BIG).await?, finals(&mut c, SMALL).await?);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (a1, b1) = (finals(&mut c, BIG).await?, finals(&mut c, SMALL).await?);
        let (ra, rb) = (
            (a1 - a0) as f64 / secs as f64,
            (b1 - b0) as f64 / secs as f64,
        );
        println!(
            "weights 1 ({BIG}) and 3 ({SMALL}), both backlogged, R = {rate}, {secs} s: {ra:.1} and {rb:.1} jobs/s, ratio 1 : {:.3}",
            rb / ra.max(1e-9)
        );
        Ok((ra, rb))
    }
    .await;
    rig.stop().await;
    result
}

/// A batch's rate over `secs` while `reconcile` (shipped 5/s) runs beside it.
pub async fn beside_reconcile(services: &Services, rate: f64, secs: u64) -> Result<f64> {
    let rows = (rate * (secs as f64 + 20.0)) as u64;
    let batch = File::people(0, rows)?;
    let roster = File::people(1_500_000, 2_000)?;
    let rig = Rig::start(services, &rig_opts(rate)).await?;
    let result = async {
        rig.submit_for(&batch.0, BIG).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let out: PathBuf = rig.work_dir().join("reconcile.csv");
        let roster_arg = roster.0.display().to_string();
        let out_arg = out.display().to_string();
        let mut reconcile = rig.spawn_cmd(
            "reconcile",
            &[
                "reconcile",
                "--benefit",
                SMALL,
                "--roster",
                &roster_arg,
                "--out",
                &out_arg,
            ],
        )?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut c = db(&rig).await?;
        let n0 = finals(&mut c, BIG).await?;
        let calls0 = lookups(&rig).await;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let n1 = finals(&mut c, BIG).await?;
        let calls1 = lookups(&rig).await;
        let still = !reconcile.exited();
        reconcile.stop(Duration::from_secs(5)).await;
        let batch_rate = (n1 - n0) as f64 / secs as f64;
        let side = (calls1.saturating_sub(calls0)) as f64 / secs as f64;
        println!(
            "a batch beside a running reconcile (5/s), R = {rate}, {secs} s: batch {batch_rate:.1} jobs/s = {:.1} % of R - 5; ABDM API calls in all {side:.1}/s (reconcile still running at the end: {still})",
            100.0 * batch_rate / (rate - 5.0)
        );
        Ok(batch_rate)
    }
    .await;
    rig.stop().await;
    result
}

/// ABHA API requests the sandbox received in all.
async fn lookups(rig: &Rig) -> u64 {
    rig.admin
        .calls()
        .await
        .map(|c| c.received.get("api").copied().unwrap_or(0))
        .unwrap_or(0)
}

/// The most ready messages RabbitMQ held while a `rows`-row batch ran at R for `secs`.
pub async fn depth(services: &Services, rate: f64, rows: u64, secs: u64) -> Result<u32> {
    let file = File::people(0, rows)?;
    let rig = Rig::start(services, &rig_opts(rate)).await?;
    let result = async {
        rig.submit_for(&file.0, BIG).await?;
        let t = Instant::now();
        let mut deepest = 0;
        while t.elapsed() < Duration::from_secs(secs) {
            deepest = deepest.max(ready(services, &rig.work_queue()).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "messages in RabbitMQ while a {rows}-row batch runs at {rate}/s: at most {deepest} ready (sampled every 0.2 s for {secs} s; plus at most worker.in_flight unacked per worker)"
        );
        Ok(deepest)
    }
    .await;
    rig.stop().await;
    result
}

/// Every figure of issue 17's table that these runs measure (`only`: some of them).
pub async fn all(
    services: &Services,
    rate: f64,
    big: u64,
    only: &[String],
    set: &[(String, String)],
) -> Result<()> {
    let _ = EXTRA.set(set.to_vec());
    let run = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if run("small") {
        small_behind(services, rate, 6_000).await?;
        if big > 0 {
            small_behind(services, rate, big).await?;
        }
    }
    if run("weights") {
        weights(services, rate, 20).await?;
    }
    if run("reconcile") {
        beside_reconcile(services, rate, 20).await?;
    }
    if run("depth") {
        depth(services, rate, 20_000, 20).await?;
    }
    Ok(())
}
