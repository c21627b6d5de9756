//! `abha-bulk-bench reconcile`: `abha-bulk reconcile` of a large roster against the sandbox
//! (no rate limit at the sandbox, a high operator rate): wall time, ABDM calls per roster
//! row and peak RSS (the constant-memory check of issue 22).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::measure::peak_rss_mib;
use crate::rig::{BENEFIT, POPULATION, Rig, RigOpts, SEED, Services};

/// Writes a roster of `rows` rows: distinct seeded ABHA numbers, except that every 100th row
/// repeats the row before it and every 1000th is not an ABHA number.
pub fn gen_roster(rows: u64, out: &Path) -> anyhow::Result<()> {
    let pop = abha_bulk::sandbox::Population::new(POPULATION, SEED);
    let mut w = csv::Writer::from_path(out)?;
    w.write_record(["external_ref", "abha_number"])?;
    for i in 0..rows {
        let abha = if i % 1000 == 999 {
            "91-123".to_string()
        } else if i % 100 == 99 {
            pop.abha((i - 1) % POPULATION).expose().to_string()
        } else {
            pop.abha(i % POPULATION).expose().to_string()
        };
        w.write_record([format!("R-{i:08}"), abha])?;
    }
    w.flush()?;
    Ok(())
}

/// Runs `abha-bulk reconcile` of `roster` at `rate` lookups/s with `concurrency` in flight,
/// sampling its RSS, and prints the figures.
pub async fn run(services: &Services, roster: &Path, rate: f64, concurrency: usize) -> Result<()> {
    let rows = crate::runs::rows_of(roster).max(0) as u64;
    let rig = Rig::start(
        services,
        &RigOpts {
            workers: 0,
            ..Default::default()
        },
    )
    .await?;
    let result = measure(&rig, roster, rows, rate, concurrency).await;
    rig.stop().await;
    result
}

async fn measure(rig: &Rig, roster: &Path, rows: u64, rate: f64, concurrency: usize) -> Result<()> {
    let before = rig.admin.calls().await?;
    let t0 = Instant::now();
    let out = roster.with_extension("report.csv");
    let mut p = rig.spawn(
        "reconcile",
        &[
            "reconcile",
            "--benefit",
            BENEFIT,
            "--roster",
            &roster.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--force",
        ],
        &[
            ("ABHA_BULK__RECONCILE__RATE_PER_SECOND", rate.to_string()),
            ("ABHA_BULK__RECONCILE__CONCURRENCY", concurrency.to_string()),
        ],
    )?;
    let mut peak: f64 = 0.0;
    while !p.exited() {
        if let Some(pid) = p.pid() {
            peak = peak.max(peak_rss_mib(pid));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = rig.admin.calls().await?;
    let count = |c: &crate::sandbox_api::Calls, k: &str| c.requests.get(k).copied().unwrap_or(0);
    let lookups = count(&after, "benefit_lookup") - count(&before, "benefit_lookup");
    let all: u64 = after.requests.values().sum::<u64>() - before.requests.values().sum::<u64>();
    let report_rows = crate::runs::rows_of(&out);
    let _ = std::fs::remove_file(&out);
    println!("{}", rig.log_tail("reconcile", 8));
    println!(
        "reconcile: {rows} roster rows at reconcile.rate_per_second {rate}, concurrency \
         {concurrency}: {secs:.1} s wall ({:.0} rows/s); {lookups} lookups = {:.3} per row \
         ({all} ABDM requests in all = {:.3} per row); peak RSS {peak:.0} MiB; report {report_rows} rows",
        rows as f64 / secs,
        lookups as f64 / rows as f64,
        all as f64 / rows as f64,
    );
    Ok(())
}
