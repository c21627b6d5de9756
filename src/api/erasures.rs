//! `POST /v1/erasures`: a programme erases what the service holds about some of its people
//! (DPDP Act 2023 s.12(3)), within the benefits of its API key only: rows of other
//! programmes about the same people are not touched (the operator's `abha-bulk erase` can).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Caller;
use super::problem::Problem;
use crate::lifecycle::erase::{self, EraseOptions};

/// Identifiers per request: a request is answered within seconds, a larger list is split.
const MAX_IDENTIFIERS: usize = 1000;

/// How long the request waits for rows running right now before answering 202.
const WAIT: Duration = Duration::from_secs(10);

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureBody {
    identifiers: Vec<String>,
    reason: String,
}

/// `POST /v1/erasures` (scope `submit`): erases the key's programmes' rows about the people
/// named. 200 when done; 202 when rows were still running (send the same request again).
/// Identifiers that are none are answered in `rejected`.
pub async fn create(
    State(st): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require("submit")?;
    let body: ErasureBody = serde_json::from_slice(&body).map_err(|_| {
        Problem::bad_request(
            "bad-body",
            "expected JSON {\"identifiers\": [\"...\"], \"reason\": \"...\"}",
        )
    })?;
    if body.identifiers.is_empty() || body.identifiers.len() > MAX_IDENTIFIERS {
        return Err(Problem::bad_request(
            "bad-body",
            format!("identifiers: between 1 and {MAX_IDENTIFIERS} values"),
        )
        .field("identifiers"));
    }
    // Each identifier gets its answer and the valid ones are erased (a mistyped one is listed
    // with its index and reason, never its value), like the rows of an upload.
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for (index, v) in body.identifiers.iter().enumerate() {
        match erase::normalise(v) {
            Ok(n) => valid.push(n),
            Err(reason) => rejected.push(json!({"index": index, "reason": reason})),
        }
    }
    let ids = erase::identifiers_of(valid.iter().map(String::as_str), &st.store.vault);
    let req = erase::request(
        ids,
        Some(caller.0.benefits.clone()),
        format!("api-key:{}", caller.0.id),
        None,
        &body.reason,
    )
    .map_err(|e| Problem::bad_request("bad-body", e.to_string()).field("reason"))?;
    let opts = EraseOptions {
        wait: WAIT,
        ..EraseOptions::default()
    };
    let p = if req.people == 0 {
        erase::EraseProgress::default()
    } else {
        erase::run(&st.store, &req, opts, |_| {})
            .await
            .map_err(|e| {
                tracing::error!(error = %e, key_id = %caller.0.id, "erasure request failed");
                Problem::internal()
            })?
    };
    tracing::info!(
        key_id = %caller.0.id,
        request = %req.id,
        erased = p.erased,
        running = p.waiting,
        "erasure request"
    );
    let status = if p.waiting == 0 {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({
            "request": req.id,
            "people": req.people,
            "erased": p.erased,
            "cancelled": p.cancelled,
            "running": p.waiting,
            "rejected": rejected,
        })),
    ))
}
