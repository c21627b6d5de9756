//! The console's batch pages. Each one calls the `/v1` API's own code with the session's key
//! (upload, visibility, report, retry, cancel) and renders the answer; a refusal is a page
//! with the same status and words as the API's problem document.

use axum::Form;
use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::{Session, TokenForm};
use super::{esc, page, problem_page, views};
use crate::api::ApiState;
use crate::api::batches::{self, ReportQuery, RetryQuery};
use crate::api::problem::{Params, Problem};
use crate::api::upload;
use crate::jobs::kind::JobKind;
use crate::report::BatchStatus;

/// Rejected rows shown under a batch (the API's upload answer shows as many).
const REJECTED_SHOWN: i64 = 100;

/// `GET /console/batches`: the key's programmes' batches, newest first, and the upload form.
pub async fn list(State(st): State<ApiState>, s: Session) -> Response {
    match list_body(&st, &s).await {
        Ok(body) => page("Batches", Some(&s), &body).into_response(),
        Err(p) => problem_page(p, Some(&s)),
    }
}

async fn list_body(st: &ApiState, s: &Session) -> Result<String, Problem> {
    s.caller.require("read")?;
    let batches = st
        .store
        .batches_of(&s.caller.0.benefits, None, 100, 0)
        .await?;
    // Every active batch of the programmes, not only those among the newest 100.
    let running = st
        .store
        .batches_of(&s.caller.0.benefits, Some("active"), 500, 0)
        .await?;
    let plan = if running.is_empty() {
        crate::report::Plan::default()
    } else {
        let known = std::collections::HashMap::new();
        crate::report::Plan::load(&st.store, &known, |p| s.caller.0.sees(p)).await?
    };
    let running = super::views::active_table(&running, &plan);
    let rows: String = batches
        .iter()
        .map(|b| {
            format!(
                r#"<tr><td><a href="/console/batches/{id}">{created}</a></td><td>{kind}</td><td>{benefit}</td><td>{state}</td><td class="num">{total}</td><td class="num">{rejected}</td></tr>
"#,
                id = b.id,
                created = b.created_at.format("%Y-%m-%d %H:%M UTC"),
                kind = esc(&b.kind),
                benefit = esc(&b.benefit),
                state = esc(&b.state),
                total = b.total_rows,
                rejected = b.rejected_rows,
            )
        })
        .collect();
    let table = if batches.is_empty() {
        r#"<p id="no-batches">No batches yet.</p>"#.to_string()
    } else {
        format!(
            r#"<table id="batches"><thead><tr><th>Uploaded</th><th>Kind</th><th>Benefit</th><th>State</th><th class="num">Rows</th><th class="num">Rejected</th></tr></thead>
<tbody>
{rows}</tbody></table>"#
        )
    };
    let upload = if s.caller.0.has_scope("submit") {
        let kinds: String = JobKind::ALL
            .iter()
            .map(|k| format!(r#"<option value="{0}">{0}</option>"#, esc(k.as_str())))
            .collect();
        let benefits: String = s
            .caller
            .0
            .benefits
            .iter()
            .map(|b| format!(r#"<option value="{0}">{0}</option>"#, esc(b)))
            .collect();
        format!(
            r#"<h2>Upload a file</h2>
<form method="post" action="/console/batches" enctype="multipart/form-data" class="card">
<input type="hidden" name="csrf" value="{csrf}">
<label for="kind">Kind</label><select id="kind" name="kind">{kinds}</select>
<label for="benefit">Benefit</label><select id="benefit" name="benefit">{benefits}</select>
<label for="priority">Priority</label><select id="priority" name="priority"><option value="">the programme's default</option><option value="low">low</option><option value="normal">normal</option><option value="high">high</option><option value="urgent">urgent</option></select>
<label for="file">CSV file</label><input id="file" name="file" type="file" accept=".csv,text/csv" required>
<button id="upload" type="submit">Upload</button>
</form>
<p class="hint">The file is checked and stored whole, or not at all; rows that cannot be run are listed on the batch page.</p>"#,
            csrf = esc(&s.csrf()),
        )
    } else {
        String::new()
    };
    Ok(format!(
        "<h1>Batches</h1>\n<h2>Running now</h2>\n{running}\n<h2>All batches</h2>\n{table}\n{upload}"
    ))
}

/// Reads a small text part of the upload form (the token, kind, benefit), at most 1 KiB.
async fn small_field(mut f: axum::extract::multipart::Field<'_>) -> Result<String, Problem> {
    let mut v = Vec::new();
    while let Some(chunk) = f.chunk().await.map_err(bad_form)? {
        v.extend_from_slice(&chunk);
        if v.len() > 1024 {
            return Err(Problem::bad_request(
                "bad-parameter",
                "a form field is too long",
            ));
        }
    }
    String::from_utf8(v)
        .map_err(|_| Problem::bad_request("bad-parameter", "a form field is not text"))
}

fn bad_form(e: axum::extract::multipart::MultipartError) -> Problem {
    Problem::bad_request(
        "incomplete-upload",
        format!(
            "the upload form could not be read ({}); nothing was stored",
            e.body_text()
        ),
    )
}

/// `POST /console/batches` (multipart: `csrf`, `kind`, `benefit`, then `file`): the API's
/// upload with the session's key; then to the batch page, which lists the rejected rows.
pub async fn upload(State(st): State<ApiState>, s: Session, form: Multipart) -> Response {
    match upload_file(&st, &s, form).await {
        Ok(batch) => Redirect::to(&format!("/console/batches/{batch}")).into_response(),
        Err(p) => problem_page(p, Some(&s)),
    }
}

async fn upload_file(st: &ApiState, s: &Session, mut form: Multipart) -> Result<Uuid, Problem> {
    s.caller.require("submit")?;
    let (mut csrf, mut kind, mut benefit, mut priority) = (None, None, None, None);
    while let Some(field) = form.next_field().await.map_err(bad_form)? {
        match field.name().unwrap_or("") {
            "csrf" => csrf = Some(small_field(field).await?),
            "kind" => kind = Some(small_field(field).await?),
            "benefit" => benefit = Some(small_field(field).await?),
            "priority" => priority = Some(small_field(field).await?),
            "file" => {
                // The token is checked before a byte of the file is stored.
                s.check(csrf.as_deref())?;
                let (kind, benefit) =
                    upload::upload_target(st, &s.caller, kind.as_deref(), benefit.as_deref())?;
                let priority = upload::upload_priority(st, &benefit, priority.as_deref())?;
                let name = field.file_name().map(str::to_string);
                let (_, Json(v)) = upload::run_upload(
                    st,
                    &s.caller,
                    (kind, &benefit, priority),
                    name.as_deref(),
                    field,
                )
                .await?;
                let batch = v["batch"]
                    .as_str()
                    .and_then(|b| Uuid::parse_str(b).ok())
                    .ok_or_else(Problem::internal)?;
                st.store.set_batch_key(batch, s.caller.0.id).await?;
                return Ok(batch);
            }
            _ => {}
        }
    }
    s.check(csrf.as_deref())?;
    Err(Problem::bad_request(
        "empty-upload",
        "choose a CSV file to upload",
    ))
}

/// `GET /console/batches/{id}`: progress, counts, actions and rejected rows.
pub async fn batch(State(st): State<ApiState>, s: Session, Path(id): Path<String>) -> Response {
    batch_page(&st, &s, &id, None).await
}

async fn batch_page(st: &ApiState, s: &Session, id: &str, notice: Option<String>) -> Response {
    match batch_body(st, s, id, notice).await {
        Ok(body) => page("Batch", Some(s), &body).into_response(),
        Err(p) => problem_page(p, Some(s)),
    }
}

async fn batch_body(
    st: &ApiState,
    s: &Session,
    id: &str,
    notice: Option<String>,
) -> Result<String, Problem> {
    s.caller.require("read")?;
    let b = batches::visible_batch(st, &s.caller, id).await?;
    let status = crate::report::status(&st.store, &b).await?;
    let p = progress_json(&status);
    let rejected = st.store.rejected_sample(b.id, REJECTED_SHOWN).await?;
    let minutes = st.store.minute_rates(b.id, views::CHART_MINUTES).await?;
    let share_card = views::share_card(&status, &minutes);
    let failures = views::failures(st, b.id).await?;
    let b = &status.batch;
    let notice = notice
        .map(|n| {
            format!(
                r#"<p id="notice" class="notice" role="status">{}</p>"#,
                esc(&n)
            )
        })
        .unwrap_or_default();
    let counts: String = crate::store::batches::StateCounts::STATES
        .iter()
        .map(|k| {
            format!(
                r#"<tr><th>{k}</th><td class="num" id="count-{k}">{}</td></tr>"#,
                status.counts.get(k)
            )
        })
        .collect();
    let rejected_table = if rejected.is_empty() {
        r#"<p id="no-rejected">No rows were rejected.</p>"#.to_string()
    } else {
        let rows: String = rejected
            .iter()
            .map(|r| {
                format!(
                    "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>\n",
                    r.row_number,
                    esc(&r.column),
                    esc(&r.reason)
                )
            })
            .collect();
        let shown = if b.rejected_rows > rejected.len() as i64 {
            format!(
                "<p class=\"hint\">The first {} of {}; the report lists them all.</p>",
                rejected.len(),
                b.rejected_rows
            )
        } else {
            String::new()
        };
        format!(
            r#"<table id="rejected"><thead><tr><th class="num">Row</th><th>Column</th><th>Reason</th></tr></thead>
<tbody>
{rows}</tbody></table>{shown}"#
        )
    };
    let csrf = esc(&s.csrf());
    Ok(format!(
        r#"<h1>Batch</h1>{notice}
<dl class="facts">
<dt>Kind</dt><dd>{kind}</dd><dt>Benefit</dt><dd>{benefit}</dd>
<dt>File</dt><dd>{file}</dd><dt>Uploaded</dt><dd>{created}</dd>
<dt>State</dt><dd id="state">{state}</dd>
<dt>Rows</dt><dd>{total} in the file: {accepted} accepted, {rejected} rejected, {dups} duplicates</dd>
</dl>
<section class="card">
<h2>Progress</h2>
<progress id="progress" max="{max}" value="{done}" data-src="/console/batches/{id}/progress"></progress>
<p id="progress-text">{text}</p>
<p>Rate <span id="rate">{rate}</span> · ETA <span id="eta">{eta}</span></p>
<table class="counts">{counts}</table>
</section>
{share_card}
<section class="actions">
<a id="report" class="button" href="/console/batches/{id}/report" download>Download the report (CSV, identifiers masked)</a>
<form method="post" action="/console/batches/{id}/retry-failed" class="inline">
<input type="hidden" name="csrf" value="{csrf}"><button id="retry" type="submit">Retry failed rows</button></form>
<form method="post" action="/console/batches/{id}/cancel" class="inline">
<input type="hidden" name="csrf" value="{csrf}"><button id="cancel" type="submit" class="danger">Cancel the batch</button></form>
</section>
<h2>Failed rows by code</h2>
{failures}
<h2>Rejected rows</h2>
{rejected_table}"#,
        id = b.id,
        kind = esc(&b.kind),
        benefit = esc(&b.benefit),
        file = esc(b.file_name.as_deref().unwrap_or("—")),
        created = b.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        state = esc(&b.state),
        total = b.total_rows,
        accepted = b.accepted_rows,
        rejected = b.rejected_rows,
        dups = b.duplicate_rows,
        max = p["total"].as_i64().unwrap_or(0).max(1),
        done = p["done"],
        text = esc(p["text"].as_str().unwrap_or("")),
        rate = esc(p["rate_text"].as_str().unwrap_or("")),
        eta = esc(p["eta_text"].as_str().unwrap_or("")),
    ))
}

/// What the progress bar shows; the page renders it once, `app.js` fetches it every 2 s.
fn progress_json(s: &BatchStatus) -> Value {
    let (total, done) = (s.counts.total(), s.counts.done());
    let percent = if total > 0 { done * 100 / total } else { 0 };
    let eta = s.eta_secs();
    json!({
        "state": s.batch.state,
        "total": total,
        "done": done,
        "open": s.counts.open(),
        "percent": percent,
        "counts": s.counts.0,
        "rate_per_second": s.rate,
        "eta_seconds": eta,
        "share": s.share().map(|x| x.0),
        "share_text": match s.share() {
            Some((share, _)) => crate::report::percent(share),
            None if s.planned.is_some() => "unknown".to_string(),
            None => "none".to_string(),
        },
        "eta_basis": s.eta_basis().map(|b| b.as_str()),
        "text": format!("{done} of {total} rows done ({percent}%)"),
        "rate_text": format!("{:.1} rows/s", s.rate),
        "eta_text": match eta {
            Some(e) if e >= 60.0 => format!("{} min {} s", (e / 60.0) as u64, (e % 60.0) as u64),
            Some(e) => format!("{} s", e.ceil() as u64),
            None if s.counts.open() == 0 => "done".to_string(),
            None => "—".to_string(),
        },
    })
}

/// `GET /console/batches/{id}/progress`: the progress bar's JSON.
pub async fn progress(
    State(st): State<ApiState>,
    s: Session,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    s.caller.require("read")?;
    let b = batches::visible_batch(&st, &s.caller, &id).await?;
    let status = crate::report::status(&st.store, &b).await?;
    Ok(Json(progress_json(&status)))
}

/// `GET /console/batches/{id}/report`: the API's masked report (reveal stays API-only, where
/// it needs a reason and is audited).
pub async fn report(State(st): State<ApiState>, s: Session, Path(id): Path<String>) -> Response {
    let caller = s.caller.clone();
    match batches::report(State(st), caller, Path(id), Params(ReportQuery::default())).await {
        Ok(r) => r,
        Err(p) => problem_page(p, Some(&s)),
    }
}

/// `POST /console/batches/{id}/retry-failed`: the API's retry of failed and dead rows.
pub async fn retry(
    State(st): State<ApiState>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Err(p) = s.check(f.csrf.as_deref()) {
        return problem_page(p, Some(&s));
    }
    let answer = batches::retry_failed(
        State(st.clone()),
        s.caller.clone(),
        Path(id.clone()),
        Params(RetryQuery::default()),
    )
    .await;
    match answer {
        Ok(Json(v)) => {
            let n = v["requeued"].as_u64().unwrap_or(0);
            batch_page(&st, &s, &id, Some(format!("{n} failed rows queued again."))).await
        }
        Err(p) => problem_page(p, Some(&s)),
    }
}

/// `POST /console/batches/{id}/cancel`: the API's cancel (a finished batch is refused, 409).
pub async fn cancel(
    State(st): State<ApiState>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Err(p) = s.check(f.csrf.as_deref()) {
        return problem_page(p, Some(&s));
    }
    match batches::cancel(State(st.clone()), s.caller.clone(), Path(id.clone())).await {
        Ok(Json(v)) => {
            let n = v["cancelled"].as_u64().unwrap_or(0);
            batch_page(
                &st,
                &s,
                &id,
                Some(format!("Cancelled: {n} rows will not run.")),
            )
            .await
        }
        Err(p) => problem_page(p, Some(&s)),
    }
}
