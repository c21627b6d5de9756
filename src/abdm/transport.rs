//! Sending one logical call to ABDM: the standard headers, the gate, the send, the parsing of
//! the answer, and the few retries that are the client's own business (a refused session
//! token, a refused TIMESTAMP, refused ciphertext). Every other retry is the worker's: it
//! knows the job's lease and budget, this layer does not.

use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::abdm::client::AbdmClient;
use crate::abdm::crypto::{CryptoError, Encryptor};
use crate::abdm::error::{AbdmError, CLOCK_SKEW_CODE, ClientError, Disposition};
use crate::abdm::trace::{CallTrace, Operation};
use crate::config::ExposeSecret;
use crate::pii::XToken;

/// A fresh `REQUEST-ID`. The `TIMESTAMP` is not here: it is stamped by [`stamp`] right
/// before the send, after the gate's wait.
pub(crate) fn standard_headers() -> (Uuid, HeaderMap) {
    let id = Uuid::new_v4();
    let mut h = HeaderMap::new();
    h.insert(
        "REQUEST-ID",
        HeaderValue::from_str(&id.to_string()).expect("uuid is a valid header"),
    );
    (id, h)
}

/// Adds the `TIMESTAMP` header (UTC now, shifted by `offset`: zero outside tests of a skewed
/// clock, `abdm.clock_offset_secs`). Called after the gate: a request stamped before a wait
/// for a rate token or a `Retry-After` pause (up to minutes) reached ABDM with a stale stamp
/// and was refused with ABDM-1016.
pub(crate) fn stamp(
    builder: reqwest::RequestBuilder,
    offset: chrono::TimeDelta,
) -> reqwest::RequestBuilder {
    builder.header("TIMESTAMP", timestamp_at(Utc::now() + offset))
}

/// `2024-09-19T10:15:30.123Z`.
pub(crate) fn timestamp_at(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// How a request body is made; encrypted bodies are rebuilt if the key is fetched again.
pub(super) enum Body<'a> {
    Empty,
    Plain(Value),
    Encrypted(&'a (dyn Fn(&Encryptor) -> Result<Value, CryptoError> + Sync)),
}

/// One logical call, as the operations describe it; [`AbdmClient::execute`] turns it into as
/// many HTTP requests as its retries need.
pub(super) struct Request<'a> {
    pub(super) op: Operation,
    pub(super) method: Method,
    /// Below `base_url`.
    pub(super) path: String,
    /// The benefit header's value (none for the certificate and benefit lookup).
    pub(super) benefit: Option<&'a str>,
    pub(super) x_token: Option<&'a XToken>,
    pub(super) body: Body<'a>,
}

impl AbdmClient {
    /// Sends one logical call: attempts are recorded in `trace`. A rejected session token is
    /// refreshed and the call retried once; a rejected TIMESTAMP is retried once with a fresh
    /// one; rejected ciphertext makes the key be fetched again (at most once per
    /// `key_refresh_min_interval_secs`) and the call retried once.
    pub(super) async fn execute<T: DeserializeOwned>(
        &self,
        trace: &mut CallTrace,
        req: Request<'_>,
    ) -> Result<T, ClientError> {
        let (mut auth_retried, mut clock_retried, mut key_retried) = (false, false, false);
        loop {
            let token = self.session.token(trace).await?;
            let (encryptor, body) = match &req.body {
                Body::Empty => (None, None),
                Body::Plain(v) => (None, Some(v.clone())),
                Body::Encrypted(build) => {
                    let enc = self.encryptor(trace).await?;
                    let body = build(&enc)?;
                    (Some(enc), Some(body))
                }
            };
            let url = format!("{}{}", self.base_url, req.path);
            let (request_id, mut headers) = standard_headers();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                bearer(token.expose_secret()).map_err(|_| ClientError::Decode {
                    status: 0,
                    reason: "session token is not a valid header value".into(),
                })?,
            );
            if let Some(benefit) = req.benefit {
                headers.insert(
                    self.benefit_header.clone(),
                    HeaderValue::from_str(benefit).map_err(|_| ClientError::Decode {
                        status: 0,
                        reason: "benefit name is not a valid header value".into(),
                    })?,
                );
            }
            if let Some(x) = req.x_token {
                headers.insert(
                    "X-token",
                    bearer(x.expose()).map_err(|_| ClientError::Decode {
                        status: 0,
                        reason: "X-token is not a valid header value".into(),
                    })?,
                );
            }
            let mut builder = self.http.request(req.method.clone(), &url).headers(headers);
            if let Some(b) = &body {
                builder = builder.json(b);
            }
            trace.pass(req.op).await?;
            let builder = stamp(builder, self.clock_offset);
            let started = Instant::now();
            let result = self.send(builder).await;
            let err = match result {
                Ok((status, bytes)) => match serde_json::from_slice::<T>(&bytes) {
                    Ok(v) => {
                        trace.record(req.op, request_id, Some(status), &Ok(()), started);
                        return Ok(v);
                    }
                    Err(e) => {
                        let err = ClientError::Decode {
                            status,
                            reason: crate::pii::scrub_digits(&e.to_string()),
                        };
                        trace.record(req.op, request_id, Some(status), &Err(&err), started);
                        return Err(err);
                    }
                },
                Err(err) => err,
            };
            let status = err.abdm().map(|e| e.status);
            trace.record(req.op, request_id, status, &Err(&err), started);
            if err.is_clock_skew() {
                crate::telemetry::metrics::CLOCK_REJECTED.inc();
            }
            match &err {
                ClientError::Abdm(e) if e.disposition() == Disposition::Auth && !auth_retried => {
                    auth_retried = true;
                    crate::telemetry::metrics::session_refresh_after_401();
                    self.session.invalidate(&token, trace).await?;
                }
                ClientError::Abdm(e)
                    if e.code.as_deref() == Some(CLOCK_SKEW_CODE) && !clock_retried =>
                {
                    clock_retried = true;
                    tracing::warn!("ABDM rejected our TIMESTAMP (ABDM-1016); retrying once");
                }
                ClientError::Abdm(e)
                    if e.is_bad_ciphertext()
                        && !key_retried
                        && encryptor.is_some()
                        && self.keys.may_be_refetched().await =>
                {
                    key_retried = true;
                    self.fetch_key(encryptor.as_ref(), trace).await?;
                }
                _ => return Err(err),
            }
        }
    }

    /// Sends and reads the answer. `Ok` for 2xx (status, body); ABDM errors parsed.
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), ClientError> {
        let response = builder.send().await.map_err(ClientError::from_reqwest)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(ClientError::from_reqwest)?;
        if (200..300).contains(&status) {
            Ok((status, bytes))
        } else {
            Err(ClientError::Abdm(AbdmError::parse(
                status,
                &bytes,
                retry_after,
            )))
        }
    }
}

fn bearer(token: &str) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `Retry-After` in seconds (HTTP dates are not used by ABDM).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// ABDM answers some lists as an array and, in some versions, as a single object.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    pub(super) fn into_vec(self) -> Vec<T> {
        match self {
            Self::Many(v) => v,
            Self::One(t) => vec![t],
        }
    }
}
