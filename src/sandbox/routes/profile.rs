//! Profile patch (mobile, account status, photo) and ABHA search by mobile. A patch that
//! names a child's name or date of birth is the child update, answered by `child`.

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{Value, json};

use super::St;
use super::errors::{field, flat, ok};
use super::input::{abha_exists, decrypt, parse_body};
use crate::pii::{AbhaNumber, Mobile, format_date};
use crate::sandbox::state::{LinkState, State};

fn masked_mobile(m: &str) -> String {
    format!("******{}", &m[m.len().saturating_sub(4)..])
}

/// The profile ABDM answers a patch with: a seeded person with this run's changes, or a
/// child created in this run.
pub(super) fn profile_json(st: &State, abha: &AbhaNumber) -> Value {
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

pub(super) async fn profile_patch(st: St, body: Bytes) -> Response {
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
    if is_child_update {
        return super::child::update(&st, &abha, &v);
    }
    let digits = abha.digits();
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

pub(super) async fn find_by_mobile(st: St, body: Bytes) -> Response {
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
