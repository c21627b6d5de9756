//! `POST /v1/batches` and the console's upload: upload slots, the spool and its free-space
//! floor, file names, `Idempotency-Key`, then the CLI's atomic submit.
//!
//! What is refused, and why (docs/api.md#uploads): more than `api.max_uploads_per_key`
//! uploads of one key at once (429) or `api.max_concurrent_uploads` in all (503), both with
//! `Retry-After`; a body over `api.max_upload_mib` (413), idle longer than the read timeout
//! (408), cut short or empty (400); a spool whose file system would drop below
//! `api.spool_min_free_mib` (507). A client's file name is only a label: it is cut to its base
//! name, stripped of control characters and cut to 200 bytes, and the spool file is named by
//! the server.
//!
//! `Idempotency-Key` follows draft-ietf-httpapi-idempotency-key-header: 1 to 255 characters
//! (else 400); the first request's fingerprint (kind, benefit, file name and the SHA-256 of
//! the body) is kept, a reuse with another fingerprint is 422, a reuse while the first still
//! runs is 409, and a repeat gets the first answer. A record whose upload never answered (its
//! `serve` died) expires after `api.idempotency_running_secs`, answers after
//! `api.idempotency_keep_hours`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::scheduler::Priority;
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::guard::{NoSlot, UploadSlot};
use super::problem::{Params, Problem};
use crate::jobs::benefit::BenefitName;
use crate::jobs::kind::JobKind;
use crate::store::api_keys::Idempotency;
use crate::submit::{SubmitError, SubmitRequest, submit_until};

/// Longest `Idempotency-Key`, characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest recorded file name, bytes.
const MAX_FILE_NAME: usize = 200;
/// How often (bytes) the spool's free space is checked while a body arrives.
const FLOOR_CHECK_EVERY: u64 = 8 << 20;

/// `POST /v1/batches` parameters.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    kind: Option<String>,
    benefit: Option<String>,
    /// Name to record for the file (its base name is kept).
    file_name: Option<String>,
    /// The batch's priority within its programme's share of the rate.
    priority: Option<String>,
}

/// A spooled upload, removed when dropped.
pub(crate) struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The name recorded for an uploaded file: the base name of what the client sent, without
/// control characters (NUL among them) or path separators, at most 200 bytes, not hidden;
/// `upload.csv` when nothing usable is left.
pub fn sanitise_file_name(name: Option<&str>) -> String {
    let base = name.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    let mut end = clean.len().min(MAX_FILE_NAME);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    let cut = clean[..end].trim();
    if cut.is_empty() || cut.starts_with('.') {
        "upload.csv".into()
    } else {
        cut.into()
    }
}

fn too_little_space() -> Problem {
    Problem::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "no-space",
        "Insufficient storage",
        "the server's upload spool is low on free space; nothing was stored: retry later",
    )
    .retry_after(Duration::from_secs(60))
}

fn floor_ok(st: &ApiState) -> Result<(), Problem> {
    if st.guards.spool_min_free == 0 {
        return Ok(());
    }
    match super::guard::free_bytes(&st.spool) {
        Ok(free) if free >= st.guards.spool_min_free => Ok(()),
        Ok(free) => {
            tracing::warn!(
                free_mib = free >> 20,
                "upload refused: the spool is below api.spool_min_free_mib"
            );
            Err(too_little_space())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the spool's free space");
            Err(Problem::internal())
        }
    }
}

/// An upload slot for `key`, or 429 (this key) / 503 (the server) with `Retry-After`.
pub(crate) fn slot(st: &ApiState, key: Uuid) -> Result<UploadSlot, Problem> {
    st.guards.uploads.take(key).map_err(|no| match no {
        NoSlot::Key(n) => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-uploads",
            "Too many requests",
            format!("this API key already has {n} uploads running (api.max_uploads_per_key)"),
        )
        .retry_after(Duration::from_secs(5)),
        NoSlot::Overall(n) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "Service unavailable",
            format!("the server already has {n} uploads running (api.max_concurrent_uploads)"),
        )
        .retry_after(Duration::from_secs(5)),
    })
}

/// Streams the body into a private file; returns it and the body's SHA-256. Refuses bodies
/// over the limit (413), idle longer than the read timeout (408), cut short (400), empty
/// (400), or that would take the spool below its floor (507).
async fn spool_body<S, E>(
    st: &ApiState,
    stream: S,
    file_name: &str,
) -> Result<(Spool, [u8; 32]), Problem>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    floor_ok(st)?;
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
    let mut hash = Sha256::new();
    let mut stream = std::pin::pin!(stream);
    let (mut size, mut next_check) = (0u64, FLOOR_CHECK_EVERY);
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
                if size >= next_check {
                    next_check = size + FLOOR_CHECK_EVERY;
                    floor_ok(st)?;
                }
                hash.update(&chunk);
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
    Ok((spool, hash.finalize().into()))
}

