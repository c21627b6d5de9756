//! The sandbox's HTTP surface: ABDM's paths, headers, bodies and error shapes.
// Handlers build their error answers early and return them as `Err(Response)`; a Response is
// large, but boxing every early return would only add noise to a simulator.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use chrono::{NaiveDate, NaiveDateTime, Utc};
use serde_json::{Value, json};

use super::state::{LinkState, ScriptedResponse, State};
use crate::abdm::crypto::{OAEP_SHA1, Padding};
use crate::pii::{Aadhaar, AbhaNumber, Gender, Mobile, PersonName, format_date};

type St = AxState<Arc<State>>;

pub(super) fn router(state: Arc<State>) -> Router {
    let abha = Router::new()
        .route("/v3/profile/public/certificate", get(certificate))
        .route("/v3/profile/benefit/search", post(benefit_search))
        .route("/v3/profile/benefit/abha/{abha}", get(benefit_lookup))
        .route("/v3/profile/benefit/linkAndDelink", post(link_and_delink))
        .route("/v3/profile/account", patch(profile_patch))
        .route("/v3/profile/account/abha/search", post(find_by_mobile))
        .route("/v3/enrollment/enrol/byAadhaar", post(enrol_by_aadhaar))
        .route(
            "/v3/enrollment/profile/children",
            get(list_children).post(list_children),
        )
        .layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/api/hiecm/gateway/v3/sessions", post(session))
        .nest("/abha/api", abha)
        .route("/sandbox/calls", get(admin_calls))
        .route("/sandbox/timeline", get(admin_timeline))
        .route("/sandbox/client-secret", put(admin_client_secret))
        .route("/sandbox/faults", put(admin_faults).get(admin_get_faults))
        .route("/sandbox/script", post(admin_script))
        .route("/sandbox/expire-tokens", post(admin_expire))
        .route("/sandbox/rotate-key", post(admin_rotate))
        .route("/sandbox/x-token", post(admin_x_token))
        .with_state(state)
}

// ---------- error shapes ----------

fn timestamp() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `{"code","message","timestamp"}` (benefit and profile APIs).
fn flat(st: &State, status: u16, code: &str, message: &str) -> Response {
    st.count_answer(code);
    reply(
        status,
        json!({"code": code, "message": message, "timestamp": timestamp()}),
    )
}

/// `{"error":{"code","message"}}` (enrolment APIs).
fn nested(st: &State, status: u16, code: &str, message: &str) -> Response {
    st.count_answer(code);
    reply(status, json!({"error": {"code": code, "message": message}}))
}

