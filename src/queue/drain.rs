//! Draining the other queue layout after `rabbitmq.queue_per_kind` changed.
//!
//! Shared (`<prefix>.work`) and per-kind (`<prefix>.<kind>`) queues are two layouts of the
//! same work. After the setting flips, the previous layout's queues still hold messages that
//! no worker of the new layout would consume, and while both layouts are bound to the job
//! exchange every publish is routed to both (each job runs once, through its claim, but every
//! message is handled twice). So a worker, at consume start, also consumes the other layout's
//! queues that exist, for the kinds it runs ([`Topology::other_layout`]), unbinds them from
//! the exchange (its own layout, declared first, carries those kinds now), and deletes each
//! once it is empty and nobody else consumes it.
//!
//! Every operation runs on a connection of its own: a passive declare of a missing queue
//! closes its channel, and a broker that refuses a delete option closes the connection; the
//! consuming connection must survive both.
//!
//! Deleting: RabbitMQ's own guards (`queue.delete` with `if-empty`/`if-unused`) are refused
//! for quorum queues with a connection error (`NOT_IMPLEMENTED`, RabbitMQ 3.10 measured), so
//! a queue is deleted only when a passive declare just saw it with no ready message and no
//! consumer. An old worker still consuming it keeps it alive; the next round tries again.
//! The window between the look and the delete is milliseconds, and nothing is routed to the
//! queue by then (it is unbound); a message of a previous-release pod that declared and bound
//! the queue again within it would be lost from RabbitMQ, and its job (a stored job) is
//! republished from Postgres by the outbox recheck.

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::{AmqpContext, QueueError, Topology};
use crate::jobs::kind::JobKind;

/// How often a worker looks again at the other layout's queues it consumes (one short
/// connection per round, only while such a queue exists).
pub const ROUND: Duration = Duration::from_secs(5);

/// A queue of the other layout and the kinds it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldQueue {
    /// Queue name.
    pub name: String,
    /// Kinds routed to it (its bindings).
    pub kinds: Vec<JobKind>,
}

/// What a passive declare saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Ready messages.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
}

impl Topology {
    /// The other layout's queues a worker running `kinds` drains: with the shared layout,
    /// `<prefix>.<kind>` of each of its kinds; with queues per kind, `<prefix>.work` only when
    /// it runs every kind (a worker group of some kinds would take messages of kinds it does
    /// not run, and hand them back for ever).
    pub fn other_layout(&self, kinds: &[JobKind]) -> Vec<OldQueue> {
        if self.per_kind {
            if JobKind::ALL.iter().all(|k| kinds.contains(k)) {
                vec![OldQueue {
                    name: format!("{}.work", self.queue_prefix),
                    kinds: JobKind::ALL.to_vec(),
                }]
            } else {
                Vec::new()
            }
        } else {
            let mut out: Vec<OldQueue> = kinds
                .iter()
                .map(|k| OldQueue {
                    name: format!("{}.{}", self.queue_prefix, k.as_str()),
                    kinds: vec![*k],
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out.dedup();
            out
        }
    }
}

/// A passive declare of `queue` on a channel of its own: `None` when it does not exist.
pub async fn look(conn: &lapin::Connection, queue: &str) -> Result<Option<Seen>, QueueError> {
    let ch = conn.create_channel().await.ctx("opening a channel")?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => {
            let _ = ch.close(200, "looked".into()).await;
            Ok(Some(Seen {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            }))
        }
        // NOT_FOUND closed the channel; a closed connection shows on the next call.
        Err(_) => Ok(None),
    }
}

/// Unbinds `q` from the job exchange: publishes stop being routed to it.
pub async fn unbind(
    conn: &lapin::Connection,
    topology: &Topology,
    q: &OldQueue,
) -> Result<(), QueueError> {
    let ch = conn.create_channel().await.ctx("opening a channel")?;
    for kind in &q.kinds {
        ch.queue_unbind(
            q.name.as_str().into(),
            topology.exchange.as_str().into(),
            kind.as_str().into(),
            FieldTable::default(),
        )
        .await
        .ctx("unbinding an old-layout queue")?;
    }
    let _ = ch.close(200, "unbound".into()).await;
    Ok(())
}

/// Deletes `queue` if a passive declare just saw it with no ready message and no consumer
/// (see the module doc for why not `if-empty`/`if-unused`); true when deleted. Opens its own
/// connection to `url`.
pub async fn delete_if_idle(url: &str, queue: &str) -> bool {
    let Ok(conn) = super::connect(url).await else {
        return false;
    };
    let idle = Seen {
        messages: 0,
        consumers: 0,
    };
    let deleted = match look(&conn, queue).await {
        Ok(Some(seen)) if seen == idle => match conn.create_channel().await {
            Ok(ch) => ch
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .is_ok(),
            Err(_) => false,
        },
        _ => false,
    };
    let _ = conn.close(200, "retiring".into()).await;
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layout_drains_the_other_for_the_kinds_it_runs() {
        let shared = Topology::named("x.jobs", "x", 20);
        let names = |t: &Topology, kinds: &[JobKind]| -> Vec<String> {
            t.other_layout(kinds).into_iter().map(|q| q.name).collect()
        };
        assert_eq!(
            names(&shared, &[JobKind::BenefitLink]),
            vec!["x.benefit-link"]
        );
        assert_eq!(names(&shared, &JobKind::ALL).len(), JobKind::ALL.len());
        let per_kind = shared.per_kind();
        assert_eq!(names(&per_kind, &JobKind::ALL), vec!["x.work"]);
        assert!(names(&per_kind, &[JobKind::BenefitLink]).is_empty());
    }
}
