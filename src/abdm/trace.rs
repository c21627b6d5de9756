//! What one logical ABDM call leaves behind: its attempts (for the attempts table and
//! metrics), and the gate every attempt passes first.
//!
//! The trace, not the client, carries the gate: the client is shared by every job of the
//! process, while the gate (rate token, lease fence) belongs to the one job making the call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::abdm::error::{ClientError, Disposition};

/// Every ABDM call the client makes; the value is the `endpoint` label of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Gateway session.
    Session,
    /// Public certificate.
    Certificate,
    /// Benefit search by ABHA number or Aadhaar.
    BenefitSearch,
    /// Benefit lookup by ABHA number.
    BenefitLookup,
    /// Link to benefit.
    Link,
    /// De-link from benefit.
    Delink,
    /// Profile patch.
    ProfileUpdate,
    /// Child creation.
    ChildCreate,
    /// Children list.
    ChildList,
    /// Child update.
    ChildUpdate,
    /// Find ABHA by mobile.
    AbhaFind,
    /// ABHA creation by demographic authentication.
    DemoAuthCreate,
}

impl Operation {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Certificate => "certificate",
            Self::BenefitSearch => "benefit_search",
            Self::BenefitLookup => "benefit_lookup",
            Self::Link => "link",
            Self::Delink => "delink",
            Self::ProfileUpdate => "profile_update",
            Self::ChildCreate => "child_create",
            Self::ChildList => "child_list",
            Self::ChildUpdate => "child_update",
            Self::AbhaFind => "abha_find",
            Self::DemoAuthCreate => "demo_auth_create",
        }
    }

    /// True for calls that change something at ABDM (a link, a profile, a new ABHA): before
    /// one of these the worker checks that it still holds the job's lease and records that
    /// the side effect may have started.
    pub fn changes_state(self) -> bool {
        matches!(
            self,
            Self::Link
                | Self::Delink
                | Self::ProfileUpdate
                | Self::ChildCreate
                | Self::ChildUpdate
                | Self::DemoAuthCreate
        )
    }
}

/// Asked before every HTTP request the client sends on behalf of one job (session and
/// certificate requests included), so that every request to ABDM passes the rate limiter and
/// a worker that lost its job's lease makes no call. An `Err` stops the call unsent.
pub trait CallGate: Send + Sync {
    /// Waits until `op` may be sent.
    fn before_send(&self, op: Operation) -> BoxFuture<'_, Result<(), ClientError>>;
}

/// One HTTP attempt, for the attempts table and metrics. No identifiers.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// What was called.
    pub operation: Operation,
    /// The `REQUEST-ID` header sent.
    pub request_id: Uuid,
    /// HTTP status, when an answer came.
    pub http_status: Option<u16>,
    /// ABDM code of an error answer (`timeout`, `connect`, ... without one).
    pub code: Option<String>,
    /// Scrubbed message of an error answer.
    pub message: Option<String>,
    /// What the answer means.
    pub disposition: Disposition,
    /// Time from send to answer.
    pub duration: Duration,
}

/// Collects the HTTP attempts of one logical call (session refreshes and retries included),
/// and carries the gate every one of them passes first.
#[derive(Default)]
pub struct CallTrace {
    /// Attempts in order.
    pub attempts: Vec<AttemptRecord>,
    /// Asked before each request (none: requests go out at once).
    pub gate: Option<Arc<dyn CallGate>>,
}

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTrace")
            .field("attempts", &self.attempts)
            .field("gated", &self.gate.is_some())
            .finish()
    }
}

impl CallTrace {
    /// A trace whose requests pass `gate` first.
    pub fn gated(gate: Arc<dyn CallGate>) -> Self {
        Self {
            attempts: Vec::new(),
            gate: Some(gate),
        }
    }

    /// Passes the gate for `op` (at once when there is none).
    pub(crate) async fn pass(&self, op: Operation) -> Result<(), ClientError> {
        match &self.gate {
            Some(g) => g.before_send(op).await,
            None => Ok(()),
        }
    }

    pub(crate) fn record(
        &mut self,
        operation: Operation,
        request_id: Uuid,
        http_status: Option<u16>,
        result: &Result<(), &ClientError>,
        started: Instant,
    ) {
        let (code, message, disposition) = match result {
            Ok(()) => (None, None, Disposition::Success),
            Err(e) => (Some(e.code()), Some(e.stored_message()), e.disposition()),
        };
        let duration = started.elapsed();
        crate::telemetry::metrics::observe_abdm_request(
            operation.as_str(),
            http_status,
            code.as_deref(),
            duration,
        );
        tracing::debug!(
            endpoint = operation.as_str(),
            request_id = %request_id,
            status = http_status,
            code = code.as_deref(),
            duration_ms = duration.as_millis() as u64,
            "ABDM call"
        );
        self.attempts.push(AttemptRecord {
            operation,
            request_id,
            http_status,
            code,
            message,
            disposition,
            duration,
        });
    }

    /// The last attempt.
    pub fn last(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }
}
