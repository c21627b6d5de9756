//! The circuit breaker in front of ABDM, shared by every worker replica.
//!
//! Why: when ABDM is down, or the gateway refuses our client secret, every row fails the same
//! way. Without a breaker each row burns its attempts in seconds and ends `dead`, and every
//! replica keeps logging in. With it, the first replica that sees a systemic failure opens the
//! breaker in Postgres (`abdm_circuit`); while it is open no worker claims a job or spends an
//! attempt, and one replica at a time sends one probe per interval (1 s doubling to
//! `probe_max`). A probe is a fresh gateway session, the public certificate and one real
//! read-only ABHA call ([`AbdmClient::probe`]); only when all three answer does it close the
//! breaker, so an outage of the ABHA endpoints alone (sessions fine) keeps it open.
//!
//! What counts (see [`signal`]): a refused gateway login or a refused connection is systemic
//! at once (after `systemic_threshold` in a row, so one stray reset does not stop the fleet);
//! 5xx answers, timeouts and broken connections open it as a run of `suspect_threshold` with no
//! good answer between them, or as a share of at least `open_ratio` of this replica's results
//! over the last `window` ([`window`]), which any mix of good and bad answers cannot hide. At
//! `degraded_ratio` and above (and for one window after the breaker closed) a transient
//! failure costs the row no attempt: it is postponed, which slows the fleet down instead of
//! spending attempts on coin flips.
//!
//! ABDM-1016 (our `TIMESTAMP` refused) is this replica's clock, not ABDM: the replica holds its
//! own jobs (one ERROR naming it, `abha_abdm_clock_hold`, the `AbdmClockSkew` alert) and probes
//! alone until ABDM accepts its stamp again; the other replicas go on.

pub mod signal;
pub mod window;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::store::Store;
use crate::telemetry::metrics;
pub use signal::{Signal, signal};
use window::Window;

/// How long a probe waits before its one retry after a suspect failure.
const PROBE_RETRY_AFTER: Duration = Duration::from_millis(250);

/// Tuning of the breaker (`[worker]` settings `circuit_*`).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Refused logins or connections in a row that open the breaker.
    pub systemic_threshold: u32,
    /// 5xx, timeouts or broken connections in a row (across jobs) that open it.
    pub suspect_threshold: u32,
    /// Longest interval between probes.
    pub probe_max: Duration,
    /// How long a replica trusts its cached view of the shared state.
    pub refresh: Duration,
    /// The span over which the failure ratio is measured.
    pub window: Duration,
    /// Results in the window before its ratio counts (a few answers are no ratio).
    pub min_calls: u32,
    /// A failure share at or above this opens the breaker.
    pub open_ratio: f64,
    /// A failure share at or above this postpones transient failures without an attempt.
    pub degraded_ratio: f64,
    /// This replica's name in log lines (the worker's lease owner name).
    pub replica: String,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            systemic_threshold: 3,
            suspect_threshold: 12,
            probe_max: Duration::from_secs(60),
            refresh: Duration::from_secs(1),
            window: Duration::from_secs(30),
            min_calls: 20,
            open_ratio: 0.8,
            degraded_ratio: 0.2,
            replica: "worker".into(),
        }
    }
}

/// This replica's own hold while ABDM refuses its `TIMESTAMP`.
struct ClockHold {
    next_probe: Instant,
    interval: Duration,
}

struct Local {
    open: bool,
    reason: Option<String>,
    next_probe_at: Option<DateTime<Utc>>,
    read_at: Option<Instant>,
    systemic_run: u32,
    suspect_run: u32,
    window: Window,
    closed_at: Option<Instant>,
    clock: Option<ClockHold>,
}

impl Local {
    fn closed(&mut self) {
        self.open = false;
        self.reason = None;
        self.systemic_run = 0;
        self.suspect_run = 0;
        self.window.clear();
        self.closed_at = Some(Instant::now());
        self.read_at = Some(Instant::now());
    }
}

/// Where a delivery stands at the breaker ([`Breaker::gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: the job may run.
    Closed,
    /// Open: postpone the job in Postgres and let the delivery go.
    Open,
    /// This replica's clock is still refused at the deadline: let the delivery go.
    Expired,
    /// Stopping.
    Stopped,
}

/// One replica's handle on the shared breaker.
pub struct Breaker {
    store: Store,
    client_id: String,
    cfg: BreakerConfig,
    local: Mutex<Local>,
}

