//! What the benchmarks read from outside the processes they measure: CPU time and peak memory
//! from `/proc`, commits from `pg_stat_database`, progress from the run's own database.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::error::{ChaosError, Result, sql};

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on every Linux we run).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds a live process has used so far (0 when it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / ticks_per_second()
}

/// Peak resident set size of a live process so far, MiB (`VmHWM`; 0 when it is gone).
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A connection to the run's database for progress and statistics.
pub struct Probe {
    conn: PgConnection,
    db: String,
    /// Transactions this probe committed itself (every statement outside a transaction is
    /// one), subtracted from the commit count so polling does not inflate it.
    pub own_commits: u64,
}

/// Jobs of the run's database by state group.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Every job.
    pub total: i64,
    /// Succeeded, failed or dead.
    pub finished: i64,
    /// Of those, not succeeded.
    pub not_succeeded: i64,
}

impl Probe {
    /// Connects to `url`, whose database is `db`.
    pub async fn connect(url: &str, db: &str) -> Result<Self> {
        let conn = PgConnection::connect(url)
            .await
            .map_err(sql("connecting to the run's database"))?;
        Ok(Self {
            conn,
            db: db.to_string(),
            own_commits: 1,
        })
    }

    /// Committed transactions of the database so far. Postgres publishes a backend's counts
    /// at most once a second while it is busy (and at once when idle), so read this after the
    /// processes have been idle for a moment.
    pub async fn commits(&mut self) -> Result<u64> {
        self.own_commits += 2;
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut self.conn)
            .await
            .map_err(sql("clearing the statistics snapshot"))?;
        let n: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&self.db)
                .fetch_one(&mut self.conn)
                .await
                .map_err(sql("reading pg_stat_database"))?;
        Ok(n as u64)
    }

    /// Where the jobs are.
    pub async fn progress(&mut self) -> Result<Progress> {
        self.own_commits += 1;
        let (total, finished, not_succeeded): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), \
                    count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'dead')), \
                    count(*) FILTER (WHERE state IN ('failed', 'dead')) \
             FROM jobs",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(sql("counting jobs"))?;
        Ok(Progress {
            total,
            finished,
            not_succeeded,
        })
    }

    /// Waits until every one of `expected` jobs is final, polling every `every`; fails after
    /// `limit`.
    pub async fn wait_final(
        &mut self,
        expected: i64,
        every: Duration,
        limit: Duration,
    ) -> Result<Progress> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let p = self.progress().await?;
            if p.total >= expected && p.finished >= p.total {
                return Ok(p);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ChaosError::Timeout {
                    what: format!("{} of {expected} jobs final", p.finished),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The shared rate (AIMD) in the budget row, if there is one yet.
    pub async fn shared_rate(&mut self) -> Result<Option<f64>> {
        self.own_commits += 1;
        sqlx::query_scalar::<_, Option<f64>>("SELECT max(rate) FROM rate_budget")
            .fetch_one(&mut self.conn)
            .await
            .map_err(sql("reading rate_budget"))
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the count is above zero on a coarse clock.
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_secs(me) > 0.0);
        assert!(peak_rss_mib(me) > 1.0);
        assert_eq!(cpu_secs(u32::MAX), 0.0);
    }
}
