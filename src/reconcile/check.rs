//! One lookup and its class, and the gate every lookup passes: reconciliation's own pace
//! (`reconcile.rate_per_second`) and, with `worker.global_rate_limit`, a token from the
//! fleet's shared budget.

use std::sync::Arc;
use std::time::Duration;

use crate::abdm::{AbdmClient, CallGate, CallTrace, ClientError, Operation};
use crate::pii::AbhaNumber;
use crate::ratelimit::{Aimd, GlobalBudget, RateLimiter};
use crate::store::Store;
use crate::store::reconcile_rows::CheckResult;

/// The gate of reconciliation's ABDM calls.
///
/// Why two limiters: the pace is reconciliation's own rate, a local limiter that nothing
/// shared can lower below what the operator set. The fleet limiter takes each call's token
/// from the shared budget row at the *workers'* configured rate, so reconciliation's calls
/// count against the ABDM contract with the fleet (its share is its pace) and a throttling
/// answer lowers the shared rate for all. Passing reconciliation's own rate to the shared row
/// instead made a 5/s run leave 5/s in the row, and a later 20/s run adopted it (issue 22).
pub struct ReconcileGate {
    pace: Arc<RateLimiter>,
    fleet: Option<Arc<RateLimiter>>,
}

impl ReconcileGate {
    /// A gate with only a local pace (tests, or `worker.global_rate_limit = false`).
    pub fn local(pace: Arc<RateLimiter>) -> Arc<Self> {
        Arc::new(Self { pace, fleet: None })
    }

    /// The gate of `abha-bulk reconcile`: `rate` calls/s of its own; with `global`, each call
    /// also takes a token from the shared budget of `client` at the workers' rate (with their
    /// burst and AIMD tuning).
    pub fn new(
        store: &Store,
        client: &str,
        rate: f64,
        fleet: Option<(f64, u32, Aimd)>,
    ) -> Arc<Self> {
        let fleet = fleet.map(|(fleet_rate, burst, aimd)| {
            RateLimiter::with_aimd(
                fleet_rate,
                burst,
                Some(GlobalBudget::new(
                    store.clone(),
                    client,
                    fleet_rate,
                    f64::from(burst),
                )),
                aimd,
            )
        });
        Arc::new(Self {
            pace: RateLimiter::new(rate, 1, None),
            fleet,
        })
    }

    /// Reconciliation's own rate now (calls/s).
    pub fn pace_rate(&self) -> f64 {
        self.pace.current_rate()
    }

    /// The fleet's shared rate this gate last saw (`None`: no shared budget).
    pub fn fleet_rate(&self) -> Option<f64> {
        self.fleet.as_ref().map(|f| f.current_rate())
    }

    /// ABDM said "too many requests": the shared rate and pause (every replica slows), or
    /// the local pace without a shared budget.
    pub async fn on_throttled(&self, retry_after: Option<Duration>) {
        match &self.fleet {
            Some(f) => f.on_throttled(retry_after).await,
            None => self.pace.on_throttled(retry_after).await,
        }
    }
}

impl CallGate for ReconcileGate {
    fn before_send(
        &self,
        _op: Operation,
    ) -> futures::future::BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(async move {
            self.pace.acquire().await;
            if let Some(f) = &self.fleet {
                f.acquire().await;
            }
            Ok(())
        })
    }
}

/// Classes of the report (docs/report-format.md).
pub(super) mod class {
    pub const LINKED: &str = "linked";
    pub const MISSING: &str = "missing_link";
    pub const UNEXPECTED: &str = "unexpected_link";
    pub const UNKNOWN: &str = "unknown";
    pub const ERROR: &str = "error";
    pub const INVALID: &str = "invalid";
    pub const REPEATED: &str = "repeated";
    /// A swept earlier link that is no longer linked (nor in the roster): no drift, not
    /// reported.
    pub const NOT_LINKED: &str = "not_linked";
    /// A swept link whose stored ABHA number could not be read: not looked up, not reported.
    pub const SKIPPED: &str = "skipped";
}

/// Looks `abha` up and classifies it. Every request (a session refresh or certificate fetch
/// included) passes the gate.
pub(super) async fn lookup(
    client: &AbdmClient,
    gate: &Arc<ReconcileGate>,
    benefit: &str,
    subject_hash: Vec<u8>,
    abha: &AbhaNumber,
    swept: bool,
) -> CheckResult {
    let mut trace = CallTrace::gated(gate.clone());
    let (class, code, detail) = match client.benefit_lookup(&mut trace, benefit, abha).await {
        Ok(p) if p.has(benefit) && swept => (
            class::UNEXPECTED,
            String::new(),
            format!("linked to {benefit} by abha-bulk, not in the roster"),
        ),
        Ok(p) if p.has(benefit) => (class::LINKED, String::new(), String::new()),
        Ok(_) if swept => (class::NOT_LINKED, String::new(), String::new()),
        Ok(_) => (
            class::MISSING,
            String::new(),
            format!("not linked to {benefit} at ABDM"),
        ),
        Err(e) if e.code() == "ABDM-1114" => (
            class::UNKNOWN,
            e.code(),
            "ABHA number not found at ABDM".into(),
        ),
        Err(e) => {
            if e.disposition() == crate::abdm::Disposition::Throttled {
                gate.on_throttled(e.retry_after()).await;
            }
            let msg = e
                .abdm()
                .map_or_else(|| e.to_string(), |a| a.message.clone());
            (class::ERROR, e.code(), msg)
        }
    };
    CheckResult {
        subject_hash,
        class,
        code,
        detail,
        masked: swept.then(|| abha.masked()),
    }
}