/// `{"field":"message"}` (validation).
fn field(st: &State, name: &str, message: &str) -> Response {
    st.count_answer("validation");
    reply(400, json!({ name: message }))
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn ok(st: &State, body: Value) -> Response {
    st.count_answer("ok");
    reply(200, body)
}

// ---------- gateway ----------

async fn session(st: St, body: Bytes) -> Response {
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

// ---------- the guard: headers, rate, faults ----------

async fn guard(st: St, req: Request, next: Next) -> Response {
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
        .is_some_and(|t| (Utc::now().naive_utc() - t).num_seconds().abs() <= 300);
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
    if roll(faults.error_5xx_percent) {
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

// ---------- helpers ----------

fn parse_body(st: &State, body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|_| field(st, "body", "Request body must be JSON"))
}

fn decrypt(st: &State, v: &Value, name: &str, message: &str) -> Result<String, Response> {
    let ct = v.get(name).and_then(Value::as_str).unwrap_or("");
    let key = st.key.lock().expect("key lock").clone();
    key.decrypt(ct, Padding::OaepSha1)
        .map_err(|_| field(st, name, message))
}

fn benefit(st: &State, h: &HeaderMap) -> String {
    h.get(st.cfg.benefit_header.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// True when the ABHA exists: seeded, or created in this run.
fn abha_exists(st: &State, abha: &AbhaNumber) -> bool {
    let digits = abha.digits();
    if st
        .population
        .abha_index(abha)
        .is_some_and(|i| st.population.contains(i))
    {
        return true;
    }
    let w = st.world.lock().expect("world lock");
    w.child_parent.contains_key(&digits) || w.demo_created.values().any(|d| *d == digits)
}

/// Resolves `loginHint`/`loginId` to an ABHA number.
fn resolve_login(st: &State, v: &Value) -> Result<Option<AbhaNumber>, Response> {
    let hint = v
        .get("loginHint")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let plain = decrypt(st, v, "loginId", "Invalid LoginId")?;
    match hint.as_str() {
        "abha-number" => {
            let abha =
                AbhaNumber::parse(&plain).map_err(|_| field(st, "loginId", "Invalid LoginId"))?;
            Ok(abha_exists(st, &abha).then_some(abha))
        }
        "xmluid" | "aadhaar" => {
            let aadhaar =
                Aadhaar::parse(&plain).map_err(|_| field(st, "loginId", "Invalid LoginId"))?;
            if let Some(i) = st.population.aadhaar_index(&aadhaar)
                && st.population.contains(i)
            {
                return Ok(Some(st.population.abha(i)));
            }
            let w = st.world.lock().expect("world lock");
            Ok(w.demo_created
                .get(aadhaar.expose())
                .and_then(|d| AbhaNumber::parse(d).ok()))
        }
        _ => Err(field(st, "loginHint", "Invalid loginHint")),
    }
}

fn masked_mobile(m: &str) -> String {
    format!("******{}", &m[m.len().saturating_sub(4)..])
}

fn profile_json(st: &State, abha: &AbhaNumber) -> Value {
    let digits = abha.digits();
    let w = st.world.lock().expect("world lock");
    let change = w.profiles.get(&digits).cloned().unwrap_or_default();
    let mut v = match st
        .population
        .abha_index(abha)
        .filter(|i| st.population.contains(*i))
    {
        Some(i) => {
            let p = st.population.person(i);
            json!({
                "ABHANumber": abha.expose(),
                "preferredAbhaAddress": format!("{digits}@sbx"),
                "mobile": masked_mobile(change.mobile.as_deref().unwrap_or(p.mobile.expose())),
                "name": p.name.expose(),
                "gender": p.gender.as_str(),
                "yearOfBirth": p.birth_date.format("%Y").to_string(),
                "monthOfBirth": p.birth_date.format("%m").to_string(),
                "dayOfBirth": p.birth_date.format("%d").to_string(),
                "stateCode": p.state_code,
                "districtCode": p.district_code,
                "kycVerified": true,
            })
        }
        None => {
            let child = w
                .child_parent
                .get(&digits)
                .and_then(|parent| w.children.get(parent))
                .and_then(|c| c.iter().find(|c| c.abha.digits() == digits));
            match child {
                Some(c) => json!({
                    "ABHANumber": abha.expose(),
                    "name": c.name,
                    "gender": c.gender,
                    "dob": format_date(c.dob),
                    "kycVerified": false,
                    "verificationType": "CHILD_ABHA",
                }),
                None => json!({"ABHANumber": abha.expose(), "kycVerified": true}),
            }
        }
    };
    v["status"] = json!(change.status.unwrap_or_else(|| "ACTIVE".into()));
    v["authMethods"] = json!(["MOBILE_OTP"]);
    v
}

// ---------- ABHA APIs ----------

async fn certificate(st: St) -> Response {
    st.count_request("certificate");
    let key = st.key.lock().expect("key lock").clone();
    ok(
        &st,
        json!({"publicKey": key.public_key_b64(), "encryptionAlgorithm": OAEP_SHA1}),
    )
}

async fn benefit_search(st: St, h: HeaderMap, body: Bytes) -> Response {
    st.count_request("benefit_search");
    let v = match parse_body(&st, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let abha = match resolve_login(&st, &v) {
        Ok(Some(a)) => a,
        Ok(None) => return flat(&st, 404, "ABDM-1114", "User not found"),
        Err(r) => return r,
    };
    let _ = benefit(&st, &h);
    let digits = abha.digits();
    let records: Vec<Value> = {
        let w = st.world.lock().expect("world lock");
        let mut linked: Vec<&String> = w
            .links
            .iter()
            .filter(|((_, d), s)| *d == digits && **s == LinkState::Linked)
            .map(|((b, _), _)| b)
            .collect();
        linked.sort();
        linked
            .into_iter()
            .map(|b| {
                json!({"stateCode": 20, "benefitName": b,
                       "benefitId": format!("{:016}", digits.len() as u64 * 7919 + b.len() as u64),
                       "abhaNumber": abha.expose(), "status": 0})
            })
            .collect()
    };
    ok(&st, Value::Array(records))
}

async fn benefit_lookup(st: St, Path(raw): Path<String>) -> Response {
    st.count_request("benefit_lookup");
    let Ok(abha) = AbhaNumber::parse(&raw) else {
        return field(&st, "abhaNumber", "Invalid ABHA number");
    };
    if !abha_exists(&st, &abha) {
        return flat(&st, 404, "ABDM-1114", "User not found");
    }
    let digits = abha.digits();
    let mut programmes: Vec<String> = st
        .world
        .lock()
        .expect("world lock")
        .links
        .iter()
        .filter(|((_, d), s)| *d == digits && **s == LinkState::Linked)
        .map(|((b, _), _)| b.clone())
        .collect();
    programmes.sort();
    let programme: Vec<Value> = programmes
        .into_iter()
        .map(|b| json!({"benefitName": b}))
        .collect();
    ok(
        &st,
        json!({"abhaNumber": abha.expose(), "programme": programme}),
    )
}

async fn link_and_delink(st: St, h: HeaderMap, body: Bytes) -> Response {
    let v = match parse_body(&st, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let scope = v
        .get("scope")
        .and_then(|s| s.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    let op = match scope {
        "link" => "link",
        "de-link" => "delink",
        _ => {
            st.count_request("link_invalid");
            return field(&st, "scope", "Invalid scope");
        }
    };
    st.count_request(op);
    let abha = match resolve_login(&st, &v) {
        Ok(Some(a)) => a,
        Ok(None) => return flat(&st, 404, "ABDM-1114", "User not found"),
        Err(r) => return r,
    };
    let benefit = benefit(&st, &h);
    let key = (benefit.clone(), abha.digits());
    let outcome = {
        let mut w = st.world.lock().expect("world lock");
        let current = w.links.get(&key).copied();
        match (op, current) {
            ("link", Some(LinkState::Linked)) => Err((
                "ABDM-1140",
                "ABHA number is already linked with this benefit",
            )),
            ("link", _) => {
                w.links.insert(key.clone(), LinkState::Linked);
                Ok("Benefit record has been linked successfully")
            }
            (_, Some(LinkState::Linked)) => {
                w.links.insert(key.clone(), LinkState::Delinked);
                Ok("Benefit record has been de-linked successfully")
            }
            (_, Some(LinkState::Delinked)) => Err((
                "ABDM-1138",
                "ABHA number is already de-linked from this benefit",
            )),
            (_, None) => Err(("ABDM-1139", "Benefit record not found")),
        }
    };
    match outcome {
        Ok(status) => {
            st.side_effect(op, &abha.digits());
            ok(
                &st,
                json!({"benefitName": benefit, "healthId": abha.expose(), "status": status}),
            )
        }
        Err((code, msg)) => flat(&st, 400, code, msg),
    }
}

async fn profile_patch(st: St, body: Bytes) -> Response {
    let v = match parse_body(&st, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let is_child_update = v.get("name").is_some() || v.get("dob").is_some();
    st.count_request(if is_child_update {
        "child_update"
    } else {
        "profile_update"
    });
    let Some(abha) = v
        .get("abhaNumber")
        .and_then(Value::as_str)
        .and_then(|s| AbhaNumber::parse(s).ok())
    else {
        return field(&st, "abhaNumber", "Invalid ABHA number");
    };
    if !abha_exists(&st, &abha) {
        return flat(&st, 404, "ABDM-1114", "User not found");
    }
    let digits = abha.digits();
    if is_child_update {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        let Ok(name) = PersonName::parse(name) else {
            return field(&st, "name", "Invalid name");
        };
        let dob = v.get("dob").and_then(Value::as_str).unwrap_or("");
        let Ok(dob) = crate::pii::parse_past_date(dob, Utc::now().date_naive()) else {
            return field(&st, "dob", "Invalid dob, expected dd-mm-yyyy");
        };
        let Ok(gender) = Gender::parse(v.get("gender").and_then(Value::as_str).unwrap_or(""))
        else {
            return field(&st, "gender", "Invalid gender");
        };
        let result = {
            let mut w = st.world.lock().expect("world lock");
            let parent = w.child_parent.get(&digits).cloned();
            let child = parent
                .and_then(|p| w.children.get_mut(&p))
                .and_then(|c| c.iter_mut().find(|c| c.abha.digits() == digits));
            match child {
                None => Err(("ABDM-1094", "Feature restricted: not a child ABHA")),
                Some(c) if c.updates >= 1 => {
                    Err(("ABDM-1160", "Non-KYC child ABHA can be updated only once"))
                }
                Some(c) => {
                    c.updates += 1;
                    c.name = name.expose().to_string();
                    c.dob = dob;
                    c.gender = gender.as_str().to_string();
                    Ok(())
                }
            }
        };
        return match result {
            Ok(()) => {
                st.side_effect("child_update", &digits);
                let p = profile_json(&st, &abha);
                ok(&st, p)
            }
            Err((code, msg)) => flat(&st, 400, code, msg),
        };
    }
    let mobile = if v.get("mobile").is_some() {
        match decrypt(&st, &v, "mobile", "Invalid mobile")
            .and_then(|m| Mobile::parse(&m).map_err(|_| field(&st, "mobile", "Invalid mobile")))
        {
            Ok(m) => Some(m),
            Err(r) => return r,
        }
    } else {
        None
    };
    let status = v.get("accountStatus").and_then(Value::as_str);
    if let Some(s) = status
        && s != "ACTIVE"
    {
        let linked = {
            let w = st.world.lock().expect("world lock");
            w.links
                .iter()
                .any(|((_, d), ls)| *d == digits && *ls == LinkState::Linked)
        };
        if linked {
            return flat(
                &st,
                400,
                "ABDM-1228",
                "Benefit linked ABHA cannot be deactivated",
            );
        }
        return field(&st, "accountStatus", "Only ACTIVE is allowed");
    }
    let photo = v.get("profilePhoto").and_then(Value::as_str);
    if let Some(p) = photo {
        use base64::Engine;
        let ok_photo = p.len() <= 1_400_000
            && base64::engine::general_purpose::STANDARD
                .decode(p.as_bytes())
                .is_ok();
        if !ok_photo {
            return field(
                &st,
                "profilePhoto",
                "Invalid profile photo (base64, up to 1 MB)",
            );
        }
    }
    if mobile.is_none() && status.is_none() && photo.is_none() {
        return field(&st, "body", "Nothing to update");
    }
    // A patch that sets what is already there changes nothing (and is no second side effect).
    let changed = {
        use sha2::Digest;
        let seeded_mobile = st
            .population
            .abha_index(&abha)
            .filter(|i| st.population.contains(*i))
            .map(|i| st.population.mobile(i).expose().to_string());
        let mut w = st.world.lock().expect("world lock");
        let change = w.profiles.entry(digits.clone()).or_default();
        let mut changed = false;
        if let Some(m) = &mobile {
            let current = change.mobile.clone().or(seeded_mobile);
            changed |= current.as_deref() != Some(m.expose());
            change.mobile = Some(m.expose().to_string());
        }
        if let Some(s) = status {
            changed |= change.status.as_deref().unwrap_or("ACTIVE") != s;
            change.status = Some(s.to_string());
        }
        if let Some(p) = photo {
            let hash = sha2::Sha256::digest(p.as_bytes()).to_vec();
            changed |= change.photo.as_ref() != Some(&hash);
            change.photo = Some(hash);
        }
        changed
    };
    if changed {
        st.side_effect("profile_update", &digits);
    }
    let p = profile_json(&st, &abha);
    ok(&st, p)
}

async fn find_by_mobile(st: St, body: Bytes) -> Response {
    st.count_request("abha_find");
    let v = match parse_body(&st, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mobile = match decrypt(&st, &v, "mobile", "Invalid mobile")
        .and_then(|m| Mobile::parse(&m).map_err(|_| field(&st, "mobile", "Invalid mobile")))
    {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(i) = st
        .population
        .mobile_index(&mobile)
        .filter(|i| st.population.contains(*i))
    else {
        return flat(&st, 404, "ABDM-1114", "User not found");
    };
    let p = st.population.person(i);
    ok(
        &st,
        json!([{"txnId": uuid::Uuid::new_v4().to_string(),
                "ABHA": [{"index": 1, "ABHANumber": p.abha.expose(),
                          "name": p.name.expose(), "gender": p.gender.as_str()}]}]),
    )
}

fn parent_from_x_token(st: &State, h: &HeaderMap) -> Result<AbhaNumber, Response> {
    let raw = h.get("X-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = raw.strip_prefix("Bearer ").unwrap_or(raw);
    st.population
        .verify_x_token(token, Utc::now().timestamp())
        .map_err(|why| nested(st, 401, "ABDM-1094", &format!("Invalid X-token: {why}")))
}

async fn enrol_by_aadhaar(st: St, h: HeaderMap, body: Bytes) -> Response {
    let v = match parse_body(&st, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let methods = v
        .pointer("/authData/authMethods")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |m: &str| methods.iter().any(|x| x.as_str() == Some(m));
    if has("child") {
        st.count_request("child_create");
        return create_child(&st, &h, &v);
    }
    if has("demo_auth") {
        st.count_request("demo_auth_create");
        return create_demo_auth(&st, &v);
    }
    st.count_request("enrol_invalid");
    field(&st, "authMethods", "Unsupported authMethods")
}

fn create_child(st: &State, h: &HeaderMap, v: &Value) -> Response {
    let parent = match parent_from_x_token(st, h) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let c = v.pointer("/authData/child").cloned().unwrap_or(Value::Null);
    let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let Ok(name) = PersonName::parse(&text("name")) else {
        return field(st, "name", "Invalid name");
    };
    let dob = match (
        text("dayOfBirth").parse::<u32>(),
        text("monthOfBirth").parse::<u32>(),
        text("yearOfBirth").parse::<i32>(),
    ) {
        (Ok(d), Ok(m), Ok(y)) => NaiveDate::from_ymd_opt(y, m, d),
        _ => None,
    };
    let Some(dob) = dob.filter(|d| *d <= Utc::now().date_naive()) else {
        return field(st, "dateOfBirth", "Invalid date of birth");
    };
    let Ok(gender) = Gender::parse(&text("gender")) else {
        return field(st, "gender", "Invalid gender");
    };
    if text("parentConsent") != "true" {
        return field(st, "parentConsent", "Parent consent is required");
    }
    let parent_digits = parent.digits();
    let child_abha = {
        let mut w = st.world.lock().expect("world lock");
        let count = w.children.get(&parent_digits).map_or(0, Vec::len);
        if count >= st.cfg.max_children {
            drop(w);
            return nested(
                st,
                400,
                "ABDM-1157",
                "Child ABHA creation limit reached for this parent",
            );
        }
        w.add_child(
            &st.population,
            &parent_digits,
            name.expose(),
            dob,
            gender.as_str(),
        )
    };
    st.side_effect(
        "child_create",
        &format!("{parent_digits}|{}|{}", name.expose(), format_date(dob)),
    );
    ok(
        st,
        json!({
            "message": "Account created successfully",
            "tokens": {"token": st.population.x_token(&child_abha, Utc::now().timestamp() + 1800),
                       "expiresIn": 1800, "refreshToken": "sbx-refresh", "refreshExpiresIn": 1296000},
            "ABHAProfile": {
                "firstName": name.expose().split(' ').next().unwrap_or(""),
                "dob": dob.format("%-d-%-m-%Y").to_string(),
                "gender": gender.as_str(),
                "mobile": "******0000",
                "abhaType": "CHILD",
                "ABHANumber": child_abha.expose(),
                "abhaStatus": "ACTIVE"
            },
            "isNew": true
        }),
    )
}

fn create_demo_auth(st: &State, v: &Value) -> Response {
    let Some(demo) = v.pointer("/authData/demo_auth").cloned() else {
        return field(st, "demo_auth", "demo_auth is required");
    };
    let aadhaar =
        match decrypt(st, &demo, "aadhaarNumber", "Invalid Aadhaar number").and_then(|a| {
            Aadhaar::parse(&a).map_err(|_| field(st, "aadhaarNumber", "Invalid Aadhaar number"))
        }) {
            Ok(a) => a,
            Err(r) => return r,
        };
    for required in ["name", "dateOfBirth", "gender", "stateCode", "districtCode"] {
        if demo
            .get(required)
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            return field(st, required, &format!("{required} is required"));
        }
    }
    if demo.get("mobile").is_some()
        && let Err(r) = decrypt(st, &demo, "mobile", "Invalid mobile")
    {
        return r;
    }
    let (abha, is_new) = match st
        .population
        .aadhaar_index(&aadhaar)
        .filter(|i| st.population.contains(*i))
    {
        Some(i) => (st.population.abha(i), false),
        None => {
            let mut w = st.world.lock().expect("world lock");
            match w.demo_created.get(aadhaar.expose()) {
                Some(d) => (AbhaNumber::parse(d).expect("stored digits"), false),
                None => {
                    let index = w.next_new_index;
                    w.next_new_index += 1;
                    let abha = st.population.abha(index);
                    w.demo_created
                        .insert(aadhaar.expose().to_string(), abha.digits());
                    (abha, true)
                }
            }
        }
    };
    if is_new {
        st.side_effect("demo_auth_create", aadhaar.expose());
    }
    let name = demo.get("name").and_then(Value::as_str).unwrap_or("");
    ok(
        st,
        json!({
            "txnId": uuid::Uuid::new_v4().to_string(),
            "gender": demo.get("gender"),
            "name": name,
            "birthdate": demo.get("dateOfBirth"),
            "healthIdNumber": abha.expose(),
            "jwtResponse": {"token": "sbx", "expiresIn": 1800},
            "new": is_new
        }),
    )
}

async fn list_children(st: St, h: HeaderMap) -> Response {
    st.count_request("child_list");
    let parent = match parent_from_x_token(&st, &h) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let children: Vec<Value> = st
        .world
        .lock()
        .expect("world lock")
        .children
        .get(&parent.digits())
        .map(|c| {
            c.iter()
                .map(|c| {
                    json!({"dateOfBirth": c.dob.format("%-d-%-m-%Y").to_string(),
                           "name": c.name, "gender": c.gender,
                           "phrAddress": format!("{}@sbx", c.abha.digits()),
                           "ABHANumber": c.abha.expose()})
                })
                .collect()
        })
        .unwrap_or_default();
    ok(
        &st,
        json!({"parentAbhaNumber": parent.expose(), "childrenCount": children.len(),
               "children": children}),
    )
}

// ---------- admin ----------

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
        super::KeySource::Generate(b) => *b,
        super::KeySource::Pem(_) => 2048,
    };
    match tokio::task::spawn_blocking(move || super::key::Decryptor::generate(bits)).await {
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
