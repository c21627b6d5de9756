//! Natural batching: requests that arrive while the previous group is being written are sent
//! together in the next one. No request waits for a timer: a group is whatever is queued the
//! moment the previous one ends, so a lone request goes at once and a busy worker writes in
//! groups (one statement and one commit for many jobs).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Most requests in one group.
const MAX_GROUP: usize = 256;

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// A handle on a grouping task (it ends when every handle is dropped).
pub struct Grouped<Q, R> {
    tx: mpsc::Sender<(Q, Reply<R>)>,
    what: &'static str,
}

impl<Q, R> Clone for Grouped<Q, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            what: self.what,
        }
    }
}

impl<Q: Send + 'static, R: Send + 'static> Grouped<Q, R> {
    /// Starts the task that runs `run` on each group; `run` answers one result per request,
    /// in order, or one error for the whole group (every request in it gets the error).
    pub fn start<F, Fut>(what: &'static str, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(Q, Reply<R>)>(MAX_GROUP * 4);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                let (requests, replies): (Vec<Q>, Vec<Reply<R>>) = group.into_iter().unzip();
                match run(requests).await {
                    Ok(results) => {
                        for (reply, r) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(r));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        Self { tx, what }
    }

    /// Sends `request` with the next group and waits for its answer.
    pub async fn call(&self, request: Q) -> Result<R, StoreError> {
        let stopped = || StoreError::Refused(format!("the {} stopped", self.what));
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Under paused time: a lone request goes at once, and what arrives while a group is being
    /// written goes together in the next group (one statement, one commit), never waiting for
    /// a timer.
    #[tokio::test(start_paused = true)]
    async fn what_arrives_during_a_write_goes_in_the_next_group() {
        let groups = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = groups.clone();
        let g: Grouped<u32, u32> = Grouped::start("test writer", move |reqs: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(reqs.clone());
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(reqs.into_iter().map(|r| r * 2).collect())
            }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(g.call(1).await.unwrap(), 2);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(10),
            "no waiting for a timer"
        );
        let first = tokio::spawn({
            let g = g.clone();
            async move { g.call(10).await.unwrap() }
        });
        tokio::task::yield_now().await;
        let rest: Vec<_> = (11..15)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move { g.call(i).await.unwrap() })
            })
            .collect();
        assert_eq!(first.await.unwrap(), 20);
        for (i, h) in (11..15).zip(rest) {
            assert_eq!(
                h.await.unwrap(),
                i * 2,
                "each answer goes to its own request"
            );
        }
        assert_eq!(
            *groups.lock().unwrap(),
            vec![vec![1], vec![10], vec![11, 12, 13, 14]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_fails_every_request_of_its_group() {
        let g: Grouped<u32, u32> = Grouped::start("test writer", |_reqs: Vec<u32>| async {
            Err(StoreError::Refused("disk full".into()))
        });
        let err = g.call(1).await.unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
