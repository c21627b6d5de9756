//! Grouped claims: the messages a worker receives while a claim is in flight are claimed
//! together, in one statement ([`Store::claim_many`]), through [`Grouped`].

use std::time::Duration;

use super::group::Grouped;
use crate::store::jobs::Claim;
use crate::store::{Store, StoreError};

/// A handle on the worker's claimer task (it ends when every handle is dropped).
#[derive(Clone)]
pub struct Claimer(Grouped<i64, Claim>);

impl Claimer {
    /// Starts the claimer of lease owner `owner`.
    pub fn start(store: Store, owner: String, lease: Duration) -> Self {
        Self(Grouped::start("claimer", move |job_ids: Vec<i64>| {
            let (store, owner) = (store.clone(), owner.clone());
            async move {
                // The same job twice in a group (a redelivery racing its original) is claimed
                // once; the second asker is told it is busy.
                let mut ids = job_ids.clone();
                ids.sort_unstable();
                ids.dedup();
                let mut claims = store.claim_many(&ids, &owner, lease).await?;
                Ok(job_ids
                    .iter()
                    .map(|id| claims.remove(id).unwrap_or(Claim::Busy))
                    .collect())
            }
        }))
    }

    /// Claims `job_id` with the next group.
    pub async fn claim(&self, job_id: i64) -> Result<Claim, StoreError> {
        self.0.call(job_id).await
    }
}
