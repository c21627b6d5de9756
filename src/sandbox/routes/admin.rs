//! Admin endpoints under `/sandbox/`: the call log and timeline, faults and scripted answers,
//! token expiry, secret change, key rotation, and X-tokens for child tests.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::response::Response;
use axum::routing::{get, post, put};
use chrono::Utc;
use serde_json::{Value, json};

use super::St;
use super::errors::reply;
use crate::pii::AbhaNumber;
use crate::sandbox::KeySource;
use crate::sandbox::key::Decryptor;
use crate::sandbox::state::{ScriptedResponse, State};

/// The sandbox's own endpoints (not ABDM's): what tests and the chaos run use to watch and
/// steer it. Unguarded: no token, no rate limit, no faults.
pub(super) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/sandbox/calls", get(admin_calls))
        .route("/sandbox/timeline", get(admin_timeline))
        .route("/sandbox/client-secret", put(admin_client_secret))
        .route("/sandbox/faults", put(admin_faults).get(admin_get_faults))
        .route("/sandbox/script", post(admin_script))
        .route("/sandbox/expire-tokens", post(admin_expire))
        .route("/sandbox/rotate-key", post(admin_rotate))
        .route("/sandbox/x-token", post(admin_x_token))
}

async fn admin_calls(st: St) -> Response {
    reply(
        200,
        serde_json::to_value(st.call_log()).unwrap_or(Value::Null),
    )
}

/// `?since=UNIX` (default: everything kept).
async fn admin_timeline(
    st: St,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let since = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    reply(200, json!({"now": now, "seconds": st.timeline(since)}))
}

/// `{"clientSecret": "..."}`: accept only this secret from now on and revoke every token.
async fn admin_client_secret(st: St, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match v.get("clientSecret").and_then(Value::as_str) {
        Some(secret) if !secret.is_empty() => {
            st.set_client_secret(secret);
            reply(200, json!({"changed": true, "tokensExpired": true}))
        }
        _ => reply(
            400,
            json!({"clientSecret": "a non-empty string is required"}),
        ),
    }
}

async fn admin_get_faults(st: St) -> Response {
    reply(
        200,
        serde_json::to_value(st.faults()).unwrap_or(Value::Null),
    )
}

async fn admin_faults(st: St, body: Bytes) -> Response {
    match serde_json::from_slice(&body) {
        Ok(f) => {
            st.set_faults(f);
            reply(
                200,
                serde_json::to_value(st.faults()).unwrap_or(Value::Null),
            )
        }
        Err(e) => reply(400, json!({"message": e.to_string()})),
    }
}

async fn admin_script(st: St, body: Bytes) -> Response {
    let parsed: Result<Vec<ScriptedResponse>, _> = serde_json::from_slice(&body)
        .or_else(|_| serde_json::from_slice::<ScriptedResponse>(&body).map(|s| vec![s]));
    match parsed {
        Ok(list) => {
            let n = list.len();
            for s in list {
                st.push_script(s);
            }
            reply(200, json!({"queued": n}))
        }
        Err(e) => reply(400, json!({"message": e.to_string()})),
    }
}

async fn admin_expire(st: St) -> Response {
    st.expire_tokens();
    reply(200, json!({"expired": true}))
}

async fn admin_rotate(st: St) -> Response {
    let bits = match &st.cfg.key {
        KeySource::Generate(b) => *b,
        KeySource::Pem(_) => 2048,
    };
    match tokio::task::spawn_blocking(move || Decryptor::generate(bits)).await {
        Ok(Ok(k)) => {
            st.rotate_key(k);
            reply(200, json!({"rotated": true}))
        }
        _ => reply(500, json!({"message": "key generation failed"})),
    }
}

async fn admin_x_token(st: St, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(abha) = v
        .get("abhaNumber")
        .and_then(Value::as_str)
        .and_then(|s| AbhaNumber::parse(s).ok())
    else {
        return reply(400, json!({"abhaNumber": "Invalid ABHA number"}));
    };
    let ttl = v.get("ttlSecs").and_then(Value::as_i64).unwrap_or(1800);
    reply(
        200,
        json!({"xToken": st.population.x_token(&abha, Utc::now().timestamp() + ttl), "expiresIn": ttl}),
    )
}
