//! ABDM's error shapes, which differ by API family: the benefit and profile APIs answer
//! `{"code","message","timestamp"}`, the enrolment APIs `{"error":{"code","message"}}`, and
//! validation failures `{"field":"message"}`. Every answer is counted in the call log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use crate::sandbox::state::State;

fn timestamp() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `{"code","message","timestamp"}` (benefit and profile APIs).
pub(super) fn flat(st: &State, status: u16, code: &str, message: &str) -> Response {
    st.count_answer(code);
    reply(
        status,
        json!({"code": code, "message": message, "timestamp": timestamp()}),
    )
}

/// `{"error":{"code","message"}}` (enrolment APIs).
pub(super) fn nested(st: &State, status: u16, code: &str, message: &str) -> Response {
    st.count_answer(code);
    reply(status, json!({"error": {"code": code, "message": message}}))
}

/// `{"field":"message"}` (validation).
pub(super) fn field(st: &State, name: &str, message: &str) -> Response {
    st.count_answer("validation");
    reply(400, json!({ name: message }))
}

pub(super) fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

pub(super) fn ok(st: &State, body: Value) -> Response {
    st.count_answer("ok");
    reply(200, body)
}
