//! `abha-bulk-bench`: the benchmarks behind `bench/RESULTS.md` (run them with `bench/run.sh`).
//!
//! Every figure comes from the shipped `abha-bulk` binary running as separate processes with
//! its shipped defaults (`config/default.toml`), set up only through documented settings:
//! a sandbox with a 1024-bit key, N `abha-bulk worker` processes (each running the outbox relay,
//! as shipped) and `abha-bulk submit`, against this machine's PostgreSQL and RabbitMQ, each run
//! with a database and queue names of its own (dropped afterwards).
//!
//! ```text
//! abha-bulk-bench all --out-dir bench                     # everything + the two pictures
//! abha-bulk-bench throughput --rows 20000 --workers 1,2   # jobs/s, CPU/job, commits/job
//! abha-bulk-bench rated --rates 50,200 --workers 1,2,4    # the rate held, ABDM limit = R
//! abha-bulk-bench overload --rates 50,200 --workers 1,2,4 # configured 2R, ABDM limit R
//! abha-bulk-bench submit --rows 1000000                   # rows/s and peak RSS of submit
//! abha-bulk-bench inprocess --rows 20000                  # labelled: the tuned in-process set-up
//! abha-bulk-bench fair --rate 100 --big 1000000           # fair shares (issue 17)
//! abha-bulk-bench reconcile --rows 1000000 --rate 2000    # reconcile: wall, calls/row, peak RSS
//! ```

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[allow(dead_code)]
#[path = "../chaos/error.rs"]
mod error;
mod fairness;
mod inprocess;
mod measure;
mod plot;
#[allow(dead_code)]
#[path = "../chaos/procs.rs"]
mod procs;
mod reconcile;
mod report;
mod rig;
mod runs;
#[allow(dead_code)]
#[path = "../chaos/sandbox_api.rs"]
mod sandbox_api;

use rig::{POPULATION, SEED, Services};

