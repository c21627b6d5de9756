//! ABDM's error shapes parsed into one type, and what each answer means for a bulk job.

use std::time::Duration;

use serde_json::Value;

use crate::abdm::crypto::CryptoError;
use crate::pii::scrub_digits;

/// What an answer from ABDM means for the job that made the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Done.
    Success,
    /// ABDM says it was already done (ABDM-1140 already linked, ABDM-1138 already de-linked).
    IdempotentSuccess,
    /// Will fail the same way again: the row needs a person to look at it.
    Permanent,
    /// Try again later with backoff (5xx, timeouts, dropped connections).
    Transient,
    /// Too many requests: slow down, then try again (honour `retry_after`).
    Throttled,
    /// The gateway session is invalid: refresh it once, then try again.
    Auth,
}

impl Disposition {
    /// Label value for metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::IdempotentSuccess => "idempotent_success",
            Self::Permanent => "permanent",
            Self::Transient => "transient",
            Self::Throttled => "throttled",
            Self::Auth => "auth",
        }
    }

    /// True for the two success kinds.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Success | Self::IdempotentSuccess)
    }

    /// True when trying again later can help.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Transient | Self::Throttled | Self::Auth)
    }
}

/// ABDM codes that mean "already done".
const IDEMPOTENT_CODES: &[&str] = &["ABDM-1140", "ABDM-1138"];
/// ABDM codes that mean "too many requests".
const THROTTLE_CODES: &[&str] = &["ABDM-1022", "ABDM-2429"];
/// Gateway codes that mean "the session token is invalid or expired".
const AUTH_CODES: &[&str] = &["900901", "900902"];
/// ABDM codes that are permanent for the row whatever the HTTP status.
const PERMANENT_CODES: &[&str] = &[
    "ABDM-1094",
    "ABDM-1027",
    "ABDM-1114",
    "ABDM-1124",
    "ABDM-1137",
    "ABDM-1139",
    "ABDM-1157",
    "ABDM-1160",
    "ABDM-1219",
    "ABDM-1227",
    "ABDM-1228",
];
/// The code ABDM sends when the TIMESTAMP header is rejected.
pub const CLOCK_SKEW_CODE: &str = "ABDM-1016";

/// One error answer from ABDM, from any of the shapes it uses.
///
/// `message` is a fixed description of the code or HTTP status
/// ([`super::messages::describe`]), never ABDM's own text (which can echo names), so it can be
/// logged, stored and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbdmError {
    /// HTTP status.
    pub status: u16,
    /// ABDM or gateway code (`ABDM-1114`, `900901`, `HIS-...`), trailing `": "` trimmed.
    pub code: Option<String>,
    /// Fixed description of the code or status.
    pub message: String,
    /// ABDM's text said it could not decrypt a field (kept as a flag, not as text).
    pub mentions_decrypt: bool,
    /// Names of the request fields a validation answer complained about (`loginId`, ...).
    pub fields: Vec<String>,
    /// `Retry-After`, when ABDM sent one.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for AbdmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "HTTP {} {}: {}", self.status, code, self.message),
            None => write!(f, "HTTP {}: {}", self.status, self.message),
        }
    }
}

