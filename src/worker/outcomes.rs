//! Group commit of outcomes: the jobs of one worker that finish while an earlier write is in
//! flight are written together, in one statement and one commit ([`Store::record_outcomes`]),
//! through [`Grouped`].
//!
//! Why: a commit per job made Postgres the bottleneck of an unthrottled worker. Each job's
//! message is acked only after the write that holds its outcome committed.

use super::group::Grouped;
use crate::abdm::AttemptRecord;
use crate::store::jobs::{ClaimedJob, Outcome};
use crate::store::outcomes::OutcomeRecord;
use crate::store::{Store, StoreError};

type Pending = (ClaimedJob, Outcome, Vec<AttemptRecord>);

/// A handle on the worker's outcome writer task (it ends when every handle is dropped).
#[derive(Clone)]
pub struct OutcomeWriter(Grouped<Pending, bool>);

impl OutcomeWriter {
    /// Starts the writer of lease owner `owner`.
    pub fn start(store: Store, owner: String) -> Self {
        Self(Grouped::start(
            "outcome writer",
            move |group: Vec<Pending>| {
                let (store, owner) = (store.clone(), owner.clone());
                async move {
                    let records: Vec<OutcomeRecord<'_>> = group
                        .iter()
                        .map(|(job, outcome, attempts)| OutcomeRecord {
                            job,
                            outcome,
                            attempts,
                        })
                        .collect();
                    store.record_outcomes(&owner, &records).await
                }
            },
        ))
    }

    /// Records one outcome with the next group; false when the lease was lost.
    pub async fn record(
        &self,
        job: &ClaimedJob,
        outcome: &Outcome,
        attempts: &[AttemptRecord],
    ) -> Result<bool, StoreError> {
        self.0
            .call((job.clone(), outcome.clone(), attempts.to_vec()))
            .await
    }
}
