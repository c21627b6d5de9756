//! The circuit breaker in front of ABDM, shared by every worker replica.
//!
//! Why: when ABDM is down, or the gateway refuses our client secret, every row fails the same
//! way. Without a breaker each row burns its attempts in seconds and ends `dead`, and every
//! replica keeps logging in. With it, the first replica that sees a systemic failure opens the
//! breaker in Postgres (`abdm_circuit`); while it is open no worker claims a job or spends an
//! attempt, and one replica at a time sends one probe per interval (1 s doubling to
//! `probe_max`). A probe that gets a fresh gateway session and the public certificate closes
//! it, and the held jobs run.
//!
//! What counts (see [`signal`]): a refused gateway login or a refused connection is systemic
//! at once (after `systemic_threshold` in a row, so one stray reset does not stop the fleet);
//! 5xx answers, timeouts and broken connections are systemic only as a run of
//! `suspect_threshold` across jobs with no good answer between them. Any answer about a row (a
//! 2xx, a 4xx with an ABDM code) ends the run.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::abdm::{AbdmClient, CallTrace, ClientError, Disposition};
use crate::store::Store;
use crate::telemetry::metrics;

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
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            systemic_threshold: 3,
            suspect_threshold: 12,
            probe_max: Duration::from_secs(60),
            refresh: Duration::from_secs(1),
        }
    }
}

/// What one job's result says about ABDM as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An answer about the row: ABDM works.
    Healthy,
    /// Says nothing either way (throttling, a call the gate stopped).
    Neutral,
    /// A 5xx, timeout or broken connection: one is noise, a run is an outage.
    Suspect(String),
    /// Gateway login refused, ABDM unreachable: fix something before any row can run.
    Systemic(String),
}

/// Classifies one job's final error (`None`: it succeeded). `client_id` names the client whose
/// secret was refused; no identifier ever enters a reason.
pub fn signal(result: Option<&ClientError>, client_id: &str) -> Signal {
    let Some(e) = result else {
        return Signal::Healthy;
    };
    match e {
        ClientError::Session(inner) => match inner.as_ref() {
            ClientError::Abdm(a) if matches!(a.status, 400 | 401 | 403) => {
                Signal::Systemic(format!(
                    "the ABDM gateway refused client id {client_id:?} (HTTP {}, {}): check abdm.client_secret \
                 (ABHA_BULK__ABDM__CLIENT_SECRET or _FILE) and abdm.client_id",
                    a.status,
                    inner.code()
                ))
            }
            ClientError::Connect(_) => Signal::Systemic(
                "cannot connect to the ABDM gateway: check abdm.session_url and the network".into(),
            ),
            other => Signal::Suspect(format!("gateway session failed ({})", other.code())),
        },
        ClientError::Connect(_) => Signal::Systemic(
            "cannot connect to ABDM: check abdm.base_url, DNS, TLS and the network".into(),
        ),
        ClientError::Timeout | ClientError::Transport(_) => {
            Signal::Suspect(format!("ABDM calls fail ({})", e.code()))
        }
        ClientError::Abdm(a) if a.status >= 500 => {
            Signal::Suspect(format!("ABDM answers HTTP {} ({})", a.status, e.code()))
        }
        ClientError::Abdm(a) if a.disposition() == Disposition::Throttled => Signal::Neutral,
        ClientError::NotSent(_) => Signal::Neutral,
        _ => Signal::Healthy,
    }
}

