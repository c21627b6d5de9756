//! The console's session: a server-side session in a cookie, and the CSRF token of its forms.
//!
//! The cookie (`abha_console`) is `HttpOnly; Secure; SameSite=Strict; Path=/console`, so page
//! scripts cannot read it, it only travels over HTTPS (or to localhost), never with a request
//! started by another site, and never to the `/v1` API. Its value is `<nonce>` before sign-in
//! and `<nonce>.<session id>` after. The session lives in Postgres (`console_sessions`, see
//! `store::console_sessions`): the key is checked once at sign-in and never travels again; a
//! session ends after `api.console_idle_mins` without a request, `api.console_max_hours` after
//! sign-in, at sign-out (for every copy of the cookie) and when its key is revoked or expires.
//! Each request re-reads the session and its key (live, scopes).
//!
//! Sign-in goes through the same failed-authentication throttle as the API
//! ([`crate::api::auth::authenticate`]): 429 with `Retry-After` past the burst.
//!
//! CSRF: every form carries `HMAC-SHA256(nonce, "csrf:" + key id)` (or `"csrf:sign-in"` before
//! sign-in). Another site can neither read the cookie's random nonce nor the pages that show
//! the token, so it cannot forge a form; the nonce is renewed at sign-in, so a token seen before
//! sign-in is useless after it (no session fixation). `SameSite=Strict` is a second wall, not
//! the only one.

use axum::Form;
use axum::extract::{FromRequestParts, OptionalFromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{esc, page, problem_page};
use crate::api::ApiState;
use crate::api::auth::{Caller, Refusal, Surface, authenticate};
use crate::api::problem::Problem;

/// The cookie's name.
pub const COOKIE: &str = "abha_console";
const ATTRS: &str = "HttpOnly; Secure; SameSite=Strict; Path=/console";

/// A signed-in console request: the key (checked live on this request), the session nonce
/// and the session's id.
pub struct Session {
    /// The key, as the API's handlers take it.
    pub caller: Caller,
    nonce: String,
    id: String,
}

impl Session {
    /// The token every form of this session carries.
    pub fn csrf(&self) -> String {
        token(&self.nonce, &format!("csrf:{}", self.caller.0.id))
    }

    /// Refuses (403) a form whose token is missing or not this session's.
    pub fn check(&self, presented: Option<&str>) -> Result<(), Problem> {
        verify(
            &self.nonce,
            &format!("csrf:{}", self.caller.0.id),
            presented,
        )
    }
}

fn token(nonce: &str, what: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(nonce.as_bytes()).expect("any key length");
    mac.update(what.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn verify(nonce: &str, what: &str, presented: Option<&str>) -> Result<(), Problem> {
    let refused = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "Forbidden",
            "this form is stale or did not come from the console: reload the page and try again",
        )
    };
    let bytes = unhex(presented.ok_or_else(refused)?).ok_or_else(refused)?;
    let mut mac = <Hmac<Sha256>>::new_from_slice(nonce.as_bytes()).expect("any key length");
    mac.update(what.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&bytes).map_err(|_| refused())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn new_nonce() -> String {
    hex(&(0..32).map(|_| rand::random::<u8>()).collect::<Vec<_>>())
}

/// The cookie's value in a request, split into nonce and session id (if signed in).
fn cookie(headers: &HeaderMap) -> Option<(String, Option<String>)> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.to_string())?;
    match value.split_once('.') {
        Some((nonce, id)) if nonce.len() == 64 && id.len() == 64 => {
            Some((nonce.into(), Some(id.into())))
        }
        None if value.len() == 64 => Some((value, None)),
        _ => None,
    }
}

fn set_cookie(value: &str) -> (header::HeaderName, HeaderValue) {
    (
        header::SET_COOKIE,
        HeaderValue::from_str(&format!("{COOKIE}={value}; {ATTRS}")).expect("cookie is ASCII"),
    )
}

/// Not signed in (or the key was revoked): to the sign-in page.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to("/console/sign-in").into_response()
    }
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> Result<Self, SignInFirst> {
        let Some((nonce, Some(id))) = cookie(&parts.headers) else {
            return Err(SignInFirst);
        };
        let g = &st.guards;
        let key = match st
            .store
            .console_session(&id, g.console_idle, g.console_max)
            .await
        {
            Ok(Some(k)) => k,
            Ok(None) => return Err(SignInFirst),
            Err(e) => {
                tracing::error!(error = %e, "console session lookup failed");
                return Err(SignInFirst);
            }
        };
        tracing::info!(key_id = %key.id, method = %parts.method, path = %parts.uri.path(), "console request");
        Ok(Session {
            caller: Caller(key),
            nonce,
            id,
        })
    }
}

impl OptionalFromRequestParts<ApiState> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &ApiState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Self as FromRequestParts<ApiState>>::from_request_parts(parts, st)
                .await
                .ok(),
        )
    }
}

