//! The gateway session (client credentials → bearer token) and the public certificate.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{Value, json};

use super::St;
use super::errors::{ok, reply};
use crate::abdm::crypto::OAEP_SHA1;

pub(super) async fn session(st: St, body: Bytes) -> Response {
    st.count_received("session");
    st.count_request("session");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = v.get("clientId").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("clientSecret").and_then(Value::as_str).unwrap_or("");
    if !st.credentials_ok(id, secret) {
        st.count_session_answer("900901");
        return reply(
            401,
            json!({"code": "900901", "message": "Invalid Credentials",
                   "description": "Access failure for API: /v3/sessions, version: v3. Make sure your have given the correct access token"}),
        );
    }
    let ttl = st.faults().token_ttl_secs;
    let token = format!("sbx-{}", uuid::Uuid::new_v4().simple());
    st.world
        .lock()
        .expect("world lock")
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    st.count_session_answer("ok");
    reply(
        200,
        json!({"accessToken": token, "expiresIn": ttl, "refreshExpiresIn": 1800,
               "refreshToken": format!("sbx-refresh-{}", uuid::Uuid::new_v4().simple()),
               "tokenType": "bearer"}),
    )
}

pub(super) async fn certificate(st: St) -> Response {
    st.count_request("certificate");
    let key = st.key.lock().expect("key lock").clone();
    ok(
        &st,
        json!({"publicKey": key.public_key_b64(), "encryptionAlgorithm": OAEP_SHA1}),
    )
}
