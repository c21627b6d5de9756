//! The gate every HTTP request of one job passes: a rate token, then (before a call that
//! changes something at ABDM, unless the claim a moment ago already was one) the fence.
//!
//! Why a per-job gate and not only a limiter in front of the job: a job can send several
//! requests (a session refresh, the certificate, a look-first list, the client's own retry
//! after a 401), and each one counts against ABDM's limit. And the fence must run right before
//! the side effect, after any wait for a token, so that a worker whose lease expired while it
//! waited makes no call: the lease is re-checked and extended to `lease` from the moment the
//! call is sent, and a call lasts at most the request timeout, which config validation keeps
//! well below `lease`. While the job waits for a token it keeps its lease alive every quarter
//! lease ([`Leases::keep`]), so waiting for ABDM's permission (a `Retry-After` pause, the AIMD
//! floor) never lets the lease run out and cost the row an attempt.
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
use uuid::Uuid;

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
    /// Checks that `owner` still holds `job_id` under claim `claim_token` and extends the lease
    /// to `lease` from now; records the intent of a side effect before the call (see
    /// [`Store::fence`]).
    fn fence(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>>;

    /// Keeps a lease alive while its job waits for ABDM's permission (a rate token): the same
    /// check and extension as [`Self::fence`], without recording an intent (no call follows).
    fn keep(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>>;
}

impl Leases for Store {
    fn fence(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>> {
        let owner = owner.to_string();
        Box::pin(async move { Store::fence(self, job_id, &owner, claim_token, lease, true).await })
    }

    fn keep(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>> {
        let owner = owner.to_string();
        Box::pin(async move { Store::fence(self, job_id, &owner, claim_token, lease, false).await })
    }
}

/// One job's lease in [`MemoryLeases`].
#[derive(Debug, Clone)]
struct Held {
    owner: String,
    token: Uuid,
    until: Instant,
    /// The durable intent (`jobs.effect_started_at`): set by a fence, cleared only by an
    /// outcome write of the claim that holds the job.
    intent: bool,
}

/// Leases in memory on tokio's clock, with the claim rule of `Store::claim_many` (a job is
/// free when nobody holds it or its lease has run out; every claim gets a fresh token), the
/// fence rule of [`Store::fence`] (the holder's claim keeps it, expired or not, until someone
/// else claims it) and the outcome write's rule of `Store::record_outcomes` ([`Self::finish`]).
#[derive(Default)]
pub struct MemoryLeases {
    held: Mutex<HashMap<i64, Held>>,
    fences: std::sync::atomic::AtomicUsize,
    keeps: std::sync::atomic::AtomicUsize,
    /// This worker cannot reach the leases (Postgres down for it): fences and keeps fail.
    unreachable: AtomicBool,
}

impl MemoryLeases {
    /// Claims `job_id` for `owner` if it is free; returns whether it did.
    pub fn claim(&self, job_id: i64, owner: &str, lease: Duration) -> bool {
        self.claim_token(job_id, owner, lease).is_some()
    }

    /// Claims `job_id` for `owner` if it is free; returns the new claim's token.
    pub fn claim_token(&self, job_id: i64, owner: &str, lease: Duration) -> Option<Uuid> {
        let now = Instant::now();
        let mut held = self.held.lock().expect("leases");
        match held.get_mut(&job_id) {
            Some(h) if !h.owner.is_empty() && h.until >= now => None,
            Some(h) => {
                h.owner = owner.to_string();
                h.token = Uuid::new_v4();
                h.until = now + lease;
                Some(h.token)
            }
            None => {
                let token = Uuid::new_v4();
                held.insert(
                    job_id,
                    Held {
                        owner: owner.to_string(),
                        token,
                        until: now + lease,
                        intent: false,
                    },
                );
                Some(token)
            }
        }
    }

    /// Who holds `job_id` and until when.
    pub fn holder(&self, job_id: i64) -> Option<(String, Instant)> {
        let held = self.held.lock().expect("leases");
        held.get(&job_id).map(|h| (h.owner.clone(), h.until))
    }

    /// The token of the claim that holds `job_id`.
    pub fn token(&self, job_id: i64) -> Option<Uuid> {
        let held = self.held.lock().expect("leases");
        held.get(&job_id).map(|h| h.token)
    }

    /// Whether a fence recorded the intent of a side effect on `job_id` that no outcome
    /// write of the holding claim has cleared since.
    pub fn intent(&self, job_id: i64) -> bool {
        let held = self.held.lock().expect("leases");
        held.get(&job_id).is_some_and(|h| h.intent)
    }

    /// The outcome write: releases `job_id` (clearing the intent with `clear_intent`) only if
    /// `owner`'s claim `claim_token` still holds it; returns whether it did.
    pub fn finish(&self, job_id: i64, owner: &str, claim_token: Uuid, clear_intent: bool) -> bool {
        let mut held = self.held.lock().expect("leases");
        match held.get_mut(&job_id) {
            Some(h) if h.owner == owner && h.token == claim_token => {
                h.owner.clear();
                h.until = Instant::now();
                h.intent &= !clear_intent;
                true
            }
            _ => false,
        }
    }

    /// Fences run so far.
    pub fn fences(&self) -> usize {
        self.fences.load(Ordering::Acquire)
    }

    /// Lease extensions while waiting ([`Leases::keep`]) that reached the leases so far.
    pub fn keeps(&self) -> usize {
        self.keeps.load(Ordering::Acquire)
    }

    /// Makes the worker's fences and keeps fail (as when Postgres is unreachable from it)
    /// or succeed again; claims by others are unaffected.
    pub fn set_unreachable(&self, down: bool) {
        self.unreachable.store(down, Ordering::Release);
    }

    fn extend(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
        intent: bool,
    ) -> Result<Fence, StoreError> {
        if self.unreachable.load(Ordering::Acquire) {
            return Err(StoreError::Refused("leases unreachable (test)".into()));
        }
        let mut held = self.held.lock().expect("leases");
        Ok(match held.get_mut(&job_id) {
            Some(h) if h.owner == owner && h.token == claim_token => {
                h.until = Instant::now() + lease;
                h.intent |= intent;
                Fence::Held
            }
            _ => Fence::Lost,
        })
    }
}

impl Leases for MemoryLeases {
    fn fence(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>> {
        self.fences.fetch_add(1, Ordering::AcqRel);
        Box::pin(std::future::ready(self.extend(
            job_id,
            owner,
            claim_token,
            lease,
            true,
        )))
    }

    fn keep(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Fence, StoreError>> {
        let kept = self.extend(job_id, owner, claim_token, lease, false);
        if matches!(kept, Ok(Fence::Held)) {
            self.keeps.fetch_add(1, Ordering::AcqRel);
        }
        Box::pin(std::future::ready(kept))
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
    /// The claim's token (the lease is this claim's, not the process's).
    pub claim_token: Uuid,
    /// Lease length the fence extends to.
    pub lease: Duration,
    /// One token was taken before the claim: the first request spends it, unless it is older
    /// than [`PREPAID_FRESH`].
    pub prepaid: AtomicBool,
    /// When that token was taken.
    pub token_at: Instant,
    /// When the claim (the first fence: lease set, intent recorded) committed.
    pub claimed_at: Instant,
    /// When the lease was last extended (the claim, a fence or a keep while waiting).
    pub extended_at: Mutex<Instant>,
}

/// How often a job waiting for a token keeps its lease alive: a quarter of the lease, so
/// Postgres must stay out of this worker's reach for three quarters of it before the lease can
/// run out under a job that only waited.
const KEEP_EVERY_DIVISOR: u32 = 4;

impl JobGate {
    /// Waits for a rate token, keeping the lease alive meanwhile (issue 18, item 2): a
    /// `Retry-After` pause (up to 300 s) or the AIMD floor can hold a job far longer than the
    /// 120 s lease, and an expired lease would be requeued with a new attempt, so waiting for
    /// ABDM's permission would spend the row's attempts (`lease_expired` after
    /// `max_attempts`) with ABDM never refusing it. Errs (no call) when the lease was taken over.
    async fn wait_for_token(&self) -> Result<(), ClientError> {
        let every = self.lease / KEEP_EVERY_DIVISOR;
        let acquire = self.limiter.acquire();
        tokio::pin!(acquire);
        let mut retry_at = None;
        loop {
            let due = retry_at.unwrap_or(*self.extended_at.lock().expect("extended_at") + every);
            // The token first: when it comes at the instant a keep is due, the call's own
            // fence extends the lease (no keep needed, and a deterministic count in tests).
            tokio::select! {
                biased;
                _ = &mut acquire => return Ok(()),
                _ = tokio::time::sleep_until(due) => {}
            }
            match self
                .leases
                .keep(self.job_id, &self.owner, self.claim_token, self.lease)
                .await
            {
                Ok(Fence::Held) => {
                    retry_at = None;
                    *self.extended_at.lock().expect("extended_at") = Instant::now();
                    metrics::LEASE_KEPT.inc();
                }
                Ok(Fence::Lost) => {
                    tracing::warn!(
                        job_id = self.job_id,
                        "lease lost while waiting for a rate token; no call made"
                    );
                    return Err(ClientError::NotSent("lease lost"));
                }
                Err(e) => {
                    // Try again a little later: the lease still runs for most of its length.
                    tracing::warn!(job_id = self.job_id, error = %e, "cannot keep the lease while waiting");
                    retry_at = Some(Instant::now() + every / 4);
                }
            }
        }
    }
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
                self.wait_for_token().await?;
            }
            // Within a quarter of the lease after the claim, the claim is the fence: nobody
            // can have taken the job over, and the call ends well before the lease does.
            if !op.changes_state() || self.claimed_at.elapsed() < self.lease / 4 {
                return Ok(());
            }
            match self
                .leases
                .fence(self.job_id, &self.owner, self.claim_token, self.lease)
                .await
            {
                Ok(Fence::Held) => {
                    *self.extended_at.lock().expect("extended_at") = Instant::now();
                    Ok(())
                }
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
