//! The sandbox's HTTP surface: ABDM's paths, headers, bodies and error shapes.
//!
//! Every ABHA API request passes [`guard`] (token, headers, rate, faults) before its handler;
//! handlers live in the file of their API area and answer in [`errors`]' shapes. The gateway
//! session and the admin endpoints are outside the guard, as at ABDM (the session) and
//! because they are not ABDM's (admin).
// Handlers build their error answers early and return them as `Err(Response)`; a Response is
// large, but boxing every early return would only add noise to a simulator.
#![allow(clippy::result_large_err)]

mod admin;
mod benefit;
mod child;
mod enrol;
mod errors;
mod guard;
mod input;
mod profile;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::middleware;
use axum::routing::{get, patch, post};

use super::state::State;

type St = AxState<Arc<State>>;

pub(super) fn router(state: Arc<State>) -> Router {
    let abha = Router::new()
        .route("/v3/profile/public/certificate", get(session::certificate))
        .route("/v3/profile/benefit/search", post(benefit::benefit_search))
        .route(
            "/v3/profile/benefit/abha/{abha}",
            get(benefit::benefit_lookup),
        )
        .route(
            "/v3/profile/benefit/linkAndDelink",
            post(benefit::link_and_delink),
        )
        .route("/v3/profile/account", patch(profile::profile_patch))
        .route(
            "/v3/profile/account/abha/search",
            post(profile::find_by_mobile),
        )
        .route(
            "/v3/enrollment/enrol/byAadhaar",
            post(enrol::enrol_by_aadhaar),
        )
        .route(
            "/v3/enrollment/profile/children",
            get(child::list_children).post(child::list_children),
        )
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard));
    Router::new()
        .route("/api/hiecm/gateway/v3/sessions", post(session::session))
        .nest("/abha/api", abha)
        .merge(admin::routes())
        .with_state(state)
}
