//! API keys on requests: `Authorization: Bearer abk_<prefix>_<secret>`.
//!
//! A key names the benefits (programmes) it may see and its scopes (`submit`, `read`,
//! `reveal`). A batch of another programme is answered 404, exactly like a batch that does
//! not exist, so a key cannot learn which batches other programmes have. Only the key's id is
//! ever logged.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::ApiState;
use super::problem::Problem;
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

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Problem::unauthorized("send the API key as Authorization: Bearer abk_…")
            })?;
        let key = state
            .store
            .api_key_for(presented)
            .await?
            .ok_or_else(|| Problem::unauthorized("unknown API key"))?;
        if !key.is_live() {
            tracing::info!(key_id = %key.id, "refused a revoked or expired API key");
            return Err(Problem::unauthorized(
                "this API key was revoked or has expired",
            ));
        }
        tracing::info!(key_id = %key.id, method = %parts.method, path = %parts.uri.path(), "API request");
        Ok(Caller(key))
    }
}