impl AbdmError {
    /// Parses an error answer. Every shape in `shared/abdm/README.md` is understood; anything
    /// else keeps the status and a short, scrubbed excerpt of the body.
    pub fn parse(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let mut err = AbdmError {
            status,
            code: None,
            message: String::new(),
            mentions_decrypt: false,
            fields: Vec::new(),
            retry_after,
        };
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim();
        if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
            err.fill_from_json(&value);
        }
        // A body that is not JSON is not kept at all (no excerpt).
        err.mentions_decrypt = err.message.to_ascii_lowercase().contains("decrypt");
        err.code = err.code.as_deref().and_then(super::messages::sane_code);
        err.message = super::messages::describe(err.code.as_deref(), status, &err.fields);
        err
    }

    fn fill_from_json(&mut self, value: &Value) {
        match value {
            // [{"code":"ABDM-9999: ","message":"..."}]
            Value::Array(items) => {
                if let Some(first) = items.first() {
                    self.fill_from_json(first);
                }
            }
            Value::Object(map) => {
                // {"error":{"code","message"}}
                if let Some(inner @ Value::Object(_)) = map.get("error") {
                    self.fill_from_json(inner);
                    return;
                }
                let code = map.get("code").and_then(value_as_string);
                let message = map
                    .get("message")
                    .or_else(|| map.get("description"))
                    .and_then(value_as_string);
                if code.is_some() || message.is_some() {
                    self.code = code
                        .map(|c| c.trim().trim_end_matches(':').trim().to_string())
                        .filter(|c| !c.is_empty());
                    self.message = scrub_digits(message.as_deref().unwrap_or(""));
                    // HIS-... {"code","message","details":[{"message","code","attribute":{...}}]}
                    if let Some(Value::Array(details)) = map.get("details") {
                        let extra: Vec<String> = details
                            .iter()
                            .filter_map(|d| d.get("message").and_then(value_as_string))
                            .map(|m| scrub_digits(&m))
                            .collect();
                        for d in details {
                            if let Some(key) = d
                                .get("attribute")
                                .and_then(|a| a.get("key"))
                                .and_then(value_as_string)
                            {
                                self.fields.push(key);
                            }
                        }
                        if !extra.is_empty() {
                            self.message = format!("{} ({})", self.message, extra.join("; "));
                        }
                    }
                    return;
                }
                // {"loginId":"Invalid LoginId"}: field-keyed validation errors
                let mut parts = Vec::new();
                for (field, v) in map {
                    if let Some(msg) = value_as_string(v) {
                        self.fields.push(field.clone());
                        parts.push(format!("{field}: {}", scrub_digits(&msg)));
                    }
                }
                self.message = parts.join("; ");
            }
            other => {
                if let Some(s) = value_as_string(other) {
                    self.message = scrub_digits(&s);
                }
            }
        }
    }

    /// What this answer means for the job.
    pub fn disposition(&self) -> Disposition {
        let code = self.code.as_deref().unwrap_or("");
        if IDEMPOTENT_CODES.contains(&code) {
            return Disposition::IdempotentSuccess;
        }
        if THROTTLE_CODES.contains(&code) || self.status == 429 {
            return Disposition::Throttled;
        }
        if PERMANENT_CODES.contains(&code) {
            return Disposition::Permanent;
        }
        if AUTH_CODES.contains(&code) || (self.status == 401 && self.code.is_none()) {
            return Disposition::Auth;
        }
        if code == CLOCK_SKEW_CODE {
            // Our clock or format is wrong: every row would fail the same way, so the row is
            // retried (after the client's own immediate retry) while operators fix the clock.
            return Disposition::Transient;
        }
        match self.status {
            408 | 425 | 500..=599 => Disposition::Transient,
            _ => Disposition::Permanent,
        }
    }

    /// True when the answer says an encrypted field could not be read, which happens when ABDM
    /// rotated its key: fetch the certificate again and retry.
    pub fn is_bad_ciphertext(&self) -> bool {
        const ENCRYPTED: &[&str] = &["loginId", "mobile", "aadhaarNumber", "aadhaar"];
        self.status == 400
            && (self.fields.iter().any(|f| ENCRYPTED.contains(&f.as_str()))
                || self.mentions_decrypt)
    }
}

