//! The share of the global rate that replicas lease from Postgres in blocks, and the rule for
//! spending what was leased ([`Leased`]).
//!
//! Why leased tokens expire (issue 18, item 5): the bucket (`rate_budget`) refills up to its
//! capacity C while tokens leased from it sit unspent in replicas. Spent later with no limit,
//! the first second after an idle spell (or after a shared pause) carried the full bucket, R
//! tokens of refill and every replica's leftover block: R + C + N × block. A leased token may
//! be spent only while the bucket plus everything leased from it holds at most C, i.e. until
//! the bucket could have refilled the room it had when the token was leased: `(C − avail) / R`
//! after the lease. Then no second carries more than R + C, for any number of replicas (the
//! proof is on [`Leased::lease`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::store::Store;
use crate::telemetry::metrics;

/// Tokens leased from the shared bucket and not yet spent, with the instant after which
/// spending them could let the fleet exceed the rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Leased {
    tokens: f64,
    until: Option<Instant>,
}

impl Leased {
    /// Records a lease of `taken` tokens (`taken` ≥ 1) from a bucket of `capacity` that held
    /// `avail` before it, refilling at `rate`; the request was sent at `sent`. One token is
    /// spent at once (the call that asked for it), the rest are good until
    /// `sent + (capacity − avail) / rate`. Leftovers of an earlier lease are dropped (and
    /// counted) first.
    ///
    /// Why that instant: let S be the bucket plus every replica's unspent leased tokens. A
    /// lease moves tokens from the bucket to a replica (S unchanged); only the refill, at rate
    /// R and only while the bucket is below C, adds to S. Right after this lease the bucket
    /// holds `avail − taken` and the leftovers at most `taken − 1`, so until the bucket has
    /// refilled `C − avail` (not sooner than `(C − avail) / R`), S stays at most C. Leftovers
    /// of leases made later are bounded the same way by theirs. So S ≤ C at every instant,
    /// and the calls of any second [t, t + 1) number at most S(t) + R ≤ C + R. `sent` (not
    /// the answer's arrival) makes the bound hold for the round trip too.
    pub fn lease(&mut self, taken: f64, avail: f64, capacity: f64, rate: f64, sent: Instant) {
        self.drop_unspent();
        let room = (capacity - avail).max(0.0) / rate.max(1e-3);
        self.tokens = (taken - 1.0).max(0.0);
        self.until = Some(sent + Duration::from_secs_f64(room.min(3600.0)));
    }

    /// Spends one leased token at `now` if one is left and still good; drops them otherwise.
    pub fn spend(&mut self, now: Instant) -> bool {
        if self.tokens >= 1.0 && self.until.is_some_and(|u| now <= u) {
            self.tokens -= 1.0;
            return true;
        }
        self.drop_unspent();
        false
    }

    /// Drops the unspent tokens, counting them in `abha_ratelimit_expired_tokens_total`.
    fn drop_unspent(&mut self) {
        if self.tokens >= 1.0 {
            metrics::RATELIMIT_EXPIRED.inc_by(self.tokens as u64);
        }
        self.tokens = 0.0;
        self.until = None;
    }

    /// Tokens on hand (good or not).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

/// The share of the global rate that replicas lease from Postgres in blocks.
pub struct GlobalBudget {
    pub(super) store: Store,
    pub(super) client: String,
    capacity: f64,
    /// Tokens leased and not yet spent, and the shared rate last seen (`None`: not yet).
    local: tokio::sync::Mutex<(Leased, Option<f64>)>,
    /// Side work (reconcile, ...): spends from the bucket at its own rate, never sets the
    /// fleet's ceiling (`rate_budget.fleet_rate`) nor drives its recovery.
    pub(super) side: bool,
}

impl GlobalBudget {
    /// The bucket named `client` (the ABDM client id), holding at most `capacity` tokens (the
    /// burst), or a tenth of a second's worth of `rate` when that is more: replicas lease
    /// tokens in blocks of up to that size, and a block of a handful of tokens at a high rate
    /// would cost a Postgres round trip (under this replica's lock) every few calls. The
    /// refill rate is the shared effective rate, at most the configured one.
    pub fn new(store: Store, client: &str, rate: f64, capacity: f64) -> Self {
        Self {
            store,
            client: client.to_string(),
            capacity: capacity.max(rate * 0.1).max(1.0),
            local: tokio::sync::Mutex::new((Leased::default(), None)),
            side: false,
        }
    }

    /// The same bucket for side work (`reconcile` look-ups, ...): it takes one more flow's
    /// tokens from the shared budget, at the rate of its own limiter, and never lowers the
    /// rate every replica refills at. (Before, the bucket's rate was capped by each caller's
    /// configured rate, so a 5/s reconcile dragged a 100/s fleet down to 16.9 jobs/s.)
    pub fn side(mut self) -> Self {
        self.side = true;
        self
    }

    /// The ceiling this caller sets for the shared rate: its configured rate when it is of
    /// the fleet, none when it is side work (the fleet's recorded rate applies).
    pub(super) fn ceiling(&self, configured: f64) -> Option<f64> {
        (!self.side).then_some(configured)
    }

