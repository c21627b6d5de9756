//! The worker's side of [`crate::queue::drain`]: at consume start it finds the other queue
//! layout's queues for its kinds, unbinds them, deletes the empty ones and consumes the rest;
//! a task then looks again every [`drain::ROUND`] and, once a consumed one is empty, stops
//! consuming it and deletes it (unless another worker still consumes it).

use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};

use crate::jobs::kind::JobKind;
use crate::queue::drain::{self, OldQueue, Seen};
use crate::queue::{self, AmqpContext, QueueError, Topology};

/// Aborts the rounds task when the consuming connection's life ends.
pub(super) struct Rounds(Option<tokio::task::JoinHandle<()>>);

impl Drop for Rounds {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Consumers on the other layout's queues that hold messages (on `ch`, tagged
/// `<tag>-<queue>`), and the task that retires them.
pub(super) async fn start(
    url: &str,
    ch: &Channel,
    topology: &Topology,
    kinds: &[JobKind],
    tag: &str,
) -> Result<(Vec<Consumer>, Rounds), QueueError> {
    let candidates = topology.other_layout(kinds);
    if candidates.is_empty() {
        return Ok((Vec::new(), Rounds(None)));
    }
    let conn = queue::connect(url).await?;
    let (mut streams, mut retiring) = (Vec::new(), Vec::new());
    for q in candidates {
        let Some(seen) = drain::look(&conn, &q.name).await? else {
            continue;
        };
        drain::unbind(&conn, topology, &q).await?;
        if seen.messages == 0 && seen.consumers == 0 && drain::delete_if_idle(url, &q.name).await {
            tracing::info!(queue = %q.name, "deleted an empty queue of the previous queue layout");
            continue;
        }
        tracing::info!(
            queue = %q.name,
            messages = seen.messages,
            "consuming a queue of the previous queue layout until it is empty"
        );
        let c = ch
            .basic_consume(
                q.name.as_str().into(),
                format!("{tag}-{}", q.name).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .ctx("consuming an old-layout queue")?;
        retiring.push((q, c.tag()));
        streams.push(c);
    }
    let _ = conn.close(200, "old layout looked at".into()).await;
    let task =
        (!retiring.is_empty()).then(|| tokio::spawn(rounds(url.to_string(), ch.clone(), retiring)));
    Ok((streams, Rounds(task)))
}

/// Every [`drain::ROUND`]: a consumed old queue seen empty is no longer consumed; a round
/// later (the messages this worker still held from it are settled by then) it is deleted if
/// nobody else consumes it (an old worker that does drains it; this worker's next start finds
/// it again otherwise).
async fn rounds(url: String, ch: Channel, retiring: Vec<(OldQueue, ShortString)>) {
    let mut retiring: Vec<(OldQueue, Option<ShortString>)> =
        retiring.into_iter().map(|(q, t)| (q, Some(t))).collect();
    while !retiring.is_empty() {
        tokio::time::sleep(drain::ROUND).await;
        let Ok(conn) = queue::connect(&url).await else {
            continue;
        };
        let mut left = Vec::new();
        for (q, tag) in retiring {
            match (drain::look(&conn, &q.name).await, tag) {
                (Ok(None), _) => {}
                (Ok(Some(Seen { messages: 0, .. })), Some(tag)) => {
                    let _ = ch.basic_cancel(tag, BasicCancelOptions::default()).await;
                    left.push((q, None));
                }
                (Ok(Some(_)), None) => {
                    if drain::delete_if_idle(&url, &q.name).await {
                        tracing::info!(queue = %q.name, "drained and deleted a queue of the previous queue layout");
                    } else {
                        tracing::info!(queue = %q.name, "drained a queue of the previous queue layout; another consumer keeps it");
                    }
                }
                (_, tag) => left.push((q, tag)),
            }
        }
        let _ = conn.close(200, "old layout looked at".into()).await;
        retiring = left;
    }
}
