//! The gate every HTTP request of one job passes: a rate token, then (before a call that
//! changes something at ABDM, unless the claim a moment ago already was one) the fence.
//!
//! Why a per-job gate and not only a limiter in front of the job: a job can send several
//! requests (a session refresh, the certificate, a look-first list, the client's own retry
//! after a 401), and each one counts against ABDM's limit. And the fence must run right before
//! the side effect, after any wait for a token, so that a worker whose lease expired while it
//! waited makes no call: the lease is re-checked and extended to `lease_secs` from the moment
//! the call is sent, and a call lasts at most the request timeout, which config validation
//! keeps well below `lease_secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::abdm::{CallGate, ClientError, Operation};
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::store::jobs::Fence;
use crate::telemetry::metrics;

/// How long a token taken before the claim stays good for the job's first request. Tokens
/// are handed out at the rate, but a claim that stalls (Postgres slow, the CPU busy) lets many
/// jobs hold theirs and then send together: ABDM would see a burst its limit does not allow
/// (measured: 2-4 workers at ABDM's limit were throttled). A stale token is dropped and a fresh
/// one taken, which paces the calls again.
pub const PREPAID_FRESH: Duration = Duration::from_millis(100);

/// The gate of one claimed job.
pub struct JobGate {
    /// The process's limiter.
    pub limiter: Arc<RateLimiter>,
    /// Postgres, for the fence.
    pub store: Store,
    /// The job.
    pub job_id: i64,
    /// This worker's lease name.
    pub owner: String,
    /// Lease length the fence extends to.
    pub lease_secs: u64,
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
            if !op.changes_state()
                || self.claimed_at.elapsed() < Duration::from_secs(self.lease_secs) / 4
            {
                return Ok(());
            }
            match self
                .store
                .fence(self.job_id, &self.owner, self.lease_secs, true)
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
