//! The run's own PostgreSQL (its RabbitMQ: [`crate::rabbit`]), so it can restart and stop it
//! for real without touching the shared one other tests on the machine use, and the command
//! helpers both use.
//!
//! It lives under the work folder and listens on 127.0.0.1 only; it runs as the `postgres`
//! user when the driver is root (it refuses to run as root). Dropping it kills it outright;
//! [`Postgres::stop`] stops it cleanly and [`Postgres::boot`] starts it again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::error::{ChaosError, Result, io};

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub async fn port_open(port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Waits until `port` opens (or closes, with `open` false).
pub async fn wait_port(port: u16, open: bool, what: &str, secs: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if port_open(port).await == open {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ChaosError::Timeout {
        what: what.to_string(),
        secs,
    })
}

/// Runs a command to completion within `secs`; its output on failure.
pub async fn run(what: &str, cmd: &mut Command, secs: u64) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(io(format!("starting {what}")))?;
    let out = tokio::time::timeout(Duration::from_secs(secs), child.wait_with_output())
        .await
        .map_err(|_| ChaosError::Timeout {
            what: what.to_string(),
            secs,
        })?
        .map_err(io(what.to_string()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(ChaosError::Command {
            what: what.to_string(),
            detail: format!("{}: {}", out.status, tail(&text, 600)),
        })
    }
}

/// The last `n` bytes of `s` (on a char boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim()
}

/// True when the effective uid is 0 (Postgres refuses to run as root).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// The newest `/usr/lib/postgresql/<v>/bin` with `initdb`, else the folder of `initdb` on PATH.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).or_else(|| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        })
    })
}

/// A PostgreSQL server of its own (trust auth, 127.0.0.1 only).
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl Postgres {
    /// `initdb` into `work/pg` and start on `port`.
    pub async fn start(work: &Path, port: u16) -> Result<Self> {
        if port_open(port).await {
            return Err(ChaosError::Command {
                what: "starting the run's PostgreSQL".into(),
                detail: format!("port {port} is already in use (another chaos run?)"),
            });
        }
        let bin = postgres_bin().ok_or_else(|| ChaosError::Command {
            what: "finding PostgreSQL".into(),
            detail: "no initdb in /usr/lib/postgresql/*/bin or on PATH".into(),
        })?;
        let dir = work.join("pg");
        std::fs::create_dir_all(&dir).map_err(io("creating the Postgres folder"))?;
        let as_postgres = is_root();
        if as_postgres {
            // Postgres refuses to run as root: its folder belongs to the postgres user, and
            // the work folder must be traversable by it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))
                .map_err(io("opening the work folder to postgres"))?;
            run(
                "chown of the Postgres folder",
                Command::new("chown").arg("postgres").arg(&dir),
                10,
            )
            .await?;
        }
        let mut pg = Self {
            bin,
            dir,
            port,
            as_postgres,
            running: false,
        };
        pg.init().await?;
        pg.boot().await?;
        Ok(pg)
    }

    async fn init(&self) -> Result<()> {
        run(
            "initdb",
            self.cmd("initdb")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]),
            120,
        )
        .await
        .map(drop)
    }

    /// Starts the server (again, after [`Postgres::stop`]).
    pub async fn boot(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=200 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        run(
            "pg_ctl start",
            self.ctl().args(["-o", &opts, "-w", "-t", "60", "start"]),
            90,
        )
        .await?;
        self.running = true;
        Ok(())
    }

    fn cmd(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // A folder the postgres user can enter (the caller's may be closed to it).
        c.current_dir(&self.dir);
        c
    }

    fn ctl(&self) -> Command {
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"));
        c
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A real server restart (`pg_ctl restart -m fast`: every connection is closed).
    pub async fn restart(&self) -> Result<()> {
        run(
            "pg_ctl restart",
            self.ctl().args(["-m", "fast", "-w", "-t", "60", "restart"]),
            90,
        )
        .await
        .map(drop)
    }

    /// Stops the server cleanly.
    pub async fn stop(&mut self) -> Result<()> {
        if self.running {
            run(
                "pg_ctl stop",
                self.ctl().args(["-m", "fast", "-w", "-t", "30", "stop"]),
                45,
            )
            .await?;
            self.running = false;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let mut c = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(ctl);
            c
        } else {
            std::process::Command::new(ctl)
        };
        let _ = c
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "-t", "15", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