impl Breaker {
    /// The breaker of ABDM client `client_id`.
    pub fn new(store: Store, client_id: &str, cfg: BreakerConfig) -> Self {
        metrics::CIRCUIT_OPEN.set(0.0);
        metrics::CLOCK_HOLD.set(0.0);
        Self {
            store,
            client_id: client_id.to_string(),
            local: Mutex::new(Local {
                open: false,
                reason: None,
                next_probe_at: None,
                read_at: None,
                systemic_run: 0,
                suspect_run: 0,
                window: Window::new(cfg.window),
                closed_at: None,
                clock: None,
            }),
            cfg,
        }
    }

    /// Whether the breaker was open when last read (readiness, tests).
    pub fn is_open(&self) -> bool {
        self.local.lock().expect("breaker").open
    }

    /// Whether this replica holds its jobs because ABDM refuses its `TIMESTAMP`.
    pub fn clock_held(&self) -> bool {
        self.local.lock().expect("breaker").clock.is_some()
    }

    /// Why it is open.
    pub fn reason(&self) -> Option<String> {
        self.local.lock().expect("breaker").reason.clone()
    }

    /// Feeds one job's result; opens the breaker (for every replica) on a systemic failure or a
    /// high failure ratio, and holds this replica on a refused `TIMESTAMP`. Returns whether a
    /// transient failure now costs the row no attempt: the breaker is open, ABDM is degraded
    /// (the ratio is at `degraded_ratio` or the breaker closed less than a window ago), or this
    /// replica's clock is refused.
    pub async fn observe(&self, result: Option<&ClientError>) -> bool {
        let (reason, spare) = {
            let mut l = self.local.lock().expect("breaker");
            let now = Instant::now();
            let reason = match signal(result, &self.client_id) {
                Signal::Healthy => {
                    l.systemic_run = 0;
                    l.suspect_run = 0;
                    l.window.record(now, false);
                    if l.clock.take().is_some() {
                        metrics::CLOCK_HOLD.set(0.0);
                        tracing::warn!(replica = %self.cfg.replica, "ABDM accepts this replica's TIMESTAMP again");
                    }
                    None
                }
                Signal::Neutral => None,
                Signal::Clock => {
                    self.hold_for_clock(&mut l);
                    None
                }
                Signal::Suspect(r) => {
                    l.suspect_run += 1;
                    l.window.record(now, true);
                    self.opening(&mut l, now, r, false)
                }
                Signal::Systemic(r) => {
                    l.systemic_run += 1;
                    l.suspect_run += 1;
                    l.window.record(now, true);
                    let at_once = l.systemic_run >= self.cfg.systemic_threshold;
                    self.opening(&mut l, now, r, at_once)
                }
            };
            let (n, share) = l.window.ratio(now);
            metrics::FAILURE_RATIO.set(share);
            let degraded = (n >= self.cfg.min_calls && share >= self.cfg.degraded_ratio)
                || l.closed_at
                    .is_some_and(|t| now.duration_since(t) < self.cfg.window);
            (reason, l.open || degraded || l.clock.is_some())
        };
        if let Some(reason) = reason {
            self.open(&reason).await;
        }
        spare || self.is_open()
    }

    /// The reason to open now, if the run or the window says so.
    fn opening(&self, l: &mut Local, now: Instant, r: String, at_once: bool) -> Option<String> {
        if at_once || l.suspect_run >= self.cfg.suspect_threshold {
            return Some(r);
        }
        let (n, share) = l.window.ratio(now);
        (n >= self.cfg.min_calls && share >= self.cfg.open_ratio).then(|| {
            format!(
                "{:.0} % of {n} ABDM results failed over the last {} s ({r})",
                share * 100.0,
                self.cfg.window.as_secs()
            )
        })
    }

    fn hold_for_clock(&self, l: &mut Local) {
        if l.clock.is_some() {
            return;
        }
        l.clock = Some(ClockHold {
            next_probe: Instant::now() + Duration::from_secs(1),
            interval: Duration::from_secs(1),
        });
        metrics::CLOCK_HOLD.set(1.0);
        tracing::error!(
            replica = %self.cfg.replica,
            "ABDM refuses this replica's TIMESTAMP (ABDM-1016): its clock is off; fix its NTP. \
             This replica takes no job until ABDM accepts its stamp (the others go on)"
        );
    }

    async fn open(&self, reason: &str) {
        {
            let mut l = self.local.lock().expect("breaker");
            if l.open {
                return;
            }
            l.open = true;
            l.reason = Some(reason.to_string());
            l.read_at = Some(Instant::now());
        }
        metrics::CIRCUIT_OPEN.set(1.0);
        match self.store.open_circuit(&self.client_id, reason, 1.0).await {
            Ok(true) => tracing::error!(
                reason,
                "ABDM circuit breaker OPEN: no job starts until a probe succeeds"
            ),
            Ok(false) => tracing::info!("ABDM circuit breaker already open (another replica)"),
            Err(e) => {
                tracing::warn!(error = %e, reason, "ABDM circuit breaker open here; Postgres did not record it")
            }
        }
    }

