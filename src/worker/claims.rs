//! Grouped claims: the messages a worker receives while a claim is in flight are claimed
//! together, in one statement ([`Store::claim_many`]). No message waits for a timer: the
//! claimer takes whatever is queued the moment the previous claim ends.

use tokio::sync::{mpsc, oneshot};

use crate::store::jobs::Claim;
use crate::store::{Store, StoreError};

/// Most jobs in one claim.
const MAX_GROUP: usize = 256;

struct Pending {
    job_id: i64,
    reply: oneshot::Sender<Result<Claim, String>>,
}

/// A handle on the worker's claimer task (it ends when every handle is dropped).
#[derive(Clone)]
pub struct Claimer {
    tx: mpsc::Sender<Pending>,
}

impl Claimer {
    /// Starts the claimer of lease owner `owner`.
    pub fn start(store: Store, owner: String, lease_secs: u64) -> Self {
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(claim_groups(store, owner, lease_secs, rx));
        Self { tx }
    }

    /// Claims `job_id` with the next group.
    pub async fn claim(&self, job_id: i64) -> Result<Claim, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Refused("the claimer stopped".into());
        self.tx
            .send(Pending { job_id, reply })
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Refused)
    }
}

async fn claim_groups(
    store: Store,
    owner: String,
    lease_secs: u64,
    mut rx: mpsc::Receiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        // The same job twice in a group (a redelivery racing its original) is claimed once;
        // the second asker is told it is busy.
        let mut ids: Vec<i64> = group.iter().map(|p| p.job_id).collect();
        ids.sort_unstable();
        ids.dedup();
        match store.claim_many(&ids, &owner, lease_secs).await {
            Ok(mut claims) => {
                for p in group {
                    let claim = claims.remove(&p.job_id).unwrap_or(Claim::Busy);
                    let _ = p.reply.send(Ok(claim));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for p in group {
                    let _ = p.reply.send(Err(message.clone()));
                }
            }
        }
    }
}
