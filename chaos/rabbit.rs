//! The run's own RabbitMQ node, so it can be restarted for real without touching the shared
//! broker other tests on the machine use (127.0.0.1 only). It is started from
//! `/usr/lib/rabbitmq/bin` (not Debian's `/usr/sbin` wrapper, which switches to the `rabbitmq`
//! user) with its own node name, ports, data, config and Erlang cookie. Dropping it kills it;
//! [`Rabbit::stop`] stops it cleanly.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::error::{ChaosError, Result, io};
use crate::services::{port_open, run, wait_port};

/// The dead-letter queue of the run's topology (the default `rabbitmq.queue_prefix`).
pub const DEAD_LETTER_QUEUE: &str = "abha.dead-letter";

/// A RabbitMQ node of its own.
pub struct Rabbit {
    home: PathBuf,
    node: String,
    port: u16,
    bin: PathBuf,
    running: bool,
}

impl Rabbit {
    /// Starts a node `chaos-<pid>@localhost` on `port` (distribution on `dist_port`); with
    /// `consumer_timeout_ms`, a channel that holds a delivery unacknowledged that long is
    /// closed by the broker (its deliveries requeued), checked every second.
    pub async fn start(
        work: &Path,
        port: u16,
        dist_port: u16,
        consumer_timeout_ms: Option<u64>,
    ) -> Result<Self> {
        for p in [port, dist_port] {
            if port_open(p).await {
                return Err(ChaosError::Command {
                    what: "starting the run's RabbitMQ".into(),
                    detail: format!("port {p} is already in use (another chaos run?)"),
                });
            }
        }
        let bin = ["/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("rabbitmq-server").exists())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p).find(|d| d.join("rabbitmq-server").exists())
                })
            })
            .ok_or_else(|| ChaosError::Command {
                what: "finding RabbitMQ".into(),
                detail: "no rabbitmq-server in /usr/lib/rabbitmq/bin or on PATH".into(),
            })?;
        let home = work.join("rabbitmq");
        std::fs::create_dir_all(&home).map_err(io("creating the RabbitMQ folder"))?;
        // Its own config: the system one (/etc/rabbitmq) would listen on the shared port.
        let mut conf = format!("listeners.tcp.1 = 127.0.0.1:{port}\n");
        if let Some(ms) = consumer_timeout_ms {
            conf.push_str(&format!("consumer_timeout = {ms}\n"));
            // The broker checks the timeout on each channel's tick (`channel_tick_interval`,
            // 60 s by default, not in rabbitmq.conf's schema): every second, so a timeout is
            // acted on within a second of passing, not up to a minute later.
            std::fs::write(
                home.join("advanced.config"),
                "[{rabbit, [{channel_tick_interval, 1000}]}].\n",
            )
            .map_err(io("writing advanced.config"))?;
        }
        std::fs::write(home.join("rabbitmq.conf"), conf).map_err(io("writing rabbitmq.conf"))?;
        for empty in ["enabled_plugins", "rabbitmq-env.conf"] {
            std::fs::write(home.join(empty), "").map_err(io("writing RabbitMQ files"))?;
        }
        std::fs::write(home.join("dist_port"), dist_port.to_string())
            .map_err(io("writing RabbitMQ files"))?;
        let mut r = Self {
            home,
            node: format!("chaos-{}@localhost", std::process::id()),
            port,
            bin,
            running: false,
        };
        r.boot().await?;
        Ok(r)
    }

    fn cmd(&self, prog: &str) -> Command {
        let h = &self.home;
        let dist = std::fs::read_to_string(h.join("dist_port")).unwrap_or_default();
        let mut c = Command::new(self.bin.join(prog));
        c.current_dir(h)
            .env("HOME", h)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.trim())
            .env("RABBITMQ_MNESIA_BASE", h.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", h.join("log"))
            .env("RABBITMQ_PID_FILE", h.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", h.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", h.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", h.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", h.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        c
    }

    async fn boot(&mut self) -> Result<()> {
        run(
            "rabbitmq-server -detached",
            self.cmd("rabbitmq-server").arg("-detached"),
            30,
        )
        .await?;
        self.running = true;
        wait_port(self.port, true, "RabbitMQ", 120).await
    }

    /// `amqp://guest@127.0.0.1:<port>/%2f` (password guest).
    pub fn url(&self) -> String {
        format!("amqp://guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A real node restart: `rabbitmqctl stop` (the Erlang VM exits), then start it again.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.boot().await
    }

    /// Stops the node and waits until its VM has exited.
    pub async fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let pid_file = self.home.join("pid");
        let stopped = run(
            "rabbitmqctl stop",
            self.cmd("rabbitmqctl")
                .args(["-n", &self.node, "stop"])
                .arg(&pid_file),
            60,
        )
        .await;
        if stopped.is_err() {
            self.kill();
        }
        self.running = false;
        wait_port(self.port, false, "RabbitMQ shutdown", 30).await?;
        stopped.map(drop)
    }

    /// Messages in `queue` (`rabbitmqctl list_queues`); None when the queue does not exist.
    pub async fn depth(&self, queue: &str) -> Result<Option<u64>> {
        let out = run(
            "rabbitmqctl list_queues",
            self.cmd("rabbitmqctl").args([
                "-n",
                &self.node,
                "-q",
                "list_queues",
                "name",
                "messages",
            ]),
            30,
        )
        .await?;
        Ok(out.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(queue))
                .then(|| f.next().and_then(|n| n.parse().ok()))
                .flatten()
        }))
    }

    /// Channels the broker closed because a delivery was not acknowledged within
    /// `consumer_timeout` (counted in its log).
    pub fn consumer_timeouts(&self) -> u64 {
        count_consumer_timeouts(&self.home.join("log"))
    }

    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.home.join("pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Lines of the broker's logs in `dir` that report a consumer timeout (3.10 logs a warning
/// "Consumer ... has timed out waiting for delivery acknowledgement" and the channel error
/// "delivery acknowledgement on channel ... timed out"): the warnings are counted.
pub fn count_consumer_timeouts(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| l.contains("has timed out waiting for delivery acknowledgement"))
                .count() as u64
        })
        .sum()
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if self.running {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn consumer_timeouts_are_counted_from_the_log() {
        let dir = std::env::var("CHAOS_RABBIT_LOG_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::env::temp_dir().join(format!("chaos-log-{}", std::process::id()))
            });
        if std::env::var("CHAOS_RABBIT_LOG_DIR").is_err() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("node.log"),
                "2026-12-07 04:33:14.077047+00:00 [warning] <0.742.0> Consumer 97 on channel 1 has timed out waiting for delivery acknowledgement. Timeout used: 20000 ms.\n\
                 2026-12-07 04:33:14.077334+00:00 [error] <0.742.0> operation none caused a channel exception precondition_failed: delivery acknowledgement on channel 1 timed out.\n\
                 2026-12-07 04:33:15.0+00:00 [info] <0.1.0> accepting AMQP connection\n",
            )
            .unwrap();
            assert_eq!(super::count_consumer_timeouts(&dir), 1);
            std::fs::remove_dir_all(&dir).unwrap();
        } else {
            eprintln!("{}", super::count_consumer_timeouts(&dir));
        }
    }
}