fn sign_in_page(nonce: &str, status: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Sign in</h1>{error}
<form method="post" action="/console/sign-in" class="card">
<input type="hidden" name="csrf" value="{csrf}">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" required placeholder="abk_…">
<button id="sign-in" type="submit">Sign in</button>
</form>
<p class="hint">Use a key from <code>abha-bulk api-key create</code>. It is checked once; the
console then keeps only a session, which ends when you sign out or stay idle.</p>"#,
        csrf = token(nonce, "csrf:sign-in"),
    );
    let mut r = (status, page("Sign in", None, &body)).into_response();
    let (name, value) = set_cookie(nonce);
    r.headers_mut().insert(name, value);
    r
}

/// `GET /console/sign-in` (and `/console` when signed out): the form, with a fresh nonce.
pub async fn sign_in_form(session: Option<Session>) -> Response {
    if session.is_some() {
        return Redirect::to("/console/batches").into_response();
    }
    sign_in_page(&new_nonce(), StatusCode::OK, None)
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    key: String,
    csrf: Option<String>,
}

/// `POST /console/sign-in`: checks the form's token and the key (through the failed-auth
/// throttle), then starts a server-side session.
pub async fn sign_in(
    State(st): State<ApiState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(f): Form<SignInForm>,
) -> Response {
    let Some((nonce, _)) = cookie(&headers) else {
        return sign_in_page(
            &new_nonce(),
            StatusCode::FORBIDDEN,
            Some("the sign-in form had expired: try again"),
        );
    };
    if let Err(p) = verify(&nonce, "csrf:sign-in", f.csrf.as_deref()) {
        return problem_page(p, None);
    }
    let refuse = |why: &str| sign_in_page(&new_nonce(), StatusCode::UNAUTHORIZED, Some(why));
    let client = st.guards.client_ip(&headers, &extensions);
    let presented = f.key.trim();
    let checked = authenticate(&st.store, &st.guards, Surface::Console, client, presented).await;
    let key = match checked {
        Ok(Ok(k)) => k,
        Ok(Err(Refusal::Throttled(wait))) => {
            let mut r = sign_in_page(
                &new_nonce(),
                StatusCode::TOO_MANY_REQUESTS,
                Some("too many failed sign-ins: wait a little and try again"),
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        Ok(Err(Refusal::Unknown)) => return refuse("unknown API key"),
        Ok(Err(Refusal::Revoked)) => return refuse("this API key was revoked or has expired"),
        Err(p) => return problem_page(p, None),
    };
    let id = match st.store.start_console_session(key.id).await {
        Ok(id) => id,
        Err(e) => return problem_page(e.into(), None),
    };
    tracing::info!(key_id = %key.id, "console sign-in");
    let mut r = Redirect::to("/console/batches").into_response();
    let (name, value) = set_cookie(&format!("{}.{id}", new_nonce()));
    r.headers_mut().insert(name, value);
    r
}

/// A form that carries only its CSRF token (sign-out, retry, cancel).
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    /// The session's CSRF token.
    pub csrf: Option<String>,
}

/// `POST /console/sign-out`: ends the session on the server (every copy of the cookie stops
/// working) and clears the browser's cookie.
pub async fn sign_out(
    State(st): State<ApiState>,
    session: Session,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Err(p) = session.check(f.csrf.as_deref()) {
        return problem_page(p, Some(&session));
    }
    if let Err(e) = st.store.end_console_session(&session.id).await {
        return problem_page(e.into(), Some(&session));
    }
    tracing::info!(key_id = %session.caller.0.id, "console sign-out");
    let mut r = Redirect::to("/console/sign-in").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!("{COOKIE}=; Max-Age=0; {ATTRS}")).expect("ASCII"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_only_for_its_nonce_and_purpose() {
        let (a, b) = (new_nonce(), new_nonce());
        let t = token(&a, "csrf:sign-in");
        assert!(verify(&a, "csrf:sign-in", Some(&t)).is_ok());
        assert!(verify(&b, "csrf:sign-in", Some(&t)).is_err());
        assert!(verify(&a, "csrf:other", Some(&t)).is_err());
        for bad in [None, Some(""), Some("zz"), Some("abc"), Some("é")] {
            assert!(verify(&a, "csrf:sign-in", bad).is_err());
        }
    }

    #[test]
    fn the_cookie_splits_into_nonce_and_key() {
        let n = new_nonce();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}={n}.{}", "ab".repeat(32))
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie(&h), Some((n.clone(), Some("ab".repeat(32)))));
        h.insert(header::COOKIE, format!("{COOKIE}={n}").parse().unwrap());
        assert_eq!(cookie(&h), Some((n.clone(), None)));
        h.insert(header::COOKIE, format!("{COOKIE}=short").parse().unwrap());
        assert_eq!(cookie(&h), None);
        // The old form (the key itself in the cookie) is no session.
        h.insert(
            header::COOKIE,
            format!("{COOKIE}={n}.abk_1f2e3d4c_9a8b").parse().unwrap(),
        );
        assert_eq!(cookie(&h), None);
    }
}
