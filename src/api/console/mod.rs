//! The web console (`/console`): server-rendered pages over the programme API.
//!
//! A programme's staff sign in with their API key, upload a CSV, see its rejected rows at once,
//! watch the batch's progress, download the masked report, retry failed rows and cancel, all
//! in a browser and without curl. The pages call the same code as the `/v1` API (upload
//! validation and atomic submit, batch visibility, report, retry, cancel), so the two cannot
//! drift apart; the console only renders.
//!
//! Pages are `format!` templates compiled into the binary; every value is HTML-escaped by
//! [`esc`]. The only script is `app.js`, which polls the progress of a batch page every 2 s;
//! the rate chart is inline SVG drawn by the server.
//! Every response carries a Content-Security-Policy without inline script or style, refuses to
//! be framed, and is not cached. Page titles are fixed words, and no address carries more than
//! a batch id: never a key, an ABHA number or any other identifier.
//!
//! - [`session`]: the key in an `HttpOnly` cookie, CSRF tokens, sign-in and sign-out.
//! - [`pages`]: the batch list, upload, batch page, progress, report, retry, cancel.
//! - [`views`]: a batch's share of the rate and its chart, failures by code, the running
//!   batches in order of expected completion.

pub mod pages;
pub mod session;
pub mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use super::ApiState;
use super::problem::Problem;
use session::Session;

/// The console's policy: scripts, styles and fetches from this origin only, nothing inline,
/// forms post only here, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

/// The console's routes, merged into the API's router. `max_upload` bounds the upload form
/// (the file part itself is bounded by the same limit as the API's uploads while spooled).
pub fn routes(max_upload: u64) -> Router<ApiState> {
    let form_limit = usize::try_from(max_upload.saturating_add(1 << 20)).unwrap_or(usize::MAX);
    Router::new()
        .route("/console", get(session::sign_in_form))
        .route(
            "/console/sign-in",
            get(session::sign_in_form).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route(
            "/console/batches",
            get(pages::list)
                .post(pages::upload)
                .layer(DefaultBodyLimit::max(form_limit)),
        )
        .route("/console/batches/{id}", get(pages::batch))
        .route("/console/batches/{id}/progress", get(pages::progress))
        .route("/console/batches/{id}/report", get(pages::report))
        .route("/console/batches/{id}/retry-failed", post(pages::retry))
        .route("/console/batches/{id}/cancel", post(pages::cancel))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("app.css"),
    )
}

async fn not_found(session: Option<Session>) -> Response {
    problem_page(
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such console page",
        ),
        session.as_ref(),
    )
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title` is a fixed word (never data), `body` is already-escaped HTML.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> Html<String> {
    let nav = match session {
        Some(s) => format!(
            r#"<nav><a href="/console/batches">Batches</a>
<form method="post" action="/console/sign-out" class="inline">
<input type="hidden" name="csrf" value="{}"><button id="sign-out" type="submit">Sign out</button>
</form></nav>"#,
            esc(&s.csrf())
        ),
        None => String::new(),
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · abha-bulk console</title>
<link rel="stylesheet" href="/console/app.css">
<script src="/console/app.js" defer></script>
</head>
<body>
<header><span class="brand">abha-bulk console</span>{nav}</header>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title)
    ))
}

/// A refusal or failure as a page with the problem's status, title and detail.
pub fn problem_page(p: Problem, session: Option<&Session>) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let back = if session.is_some() {
        r#"<p><a href="/console/batches">Back to the batches</a></p>"#
    } else {
        r#"<p><a href="/console/sign-in">Sign in</a></p>"#
    };
    let body = format!(
        r#"<h1 id="problem">{title}</h1>
<p class="error" role="alert">{detail}</p>
{back}"#,
        title = esc(p.title),
        detail = esc(&p.detail),
    );
    (status, page(p.title, session, &body)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            super::esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