/// The request's `Idempotency-Key`: absent, or 1 to 255 characters of text (else 400).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |why: &str| Problem::bad_request("bad-header", why).field("Idempotency-Key");
    let k = v
        .to_str()
        .map_err(|_| bad("Idempotency-Key must be visible ASCII text"))?;
    // The draft sends it as a quoted string; both forms name the same key.
    let k = k.trim().trim_matches('"');
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("Idempotency-Key must be 1 to 255 characters"));
    }
    Ok(Some(k.to_string()))
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
    let idem = idempotency_key(&headers)?;
    let priority = upload_priority(&st, &benefit, q.priority.as_deref())?;
    let name = sanitise_file_name(q.file_name.as_deref());
    let _slot = slot(&st, caller.0.id)?;
    let (spool, body_sha) = spool_body(&st, body.into_data_stream(), &name).await?;
    if let Some(k) = &idem {
        let mut fp = Sha256::new();
        for part in [
            kind.as_str(),
            benefit.as_str(),
            name.as_str(),
            priority.as_str(),
        ] {
            fp.update(part.as_bytes());
            fp.update([0]);
        }
        fp.update(body_sha);
        let g = &st.guards;
        let found = st
            .store
            .idempotency_begin(
                caller.0.id,
                k,
                &fp.finalize(),
                g.idempotency_running,
                g.idempotency_keep,
            )
            .await?;
        match found {
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
                )
                .retry_after(Duration::from_secs(5)));
            }
            Idempotency::Mismatch => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "Unprocessable content",
                    "this Idempotency-Key was used for another request (another file or parameters)",
                )
                .field("Idempotency-Key"));
            }
        }
    }
    let answer = submit_spooled(&st, kind, &benefit, priority, spool).await;
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

/// The console's upload: a slot for `caller`, the spool, the atomic submit; the answer is the
/// upload's JSON document, which the console renders as a page.
pub(crate) async fn run_upload<S, E>(
    st: &ApiState,
    caller: &Caller,
    (kind, benefit, priority): (JobKind, &BenefitName, Priority),
    file_name: Option<&str>,
    body: S,
) -> Result<(StatusCode, Json<Value>), Problem>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    let _slot = slot(st, caller.0.id)?;
    let name = sanitise_file_name(file_name);
    let (spool, _) = spool_body(st, body, &name).await?;
    submit_spooled(st, kind, benefit, priority, spool).await
}

/// The priority of an upload: the one given (400 naming the field when it is not one), else
/// the programme's default (`benefits.priorities`), else normal.
pub(crate) fn upload_priority(
    st: &ApiState,
    benefit: &BenefitName,
    given: Option<&str>,
) -> Result<Priority, Problem> {
    match given.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Priority::parse(p).ok_or_else(|| {
            Problem::bad_request(
                "bad-parameter",
                "priority must be one of low, normal, high, urgent",
            )
            .field("priority")
        }),
        None => Ok(st
            .priorities
            .get(benefit.as_str())
            .copied()
            .unwrap_or_default()),
    }
}

/// Submits a spooled file atomically (the CLI's `submit_until`).
async fn submit_spooled(
    st: &ApiState,
    kind: JobKind,
    benefit: &BenefitName,
    priority: Priority,
    spool: Spool,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let req = SubmitRequest {
        path: spool.0.clone(),
        kind,
        benefit: benefit.as_str().to_string(),
        force: false,
        priority,
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
    drop(spool);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_labels_without_paths_controls_or_excess() {
        assert_eq!(sanitise_file_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(sanitise_file_name(Some("C:\\x\\roster.csv")), "roster.csv");
        assert_eq!(sanitise_file_name(Some("a\0b\r\n\u{1b}c.csv")), "abc.csv");
        assert_eq!(sanitise_file_name(Some(".hidden")), "upload.csv");
        assert_eq!(sanitise_file_name(Some("\0\0")), "upload.csv");
        assert_eq!(sanitise_file_name(None), "upload.csv");
        let long = "é".repeat(300);
        let cut = sanitise_file_name(Some(&long));
        assert!(cut.len() <= 200 && cut.chars().all(|c| c == 'é'));
    }
}
