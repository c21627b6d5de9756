//! The batch endpoints: upload, list, show, report, retry-failed, cancel.

use std::io::Write;
use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::problem::{Params, Problem};
use crate::jobs::benefit::BenefitName;
use crate::jobs::kind::JobKind;
use crate::report::{ReportTarget, Reveal};
use crate::store::api_keys::Idempotency;
use crate::store::batches::BatchInfo;
use crate::submit::{SubmitError, SubmitRequest, submit_until};

/// `POST /v1/batches` parameters.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    kind: Option<String>,
    benefit: Option<String>,
    /// Name to record for the file (its base name is kept).
    file_name: Option<String>,
}

/// A spooled upload, removed when dropped.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn batch_json(b: &BatchInfo) -> Value {
    json!({
        "id": b.id, "kind": b.kind, "benefit": b.benefit, "state": b.state,
        "file_name": b.file_name, "total_rows": b.total_rows, "accepted_rows": b.accepted_rows,
        "rejected_rows": b.rejected_rows, "duplicate_rows": b.duplicate_rows,
        "created_at": b.created_at, "finished_at": b.finished_at,
    })
}

/// A batch id from the path: 400 when malformed, 404 when missing or of another programme.
/// Shared with the console, so both answer another programme's batch the same way.
pub(crate) async fn visible_batch(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<BatchInfo, Problem> {
    let id = Uuid::parse_str(id).map_err(|_| {
        Problem::bad_request("bad-id", "a batch id is a UUID such as 3f2a9c1e-…").field("id")
    })?;
    match st.store.batch(id).await? {
        Some(b) if caller.0.sees(&b.benefit) => Ok(b),
        _ => Err(Problem::not_found()),
    }
}

/// Streams the body (a raw request body, or a console form's file part) into a private file;
/// refuses bodies over the limit (413), idle longer than the read timeout (408), cut short
/// (400) or empty (400).
async fn spool_body<S, E>(st: &ApiState, stream: S, file_name: &str) -> Result<Spool, Problem>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    let dir = st
        .spool
        .join(format!("abha-upload-{}", Uuid::new_v4().simple()));
    let path = dir.join(file_name);
    let spool = Spool(path.clone());
    let io = |e: std::io::Error| {
        tracing::error!(error = %e, "cannot spool an upload");
        Problem::internal()
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = std::io::BufWriter::new(opts.open(&path).map_err(io)?);
    let mut stream = std::pin::pin!(stream);
    let mut size = 0u64;
    loop {
        let next = tokio::time::timeout(st.read_timeout, stream.next())
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "slow-upload",
                    "Request timeout",
                    format!(
                        "the upload body stalled for {} s; nothing was stored",
                        st.read_timeout.as_secs()
                    ),
                )
            })?;
        match next {
            None => break,
            Some(Err(_)) => {
                return Err(Problem::bad_request(
                    "incomplete-upload",
                    "the upload stopped before its end; nothing was stored",
                ));
            }
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                if size > st.max_upload {
                    return Err(Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        "Payload too large",
                        format!(
                            "uploads are limited to {} bytes (api.max_upload_mib)",
                            st.max_upload
                        ),
                    ));
                }
                file.write_all(&chunk).map_err(io)?;
            }
        }
    }
    file.flush().map_err(io)?;
    if size == 0 {
        return Err(Problem::bad_request(
            "empty-upload",
            "the body is empty: send the CSV file",
        ));
    }
    Ok(spool)
}

/// `POST /v1/batches?kind=…&benefit=…` with the CSV as the body (`Content-Type: text/csv`).
pub async fn upload(
    State(st): State<ApiState>,
    caller: Caller,
    Params(q): Params<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require("submit")?;
    let (kind, benefit) = upload_target(&st, &caller, q.kind.as_deref(), q.benefit.as_deref())?;
    let csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv") || v.starts_with("application/csv"));
    if !csv {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
            "Unsupported media type",
            "send the CSV file with Content-Type: text/csv",
        ));
    }
    let idem = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| {
            Problem::bad_request("bad-header", "Idempotency-Key must be text")
                .field("Idempotency-Key")
        })?
        .filter(|k| !k.is_empty() && k.len() <= 200);
    if let Some(k) = &idem {
        match st.store.idempotency_begin(caller.0.id, k).await? {
            Idempotency::Fresh => {}
            Idempotency::Answered(status, body) => {
                return Ok((
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    Json(body),
                ));
            }
            Idempotency::Running => {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "in-progress",
                    "Conflict",
                    "an upload with this Idempotency-Key is still running",
                ));
            }
        }
    }
    let answer = run_upload(
        &st,
        kind,
        &benefit,
        q.file_name.as_deref(),
        body.into_data_stream(),
    )
    .await;
    if let Ok((_, Json(v))) = &answer
        && let Some(batch) = v["batch"].as_str().and_then(|b| Uuid::parse_str(b).ok())
    {
        st.store.set_batch_key(batch, caller.0.id).await?;
    }
    if let Some(k) = &idem {
        match &answer {
            Ok((status, Json(body))) => {
                st.store
                    .idempotency_done(caller.0.id, k, status.as_u16(), body)
                    .await?
            }
            Err(_) => st.store.idempotency_forget(caller.0.id, k).await?,
        }
    }
    answer
}

