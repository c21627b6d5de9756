//! The job envelope, version 1 (documented in `docs/envelope.md`).
//!
//! - Stored jobs (published by the relay): `{"v":1,"kind":"benefit-link","job_id":123}`: no
//!   identifier ever sits in RabbitMQ for an uploaded row.
//! - External producers: `{"v":1,"kind","idempotency_key","benefit","external_ref",
//!   "payload":{...fields of the kind...}}`; the worker validates and records it on first sight.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jobs::kind::JobKind;

/// A decoded envelope.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// A job already in Postgres.
    Stored {
        /// Kind.
        kind: JobKind,
        /// Job id.
        job_id: i64,
    },
    /// A job from an external producer (fields not yet validated).
    External {
        /// Kind.
        kind: JobKind,
        /// Producer's key: the same key is the same job.
        idempotency_key: String,
        /// Benefit name.
        benefit: String,
        /// Producer's reference.
        external_ref: Option<String>,
        /// Payload fields (raw; never log them).
        payload: BTreeMap<String, String>,
    },
}

#[derive(Serialize)]
struct StoredWire<'a> {
    v: u8,
    kind: &'a str,
    job_id: i64,
}

/// Why an envelope was not decoded. Never contains payload values, nor the raw text of a
/// field this release does not know (a producer may put anything there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an envelope of any release (not JSON, a field missing or of the wrong type): the
    /// reason goes into the dead-letter header.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed envelope that a newer release wrote: a kind or an envelope version this
    /// release does not know. During a rolling deploy old and new workers share the queues,
    /// so this is handed back for a worker that knows it, not dead-lettered (see
    /// `worker/job.rs`).
    #[error("{what}")]
    Unknown {
        /// `unknown kind` or `envelope version N`: safe to log.
        what: String,
        /// A stored-job envelope (it carries a `job_id`): its job waits in Postgres, which
        /// publishes it again if it stays queued.
        stored: bool,
    },
}

impl EnvelopeError {
    fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed(reason.into())
    }
}

/// The envelope version this release writes and reads.
pub const VERSION: u64 = 1;