    /// Waits until the breaker is closed and this replica's clock is accepted (probing ABDM
    /// when it is this replica's turn). Returns false when `stop` fired meanwhile (a delivery
    /// already received while the breaker is closed still runs during the shutdown grace
    /// period).
    pub async fn wait_closed(&self, client: &AbdmClient, stop: &CancellationToken) -> bool {
        loop {
            self.refresh().await;
            let clock_due = {
                let l = self.local.lock().expect("breaker");
                l.clock.as_ref().map(|c| Instant::now() >= c.next_probe)
            };
            if !self.is_open() && clock_due.is_none() {
                return true;
            }
            if stop.is_cancelled() {
                return false;
            }
            if clock_due == Some(true) {
                self.probe_clock(client).await;
                continue;
            }
            if clock_due.is_none()
                && let Ok(true) = self
                    .store
                    .take_probe(&self.client_id, self.cfg.probe_max.as_secs_f64())
                    .await
            {
                self.probe(client).await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.refresh) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Where a delivery stands at the breaker, without holding it while ABDM is down: closed
    /// (run it), open (postpone it: nothing to wait for here), or, while only this replica's
    /// clock is refused, waited for until `deadline` (the other replicas go on meanwhile).
    pub async fn gate(
        &self,
        client: &AbdmClient,
        stop: &CancellationToken,
        deadline: tokio::time::Instant,
    ) -> Gate {
        loop {
            // The one delivery that reads waits at most a refresh period (or to its deadline),
            // then goes on with the last known state; the claim after the gate is bounded by
            // the deadline on its own.
            let read_by = deadline.min(tokio::time::Instant::now() + self.cfg.refresh);
            let _ = tokio::time::timeout_at(read_by, self.refresh()).await;
            if self.is_open() {
                return Gate::Open;
            }
            let clock_due = {
                let l = self.local.lock().expect("breaker");
                l.clock.as_ref().map(|c| Instant::now() >= c.next_probe)
            };
            match clock_due {
                None => return Gate::Closed,
                Some(true) => {
                    // An ABDM call: bounded by the delivery's deadline too (it changes
                    // nothing, so cutting it short loses nothing).
                    let _ = tokio::time::timeout_at(deadline, self.probe_clock(client)).await;
                    if tokio::time::Instant::now() >= deadline && self.clock_held() {
                        return Gate::Expired;
                    }
                    continue;
                }
                Some(false) => {}
            }
            if stop.is_cancelled() {
                return Gate::Stopped;
            }
            if tokio::time::Instant::now() >= deadline {
                return Gate::Expired;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.refresh) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.cancelled() => return Gate::Stopped,
            }
        }
    }

    /// When a job postponed by the open breaker should come back: the next probe (at least a
    /// second from now), spread over a few seconds so the postponed jobs do not all return at
    /// once. The relay publishes nothing while the breaker stays open, so a job due earlier
    /// only waits in the outbox.
    pub fn resume_at(&self) -> DateTime<Utc> {
        let next = self.local.lock().expect("breaker").next_probe_at;
        let soonest = Utc::now() + chrono::Duration::seconds(1);
        let jitter = chrono::Duration::milliseconds((rand::random::<f64>() * 5000.0) as i64);
        next.map_or(soonest, |t| t.max(soonest)) + jitter
    }

    /// Sends the shared breaker's probe when it is due and this replica gets it. The worker
    /// calls it every `refresh` from a background task: the relay publishes nothing while the
    /// breaker is open and workers postpone what they still receive, so without this no
    /// delivery would ever come to probe and the breaker would stay open after the outage.
    pub async fn probe_if_due(&self, client: &AbdmClient) {
        self.refresh().await;
        if !self.is_open() || self.clock_held() {
            return;
        }
        if let Ok(true) = self
            .store
            .take_probe(&self.client_id, self.cfg.probe_max.as_secs_f64())
            .await
        {
            self.probe(client).await;
        }
    }

    /// How often the shared state is re-read (the background probe's period).
    pub fn refresh_every(&self) -> Duration {
        self.cfg.refresh
    }

    /// Re-reads the shared state when the cached one is older than `refresh`. One caller
    /// reads; the read is stamped before it is sent, so the others use the cached state
    /// meanwhile instead of queueing for the pool: with Postgres down that read waits for the
    /// pool's acquire timeout, and every delivery waiting behind it was a hold that outlived
    /// RabbitMQ's `consumer_timeout` (the chaos run's consumer-timeout fault).
    async fn refresh(&self) {
        {
            let mut l = self.local.lock().expect("breaker");
            if l.read_at.is_some_and(|t| t.elapsed() < self.cfg.refresh) {
                return;
            }
            l.read_at = Some(Instant::now());
        }
        // Postgres down: keep the last known state (no job can be claimed anyway).
        let Ok(row) = self.store.circuit(&self.client_id).await else {
            return;
        };
        let mut l = self.local.lock().expect("breaker");
        if l.open && !row.open {
            tracing::info!("ABDM circuit breaker closed (by another replica)");
            l.closed();
        } else if !l.open && row.open {
            tracing::info!(
                reason = row.reason.as_deref().unwrap_or(""),
                "ABDM circuit breaker open (opened by another replica)"
            );
        }
        l.open = row.open;
        l.reason = row.reason;
        l.next_probe_at = row.next_probe_at;
        l.read_at = Some(Instant::now());
        metrics::CIRCUIT_OPEN.set(if l.open { 1.0 } else { 0.0 });
    }

    async fn probe(&self, client: &AbdmClient) {
        let mut result = self.probe_once(client).await;
        // A suspect failure (one 5xx, timeout or broken connection) may be noise: with the
        // probe interval doubling, one stray error after an outage had ended kept the breaker
        // open for another 16 to 32 s (the chaos run's short outage). One more try settles it;
        // a refused connection or login is not noise and is not tried again.
        if let Err(e) = &result
            && matches!(signal(Some(e), &self.client_id), Signal::Suspect(_))
        {
            tracing::debug!(code = %e.code(), "ABDM probe failed once; trying again");
            tokio::time::sleep(PROBE_RETRY_AFTER).await;
            result = self.probe_once(client).await;
        }
        match result {
            Ok(()) => {
                if let Ok(true) = self.store.close_circuit(&self.client_id).await {
                    tracing::warn!("ABDM answers again: circuit breaker closed, jobs resume");
                }
                self.local.lock().expect("breaker").closed();
                metrics::CIRCUIT_OPEN.set(0.0);
            }
            Err(e) => {
                let reason = match signal(Some(&e), &self.client_id) {
                    Signal::Systemic(r) | Signal::Suspect(r) => r,
                    _ => format!("probe failed ({})", e.code()),
                };
                // One line per probe (one replica probes per interval): what kept it open.
                tracing::info!(code = %e.code(), reason = %reason, "ABDM probe failed; breaker stays open");
                let _ = self.store.probe_failed(&self.client_id, &reason).await;
            }
        }
    }

    /// One probe: a fresh session, the certificate and the ABHA read. An answer about the
    /// probe's made-up ABHA number (404 ABDM-1114) is ABDM working, and so is ABDM-1022: a
    /// throttled answer comes from an ABDM that is up (the shared rate's AIMD slows down).
    async fn probe_once(&self, client: &AbdmClient) -> Result<(), ClientError> {
        let mut trace = CallTrace::default();
        metrics::CIRCUIT_PROBES.inc();
        match client.probe(&mut trace).await {
            Err(e) if signal(Some(&e), &self.client_id) == Signal::Healthy => Ok(()),
            Err(ClientError::Abdm(a)) if a.disposition() == crate::abdm::Disposition::Throttled => {
                Ok(())
            }
            other => other,
        }
    }

    /// This replica's own probe while its clock is refused: one read-only ABHA call (it
    /// carries a `TIMESTAMP`). Any answer but ABDM-1016 ends the hold (an outage is the shared
    /// breaker's business).
    async fn probe_clock(&self, client: &AbdmClient) {
        let mut trace = CallTrace::default();
        metrics::CIRCUIT_PROBES.inc();
        let refused = matches!(client.probe_abha(&mut trace).await, Err(e) if e.is_clock_skew());
        let mut l = self.local.lock().expect("breaker");
        if refused {
            if let Some(c) = l.clock.as_mut() {
                c.interval = (c.interval * 2).min(self.cfg.probe_max);
                c.next_probe = Instant::now() + c.interval;
            }
            tracing::debug!(replica = %self.cfg.replica, "ABDM still refuses this replica's TIMESTAMP");
        } else if l.clock.take().is_some() {
            metrics::CLOCK_HOLD.set(0.0);
            tracing::warn!(replica = %self.cfg.replica, "ABDM accepts this replica's TIMESTAMP again: jobs resume here");
        }
    }
}