/// Checks an upload's kind and benefit for `caller` (the API's query parameters or the
/// console's form fields): 400 for a bad one, 403 for another programme's benefit.
pub(crate) fn upload_target(
    st: &ApiState,
    caller: &Caller,
    kind: Option<&str>,
    benefit: Option<&str>,
) -> Result<(JobKind, BenefitName), Problem> {
    let kind = kind.and_then(JobKind::parse).ok_or_else(|| {
        Problem::bad_request(
            "bad-parameter",
            format!(
                "kind must be one of {}",
                JobKind::ALL.map(|k| k.as_str()).join(", ")
            ),
        )
        .field("kind")
    })?;
    let benefit = BenefitName::parse_served(benefit.unwrap_or(""), &st.served)
        .map_err(|e| Problem::bad_request("bad-parameter", e.to_string()).field("benefit"))?;
    if !caller.0.sees(benefit.as_str()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "this API key may not submit for that benefit",
        )
        .field("benefit"));
    }
    Ok((kind, benefit))
}

/// Spools `body` and submits it atomically (the CLI's `submit_until`); the answer is the
/// upload's JSON document, which the console renders as a page.
pub(crate) async fn run_upload<S, E>(
    st: &ApiState,
    kind: JobKind,
    benefit: &BenefitName,
    file_name: Option<&str>,
    body: S,
) -> Result<(StatusCode, Json<Value>), Problem>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    let name = file_name
        .and_then(|n| std::path::Path::new(n).file_name())
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .unwrap_or("upload.csv")
        .to_string();
    let spool = spool_body(st, body, &name).await?;
    let req = SubmitRequest {
        path: spool.0.clone(),
        kind,
        benefit: benefit.as_str().to_string(),
        force: false,
        priority: Default::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let summary = match submit_until(&st.store, &req, std::sync::Arc::new(()), &stop).await {
        Ok(s) => s,
        Err(SubmitError::AlreadySubmitted { batch, .. }) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already-submitted",
                "Conflict",
                format!(
                    "this file was already submitted for this kind and benefit as batch {batch}"
                ),
            ));
        }
        Err(SubmitError::BeingSubmitted { batch, .. }) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already-submitted",
                "Conflict",
                format!("this file is being submitted right now as batch {batch}"),
            ));
        }
        Err(SubmitError::Ingest { source, .. }) => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-file",
                "Unprocessable file",
                source.to_string(),
            ));
        }
        Err(SubmitError::Store(e)) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "upload failed");
            return Err(Problem::internal());
        }
    };
    let rejected = st.store.rejected_sample(summary.batch, 100).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "batch": summary.batch, "kind": kind.as_str(), "benefit": benefit.as_str(),
            "total_rows": summary.total, "accepted_rows": summary.accepted,
            "rejected_rows": summary.rejected, "duplicate_rows": summary.duplicates,
            "warnings": summary.warnings,
            "rejected": rejected.iter().map(|r| json!({
                "row": r.row_number, "column": r.column, "reason": r.reason,
            })).collect::<Vec<_>>(),
        })),
    ))
}

/// `GET /v1/batches` parameters.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    #[serde(default)]
    page: u32,
    per_page: Option<u32>,
}

