//! Child ABHAs: created and listed under the parent's X-token, updated once.

use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{NaiveDate, Utc};
use serde_json::{Value, json};

use super::St;
use super::errors::{field, flat, nested, ok};
use super::profile::profile_json;
use crate::pii::{AbhaNumber, Gender, PersonName, format_date};
use crate::sandbox::state::State;

fn parent_from_x_token(st: &State, h: &HeaderMap) -> Result<AbhaNumber, Response> {
    let raw = h.get("X-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = raw.strip_prefix("Bearer ").unwrap_or(raw);
    st.population
        .verify_x_token(token, Utc::now().timestamp())
        .map_err(|why| nested(st, 401, "ABDM-1094", &format!("Invalid X-token: {why}")))
}

pub(super) fn create_child(st: &State, h: &HeaderMap, v: &Value) -> Response {
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

pub(super) async fn list_children(st: St, h: HeaderMap) -> Response {
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

/// `PATCH /v3/profile/account` with a name or date of birth: the one update a non-KYC child
/// ABHA allows (the profile patch sends it here once the ABHA is known to exist).
pub(super) fn update(st: &State, abha: &AbhaNumber, v: &Value) -> Response {
    let digits = abha.digits();
    let name = v.get("name").and_then(Value::as_str).unwrap_or("");
    let Ok(name) = PersonName::parse(name) else {
        return field(st, "name", "Invalid name");
    };
    let dob = v.get("dob").and_then(Value::as_str).unwrap_or("");
    let Ok(dob) = crate::pii::parse_past_date(dob, Utc::now().date_naive()) else {
        return field(st, "dob", "Invalid dob, expected dd-mm-yyyy");
    };
    let Ok(gender) = Gender::parse(v.get("gender").and_then(Value::as_str).unwrap_or("")) else {
        return field(st, "gender", "Invalid gender");
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
    match result {
        Ok(()) => {
            st.side_effect("child_update", &digits);
            let p = profile_json(st, abha);
            ok(st, p)
        }
        Err((code, msg)) => flat(st, 400, code, msg),
    }
}