/// True when `kind` could be a job kind of a newer release: a short lowercase name of
/// letters, digits and hyphens (what `JobKind::as_str` gives). Anything else is malformed.
fn looks_like_a_kind(kind: &str) -> bool {
    (1..=40).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Envelope {
    /// The bytes the relay publishes for a stored job.
    pub fn stored_bytes(kind: JobKind, job_id: i64) -> Vec<u8> {
        serde_json::to_vec(&StoredWire {
            v: 1,
            kind: kind.as_str(),
            job_id,
        })
        .expect("envelope serialises")
    }

    /// Decodes and checks the envelope (not the payload's fields: the job validation does).
    /// A well-formed envelope of a newer version (an integer `v` above [`VERSION`]) or of a
    /// kind this release does not know is [`EnvelopeError::Unknown`]; everything else that
    /// fails is [`EnvelopeError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Wire {
            v: Option<Value>,
            kind: Option<String>,
            job_id: Option<i64>,
            idempotency_key: Option<String>,
            benefit: Option<String>,
            external_ref: Option<String>,
            payload: Option<Value>,
        }
        let w: Wire = serde_json::from_slice(bytes).map_err(|e| {
            EnvelopeError::malformed(format!(
                "not a JSON envelope object (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let kind_s = w
            .kind
            .ok_or_else(|| EnvelopeError::malformed("missing \"kind\""))?;
        match w.v.as_ref().and_then(Value::as_u64) {
            Some(VERSION) => {}
            // A newer release's envelope: its other fields may differ, so only the kind is
            // checked for shape.
            Some(newer) if newer > VERSION && looks_like_a_kind(&kind_s) => {
                return Err(EnvelopeError::Unknown {
                    what: format!("envelope version {newer}"),
                    stored: w.job_id.is_some(),
                });
            }
            Some(other) => {
                return Err(EnvelopeError::malformed(format!(
                    "unsupported envelope version {other} (expected {VERSION})"
                )));
            }
            None => return Err(EnvelopeError::malformed("missing \"v\": 1")),
        }
        let kind = match JobKind::parse(&kind_s) {
            Some(kind) => kind,
            None if looks_like_a_kind(&kind_s) => {
                return Err(EnvelopeError::Unknown {
                    what: "unknown kind".into(),
                    stored: w.job_id.is_some(),
                });
            }
            None => {
                return Err(EnvelopeError::malformed(format!(
                    "invalid kind (expected one of {})",
                    JobKind::ALL.map(|k| k.as_str()).join(", ")
                )));
            }
        };
        if let Some(job_id) = w.job_id {
            return Ok(Self::Stored { kind, job_id });
        }
        let idempotency_key = w
            .idempotency_key
            .filter(|k| !k.trim().is_empty() && k.len() <= 200)
            .ok_or_else(|| {
                EnvelopeError::malformed("missing \"idempotency_key\" (1 to 200 characters)")
            })?;
        let benefit = w
            .benefit
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| EnvelopeError::malformed("missing \"benefit\""))?;
        let payload = match w.payload {
            Some(Value::Object(map)) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    let s = match v {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => continue,
                        _ => {
                            return Err(EnvelopeError::malformed(format!(
                                "payload field {k:?} must be a string"
                            )));
                        }
                    };
                    out.insert(k, s);
                }
                out
            }
            _ => return Err(EnvelopeError::malformed("missing \"payload\" object")),
        };
        Ok(Self::External {
            kind,
            idempotency_key,
            benefit,
            external_ref: w.external_ref,
            payload,
        })
    }

    /// What is dead-lettered instead of a refused message: the kind, the idempotency key and
    /// the names of the payload fields, never their values (an external envelope carries raw
    /// identifiers, and the dead-letter queue keeps what it gets). The reason travels in a
    /// header.
    pub fn redacted(bytes: &[u8]) -> Vec<u8> {
        let wire: Option<serde_json::Map<String, Value>> = serde_json::from_slice(bytes).ok();
        let text = |w: &serde_json::Map<String, Value>, k: &str, max: usize| {
            w.get(k)
                .and_then(Value::as_str)
                .filter(|s| s.len() <= max)
                .map(str::to_string)
        };
        let body = match wire {
            Some(w) => {
                let fields: Vec<String> = match w.get("payload") {
                    Some(Value::Object(p)) => p
                        .keys()
                        .filter(|k| {
                            k.len() <= 40 && k.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
                        })
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                };
                serde_json::json!({
                    "redacted": true,
                    "v": w.get("v").and_then(Value::as_u64),
                    "kind": text(&w, "kind", 40).filter(|k| JobKind::parse(k).is_some()),
                    "job_id": w.get("job_id").and_then(Value::as_i64),
                    "idempotency_key": text(&w, "idempotency_key", 200),
                    "payload_fields": fields,
                    "bytes": bytes.len(),
                })
            }
            None => serde_json::json!({ "redacted": true, "json": false, "bytes": bytes.len() }),
        };
        serde_json::to_vec(&body).expect("JSON serialises")
    }

    /// The kind.
    pub fn kind(&self) -> JobKind {
        match self {
            Self::Stored { kind, .. } | Self::External { kind, .. } => *kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_the_reference_and_drop_identifiers() {
        let body = br#"{"v":1,"kind":"benefit-link","idempotency_key":"prog-42","benefit":"PMJAY",
            "external_ref":"Ravi Kumar","payload":{"abha_number":"91-1234-5678-9012","91-1111-2222-3333":"x"}}"#;
        let out = String::from_utf8(Envelope::redacted(body)).unwrap();
        for secret in ["1234-5678", "1111-2222", "Ravi"] {
            assert!(!out.contains(secret), "{out}");
        }
        for kept in ["prog-42", "benefit-link", "abha_number"] {
            assert!(out.contains(kept), "{out}");
        }
        let out = String::from_utf8(Envelope::redacted(b"not json 91-1234-5678-9012")).unwrap();
        assert!(!out.contains("1234"), "{out}");
    }

    #[test]
    fn a_newer_release_s_envelope_is_unknown_and_anything_else_malformed() {
        let unknown = |b: &[u8]| match Envelope::decode(b) {
            Err(EnvelopeError::Unknown { stored, what }) => Some((stored, what)),
            _ => None,
        };
        assert_eq!(
            unknown(br#"{"v":1,"kind":"benefit-unlink","job_id":7}"#),
            Some((true, "unknown kind".into()))
        );
        assert_eq!(
            unknown(br#"{"v":2,"kind":"benefit-link","job_id":7,"shard":3}"#),
            Some((true, "envelope version 2".into()))
        );
        assert_eq!(
            unknown(br#"{"v":1,"kind":"benefit-unlink","idempotency_key":"k"}"#),
            Some((false, "unknown kind".into()))
        );
        // The raw kind never reaches the reason (a producer may put an identifier there).
        let e = Envelope::decode(br#"{"v":1,"kind":"91-1234-5678-9012","job_id":7}"#);
        assert!(matches!(&e, Err(EnvelopeError::Unknown { .. })), "{e:?}");
        assert!(!e.unwrap_err().to_string().contains("1234"));
        for malformed in [
            &b"not json"[..],
            br#"{"kind":"benefit-link","job_id":7}"#,
            br#"{"v":0,"kind":"benefit-link","job_id":7}"#,
            br#"{"v":"2","kind":"benefit-link","job_id":7}"#,
            br#"{"v":2,"job_id":7}"#,
            br#"{"v":2,"kind":"Ravi Kumar","job_id":7}"#,
            br#"{"v":1,"kind":"Ravi Kumar","job_id":7}"#,
            br#"{"v":1,"kind":"benefit-link"}"#,
        ] {
            let e = Envelope::decode(malformed);
            assert!(
                matches!(e, Err(EnvelopeError::Malformed(_))),
                "{}: {e:?}",
                String::from_utf8_lossy(malformed)
            );
            assert!(!e.unwrap_err().to_string().contains("Ravi"));
        }
        assert!(Envelope::decode(br#"{"v":1,"kind":"benefit-link","job_id":7}"#).is_ok());
    }
}
