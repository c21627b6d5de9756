//! API keys on requests: `Authorization: Bearer abk_<prefix>_<secret>`.
//!
//! A key names the benefits (programmes) it may see and its scopes (`submit`, `read`,
//! `reveal`). A batch of another programme is answered 404, exactly like a batch that does
//! not exist, so a key cannot learn which batches other programmes have. Only the key's id is
//! ever logged (and, for a failed authentication, the key's public prefix, never its secret).
//!
//! Failed authentications are throttled per client address and per key prefix
//! ([`super::guard::AuthThrottle`]): past the burst they are answered 429 with `Retry-After`
//! before the key is looked up. Each failure is logged once and counted in
//! `abha_api_auth_failures_total{surface,reason}`.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::problem::Problem;
use super::{ApiState, Guards};
use crate::store::Store;
use crate::store::api_keys::ApiKey;

/// The scopes a key can hold.
pub const SCOPES: [&str; 3] = ["submit", "read", "reveal"];

/// The authenticated key of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub ApiKey);

impl Caller {
    /// Refuses (403) unless the key holds `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(Problem::forbidden(scope))
        }
    }
}

/// Where a key is presented: the `/v1` API or the console's sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `Authorization: Bearer` on `/v1`.
    Api,
    /// The console's sign-in form.
    Console,
}

impl Surface {
    fn label(self) -> &'static str {
        match self {
            Surface::Api => "api",
            Surface::Console => "console",
        }
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Throttled: too many failures from the address or for the prefix.
    Throttled(std::time::Duration),
    /// Not a key, or a wrong one.
    Unknown,
    /// Revoked or expired.
    Revoked,
}

/// The public prefix of a presented key (`abk_<prefix>_…`), when it has that form.
fn prefix_of(presented: &str) -> Option<&str> {
    presented
        .strip_prefix("abk_")
        .and_then(|r| r.split_once('_'))
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty() && p.len() <= 32 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn record(surface: Surface, reason: &'static str) {
    crate::telemetry::metrics::AUTH_FAILURES
        .with_label_values(&[surface.label(), reason])
        .inc();
}

/// Checks a presented key through the throttle: the live key, or why not. Every refusal is
/// counted, logged once (the throttled ones once per episode) and, unless throttled, charged
/// to the address's and the prefix's buckets.
pub async fn authenticate(
    store: &Store,
    guards: &Guards,
    surface: Surface,
    client: Option<IpAddr>,
    presented: &str,
) -> Result<Result<ApiKey, Refusal>, Problem> {
    let prefix = prefix_of(presented);
    if let Err(t) = guards.auth.check(client, prefix) {
        record(surface, "throttled");
        if t.first {
            tracing::warn!(surface = surface.label(), client = ?client, key_prefix = prefix, retry_after_secs = t.retry_after.as_secs(), "failed authentications throttled");
        }
        return Ok(Err(Refusal::Throttled(t.retry_after)));
    }
    let (reason, refusal) = match store.api_key_for(presented).await? {
        Some(k) if k.is_live() => return Ok(Ok(k)),
        Some(k) => {
            tracing::warn!(surface = surface.label(), client = ?client, key_id = %k.id, "authentication failed: revoked or expired API key");
            ("revoked", Refusal::Revoked)
        }
        None => {
            tracing::warn!(surface = surface.label(), client = ?client, key_prefix = prefix, "authentication failed: unknown API key");
            ("unknown", Refusal::Unknown)
        }
    };
    record(surface, reason);
    guards.auth.failed(client, prefix);
    Ok(Err(refusal))
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let client = state.guards.client_ip(&parts.headers, &parts.extensions);
        let Some(presented) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            record(Surface::Api, "missing");
            tracing::info!(client = ?client, path = %parts.uri.path(), "API request without a key");
            return Err(Problem::unauthorized(
                "send the API key as Authorization: Bearer abk_…",
            ));
        };
        match authenticate(&state.store, &state.guards, Surface::Api, client, presented).await? {
            Ok(key) => {
                tracing::info!(key_id = %key.id, method = %parts.method, path = %parts.uri.path(), "API request");
                Ok(Caller(key))
            }
            Err(Refusal::Throttled(wait)) => Err(Problem::throttled(wait)),
            Err(Refusal::Unknown) => Err(Problem::unauthorized("unknown API key")),
            Err(Refusal::Revoked) => Err(Problem::unauthorized(
                "this API key was revoked or has expired",
            )),
        }
    }
}
