//! Reading what a request says: its JSON body, its encrypted fields (really decrypted with
//! the sandbox's key), its benefit header, and who its `loginHint`/`loginId` designate.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::errors::field;
use crate::abdm::crypto::Padding;
use crate::pii::{Aadhaar, AbhaNumber};
use crate::sandbox::state::State;

pub(super) fn parse_body(st: &State, body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|_| field(st, "body", "Request body must be JSON"))
}

pub(super) fn decrypt(
    st: &State,
    v: &Value,
    name: &str,
    message: &str,
) -> Result<String, Response> {
    let ct = v.get(name).and_then(Value::as_str).unwrap_or("");
    let key = st.key.lock().expect("key lock").clone();
    key.decrypt(ct, Padding::OaepSha1)
        .map_err(|_| field(st, name, message))
}

pub(super) fn benefit(st: &State, h: &HeaderMap) -> String {
    h.get(st.cfg.benefit_header.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// True when the ABHA exists: seeded, or created in this run.
pub(super) fn abha_exists(st: &State, abha: &AbhaNumber) -> bool {
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
pub(super) fn resolve_login(st: &State, v: &Value) -> Result<Option<AbhaNumber>, Response> {
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
