//! The worker's seam to its queue: a stream of [`Inbound`] messages, each settled once (ack,
//! reject with or without requeue), and a place for dead letters.
//!
//! Production uses RabbitMQ ([`lapin_inbound`]); tests use [`MemoryQueue`], which records
//! every settlement, so the consume loop's races (redeliveries, a stop mid-flight, a lost
//! lease) get deterministic tests without a broker. The worker logic never sees lapin types.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::queue::QueueError;
use crate::queue::envelope::Envelope;
use crate::queue::publish::Publisher;

/// How a message was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done with: removed from the queue.
    Ack,
    /// Given back: redelivered later (to this worker or another).
    Requeue,
    /// Dropped (dead-lettered by the queue when it has a dead-letter exchange).
    Reject,
}

/// Settles one message. Errors are strings: the caller can only log them (the broker
/// redelivers an unsettled message anyway).
pub trait Settle: Send + Sync {
    /// Acks or rejects, once.
    fn settle(&self, how: Settled) -> BoxFuture<'_, Result<(), String>>;
}

/// A message as the worker sees it.
pub struct Inbound {
    /// The envelope's bytes.
    pub data: Vec<u8>,
    /// Earlier deliveries of this message (`x-delivery-count` of quorum queues).
    pub delivery_count: i64,
    /// Its acker.
    pub acker: Box<dyn Settle>,
}

impl Inbound {
    /// Settles it, logging what failed (the message then comes back and is recognised).
    pub async fn settle(&self, how: Settled) {
        if let Err(e) = self.acker.settle(how).await {
            tracing::warn!(error = %e, ?how, "settling a message failed; it will be redelivered and recognised");
        }
    }
}

/// Where malformed messages go, with their reason.
pub trait DeadLetters: Send + Sync {
    /// Dead-letters the message `body` with `reason`. What is kept is the redacted summary
    /// ([`crate::queue::envelope::Envelope::redacted`]), never the identifiers a producer sent.
    fn dead_letter<'a>(
        &'a self,
        body: &'a [u8],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}

impl DeadLetters for Publisher {
    fn dead_letter<'a>(
        &'a self,
        body: &'a [u8],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(Publisher::dead_letter(self, body, reason))
    }
}

struct LapinAcker(lapin::Acker);

impl Settle for LapinAcker {
    fn settle(&self, how: Settled) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let r = match how {
                Settled::Ack => self.0.ack(BasicAckOptions::default()).await,
                Settled::Requeue => self.0.reject(BasicRejectOptions { requeue: true }).await,
                Settled::Reject => self.0.reject(BasicRejectOptions { requeue: false }).await,
            };
            r.map(drop).map_err(|e| e.to_string())
        })
    }
}

/// A RabbitMQ delivery as an [`Inbound`].
pub fn lapin_inbound(d: Delivery) -> Inbound {
    Inbound {
        delivery_count: delivery_count(&d),
        data: d.data,
        acker: Box::new(LapinAcker(d.acker)),
    }
}

/// How often RabbitMQ delivered this message before (`x-delivery-count` of quorum queues).
fn delivery_count(d: &Delivery) -> i64 {
    use lapin::types::AMQPValue;
    let Some(headers) = d.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        _ => 0,
    }
}

#[derive(Default)]
struct Memory {
    ready: VecDeque<(u64, Vec<u8>, i64)>,
    settled: Vec<(u64, Settled)>,
    dead: Vec<(Vec<u8>, String)>,
    next_id: u64,
    closed: bool,
}

/// An in-memory queue for tests: publish, take deliveries as a stream, and read back how each
/// message was settled. A requeued message is delivered again with its count raised, as a
/// quorum queue does.
#[derive(Clone, Default)]
pub struct MemoryQueue {
    inner: Arc<Mutex<Memory>>,
    notify: Arc<tokio::sync::Notify>,
}

struct MemoryAcker {
    queue: MemoryQueue,
    id: u64,
    data: Vec<u8>,
    count: i64,
    done: std::sync::atomic::AtomicBool,
}

impl Settle for MemoryAcker {
    fn settle(&self, how: Settled) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err("delivery settled twice".into());
            }
            let mut m = self.queue.inner.lock().expect("memory queue");
            m.settled.push((self.id, how));
            if how == Settled::Requeue {
                m.ready
                    .push_back((self.id, self.data.clone(), self.count + 1));
                drop(m);
                self.queue.notify.notify_one();
            }
            Ok(())
        })
    }
}

impl MemoryQueue {
    /// Adds a message; its id (to find its settlements).
    pub fn publish(&self, data: &[u8]) -> u64 {
        let mut m = self.inner.lock().expect("memory queue");
        m.next_id += 1;
        let id = m.next_id;
        m.ready.push_back((id, data.to_vec(), 0));
        drop(m);
        self.notify.notify_one();
        id
    }

    /// Ends the stream once the ready messages are taken (as a cancelled consumer does).
    pub fn close(&self) {
        self.inner.lock().expect("memory queue").closed = true;
        self.notify.notify_waiters();
    }

    /// Settlements so far, in order: (message id, how).
    pub fn settled(&self) -> Vec<(u64, Settled)> {
        self.inner.lock().expect("memory queue").settled.clone()
    }

    /// Messages still waiting for a consumer.
    pub fn ready(&self) -> usize {
        self.inner.lock().expect("memory queue").ready.len()
    }

    /// Dead letters: (body, reason).
    pub fn dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        self.inner.lock().expect("memory queue").dead.clone()
    }

    /// The next delivery; `None` once closed and drained.
    pub async fn next(&self) -> Option<Inbound> {
        loop {
            let notified = self.notify.notified();
            {
                let mut m = self.inner.lock().expect("memory queue");
                if let Some((id, data, count)) = m.ready.pop_front() {
                    return Some(Inbound {
                        data: data.clone(),
                        delivery_count: count,
                        acker: Box::new(MemoryAcker {
                            queue: self.clone(),
                            id,
                            data,
                            count,
                            done: Default::default(),
                        }),
                    });
                }
                if m.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The deliveries as the stream the worker consumes.
    pub fn stream(&self) -> futures::stream::BoxStream<'static, Result<Inbound, QueueError>> {
        let q = self.clone();
        Box::pin(futures::stream::unfold(q, |q| async move {
            q.next().await.map(|m| (Ok(m), q))
        }))
    }
}

impl DeadLetters for MemoryQueue {
    fn dead_letter<'a>(
        &'a self,
        body: &'a [u8],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.inner
                .lock()
                .expect("memory queue")
                .dead
                .push((Envelope::redacted(body), reason.to_string()));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn requeued_messages_come_back_counted_and_settling_twice_fails() {
        let q = MemoryQueue::default();
        let id = q.publish(b"a");
        let mut s = q.stream();
        let m = s.next().await.unwrap().unwrap();
        assert_eq!((m.data.as_slice(), m.delivery_count), (&b"a"[..], 0));
        m.acker.settle(Settled::Requeue).await.unwrap();
        assert!(m.acker.settle(Settled::Ack).await.is_err());
        let again = s.next().await.unwrap().unwrap();
        assert_eq!(again.delivery_count, 1);
        again.settle(Settled::Ack).await;
        assert_eq!(
            q.settled(),
            vec![(id, Settled::Requeue), (id, Settled::Ack)]
        );
        q.close();
        assert!(s.next().await.is_none());
    }
}
