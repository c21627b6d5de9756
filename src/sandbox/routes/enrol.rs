//! `POST /v3/enrollment/enrol/byAadhaar`: one path for two operations, told apart by
//! `authMethods` (a child under its parent, or an ABHA by demographic authentication).

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::St;
use super::child::create_child;
use super::errors::{field, ok};
use super::input::{decrypt, parse_body};
use crate::pii::{Aadhaar, AbhaNumber};
use crate::sandbox::state::State;

pub(super) async fn enrol_by_aadhaar(st: St, h: HeaderMap, body: Bytes) -> Response {
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
