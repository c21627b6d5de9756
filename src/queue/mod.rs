//! RabbitMQ: topology, job envelopes, publishing with confirms.
//!
//! - [`topology`]: the exchange, one quorum queue per job kind (delivery limit, dead-letter
//!   exchange), the dead-letter queue; declared idempotently by every process that needs them.
//! - [`drain`]: consuming and retiring the other queue layout after `queue_per_kind` changed.
//! - [`envelope`]: the JSON job envelope v1 (stored-job form and external-producer form).
//! - [`publish`]: publishing job envelopes and dead letters with publisher confirms.
//! - [`link`]: the connection state shared by worker and relay (one log line per change).

pub mod drain;
pub mod envelope;
pub mod link;
pub mod publish;
pub mod topology;

pub use topology::Topology;

/// RabbitMQ errors, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Connecting, declaring or publishing failed.
    #[error("RabbitMQ: {what}: {cause}")]
    Amqp {
        /// What was attempted.
        what: &'static str,
        /// Cause (in the message, so not also a `source`).
        cause: lapin::Error,
    },
    /// The broker did not confirm a message.
    #[error("RabbitMQ did not confirm {count} message(s) ({reason})")]
    NotConfirmed {
        /// How many.
        count: usize,
        /// Nack or returned (unroutable).
        reason: &'static str,
    },
}

pub(crate) trait AmqpContext<T> {
    fn ctx(self, what: &'static str) -> Result<T, QueueError>;
}

impl<T> AmqpContext<T> for Result<T, lapin::Error> {
    fn ctx(self, what: &'static str) -> Result<T, QueueError> {
        self.map_err(|cause| QueueError::Amqp { what, cause })
    }
}

/// How long opening a connection may take (a broker address that drops packets would
/// otherwise hang for the TCP timeout).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Heartbeat asked of the broker unless the URL sets one (`?heartbeat=N`).
///
/// Why 10 s: a consumer that only waits for deliveries sends nothing, so after a broker
/// restart its dead connection would go unnoticed until the next heartbeat; with RabbitMQ's
/// default of 60 s a worker sat idle on a dead connection for a minute.
const HEARTBEAT_SECS: u32 = 10;

/// `url` with `heartbeat=` [`HEARTBEAT_SECS`] added when it has none.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&heartbeat={HEARTBEAT_SECS}")
    } else {
        format!("{url}?heartbeat={HEARTBEAT_SECS}")
    }
}

/// Opens a connection (within [`CONNECT_TIMEOUT`], with a [`HEARTBEAT_SECS`] heartbeat); a
/// success is recorded in [`link`].
pub async fn connect(url: &str) -> Result<lapin::Connection, QueueError> {
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(format!("abha-bulk-{}", std::process::id()).into());
    let with_heartbeat = with_heartbeat(url);
    let conn = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        lapin::Connection::connect(&with_heartbeat, props),
    )
    .await
    {
        Ok(r) => r.ctx("connecting")?,
        Err(_) => {
            return Err(QueueError::Amqp {
                what: "connecting",
                cause: lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                )),
            });
        }
    };
    link::up(url);
    Ok(conn)
}
