//! The batch endpoints: list, show, report, retry-failed, cancel (upload: [`super::upload`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::problem::{Params, Problem};
use crate::report::Reveal;
use crate::store::batches::BatchInfo;

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
    let reveal_reason = if q.reveal {
        caller.require("reveal")?;
        if reason.trim().is_empty() {
            return Err(
                Problem::bad_request("bad-parameter", "reveal needs a reason").field("reason"),
            );
        }
        Some(reason)
    } else {
        None
    };
    // Streamed as it is written: no temporary file, so a revealed report never lies in clear
    // on disk. Chunks go through a small bounded channel (a slow client slows the writer).
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        tracing::error!("the report stream needs the multi-thread runtime");
        return Err(Problem::internal());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let store = st.store.clone();
    let batch = b.id;
    tokio::spawn(async move {
        let reveal = reveal_reason.as_deref().map(|reason| Reveal {
            os_user: "abha-bulk-api",
            operator: Some(&operator),
            reason,
        });
        let sink = Box::new(ChannelWriter(tx.clone()));
        if let Err(e) = crate::report::write_report_to(&store, batch, sink, reveal).await {
            tracing::warn!(error = %e, "report stream ended early");
            // The client sees a cut body, never a short report that looks whole.
            let _ = tx.send(Err(std::io::Error::other("report failed"))).await;
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"report-{}.csv\"", b.id),
            ),
            // Masked or revealed, a report is about people: no cache keeps a copy.
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response())
}

/// A blocking `Write` into the response's channel (the report writer is synchronous): each
/// write waits, outside the async scheduler, until the channel has room.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let chunk = bytes::Bytes::copy_from_slice(buf);
        let tx = &self.0;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(tx.send(Ok(chunk)))
        })
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