#[derive(Parser)]
#[command(about = "abha-bulk benchmarks: the shipped binary as separate processes")]
struct Cli {
    /// PostgreSQL host:port (user `postgres` without a password; a database per run).
    #[arg(long, default_value = "127.0.0.1:5432")]
    pg: String,
    /// RabbitMQ host:port (guest/guest; queue names per run).
    #[arg(long, default_value = "127.0.0.1:5672")]
    amqp: String,
    /// The `abha-bulk` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a benefit-link CSV of seeded beneficiaries.
    Gen {
        #[arg(long)]
        rows: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// `abha-bulk submit` of N generated rows: rows/s and peak RSS.
    Submit {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// N link rows through 1..k worker processes, rate limit off.
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
        /// Run the relay as its own process (`worker --no-relay` + `relay`).
        #[arg(long)]
        separate_relay: bool,
        /// Extra settings for every process, e.g. ABHA_BULK__WORKER__IN_FLIGHT=64.
        #[arg(long = "set", value_parser = parse_kv)]
        set: Vec<(String, String)>,
    },
    /// Rate R configured, ABDM limit R, R × secs rows.
    Rated {
        #[arg(long, value_delimiter = ',', default_value = "50,200")]
        rates: Vec<f64>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 30)]
        secs: u64,
    },
    /// Rate 2R configured, ABDM limit R, R × secs rows.
    Overload {
        #[arg(long, value_delimiter = ',', default_value = "50,200")]
        rates: Vec<f64>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 30)]
        secs: u64,
    },
    /// Every benchmark above with its defaults; the pictures go to OUT_DIR.
    All {
        #[arg(long, default_value = "bench")]
        out_dir: PathBuf,
        /// Rows of the large submit (constant memory check).
        #[arg(long, default_value_t = 10_000_000)]
        big_submit: u64,
    },
    /// Fair shares: a small batch behind a big one of another programme, weights 1 : 3, a
    /// batch beside a reconcile, RabbitMQ's depth; one worker at R, the sandbox limited to R.
    Fair {
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Rows of the second big batch the small one is submitted behind (0: skip it).
        #[arg(long, default_value_t = 0)]
        big: u64,
        /// Only these figures: small, weights, reconcile, depth (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Extra settings for every process, e.g. ABHA_BULK__RELAY__BROKER_HORIZON_MS=500.
        #[arg(long = "set", value_parser = parse_kv)]
        set: Vec<(String, String)>,
    },
    /// `abha-bulk reconcile` of a generated roster (1 % repeated rows, 0.1 % invalid):
    /// wall time, ABDM calls per row, peak RSS.
    Reconcile {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// `reconcile.rate_per_second` (the sandbox has no limit).
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// `reconcile.concurrency`.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Labelled second figure: relay + worker + sandbox in this process, tuned settings.
    Inprocess {
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        database: String,
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Writes a benefit-link CSV of `rows` distinct seeded beneficiaries.
pub fn gen_file(rows: u64, out: &Path) -> anyhow::Result<()> {
    gen_people(0, rows, out)
}

/// Writes a benefit-link CSV of the seeded beneficiaries `from..from + rows`.
pub fn gen_people(from: u64, rows: u64, out: &Path) -> anyhow::Result<()> {
    let pop = abha_bulk::sandbox::Population::new(POPULATION, SEED);
    let mut w = csv::Writer::from_path(out)?;
    w.write_record(["external_ref", "abha_number"])?;
    for i in from..from + rows {
        w.write_record([
            format!("B-{i:08}"),
            pop.abha(i % POPULATION).expose().to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// A generated file that is removed when dropped.
struct TempCsv(PathBuf);

impl TempCsv {
    fn new(rows: u64) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "abha-bench-{rows}-{}.csv",
            uuid::Uuid::new_v4().simple()
        ));
        let t = std::time::Instant::now();
        gen_file(rows, &path)?;
        eprintln!(
            "[bench] generated {rows} link rows in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(Self(path))
    }
}

impl Drop for TempCsv {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let services = Services {
        pg: cli.pg.clone(),
        amqp: cli.amqp.clone(),
        bin: match &cli.bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("abha-bulk"),
        },
    };
    println!(
        "== machine: {} cores, {}; binary {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report::memory(),
        services.bin.display()
    );
    match cli.cmd {
        Cmd::Gen { rows, out } => gen_file(rows, &out)?,
        Cmd::Submit { rows } => {
            let file = TempCsv::new(rows)?;
            runs::submit(&services, &file.0).await?;
        }
        Cmd::Throughput {
            rows,
            workers,
            separate_relay,
            set,
        } => {
            let file = TempCsv::new(rows)?;
            for n in workers {
                let opts = rig::RigOpts {
                    workers: n,
                    separate_relay,
                    env: set.clone(),
                    ..Default::default()
                };
                runs::throughput(&services, &opts, &file.0).await?;
            }
        }
        Cmd::Rated {
            rates,
            workers,
            secs,
        } => {
            report::rated(&services, &rates, &workers, secs, 1.0).await?;
        }
        Cmd::Overload {
            rates,
            workers,
            secs,
        } => {
            report::rated(&services, &rates, &workers, secs, 2.0).await?;
        }
        Cmd::All {
            out_dir,
            big_submit,
        } => report::all(&services, &out_dir, big_submit).await?,
        Cmd::Fair {
            rate,
            big,
            only,
            set,
        } => fairness::all(&services, rate, big, &only, &set).await?,
        Cmd::Reconcile {
            rows,
            rate,
            concurrency,
        } => {
            let path = std::env::temp_dir().join(format!(
                "abha-bench-roster-{rows}-{}.csv",
                uuid::Uuid::new_v4().simple()
            ));
            reconcile::gen_roster(rows, &path)?;
            let r = reconcile::run(&services, &path, rate, concurrency).await;
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Cmd::Inprocess {
            rows,
            database,
            amqp_url,
        } => inprocess::e2e(&database, &amqp_url, rows, None, None, 64).await?,
    }
    Ok(())
}
