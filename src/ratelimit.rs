//! The rate contract with ABDM: every HTTP request to ABDM (session, certificate, look-first
//! lists and the client's own retries included) takes one token here first.
//!
//! - A `governor` GCRA limiter per process smooths calls at the effective rate.
//! - With `worker.global_rate_limit`, a token bucket row in Postgres (`rate_budget`) is shared
//!   by every replica, and so is AIMD: a throttling answer multiplies the **shared** rate by
//!   `decrease_factor` (at most once a second, counted from the last decrease, not the last
//!   throttled answer, so a steady storm still converges), empties the bucket and starts a
//!   shared `Retry-After` pause; the rate climbs back by `increase_fraction` of the configured
//!   rate every `increase_every` once no throttling came for `quiet`, but for
//!   `ceiling_memory` after a throttling answer not above `ceiling_margin` (90 %) of the rate
//!   that was throttled (ABDM's limit lies below it), so it does not keep probing past the
//!   limit. A throttling answer after a recovery step goes back to the rate that held before
//!   the step instead of halving: ABDM's limit lies between the two, so an over-configured
//!   rate settles just below the limit rather than sawing between the limit and half of it.
//!   Every one of these is a `[worker]` `aimd_*` setting.
//! - Without it (one worker only), the same AIMD runs on a local copy.
//!
//! Time is tokio's ([`TokioClock`]): under `tokio::time::pause` every wait here (pacing, the
//! `Retry-After` pause, recovery steps) is virtual, so the limiter's races have exact,
//! deterministic tests instead of wall-clock sleeps.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::Quota;
use governor::clock::Clock;
use governor::state::{InMemoryState, NotKeyed};
use tokio::time::Instant;

mod global;

pub use crate::store::budget::Aimd;
use crate::telemetry::metrics;
pub use global::{GlobalBudget, Leased};

struct State {
    current: f64,
    limiter: Arc<Gcra>,
    last_decrease: Option<Instant>,
    last_throttle: Option<Instant>,
    last_change: Instant,
    paused_until: Option<Instant>,
    /// The rate last throttled at (recovery stops below it while remembered).
    ceiling: Option<f64>,
    /// The last rate that held: a throttling answer after an increase goes back to it.
    good: Option<f64>,
}

/// governor's clock on tokio's time. governor's own clocks (and its `until_ready`, which sleeps
/// with a timer of its own) read the wall clock, so a paused test would wait for real.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type Gcra = governor::RateLimiter<
    NotKeyed,
    InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

fn build(rate: f64, burst: u32) -> Arc<Gcra> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3)).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)
        .expect("period > 0")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("≥ 1"));
    Arc::new(governor::RateLimiter::direct_with_clock(quota, TokioClock))
}

/// Waits (on tokio's timer) until `limiter` lets one call through.
async fn until_ready(limiter: &Gcra) {
    while let Err(not_until) = limiter.check() {
        tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
    }
}

/// Gates every ABDM call of one worker process.
pub struct RateLimiter {
    configured: f64,
    burst: u32,
    aimd: Aimd,
    state: Mutex<State>,
    global: Option<GlobalBudget>,
    /// Callers take tokens in the order they asked: tokio's mutex is fair (FIFO), governor's
    /// waiters are not (each sleeps to its own deadline and the first to poll wins). Without
    /// it, a job that arrived first could lose its turn again and again to later ones: a small
    /// batch's rows, published at their fair share, finished seconds late behind another
    /// programme's (bench/RESULTS.md, "Fair shares").
    turn: tokio::sync::Mutex<()>,
}

impl RateLimiter {
    /// `rate` calls/s with `burst`; `global` shares the rate (and its AIMD) with other replicas.
    pub fn new(rate: f64, burst: u32, global: Option<GlobalBudget>) -> Arc<Self> {
        Self::with_aimd(rate, burst, global, Aimd::default())
    }

