//! Group commit of outcomes: the jobs of one worker that finish while an earlier write is in
//! flight are written together, in one statement and one commit ([`Store::record_outcomes`]).
//!
//! Why: a commit per job made Postgres the bottleneck of an unthrottled worker. No job waits
//! for a timer: the writer takes whatever is queued the moment the previous write ends, so a
//! lone job is written at once and a busy worker writes in groups. Each job's message is acked
//! only after the write that holds its outcome committed.

use tokio::sync::{mpsc, oneshot};

use crate::abdm::AttemptRecord;
use crate::store::jobs::{ClaimedJob, Outcome};
use crate::store::outcomes::OutcomeRecord;
use crate::store::{Store, StoreError};

/// Most outcomes in one write.
const MAX_GROUP: usize = 256;

struct Pending {
    job: ClaimedJob,
    outcome: Outcome,
    attempts: Vec<AttemptRecord>,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// A handle on the worker's outcome writer task (it ends when every handle is dropped).
#[derive(Clone)]
pub struct OutcomeWriter {
    tx: mpsc::Sender<Pending>,
}

impl OutcomeWriter {
    /// Starts the writer of lease owner `owner`.
    pub fn start(store: Store, owner: String) -> Self {
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(write_groups(store, owner, rx));
        Self { tx }
    }

    /// Records one outcome with the next group; false when the lease was lost.
    pub async fn record(
        &self,
        job: &ClaimedJob,
        outcome: &Outcome,
        attempts: &[AttemptRecord],
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            job: job.clone(),
            outcome: outcome.clone(),
            attempts: attempts.to_vec(),
            reply,
        };
        let stopped = || StoreError::Refused("the outcome writer stopped".into());
        self.tx.send(pending).await.map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Refused)
    }
}

async fn write_groups(store: Store, owner: String, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let records: Vec<OutcomeRecord<'_>> = group
            .iter()
            .map(|p| OutcomeRecord {
                job: &p.job,
                outcome: &p.outcome,
                attempts: &p.attempts,
            })
            .collect();
        let written = store.record_outcomes(&owner, &records).await;
        drop(records);
        match written {
            Ok(held) => {
                for (p, held) in group.into_iter().zip(held) {
                    let _ = p.reply.send(Ok(held));
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