    /// Drops the tokens leased but not spent (after throttling: they were leased at the old
    /// rate).
    pub(super) async fn drain(&self) {
        self.local.lock().await.0.drop_unspent();
    }

    /// Takes one token; returns the shared rate seen. Blocks of half to one tenth of a
    /// second's worth are leased at a time (at least one), so Postgres sees 10-20 requests/s
    /// in all. A leased token is spent only while [`Leased`] says it is good; a shared pause
    /// (any replica's) refuses the next lease, and the tokens leased before it stay good for
    /// at most `capacity / rate` (a tenth of a second at the defaults), so during a pause the
    /// whole fleet makes at most `capacity` calls, all in that first moment.
    pub(super) async fn take_one(&self, configured: f64) -> f64 {
        let mut local = self.local.lock().await;
        let mut warned = false;
        loop {
            let rate = local.1.unwrap_or(configured);
            if local.0.spend(Instant::now()) {
                return rate;
            }
            // A tenth of a second's worth at the rate this caller spends at (side work's own
            // rate is far below the fleet's): a bigger block would mostly expire unspent.
            let block = (rate.min(configured) * 0.1)
                .floor()
                .clamp(1.0, self.capacity);
            let sent = Instant::now();
            match self
                .store
                .take_tokens(
                    &self.client,
                    ((block / 2.0).ceil(), block),
                    (self.ceiling(configured), configured),
                    self.capacity,
                )
                .await
            {
                Ok(t) => {
                    local.1 = Some(t.rate);
                    if t.taken >= 1.0 {
                        local.0.lease(t.taken, t.avail, self.capacity, t.rate, sent);
                        return t.rate;
                    }
                    tokio::time::sleep(t.wait.max(Duration::from_millis(2))).await
                }
                Err(e) => {
                    // Fail closed: without the shared budget no call may start.
                    if !warned {
                        tracing::warn!(error = %e, "global rate budget unavailable; waiting");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    /// From a full bucket nothing may wait: the call that leased spends one token and the
    /// rest is dropped at once, so an idle spell cannot add a block to the bucket's burst.
    #[tokio::test(start_paused = true)]
    async fn tokens_leased_from_a_full_bucket_are_not_kept() {
        let mut l = Leased::default();
        l.lease(4.0, 8.0, 8.0, 40.0, Instant::now());
        assert_eq!(l.tokens(), 3.0);
        assert!(l.spend(Instant::now()), "in the same instant: still good");
        advance(Duration::from_millis(1)).await;
        assert!(!l.spend(Instant::now()));
        assert_eq!(l.tokens(), 0.0, "dropped");
    }

    /// From an empty bucket the block is good for the time the bucket needs to refill its
    /// room (8 tokens at 40/s: 200 ms from the request), to the millisecond, and not after.
    #[tokio::test(start_paused = true)]
    async fn leased_tokens_are_good_until_the_bucket_could_have_refilled_their_room() {
        let mut l = Leased::default();
        let sent = Instant::now();
        advance(Duration::from_millis(5)).await; // the round trip
        l.lease(4.0, 0.0, 8.0, 40.0, sent);
        advance(Duration::from_millis(100)).await;
        assert!(l.spend(Instant::now()));
        advance(Duration::from_millis(95)).await; // 200 ms after the request
        assert!(l.spend(Instant::now()));
        advance(Duration::from_millis(1)).await;
        assert!(!l.spend(Instant::now()), "one token left, too old");
        assert_eq!(l.tokens(), 0.0);
    }

    /// The sum over a fleet: N replicas lease in turn from one bucket (C = 8, R = 40), each
    /// keeping its leftovers as long as it may; at every millisecond the bucket plus every
    /// good leftover holds at most C, so no second can carry more than R + C.
    #[tokio::test(start_paused = true)]
    async fn a_fleet_never_holds_more_than_the_bucket_in_all() {
        let (cap, rate) = (8.0_f64, 40.0_f64);
        let mut bucket = cap;
        let mut fleet = [Leased::default(); 5];
        let mut worst: f64 = 0.0;
        for ms in 0..2000u32 {
            // Each replica leases a block of 4 when it has none, every 7 ms in turn (more
            // often than the refill, so the bucket runs low), and never spends a leftover.
            let i = (ms / 7) as usize % fleet.len();
            if ms % 7 == 0 && bucket >= 4.0 {
                let avail = bucket;
                bucket -= 4.0;
                fleet[i].lease(4.0, avail, cap, rate, Instant::now());
            }
            advance(Duration::from_millis(1)).await;
            bucket = (bucket + rate / 1000.0).min(cap);
            let now = Instant::now();
            let held: f64 = fleet
                .iter()
                .filter(|l| l.until.is_some_and(|u| now <= u))
                .map(|l| l.tokens)
                .sum();
            worst = worst.max(bucket + held);
        }
        assert!(worst <= cap + 1e-9, "bucket plus leftovers reached {worst}");
    }
}