    /// As [`Self::new`] with explicit AIMD tuning.
    pub fn with_aimd(rate: f64, burst: u32, global: Option<GlobalBudget>, aimd: Aimd) -> Arc<Self> {
        metrics::RATELIMIT_CONFIGURED.set(rate);
        metrics::RATELIMIT_RATE.set(rate);
        Arc::new(Self {
            configured: rate,
            burst,
            aimd,
            state: Mutex::new(State {
                current: rate,
                limiter: build(rate, burst),
                last_decrease: None,
                last_throttle: None,
                last_change: Instant::now(),
                paused_until: None,
                ceiling: None,
                good: None,
            }),
            global,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Waits until one call may start; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let _turn = self.turn.lock().await;
        let (limiter, paused) = {
            let s = self.state.lock().expect("rate state");
            (s.limiter.clone(), s.paused_until)
        };
        if let Some(until) = paused
            && until > Instant::now()
        {
            tokio::time::sleep_until(until).await;
        }
        until_ready(&limiter).await;
        if let Some(g) = &self.global {
            let rate = g.take_one(self.configured).await;
            // Side work runs at its own rate within the fleet's: it adopts the shared rate
            // only when that is lower (ABDM throttled everyone).
            self.adopt(if g.side {
                rate.min(self.configured)
            } else {
                rate
            });
        }
        let waited = started.elapsed();
        metrics::RATELIMIT_WAIT.observe(waited.as_secs_f64());
        waited
    }

    /// Takes the shared rate as this process's effective rate.
    fn adopt(&self, rate: f64) {
        let mut s = self.state.lock().expect("rate state");
        if (s.current - rate).abs() > 1e-9 {
            s.current = rate;
            s.limiter = build(rate, self.burst.min(rate.ceil() as u32));
            s.last_change = Instant::now();
            metrics::RATELIMIT_RATE.set(rate);
        }
    }

    /// ABDM said "too many requests": lower the (shared) rate and pause for `retry_after`.
    pub async fn on_throttled(&self, retry_after: Option<Duration>) {
        self.on_throttled_call(retry_after, None).await
    }

    /// ABDM throttled a call sent `sent_ago`: lower the rate unless it was lowered after the
    /// call was sent (the call then reflects the old rate, and lowering again would count one
    /// excess twice). Without `sent_ago`, the rate is lowered at most once a second.
    pub async fn on_throttled_call(
        &self,
        retry_after: Option<Duration>,
        sent_ago: Option<Duration>,
    ) {
        // The decrease must predate the call by ABDM's own pause (`Retry-After`) too: a call
        // sent within the pause that followed a decrease met a bucket ABDM had not refilled
        // yet, so its refusal says nothing about the new rate (halving again for it took an
        // over-configured rate far below ABDM's limit: +91 % wall time in the overload bench).
        let gate = sent_ago.map_or(Duration::from_secs(1), |d| {
            d + retry_after.unwrap_or_default().min(Duration::from_secs(5))
        });
        if let Some(g) = &self.global {
            match g
                .store
                .throttled(
                    &g.client,
                    g.ceiling(self.configured),
                    &self.aimd,
                    retry_after,
                    gate,
                )
                .await
            {
                Ok((rate, lowered)) => {
                    if lowered {
                        tracing::warn!(rate, "ABDM throttled us: shared rate lowered");
                    }
                    g.drain().await;
                    self.adopt(if g.side {
                        rate.min(self.configured)
                    } else {
                        rate
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot lower the shared rate; lowering locally");
                    self.throttled_locally(retry_after, gate);
                }
            }
            return;
        }
        self.throttled_locally(retry_after, gate);
    }

    /// The local twin of `Store::throttled` (same rules, one process).
    fn throttled_locally(&self, retry_after: Option<Duration>, gate: Duration) {
        let mut s = self.state.lock().expect("rate state");
        let now = Instant::now();
        if s.last_decrease
            .is_none_or(|t| now.duration_since(t) >= gate)
        {
            let near = s.last_decrease.is_some_and(|t| now - t > self.aimd.quiet)
                && s.last_throttle
                    .is_some_and(|t| now - t < self.aimd.ceiling_memory);
            s.ceiling = Some(s.current);
            let halved = s.current * self.aimd.decrease_factor;
            let floor = self.configured * self.aimd.min_fraction;
            s.current = match s.good {
                Some(g) if g < s.current => g.max(halved),
                _ => {
                    s.good = None;
                    let factor = if near {
                        self.aimd.ceiling_margin
                    } else {
                        self.aimd.decrease_factor
                    };
                    (s.current * factor).max(floor)
                }
            };
            s.limiter = build(s.current, self.burst.min(s.current.ceil() as u32));
            s.last_decrease = Some(now);
            s.last_change = now;
            metrics::RATELIMIT_RATE.set(s.current);
            tracing::warn!(
                rate = s.current,
                "ABDM throttled us: effective rate lowered"
            );
        }
        s.last_throttle = Some(now);
        if let Some(ra) = retry_after {
            let until = now + ra.min(Duration::from_secs(300));
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// Additive recovery; call every second or so (cheap when nothing is due).
    pub async fn recover(&self) {
        if let Some(g) = &self.global {
            if g.side {
                // The fleet's workers drive the shared rate's recovery; side work follows it.
                return;
            }
            match g
                .store
                .recover_rate(&g.client, self.configured, &self.aimd)
                .await
            {
                Ok(Some(rate)) => {
                    tracing::info!(rate, "shared rate recovering");
                    self.adopt(rate);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot raise the shared rate now"),
            }
            return;
        }
        let mut s = self.state.lock().expect("rate state");
        let quiet = s
            .last_throttle
            .is_none_or(|t| t.elapsed() >= self.aimd.quiet);
        let cap = match (s.ceiling, s.last_throttle) {
            (Some(c), Some(t)) if t.elapsed() < self.aimd.ceiling_memory => {
                c * self.aimd.ceiling_margin
            }
            _ => self.configured,
        };
        let target = (s.current + self.configured * self.aimd.increase_fraction)
            .min(self.configured)
            .min(cap);
        if target > s.current && quiet && s.last_change.elapsed() >= self.aimd.increase_every {
            s.good = Some(s.current);
            s.current = target;
            s.limiter = build(s.current, self.burst.min(s.current.ceil() as u32));
            s.last_change = Instant::now();
            metrics::RATELIMIT_RATE.set(s.current);
            tracing::info!(rate = s.current, "effective rate recovering");
        }
    }

    /// The effective rate now.
    pub fn current_rate(&self) -> f64 {
        self.state.lock().expect("rate state").current
    }

    /// The configured rate.
    pub fn configured_rate(&self) -> f64 {
        self.configured
    }
}

/// A limiter is the simplest call gate: a token per request, no fence (reconcile only reads).
impl crate::abdm::CallGate for RateLimiter {
    fn before_send(
        &self,
        _op: crate::abdm::Operation,
    ) -> futures::future::BoxFuture<'_, Result<(), crate::abdm::ClientError>> {
        Box::pin(async move {
            self.acquire().await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The whole AIMD cycle on the virtual clock: nothing is poked into the state.
    #[tokio::test(start_paused = true)]
    async fn throttling_lowers_once_a_second_and_recovery_is_gradual() {
        let r = RateLimiter::new(100.0, 10, None);
        r.on_throttled(None).await;
        assert_eq!(r.current_rate(), 50.0);
        advance(Duration::from_millis(500)).await;
        r.on_throttled(None).await; // within a second of the decrease: counted once
        assert_eq!(r.current_rate(), 50.0);
        // A steady storm: throttled answers keep coming, yet a second after the decrease it
        // lowers again.
        advance(Duration::from_millis(600)).await;
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 25.0));
        advance(Duration::from_secs(2)).await;
        r.recover().await; // not quiet yet (quiet = 4 s)
        assert!(near(r.current_rate(), 25.0));
        advance(Duration::from_secs(3)).await;
        r.recover().await;
        assert!(near(r.current_rate(), 30.0), "{}", r.current_rate());
        r.recover().await; // a step at most every 2 s
        assert!(near(r.current_rate(), 30.0));
        // Recovery stops at 90 % of the last throttled rate (50) while it is remembered (20 s).
        for _ in 0..5 {
            advance(Duration::from_secs(2)).await;
            r.recover().await;
        }
        assert!(near(r.current_rate(), 45.0), "{}", r.current_rate());
        // Throttled after a step (40 → 45): back to the rate that held, not halved.
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 40.0), "{}", r.current_rate());
        // Throttled again at that rate: ABDM's limit fell below it, so halve and forget it.
        advance(Duration::from_millis(1001)).await;
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 20.0), "{}", r.current_rate());
        // Once the ceiling is forgotten (20 s without throttling) recovery climbs to the
        // configured rate again.
        for _ in 0..60 {
            advance(Duration::from_secs(2)).await;
            r.recover().await;
        }
        assert!(near(r.current_rate(), 100.0), "{}", r.current_rate());
    }

    /// Near a known limit (the rate ran longer than `quiet` since the last decrease, and the
    /// throttling before it is recent) a throttling answer steps down by the ceiling margin;
    /// a storm (throttled again soon after a decrease) still halves, and so does throttling
    /// long after the last.
    #[tokio::test(start_paused = true)]
    async fn near_a_known_limit_the_rate_steps_down_gently_and_a_storm_still_halves() {
        let r = RateLimiter::new(100.0, 10, None);
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 50.0));
        advance(Duration::from_secs(5)).await;
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 45.0), "{}", r.current_rate());
        advance(Duration::from_millis(1500)).await;
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 22.5), "{}", r.current_rate());
        advance(Duration::from_secs(25)).await;
        r.on_throttled(None).await;
        assert!(near(r.current_rate(), 11.25), "{}", r.current_rate());
    }

    /// A decrease counts only calls sent after the pause that followed the last decrease: a
    /// call sent 1.5 s ago, with a 1 s `Retry-After`, predates the decrease 2 s ago by less than
    /// the pause, so it says nothing about the new rate.
    #[tokio::test(start_paused = true)]
    async fn a_call_sent_before_the_last_decrease_settled_does_not_lower_again() {
        let r = RateLimiter::new(100.0, 10, None);
        let ra = Some(Duration::from_secs(1));
        r.on_throttled_call(ra, Some(Duration::from_millis(10)))
            .await;
        assert!(near(r.current_rate(), 50.0));
        advance(Duration::from_secs(2)).await;
        r.on_throttled_call(ra, Some(Duration::from_millis(1500)))
            .await;
        assert!(near(r.current_rate(), 50.0), "{}", r.current_rate());
        r.on_throttled_call(ra, Some(Duration::from_millis(500)))
            .await;
        assert!(near(r.current_rate(), 25.0), "{}", r.current_rate());
    }

    /// `rate` calls/s with `burst`: the burst goes at once, then one call every `1/rate`, to
    /// the tick of the virtual clock.
    #[tokio::test(start_paused = true)]
    async fn calls_are_paced_at_the_rate_after_the_burst() {
        let r = RateLimiter::new(20.0, 5, None);
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(r.acquire().await, Duration::ZERO);
        }
        for _ in 0..40 {
            r.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_calls_for_exactly_that_long() {
        let r = RateLimiter::new(1000.0, 10, None);
        r.on_throttled(Some(Duration::from_millis(300))).await;
        assert_eq!(r.acquire().await, Duration::from_millis(300));
        // Over: the next call goes at once (at the lowered rate's burst).
        assert_eq!(r.acquire().await, Duration::ZERO);
    }
}