struct Local {
    open: bool,
    reason: Option<String>,
    read_at: Option<Instant>,
    systemic_run: u32,
    suspect_run: u32,
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
        Self {
            store,
            client_id: client_id.to_string(),
            cfg,
            local: Mutex::new(Local {
                open: false,
                reason: None,
                read_at: None,
                systemic_run: 0,
                suspect_run: 0,
            }),
        }
    }

    /// Whether the breaker was open when last read (readiness, tests).
    pub fn is_open(&self) -> bool {
        self.local.lock().expect("breaker").open
    }

    /// Why it is open.
    pub fn reason(&self) -> Option<String> {
        self.local.lock().expect("breaker").reason.clone()
    }

    /// Feeds one job's result; opens the breaker (for every replica) on a systemic failure.
    /// Returns whether the breaker is open now, so the caller can refund the attempt.
    pub async fn observe(&self, result: Option<&ClientError>) -> bool {
        let reason = {
            let mut l = self.local.lock().expect("breaker");
            match signal(result, &self.client_id) {
                Signal::Healthy => {
                    l.systemic_run = 0;
                    l.suspect_run = 0;
                    None
                }
                Signal::Neutral => None,
                Signal::Suspect(r) => {
                    l.suspect_run += 1;
                    (l.suspect_run >= self.cfg.suspect_threshold).then_some(r)
                }
                Signal::Systemic(r) => {
                    l.systemic_run += 1;
                    l.suspect_run += 1;
                    (l.systemic_run >= self.cfg.systemic_threshold
                        || l.suspect_run >= self.cfg.suspect_threshold)
                        .then_some(r)
                }
            }
        };
        if let Some(reason) = reason {
            self.open(&reason).await;
        }
        self.is_open()
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

    /// Waits until the breaker is closed (probing ABDM when it is this replica's turn).
    /// Returns false when `stop` fired while it was open (a delivery already received while
    /// the breaker is closed still runs during the shutdown grace period).
    pub async fn wait_closed(&self, client: &AbdmClient, stop: &CancellationToken) -> bool {
        loop {
            self.refresh().await;
            if !self.is_open() {
                return true;
            }
            if stop.is_cancelled() {
                return false;
            }
            if let Ok(true) = self
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

    /// Re-reads the shared state when the cached one is older than `refresh`.
    async fn refresh(&self) {
        let stale = {
            let l = self.local.lock().expect("breaker");
            l.read_at.is_none_or(|t| t.elapsed() >= self.cfg.refresh)
        };
        if !stale {
            return;
        }
        // Postgres down: keep the last known state (no job can be claimed anyway).
        let Ok(row) = self.store.circuit(&self.client_id).await else {
            return;
        };
        let mut l = self.local.lock().expect("breaker");
        if l.open && !row.open {
            tracing::info!("ABDM circuit breaker closed (by another replica)");
            l.systemic_run = 0;
            l.suspect_run = 0;
        } else if !l.open && row.open {
            tracing::info!(
                reason = row.reason.as_deref().unwrap_or(""),
                "ABDM circuit breaker open (opened by another replica)"
            );
        }
        l.open = row.open;
        l.reason = row.reason;
        l.read_at = Some(Instant::now());
        metrics::CIRCUIT_OPEN.set(if l.open { 1.0 } else { 0.0 });
    }

    async fn probe(&self, client: &AbdmClient) {
        let mut trace = CallTrace::default();
        metrics::CIRCUIT_PROBES.inc();
        match client.probe(&mut trace).await {
            Ok(()) => {
                if let Ok(true) = self.store.close_circuit(&self.client_id).await {
                    tracing::warn!("ABDM answers again: circuit breaker closed, jobs resume");
                }
                let mut l = self.local.lock().expect("breaker");
                l.open = false;
                l.reason = None;
                l.systemic_run = 0;
                l.suspect_run = 0;
                l.read_at = Some(Instant::now());
                metrics::CIRCUIT_OPEN.set(0.0);
            }
            Err(e) => {
                let reason = match signal(Some(&e), &self.client_id) {
                    Signal::Systemic(r) | Signal::Suspect(r) => r,
                    _ => format!("probe failed ({})", e.code()),
                };
                tracing::debug!(code = %e.code(), "ABDM probe failed; breaker stays open");
                let _ = self.store.probe_failed(&self.client_id, &reason).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abdm::AbdmError;

    fn abdm(status: u16, body: &str) -> ClientError {
        ClientError::Abdm(AbdmError::parse(status, body.as_bytes(), None))
    }

    #[test]
    fn answers_about_rows_are_healthy_outages_are_not() {
        assert_eq!(signal(None, "c"), Signal::Healthy);
        let not_found = abdm(404, r#"{"code":"ABDM-1114","message":"User not found"}"#);
        assert_eq!(signal(Some(&not_found), "c"), Signal::Healthy);
        let throttled = abdm(429, r#"{"code":"ABDM-1022","message":"Too many requests"}"#);
        assert_eq!(signal(Some(&throttled), "c"), Signal::Neutral);
        assert!(matches!(
            signal(Some(&abdm(503, "")), "c"),
            Signal::Suspect(_)
        ));
        assert!(matches!(
            signal(Some(&ClientError::Timeout), "c"),
            Signal::Suspect(_)
        ));
        assert!(matches!(
            signal(Some(&ClientError::Connect("refused".into())), "c"),
            Signal::Systemic(_)
        ));
        let refused = ClientError::Session(Box::new(abdm(
            401,
            r#"{"code":"900901","message":"Invalid Credentials"}"#,
        )));
        match signal(Some(&refused), "SBX_1") {
            Signal::Systemic(r) => {
                assert!(
                    r.contains("SBX_1") && r.contains("abdm.client_secret"),
                    "{r}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
