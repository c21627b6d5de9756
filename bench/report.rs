//! Runs the benchmarks in sequence, prints the tables of `bench/RESULTS.md` against their
//! targets and draws the two pictures.

use std::path::Path;

use crate::TempCsv;
use crate::plot::{Panel, Series, bars, lines};
use crate::rig::{RigOpts, Services};
use crate::runs::{self, Rated, Throughput};

/// Total memory of the machine, for the header line.
pub fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("memory unknown".into(), |kb| {
            format!("{:.0} GiB", kb / 1024.0 / 1024.0)
        })
}

/// Rate-limited runs: configured `factor` × R against an ABDM limit of R, for every R and
/// worker count, R × `secs` rows each.
pub async fn rated(
    services: &Services,
    rates: &[f64],
    workers: &[usize],
    secs: u64,
    factor: f64,
) -> anyhow::Result<Vec<Rated>> {
    let mut out = Vec::new();
    for r in rates {
        let file = TempCsv::new((r * secs as f64) as u64)?;
        for n in workers {
            out.push(runs::rated(services, *n, r * factor, *r, &file.0).await?);
        }
    }
    Ok(out)
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Every benchmark, the tables and the pictures in `out_dir`.
pub async fn all(services: &Services, out_dir: &Path, big_submit: u64) -> anyhow::Result<()> {
    let mut throughput: Vec<Throughput> = Vec::new();
    {
        let file = TempCsv::new(20_000)?;
        for n in [1, 2, 4] {
            let opts = RigOpts {
                workers: n,
                ..Default::default()
            };
            throughput.push(runs::throughput(services, &opts, &file.0).await?);
        }
    }
    let rated = rated(services, &[50.0, 200.0], &[1, 2, 4], 30, 1.0).await?;
    let overload = rated_overload(services).await?;
    let mut submits = Vec::new();
    for rows in [1_000_000, big_submit] {
        let file = TempCsv::new(rows)?;
        submits.push(runs::submit(services, &file.0).await?);
    }

    println!("\n| figure | target | measured | |\n|---|---|---|---|");
    for t in &throughput {
        let target = match t.workers {
            1 => Some(1000.0),
            2 => Some(1200.0),
            _ => None,
        };
        println!(
            "| {} worker process(es), 20 000 link rows, rate limit off | {} | {:.0} jobs/s ({:.2} s) | {} |",
            t.workers,
            target.map_or("(for the picture)".into(), |x| format!("≥ {x:.0} jobs/s")),
            t.rate(),
            t.secs,
            target.map_or("", |x| mark(t.rate() >= x))
        );
    }
    for t in &throughput {
        println!(
            "| worker CPU per job, {} process(es) | ≤ 0.6 ms | {:.3} ms | {} |",
            t.workers,
            t.cpu_ms_per_job,
            mark(t.cpu_ms_per_job <= 0.6)
        );
        println!(
            "| Postgres commits per job, {} process(es) | ≤ 1.2 | {:.2} | {} |",
            t.workers,
            t.commits_per_job,
            mark(t.commits_per_job <= 1.2)
        );
        println!(
            "| first ABDM call after `submit` returns, {} process(es) | ≤ 200 ms | {} | {} |",
            t.workers,
            if t.first_call_ms < 0.0 {
                "before it returned".to_string()
            } else {
                format!("{:.0} ms", t.first_call_ms)
            },
            mark(t.first_call_ms <= 200.0)
        );
    }
    for r in &rated {
        println!(
            "| rated: {} process(es), R = {}, ABDM limit R | wall within 2 % of rows ÷ R, 0 throttled | {:+.2} % ({:.2} s), {} throttled | {} |",
            r.workers,
            r.limit,
            r.over_ideal_percent(),
            r.secs,
            r.throttled,
            mark(r.over_ideal_percent().abs() <= 2.0 && r.throttled == 0)
        );
    }
    for r in &overload {
        println!(
            "| overload: {} process(es), configured {}, ABDM limit {} | ≤ 2 % throttled, wall within 5 % | {:.2} % throttled ({} of {}), {:+.2} % ({:.2} s) | {} |",
            r.workers,
            r.configured,
            r.limit,
            r.throttled_percent(),
            r.throttled,
            r.calls,
            r.over_ideal_percent(),
            r.secs,
            mark(r.throttled_percent() <= 2.0 && r.over_ideal_percent().abs() <= 5.0)
        );
    }
    for s in &submits {
        println!(
            "| submit of {} rows | ≥ 80 000 rows/s (1 M), constant memory | {:.0} rows/s, peak RSS {:.0} MiB | {} |",
            s.rows,
            s.rows as f64 / s.secs,
            s.peak_rss_mib,
            if s.rows == 1_000_000 {
                mark(s.rows as f64 / s.secs >= 80_000.0)
            } else {
                ""
            }
        );
    }

    std::fs::create_dir_all(out_dir)?;
    let svg = bars(
        "Jobs/s against worker processes (shipped binary and defaults, 20 000 link rows)",
        &throughput
            .iter()
            .map(|t| (format!("{} worker(s)", t.workers), t.rate()))
            .collect::<Vec<_>>(),
        Some((1000.0, "target, 1 worker: 1 000 jobs/s")),
        "worker processes",
        "jobs/s",
    );
    std::fs::write(out_dir.join("throughput.svg"), svg)?;
    std::fs::write(out_dir.join("overload.svg"), overload_picture(&overload))?;
    println!(
        "\npictures: {} and {}",
        out_dir.join("throughput.svg").display(),
        out_dir.join("overload.svg").display()
    );
    Ok(())
}

async fn rated_overload(services: &Services) -> anyhow::Result<Vec<Rated>> {
    rated(services, &[50.0, 200.0], &[1, 2, 4], 30, 2.0).await
}

/// ABDM calls per second over time in each overload run: the ABDM limit, the shared rate
/// the workers allowed themselves (AIMD), the calls sent and the throttled answers.
pub fn overload_picture(runs: &[Rated]) -> String {
    let panels: Vec<Panel> = runs
        .iter()
        .map(|r| {
            let end = r.timeline.last().map_or(0.0, |p| p.0);
            Panel {
                title: format!(
                    "{} worker(s), configured {}/s, ABDM limit {}/s",
                    r.workers, r.configured, r.limit
                ),
                series: vec![
                    Series {
                        name: "ABDM limit".into(),
                        color: "#e15759",
                        dashed: true,
                        points: vec![(0.0, r.limit), (end, r.limit)],
                    },
                    Series {
                        name: "allowed (shared AIMD rate)".into(),
                        color: "#59a14f",
                        dashed: false,
                        points: r
                            .timeline
                            .iter()
                            .filter_map(|(t, _, _, rate)| rate.map(|x| (*t, x)))
                            .collect(),
                    },
                    Series {
                        name: "sent".into(),
                        color: "#4e79a7",
                        dashed: false,
                        points: r
                            .timeline
                            .iter()
                            .map(|(t, n, _, _)| (*t, *n as f64))
                            .collect(),
                    },
                    Series {
                        name: "throttled".into(),
                        color: "#f28e2b",
                        dashed: false,
                        points: r
                            .timeline
                            .iter()
                            .map(|(t, _, k, _)| (*t, *k as f64))
                            .collect(),
                    },
                ],
            }
        })
        .collect();
    lines(
        "ABDM calls per second in the overload runs (configured 2R, ABDM limit R)",
        &panels,
        3,
        "seconds since submit returned",
        "calls/s",
    )
}
