//! Benefit search, lookup, link and de-link (integrator guide §11.3, §11.5).

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::St;
use super::errors::{field, flat, ok};
use super::input::{abha_exists, benefit, parse_body, resolve_login};
use crate::pii::AbhaNumber;
use crate::sandbox::state::LinkState;

pub(super) async fn benefit_search(st: St, h: HeaderMap, body: Bytes) -> Response {
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

pub(super) async fn benefit_lookup(st: St, Path(raw): Path<String>) -> Response {
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

pub(super) async fn link_and_delink(st: St, h: HeaderMap, body: Bytes) -> Response {
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