/// `GET /v1/batches?state=active&page=0&per_page=50`: the key's programmes' batches.
pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require("read")?;
    const STATES: [&str; 5] = ["submitting", "active", "finished", "cancelled", "aborted"];
    if let Some(s) = &q.state
        && !STATES.contains(&s.as_str())
    {
        return Err(Problem::bad_request(
            "bad-parameter",
            format!("state must be one of {}", STATES.join(", ")),
        )
        .field("state"));
    }
    let per_page = q.per_page.unwrap_or(50);
    if !(1..=500).contains(&per_page) || q.page > 1_000_000 {
        return Err(Problem::bad_request(
            "bad-parameter",
            "per_page must be 1 to 500 and page at most 1000000",
        ));
    }
    let batches = st
        .store
        .batches_of(&caller.0.benefits, q.state.as_deref(), per_page, q.page)
        .await?;
    let plan = if batches.iter().any(|b| b.state == "active") {
        let known = std::collections::HashMap::new();
        crate::report::Plan::load(&st.store, &known, |p| caller.0.sees(p)).await?
    } else {
        crate::report::Plan::default()
    };
    Ok(Json(json!({
        "page": q.page, "per_page": per_page,
        "batches": batches.iter().map(|b| {
            let mut v = batch_json(b);
            if let Some(p) = plan.batches.get(&b.id) {
                planned_fields(&mut v, p, &plan);
            }
            v
        }).collect::<Vec<_>>(),
    })))
}

/// An active batch's place in its programme's queue, its share and ETA (the list's extra
/// fields; `GET /v1/batches/{id}` has them from `BatchStatus::to_json`).
fn planned_fields(v: &mut Value, p: &crate::report::Planned, plan: &crate::report::Plan) {
    v["priority"] = json!(p.priority);
    v["share"] = json!(p.share);
    v["rate"] = json!(p.rate);
    v["eta_seconds"] = json!(p.eta_secs);
    v["eta_basis"] = json!(p.basis.map(|b| b.as_str()));
    v["position"] = json!(p.programme_position);
    v["active_in_programme"] = json!(plan.programme_size(&p.programme));
}

/// `GET /v1/batches/{id}`: counts by state, rate, share of the fleet's rate, ETA, position.
pub async fn show(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require("read")?;
    let b = visible_batch(&st, &caller, &id).await?;
    let s = crate::report::status(&st.store, &b).await?;
    let mut v = s.to_json();
    v["webhook"] = json!(st.store.webhook_status(b.id).await?);
    Ok(Json(v))
}

/// `GET /v1/batches/{id}/report` parameters (reveal needs the `reveal` scope and a reason).
#[derive(Debug, Default, Deserialize)]
pub struct ReportQuery {
    #[serde(default)]
    reveal: bool,
    reason: Option<String>,
}

/// `GET /v1/batches/{id}/report`: the per-row CSV, masked (docs/report-format.md).
pub async fn report(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(q): Params<ReportQuery>,
) -> Result<Response, Problem> {
    caller.require("read")?;
    let b = visible_batch(&st, &caller, &id).await?;
    let operator = format!("api-key:{}", caller.0.id);
    let reason = q.reason.unwrap_or_default();
    let reveal = if q.reveal {
        caller.require("reveal")?;
        if reason.trim().is_empty() {
            return Err(
                Problem::bad_request("bad-parameter", "reveal needs a reason").field("reason"),
            );
        }
        Some(Reveal {
            os_user: "abha-bulk-api",
            operator: Some(&operator),
            reason: &reason,
        })
    } else {
        None
    };
    let dir = st
        .spool
        .join(format!("abha-report-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|_| Problem::internal())?;
    let spool = Spool(dir.join("report.csv"));
    let target = ReportTarget::File {
        path: spool.0.clone(),
        force: false,
    };
    crate::report::write_report(&st.store, b.id, &target, reveal)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "report failed");
            Problem::internal()
        })?;
    // Opened, then unlinked: the stream reads the open file, nothing stays on disk.
    let file = tokio::fs::File::open(&spool.0)
        .await
        .map_err(|_| Problem::internal())?;
    drop(spool);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"report-{}.csv\"", b.id),
            ),
        ],
        body,
    )
        .into_response())
}

/// `POST /v1/batches/{id}/retry-failed?code=…` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct RetryQuery {
    code: Option<String>,
}

/// `POST /v1/batches/{id}/retry-failed`: re-queues the failed and dead rows.
pub async fn retry_failed(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(q): Params<RetryQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require("submit")?;
    let b = visible_batch(&st, &caller, &id).await?;
    let n = st.store.retry_failed(b.id, q.code.as_deref()).await?;
    Ok(Json(json!({"batch": b.id, "requeued": n})))
}

/// `POST /v1/batches/{id}/cancel`: rows not yet run will not run.
pub async fn cancel(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require("submit")?;
    let b = visible_batch(&st, &caller, &id).await?;
    if matches!(b.state.as_str(), "finished" | "cancelled" | "aborted") {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-cancellable",
            "Conflict",
            format!("batch {} is {}: nothing left to cancel", b.id, b.state),
        ));
    }
    let n = st.store.cancel_batch(b.id).await?;
    Ok(Json(json!({"batch": b.id, "cancelled": n})))
}
