//! The abha-bulk processes of the run: sandbox, workers, relay. Each is the shipped binary
//! with settings from `ABHA_BULK__*` variables only, its output in its own log file, and its
//! pid appended to `pids` so `scripts/chaos.sh` can kill what is left even if the driver dies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::{ChaosError, Result, io};

/// How to start the binary.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `abha-bulk` binary.
    pub bin: PathBuf,
    /// Settings every process gets (`ABHA_BULK__...`).
    pub env: Vec<(String, String)>,
    /// Folder of the log files and the pid list.
    pub dir: PathBuf,
}

/// What one managed process is.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Name in logs and figures (`worker-1`, `relay`, `sandbox`).
    pub name: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Settings of this process only.
    pub env: Vec<(String, String)>,
    /// `/healthz` port, when it serves one.
    pub health_port: Option<u16>,
}

/// A running process.
pub struct Proc {
    /// Its spec.
    pub spec: Spec,
    child: Child,
}

impl Launcher {
    fn command(&self, spec: &Spec) -> Result<Command> {
        let log = self.dir.join(format!("{}.log", spec.name));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("opening {}", log.display())))?;
        // Which binary (release) each start ran, for whoever reads the log after a rolling
        // upgrade; the settings are not written (the PII key is one of them).
        writeln!(
            &file,
            "# chaos: {} {}",
            self.bin.display(),
            spec.args.join(" ")
        )
        .map_err(io(format!("writing {}", log.display())))?;
        let err = file.try_clone().map_err(io("duplicating a log handle"))?;
        let mut c = Command::new(&self.bin);
        // Only the run's settings: none inherited from the caller's shell (which may point at
        // the shared services).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ABHA_BULK") {
                c.env_remove(&k);
            }
        }
        c.args(&spec.args)
            .envs(self.env.iter().cloned())
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        Ok(c)
    }

    /// Starts `spec` in the background.
    pub fn spawn(&self, spec: &Spec) -> Result<Proc> {
        let child = self
            .command(spec)?
            .spawn()
            .map_err(io(format!("starting {}", spec.name)))?;
        if let Some(pid) = child.id() {
            let pids = self.dir.join("pids");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&pids)
                .map_err(io("writing the pid list"))?;
            writeln!(f, "{pid}").map_err(io("writing the pid list"))?;
        }
        Ok(Proc {
            spec: spec.clone(),
            child,
        })
    }

    /// Runs a one-shot command (`migrate`, `submit`) to completion within `secs`; its stdout.
    pub async fn run(&self, name: &str, args: &[String], secs: u64) -> Result<String> {
        let spec = Spec {
            name: name.to_string(),
            args: args.to_vec(),
            env: Vec::new(),
            health_port: None,
        };
        let mut c = self.command(&spec)?;
        c.stdout(Stdio::piped());
        let child = c.spawn().map_err(io(format!("starting {name}")))?;
        let out = tokio::time::timeout(Duration::from_secs(secs), child.wait_with_output())
            .await
            .map_err(|_| ChaosError::Timeout {
                what: name.to_string(),
                secs,
            })?
            .map_err(io(name.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(ChaosError::Command {
                what: name.to_string(),
                detail: format!(
                    "{} (see {})",
                    out.status,
                    self.dir.join(format!("{name}.log")).display()
                ),
            });
        }
        Ok(stdout)
    }
}

impl Proc {
    /// Its pid (None once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// True when it has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9` and reap.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        self.kill9().await;
    }

    /// Waits until it is ready: `/healthz` answers 200 (or, without one, it is still alive
    /// after a second). Fails early when the process exits.
    pub async fn ready(&mut self, http: &reqwest::Client, secs: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let Some(port) = self.spec.health_port else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return self.alive();
        };
        let url = format!("http://127.0.0.1:{port}/healthz");
        while tokio::time::Instant::now() < deadline {
            self.alive()?;
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ChaosError::Timeout {
            what: self.spec.name.clone(),
            secs,
        })
    }

    fn alive(&mut self) -> Result<()> {
        if self.exited() {
            return Err(ChaosError::Command {
                what: self.spec.name.clone(),
                detail: "exited during start (see its log)".into(),
            });
        }
        Ok(())
    }
}

/// The last `lines` lines of a process's log (for failure messages).
pub fn log_tail(dir: &Path, name: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
