//! The rate contract with ABDM: a `governor` GCRA limiter per worker, a global token bucket
//! in Postgres shared by every replica, and AIMD: the effective rate halves on a throttling
//! answer (at most once a second), `Retry-After` pauses every call, and the rate recovers by a
//! tenth of the configured rate every 5 s without throttling.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};

use crate::store::Store;
use crate::telemetry::metrics;

/// Lowest effective rate as a fraction of the configured one.
const MIN_FRACTION: f64 = 0.05;

struct State {
    current: f64,
    limiter: Arc<DefaultDirectRateLimiter>,
    last_throttle: Option<Instant>,
    last_change: Instant,
    paused_until: Option<Instant>,
}

fn build(rate: f64, burst: u32) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3)).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)
        .expect("period > 0")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("≥ 1"));
    Arc::new(governor::RateLimiter::direct(quota))
}

/// Gates every ABDM call of one worker process.
pub struct RateLimiter {
    configured: f64,
    burst: u32,
    state: Mutex<State>,
    global: Option<GlobalBudget>,
}

impl RateLimiter {
    /// `rate` calls/s with `burst`; `global` shares the rate with other replicas.
    pub fn new(rate: f64, burst: u32, global: Option<GlobalBudget>) -> Arc<Self> {
        metrics::RATELIMIT_CONFIGURED.set(rate);
        metrics::RATELIMIT_RATE.set(rate);
        Arc::new(Self {
            configured: rate,
            burst,
            state: Mutex::new(State {
                current: rate,
                limiter: build(rate, burst),
                last_throttle: None,
                last_change: Instant::now(),
                paused_until: None,
            }),
            global,
        })
    }

    /// Waits until one call may start; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let (limiter, paused) = {
            let s = self.state.lock().expect("rate state");
            (s.limiter.clone(), s.paused_until)
        };
        if let Some(until) = paused
            && until > Instant::now()
        {
            tokio::time::sleep_until(until.into()).await;
        }
        limiter.until_ready().await;
        if let Some(g) = &self.global {
            g.take_one().await;
        }
        let waited = started.elapsed();
        metrics::RATELIMIT_WAIT.observe(waited.as_secs_f64());
        waited
    }

    /// ABDM said "too many requests": halve the rate (once per second at most) and pause
    /// every call for `retry_after`.
    pub fn on_throttled(&self, retry_after: Option<Duration>) {
        let mut s = self.state.lock().expect("rate state");
        let now = Instant::now();
        if s.last_throttle
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            s.current = (s.current / 2.0).max(self.configured * MIN_FRACTION);
            s.limiter = build(s.current, self.burst.min(s.current.ceil() as u32));
            s.last_change = now;
            metrics::RATELIMIT_RATE.set(s.current);
            tracing::warn!(rate = s.current, "ABDM throttled us: effective rate halved");
        }
        s.last_throttle = Some(now);
        if let Some(ra) = retry_after {
            let until = now + ra.min(Duration::from_secs(300));
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// Additive recovery; call every few seconds.
    pub fn recover(&self) {
        let mut s = self.state.lock().expect("rate state");
        let quiet = s
            .last_throttle
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if s.current < self.configured && quiet && s.last_change.elapsed() >= Duration::from_secs(5)
        {
            s.current = (s.current + self.configured * 0.1).min(self.configured);
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

/// The share of the global rate that replicas lease from Postgres in blocks.
pub struct GlobalBudget {
    store: Store,
    client: String,
    rate: f64,
    capacity: f64,
    block: f64,
    local: tokio::sync::Mutex<f64>,
}

impl GlobalBudget {
    /// A bucket named `client` refilled at `rate`/s, holding at most `capacity` tokens; leased
    /// in blocks of a tenth of a second's worth.
    pub fn new(store: Store, client: &str, rate: f64, capacity: f64) -> Self {
        let block = (rate * 0.1).floor().max(1.0);
        Self {
            store,
            client: client.to_string(),
            rate,
            capacity: capacity.max(block),
            block,
            local: tokio::sync::Mutex::new(0.0),
        }
    }

    async fn take_one(&self) {
        let mut local = self.local.lock().await;
        loop {
            if *local >= 1.0 {
                *local -= 1.0;
                return;
            }
            match self
                .store
                .take_tokens(&self.client, self.block, self.rate, self.capacity)
                .await
            {
                Ok(true) => *local += self.block,
                Ok(false) => {
                    tokio::time::sleep(Duration::from_secs_f64(self.block / self.rate)).await
                }
                Err(e) => {
                    // Fail closed: without the shared budget no call may start.
                    tracing::warn!(error = %e, "global rate budget unavailable; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttling_halves_and_recovery_is_gradual() {
        let r = RateLimiter::new(100.0, 10, None);
        r.on_throttled(None);
        assert_eq!(r.current_rate(), 50.0);
        r.on_throttled(None); // within a second: no second halving
        assert_eq!(r.current_rate(), 50.0);
        r.recover(); // not quiet yet
        assert_eq!(r.current_rate(), 50.0);
        {
            let mut s = r.state.lock().unwrap();
            s.last_throttle = Some(Instant::now() - Duration::from_secs(11));
            s.last_change = Instant::now() - Duration::from_secs(6);
        }
        r.recover();
        assert_eq!(r.current_rate(), 60.0);
    }

    #[tokio::test]
    async fn retry_after_pauses_calls() {
        let r = RateLimiter::new(1000.0, 10, None);
        r.on_throttled(Some(Duration::from_millis(300)));
        let waited = r.acquire().await;
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
    }
}
