//! The gate every HTTP request of one job passes: a rate token, then (before a call that
//! changes something at ABDM, unless the claim a moment ago already was one) the fence.
//!
//! Why a per-job gate and not only a limiter in front of the job: a job can send several
//! requests (a session refresh, the certificate, a look-first list, the client's own retry
//! after a 401), and each one counts against ABDM's limit. And the fence must run right before
//! the side effect, after any wait for a token, so that a worker whose lease expired while it
//! waited makes no call: the lease is re-checked and extended to `lease` from the moment the
//! call is sent, and a call lasts at most the request timeout, which config validation keeps
//! well below `lease`.
//!
//! The gate reads tokio's clock and reaches the lease through [`Leases`], so the races between
//! a token wait, the lease and another worker's claim run under `tokio::time::pause` against
//! [`MemoryLeases`] (`tests/gate_races.rs`), with Postgres ([`Store`]) in production.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::abdm::{CallGate, ClientError, Operation};
use crate::ratelimit::RateLimiter;
use crate::store::jobs::Fence;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics;

/// How long a token taken before the claim stays good for the job's first request. Tokens
/// are handed out at the rate, but a claim that stalls (Postgres slow, the CPU busy) lets many
/// jobs hold theirs and then send together: ABDM would see a burst its limit does not allow
/// (measured: 2-4 workers at ABDM's limit were throttled). A stale token is dropped and a fresh
/// one taken, which paces the calls again.
pub const PREPAID_FRESH: Duration = Duration::from_millis(100);

/// Where the fence checks and extends a job's lease.
pub trait Leases: Send + Sync {
    /// Checks that `owner` still holds `job_id` and extends the lease to `lease` from now;
    /// records the intent of a side effect before the call (see [`Store::fence`]).
    fn fence(
        &self,
        job_id: i64,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>>;
}

impl Leases for Store {
    fn fence(
        &self,
        job_id: i64,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>> {
        let owner = owner.to_string();
        Box::pin(async move { Store::fence(self, job_id, &owner, lease, true).await })
    }
}

/// Leases in memory on tokio's clock, with the claim rule of `Store::claim_many` (a job is
/// free when nobody holds it or its lease has run out) and the fence rule of
/// [`Store::fence`] (the holder keeps it, expired or not, until someone else claims it).
#[derive(Default)]
pub struct MemoryLeases {
    held: Mutex<HashMap<i64, (String, Instant)>>,
    fences: std::sync::atomic::AtomicUsize,
}

impl MemoryLeases {
    /// Claims `job_id` for `owner` if it is free; returns whether it did.
    pub fn claim(&self, job_id: i64, owner: &str, lease: Duration) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().expect("leases");
        match held.get(&job_id) {
            Some((_, until)) if *until >= now => false,
            _ => {
                held.insert(job_id, (owner.to_string(), now + lease));
                true
            }
        }
    }

    /// Who holds `job_id` and until when.
    pub fn holder(&self, job_id: i64) -> Option<(String, Instant)> {
        self.held.lock().expect("leases").get(&job_id).cloned()
    }

    /// Fences run so far.
    pub fn fences(&self) -> usize {
        self.fences.load(Ordering::Acquire)
    }
}

impl Leases for MemoryLeases {
    fn fence(
        &self,
        job_id: i64,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>> {
        self.fences.fetch_add(1, Ordering::AcqRel);
        let mut held = self.held.lock().expect("leases");
        let fence = match held.get_mut(&job_id) {
            Some((who, until)) if who == owner => {
                *until = Instant::now() + lease;
                Fence::Held
            }
            _ => Fence::Lost,
        };
        Box::pin(std::future::ready(Ok(fence)))
    }
}

/// The gate of one claimed job.
pub struct JobGate {
    /// The process's limiter.
    pub limiter: Arc<RateLimiter>,
    /// Where the lease is held: Postgres in production.
    pub leases: Arc<dyn Leases>,
    /// The job.
    pub job_id: i64,
    /// This worker's lease name.
    pub owner: String,
    /// Lease length the fence extends to.
    pub lease: Duration,
    /// One token was taken before the claim: the first request spends it, unless it is older
    /// than [`PREPAID_FRESH`].
    pub prepaid: AtomicBool,
    /// When that token was taken.
    pub token_at: Instant,
    /// When the claim (the first fence: lease set, intent recorded) committed.
    pub claimed_at: Instant,
}

impl CallGate for JobGate {
    fn before_send(&self, op: Operation) -> BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(async move {
            let prepaid = self.prepaid.swap(false, Ordering::AcqRel);
            let fresh = prepaid && self.token_at.elapsed() <= PREPAID_FRESH;
            if prepaid && !fresh {
                metrics::RATELIMIT_STALE.inc();
            }
            if !fresh {
                self.limiter.acquire().await;
            }
            // Within a quarter of the lease after the claim, the claim is the fence: nobody
            // can have taken the job over, and the call ends well before the lease does.
            if !op.changes_state() || self.claimed_at.elapsed() < self.lease / 4 {
                return Ok(());
            }
            match self
                .leases
                .fence(self.job_id, &self.owner, self.lease)
                .await
            {
                Ok(Fence::Held) => Ok(()),
                Ok(Fence::Lost) => {
                    tracing::warn!(
                        job_id = self.job_id,
                        "lease lost before the call: another worker owns the job; no call made"
                    );
                    Err(ClientError::NotSent("lease lost"))
                }
                Err(e) => {
                    tracing::warn!(job_id = self.job_id, error = %e, "lease check failed; no call made");
                    Err(ClientError::NotSent("lease could not be checked"))
                }
            }
        })
    }
}
