//! What every ABHA API request passes before its handler, in ABDM's order: scripted answers,
//! the rate limit (ABDM-1022), the session token, `REQUEST-ID`, `TIMESTAMP` skew (ABDM-1016),
//! the benefit header; then the injected faults (5xx, latency, timeouts, dropped answers).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDateTime, Utc};
use serde_json::json;

use super::St;
use super::errors::{field, flat, reply};
use crate::sandbox::state::{FaultScope, ScriptedResponse, State};

pub(super) async fn guard(st: St, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    st.count_received(if path.ends_with("/public/certificate") {
        "certificate"
    } else {
        "api"
    });
    if let Some(s) = st.take_script(&path) {
        return scripted(&st, s);
    }
    let faults = st.faults();
    if !st.admit() {
        st.count_answer("ABDM-1022");
        let mut r = reply(
            429,
            json!({"code": "ABDM-1022", "message": "Too many requests. Please try after some time"}),
        );
        if faults.retry_after_secs > 0 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, faults.retry_after_secs.into());
        }
        return r;
    }
    let h = req.headers();
    match h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => {
            st.count_answer("401");
            return StatusCode::UNAUTHORIZED.into_response();
        }
        Some(v) => {
            let token = v.strip_prefix("Bearer ").unwrap_or("");
            let valid = st
                .world
                .lock()
                .expect("world lock")
                .tokens
                .get(token)
                .is_some_and(|exp| Instant::now() < *exp);
            if !valid {
                st.count_answer("900901");
                return reply(
                    401,
                    json!({"code": "900901", "message": "Invalid Credentials",
                           "description": "Access failure. Make sure you have given the correct access token"}),
                );
            }
        }
    }
    let request_id_ok = h
        .get("REQUEST-ID")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| uuid::Uuid::parse_str(v).is_ok());
    if !request_id_ok {
        return field(&st, "REQUEST-ID", "REQUEST-ID must be a UUID");
    }
    let ts = h
        .get("TIMESTAMP")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let skew_ok = NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.3fZ")
        .ok()
        .filter(|_| ts.len() == 24)
        .is_some_and(|t| {
            (Utc::now().naive_utc() - t)
                .num_milliseconds()
                .unsigned_abs()
                <= faults.timestamp_tolerance_secs.saturating_mul(1000)
        });
    if !skew_ok {
        return flat(
            &st,
            400,
            "ABDM-1016",
            "Invalid TIMESTAMP: expected UTC yyyy-MM-ddTHH:mm:ss.SSSZ within 5 minutes",
        );
    }
    let needs_benefit =
        !(path.ends_with("/public/certificate") || path.contains("/profile/benefit/abha/"));
    if needs_benefit {
        match h
            .get(st.cfg.benefit_header.as_str())
            .and_then(|v| v.to_str().ok())
        {
            None | Some("") => {
                return field(
                    &st,
                    &st.cfg.benefit_header,
                    "Benefit name header is required",
                );
            }
            Some(b) if !st.cfg.benefits.iter().any(|k| k == b) => {
                return flat(&st, 400, "ABDM-1137", "Benefit name not found");
            }
            Some(_) => {}
        }
    }
    let faulted = match faults.error_5xx_scope {
        FaultScope::All => true,
        FaultScope::Abha => !path.ends_with("/public/certificate"),
    };
    if faulted && roll(faults.error_5xx_percent) {
        st.count_fault("5xx");
        st.count_answer("ABDM-9999");
        return reply(
            500,
            json!([{"code": "ABDM-9999: ", "message": "Something went wrong, please try again"}]),
        );
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let response = next.run(req).await;
    if roll(faults.timeout_percent) {
        st.count_fault("timeout");
        tokio::time::sleep(Duration::from_millis(faults.timeout_hold_ms)).await;
        return response;
    }
    if roll(faults.drop_percent) {
        st.count_fault("drop");
        let (parts, _) = response.into_parts();
        let broken = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by sandbox"))
        });
        return Response::from_parts(parts, Body::from_stream(broken));
    }
    response
}

fn roll(percent: f64) -> bool {
    percent > 0.0 && rand::random::<f64>() * 100.0 < percent
}

fn scripted(st: &State, s: ScriptedResponse) -> Response {
    st.count_fault("scripted");
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, s.body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(ra) = s
        .retry_after
        .and_then(|v| header::HeaderValue::from_str(&v).ok())
    {
        r.headers_mut().insert(header::RETRY_AFTER, ra);
    }
    r
}
