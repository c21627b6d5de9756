//! A second programme during the faults (issue 17): the run's main programme
//! (`DEMO-BENEFIT`) weighs 3, `COVIN` weighs 1 (`benefits.weights` in the run's
//! `config/chaos.toml`); while the faults run, a small `COVIN` batch is submitted and a
//! `reconcile` of `COVIN` looks its roster up beside the fleet. The bounds: the small batch is
//! final within its fair-share time plus the faults it lived through (and the allowed
//! recovery), and the reconcile's look-ups are the only calls the allowance adds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Result, io, sql};
use crate::procs::{Launcher, Proc, Spec};
use crate::schedule::now;

/// The second programme (a default sandbox benefit).
pub const PROGRAMME: &str = "COVIN";
/// The main programme's weight beside it (COVIN weighs 1).
pub const MAIN_WEIGHT: f64 = 3.0;
/// Seconds after the start at which the small batch is submitted (inside the faults).
const AFTER: u64 = 12;

/// What the run's settings file must say.
pub fn config_toml() -> String {
    format!(
        "[benefits]\nweights = {{ \"{}\" = {MAIN_WEIGHT} }}\n",
        crate::setup::BENEFIT
    )
}

/// What happened to the second programme.
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Rows of its batch.
    pub rows: u64,
    /// Unix second its submit returned.
    pub submitted: f64,
    /// Unix second its last row was final (`None`: not yet).
    pub finished: Option<f64>,
    /// Roster rows its reconcile looked up (ABDM calls that are no row's).
    pub lookups: u64,
}

/// Writes `rows` link rows of people no sample uses (the top of the population).
fn write_file(dir: &Path, population: u64, rows: u64) -> Result<PathBuf> {
    let pop = abha_bulk::sandbox::Population::new(population, 42);
    let path = dir.join("covin.csv");
    let mut text = String::from("external_ref,abha_number\n");
    for i in 0..rows {
        let index = population - 1 - i;
        text.push_str(&format!("C-{i},{}\n", pop.abha(index).expose()));
    }
    std::fs::write(&path, text).map_err(io("writing the second programme's file"))?;
    Ok(path)
}

/// At start + [`AFTER`] s: submits the small batch, then starts the reconcile of its roster
/// (the same people) in the background. Returns the submit's time and the reconcile process.
pub async fn run(
    launcher: &Launcher,
    work: &Path,
    population: u64,
    rows: u64,
    t0: f64,
) -> Result<(Second, Proc)> {
    let file = write_file(work, population, rows)?;
    let wait = (t0 + AFTER as f64 - now()).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let args = [
        "submit".into(),
        file.display().to_string(),
        "--kind".into(),
        "benefit-link".into(),
        "--benefit".into(),
        PROGRAMME.into(),
    ];
    // A submit fails while Postgres is down (a `--only` run may stop it at t+6): tried again
    // every 3 s for 90 s, as an operator would (a submit is one transaction: nothing half done).
    let give_up = now() + 90.0;
    let out = loop {
        match launcher.run("submit-covin", &args, 120).await {
            Ok(out) => break out,
            Err(e) if now() < give_up => {
                eprintln!("[chaos] second programme's submit failed, trying again in 3 s: {e}");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let submitted = now();
    eprintln!(
        "[chaos] t+{:.0}s second programme ({PROGRAMME}, weight 1 beside {MAIN_WEIGHT}): {}",
        submitted - t0,
        out.lines().next().unwrap_or("").trim()
    );
    let reconcile = launcher.spawn(&Spec {
        name: "reconcile-covin".into(),
        args: vec![
            "reconcile".into(),
            "--benefit".into(),
            PROGRAMME.into(),
            "--roster".into(),
            file.display().to_string(),
            "--out".into(),
            work.join("reconcile-covin.csv").display().to_string(),
        ],
        env: Vec::new(),
        health_port: None,
    })?;
    Ok((
        Second {
            rows,
            submitted,
            finished: None,
            lookups: rows,
        },
        reconcile,
    ))
}

/// When the second programme's last row was final (unix seconds), if all are.
pub async fn finished(db: &str) -> Result<Option<f64>> {
    let mut c = crate::db::connect(db).await?;
    let (open, last): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state IN ('queued', 'running', 'retrying')),
                EXTRACT(EPOCH FROM max(finished_at))::float8
         FROM jobs WHERE benefit = $1",
    )
    .bind(PROGRAMME)
    .fetch_one(&mut c)
    .await
    .map_err(sql("the second programme's jobs"))?;
    Ok(if open == 0 { last } else { None })
}

/// Seconds its batch may take: its rows at a quarter of the rate (weight 1 beside 3), plus
/// every second of a fault during its life, plus the allowed recovery.
pub fn allowed_secs(s: &Second, rate: f64, faults: f64, recovery: f64) -> f64 {
    s.rows as f64 / (rate / (1.0 + MAIN_WEIGHT)) + faults + recovery
}