fn value_as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Everything that can go wrong with one call through the ABDM client.
///
/// Messages never contain identifiers or URLs (URLs can carry an ABHA number).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// ABDM answered with an error.
    #[error("ABDM answered {0}")]
    Abdm(AbdmError),
    /// No answer within the configured timeout.
    #[error("ABDM did not answer within the timeout")]
    Timeout,
    /// Could not connect.
    #[error("could not connect to ABDM: {0}")]
    Connect(String),
    /// The connection broke while sending or receiving.
    #[error("connection to ABDM failed: {0}")]
    Transport(String),
    /// A success answer whose body did not have the documented shape.
    #[error("ABDM answered HTTP {status} with an unexpected body: {reason}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// What did not match.
        reason: String,
    },
    /// The gateway session could not be obtained.
    #[error("gateway session failed: {0}")]
    Session(Box<ClientError>),
    /// The public key could not be used.
    #[error("encryption failed: {0}")]
    Crypto(CryptoError),
    /// The call gate stopped the call before it was sent (the worker lost the job's lease,
    /// or is shutting down): nothing reached ABDM.
    #[error("call not sent: {0}")]
    NotSent(&'static str),
}

impl From<CryptoError> for ClientError {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

impl ClientError {
    /// What the error means for the job.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Abdm(e) => e.disposition(),
            Self::Timeout | Self::Connect(_) | Self::Transport(_) => Disposition::Transient,
            // Wrong credentials or a gateway outage: every row would fail alike, so wait.
            Self::Session(_) => Disposition::Transient,
            // A 2xx we cannot read: the side effect may have happened; do not repeat it blindly.
            Self::Decode { .. } => Disposition::Permanent,
            Self::Crypto(_) => Disposition::Permanent,
            Self::NotSent(_) => Disposition::Transient,
        }
    }

    /// ABDM refused our `TIMESTAMP` (ABDM-1016): this replica's clock (or a stamp made long
    /// before the send), never the row.
    pub fn is_clock_skew(&self) -> bool {
        matches!(self, Self::Abdm(e) if e.code.as_deref() == Some(CLOCK_SKEW_CODE))
    }

    /// The ABDM answer, when there was one.
    pub fn abdm(&self) -> Option<&AbdmError> {
        match self {
            Self::Abdm(e) => Some(e),
            Self::Session(inner) => inner.abdm(),
            _ => None,
        }
    }

    /// `Retry-After` from a throttling answer.
    pub fn retry_after(&self) -> Option<Duration> {
        self.abdm().and_then(|e| e.retry_after)
    }

    /// The ABDM code, for reports and metrics (`timeout`, `connect` and `transport` for
    /// failures without an answer).
    pub fn code(&self) -> String {
        match self {
            Self::Abdm(e) => e
                .code
                .clone()
                .unwrap_or_else(|| format!("HTTP-{}", e.status)),
            Self::Timeout => "timeout".into(),
            Self::Connect(_) => "connect".into(),
            Self::Transport(_) => "transport".into(),
            Self::Decode { .. } => "decode".into(),
            Self::Session(inner) => format!("session:{}", inner.code()),
            Self::Crypto(_) => "crypto".into(),
            Self::NotSent(_) => "not_sent".into(),
        }
    }

    /// From a reqwest error, dropping the URL (it can hold an ABHA number).
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        let timeout = e.is_timeout();
        let connect = e.is_connect();
        let text = scrub_digits(&error_chain(&e.without_url()));
        if timeout {
            Self::Timeout
        } else if connect {
            Self::Connect(text)
        } else {
            Self::Transport(text)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use Disposition::*;

    fn d(status: u16, body: &str) -> (Option<String>, Disposition) {
        let e = AbdmError::parse(status, body.as_bytes(), None);
        (e.code.clone(), e.disposition())
    }

    #[test]
    fn every_error_shape_parses() {
        // (status, body, expected code, expected message fragment)
        let cases: &[(u16, &str, Option<&str>, &str)] = &[
            (
                404,
                r#"{"error":{"code":"ABDM-1204","message":"Record not found"}}"#,
                Some("ABDM-1204"),
                "record not found",
            ),
            (
                404,
                r#"{"code":"ABDM-1114","message":"User not found","timestamp":"2024-09-01 10:00:00"}"#,
                Some("ABDM-1114"),
                "user not found",
            ),
            (
                400,
                r#"{"loginId":"Invalid LoginId"}"#,
                None,
                "field(s): loginId",
            ),
            (
                401,
                r#"{"code":"900901","message":"Invalid Credentials","description":"Access failure"}"#,
                Some("900901"),
                "session token invalid",
            ),
            (401, "", None, "HTTP 401 Unauthorized"),
            (
                500,
                r#"[{"code":"ABDM-9999: ","message":"Something went wrong"}]"#,
                Some("ABDM-9999"),
                "internal error",
            ),
            (
                400,
                r#"{"code":"HIS-1000","message":"Validation failed","details":[{"message":"Mobile is invalid","code":"HIS-1008","attribute":{"key":"mobile","value":"9876543210"}}]}"#,
                Some("HIS-1000"),
                "field(s): mobile",
            ),
            (
                502,
                "<html>Bad gateway</html>",
                None,
                "HTTP 502 Bad Gateway",
            ),
        ];
        for (status, body, code, fragment) in cases {
            let e = AbdmError::parse(*status, body.as_bytes(), None);
            assert_eq!(e.code.as_deref(), *code, "code of {body}");
            assert!(e.message.contains(fragment), "{body} → {:?}", e.message);
            assert!(
                !e.message.contains("9876543210"),
                "identifier leaked: {:?}",
                e.message
            );
        }
        let his = AbdmError::parse(400, cases[6].1.as_bytes(), None);
        assert_eq!(his.fields, vec!["mobile".to_string()]);
        let field = AbdmError::parse(400, cases[2].1.as_bytes(), None);
        assert!(field.is_bad_ciphertext());
    }

    #[test]
    fn every_code_in_the_table_is_classified() {
        let cases: &[(u16, &str, Disposition)] = &[
            (400, "ABDM-1140", IdempotentSuccess),
            (400, "ABDM-1138", IdempotentSuccess),
            (400, "ABDM-1139", Permanent),
            (400, "ABDM-1137", Permanent),
            (404, "ABDM-1114", Permanent),
            (401, "ABDM-1094", Permanent),
            (401, "900901", Auth),
            (400, "ABDM-1016", Transient),
            (400, "ABDM-1022", Throttled),
            (400, "ABDM-2429", Throttled),
            (403, "ABDM-1027", Permanent),
            (400, "ABDM-1157", Permanent),
            (400, "ABDM-1160", Permanent),
            (400, "ABDM-1228", Permanent),
            (400, "ABDM-1219", Permanent),
            (400, "ABDM-1124", Permanent),
            (400, "ABDM-1227", Permanent),
            (500, "ABDM-9999", Transient),
            (503, "ABDM-1204", Transient),
            (400, "ABDM-1204", Permanent),
        ];
        for (status, code, want) in cases {
            let body = format!(r#"{{"code":"{code}","message":"m"}}"#);
            assert_eq!(d(*status, &body), (Some(code.to_string()), *want), "{code}");
        }
        assert_eq!(d(401, "").1, Auth);
        assert_eq!(d(429, "").1, Throttled);
        assert_eq!(d(500, "").1, Transient);
        assert_eq!(d(504, "upstream timed out").1, Transient);
        assert_eq!(d(408, "").1, Transient);
        assert_eq!(d(400, r#"{"loginId":"Invalid LoginId"}"#).1, Permanent);
    }

    #[test]
    fn retry_after_is_kept() {
        let e = AbdmError::parse(
            429,
            br#"{"code":"ABDM-1022","message":"Too many requests"}"#,
            Some(Duration::from_secs(3)),
        );
        let c = ClientError::Abdm(e);
        assert_eq!(c.disposition(), Throttled);
        assert_eq!(c.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(c.code(), "ABDM-1022");
    }

    #[test]
    fn transport_failures_are_transient() {
        assert_eq!(ClientError::Timeout.disposition(), Transient);
        assert_eq!(
            ClientError::Connect("refused".into()).disposition(),
            Transient
        );
        assert_eq!(
            ClientError::Transport("reset".into()).disposition(),
            Transient
        );
        assert_eq!(
            ClientError::Decode {
                status: 200,
                reason: "x".into()
            }
            .disposition(),
            Permanent
        );
    }
}
