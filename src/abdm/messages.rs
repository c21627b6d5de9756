//! What is stored and reported about a failed call: a fixed description per known ABDM code
//! or HTTP status, never ABDM's own message text (it can echo names) nor excerpts of bodies.
//! Codes are kept only when they look like codes.

use super::error::ClientError;

/// Known codes and their descriptions (`shared/abdm/README.md`).
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("ABDM-1140", "ABHA already linked to this benefit"),
    ("ABDM-1138", "benefit link already removed"),
    ("ABDM-1139", "benefit record not found"),
    ("ABDM-1137", "benefit name not found"),
    ("ABDM-1114", "user not found"),
    (
        "ABDM-1094",
        "X-token expired or invalid, benefit name invalid, or feature restricted",
    ),
    ("900901", "gateway session token invalid or expired"),
    ("900902", "gateway session token invalid or expired"),
    ("ABDM-1016", "TIMESTAMP header rejected (clock or format)"),
    ("ABDM-1022", "too many requests"),
    ("ABDM-2429", "too many requests"),
    ("ABDM-1027", "blocked for 24 hours"),
    ("ABDM-1157", "child ABHA limit reached for the parent"),
    ("ABDM-1160", "a non-KYC child ABHA can be updated only once"),
    ("ABDM-1228", "a benefit-linked ABHA cannot be deactivated"),
    ("ABDM-1219", "a benefit-linked ABHA cannot be deleted"),
    ("ABDM-1124", "mobile already linked to 6 ABHAs"),
    ("ABDM-1227", "creation cap reached"),
    ("ABDM-1204", "record not found"),
    ("ABDM-9999", "ABDM internal error"),
];

/// What an operator does about rows that failed with a last code: the console shows it beside
/// each group of failed rows, so the fix is one read away (a fixed sentence per code or
/// family of codes; the stored message says what ABDM answered).
pub fn operator_action(code: Option<&str>) -> &'static str {
    const RETRY_LATER: &str = "A fault of ABDM or of the network outlasted the retries: press \
        Retry failed rows (abha-bulk retry-failed) once ABDM answers normally again.";
    const FIX_ROWS: &str = "ABDM refused these rows as they are: correct them in the \
        programme's records and submit the corrected rows; retrying will not help.";
    let Some(code) = code else {
        return "No code was recorded: read the message column of the report.";
    };
    match code {
        "ABDM-1114" | "ABDM-1139" | "ABDM-1204" => {
            "ABDM has no such record: check the identifiers against the programme's own \
             records and submit the corrected rows; retrying will not help."
        }
        "ABDM-1137" => {
            "ABDM does not know the benefit name: have it registered for this client (or \
             correct the benefit), then press Retry failed rows."
        }
        "ABDM-1094" => {
            "The X-token expired or the benefit is restricted: get fresh X-tokens for child \
             rows (submit them again) or check the benefit's registration with ABDM."
        }
        "ABDM-1157" | "ABDM-1160" | "ABDM-1228" | "ABDM-1219" | "ABDM-1124" => {
            "ABDM's rules forbid this for these people: nothing to retry; tell the \
             beneficiaries' offices."
        }
        "ABDM-1227" | "ABDM-1027" => {
            "ABDM blocked or capped these calls for a while: press Retry failed rows after \
             the block ends (24 hours for ABDM-1027)."
        }
        "ABDM-1022" | "ABDM-2429" => {
            "ABDM throttled these rows until their retries ran out: lower \
             worker.rate_per_second (or wait for a quiet hour), then press Retry failed rows."
        }
        "900901" | "900902" => {
            "The gateway session failed: check abdm.client_id and the client secret, then \
             press Retry failed rows."
        }
        "ABDM-1016" => {
            "ABDM refused the request time: check the workers' clocks (NTP), then press \
             Retry failed rows."
        }
        "invalid_stored_job" => {
            "The stored row can no longer be read (its X-token was erased, or the data key \
             changed): submit the row again."
        }
        "lease_expired" => {
            "Workers stopped while running these rows, again and again: read the workers' \
             logs (crashes, memory), then press Retry failed rows."
        }
        "crypto" => {
            "Encrypting for ABDM failed: check the ABDM certificate settings, then press \
             Retry failed rows."
        }
        "ABDM-9999" | "timeout" | "connect" | "transport" | "decode" | "not_sent" => RETRY_LATER,
        c if c.starts_with("session:") || c.starts_with("HTTP-5") => RETRY_LATER,
        c if c.starts_with("HIS-") || c.starts_with("HTTP-4") => FIX_ROWS,
        _ => {
            "Read the message column of the report; press Retry failed rows if the cause \
              was temporary."
        }
    }
}

/// Request field names that may appear in a validation answer's description.
const KNOWN_FIELDS: &[&str] = &[
    "loginId",
    "mobile",
    "aadhaar",
    "aadhaarNumber",
    "abhaNumber",
    "ABHANumber",
    "name",
    "firstName",
    "dob",
    "dateOfBirth",
    "gender",
    "benefitName",
    "stateCode",
    "districtCode",
    "pinCode",
    "profilePhoto",
    "accountStatus",
    "X-Token",
    "TIMESTAMP",
    "REQUEST-ID",
    "Authorization",
];

/// A request field or header ABDM may name in a validation answer (the benefit header's name
/// is configurable: any name containing "benefit").
fn known_field(f: &str) -> bool {
    KNOWN_FIELDS.iter().any(|k| k.eq_ignore_ascii_case(f))
        || (f.len() <= 40
            && f.to_ascii_lowercase().contains("benefit")
            && f.bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_'))
}

/// `code` when it looks like an ABDM or gateway code (`ABDM-1114`, `900901`, `HIS-1000`),
/// else `None`: a "code" that is free text is not kept.
pub fn sane_code(code: &str) -> Option<String> {
    let ok = !code.is_empty()
        && code.len() <= 24
        && code.bytes().any(|b| b.is_ascii_digit())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| code.to_string())
}

/// The fixed description of an ABDM error answer.
pub fn describe(code: Option<&str>, status: u16, fields: &[String]) -> String {
    if let Some(code) = code {
        if let Some((_, d)) = DESCRIPTIONS.iter().find(|(c, _)| *c == code) {
            return (*d).to_string();
        }
        if code.starts_with("HIS-") && !fields.is_empty() {
            return invalid_fields(fields);
        }
        return format!("ABDM error {code} ({})", status_text(status));
    }
    if !fields.is_empty() {
        return invalid_fields(fields);
    }
    status_text(status)
}

fn invalid_fields(fields: &[String]) -> String {
    let known: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| known_field(f))
        .collect();
    if known.is_empty() {
        "ABDM rejected a request field".to_string()
    } else {
        format!("ABDM rejected request field(s): {}", known.join(", "))
    }
}

fn status_text(status: u16) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("unknown status");
    format!("HTTP {status} {reason}")
}

impl ClientError {
    /// What attempts and jobs record: a fixed description, no text from ABDM or the network.
    pub fn stored_message(&self) -> String {
        match self {
            Self::Abdm(e) => e.message.clone(),
            Self::Timeout => "ABDM did not answer within the timeout".into(),
            Self::Connect(_) => "could not connect to ABDM".into(),
            Self::Transport(_) => "the connection to ABDM failed".into(),
            Self::Decode { status, .. } => {
                format!("ABDM answered HTTP {status} with a body of unexpected shape")
            }
            Self::Session(inner) => format!("gateway session failed: {}", inner.stored_message()),
            Self::Crypto(_) => "encrypting an identifier for ABDM failed".into(),
            Self::NotSent(_) => "call not sent (the job's lease was lost, or shutting down)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abdm::AbdmError;

    #[test]
    fn every_failure_family_has_an_action() {
        assert!(operator_action(Some("ABDM-1114")).contains("retrying will not help"));
        for transient in ["timeout", "ABDM-9999", "HTTP-503", "session:timeout"] {
            assert!(
                operator_action(Some(transient)).contains("Retry failed rows"),
                "{transient}"
            );
        }
        assert!(operator_action(Some("HIS-1000")).contains("correct them"));
        assert!(operator_action(Some("ABDM-1022")).contains("rate_per_second"));
        assert!(operator_action(None).contains("report"));
        assert!(operator_action(Some("ABDM-4242")).contains("report"));
    }

    #[test]
    fn stored_messages_carry_no_text_from_abdm() {
        let cases: &[(u16, &str, &str)] = &[
            (
                404,
                r#"{"code":"ABDM-1114","message":"User Ravi Kumar not found"}"#,
                "user not found",
            ),
            (
                400,
                r#"{"code":"ABDM-7777","message":"Name Ravi Kumar mismatch"}"#,
                "ABDM error ABDM-7777 (HTTP 400 Bad Request)",
            ),
            (
                502,
                "<html>Ravi Kumar's gateway</html>",
                "HTTP 502 Bad Gateway",
            ),
            (
                400,
                r#"{"loginId":"Ravi Kumar is not valid"}"#,
                "ABDM rejected request field(s): loginId",
            ),
            (
                400,
                r#"{"Ravi Kumar":"x"}"#,
                "ABDM rejected a request field",
            ),
            (
                400,
                r#"{"BENEFIT_NAME":"Benefit name header is required"}"#,
                "ABDM rejected request field(s): BENEFIT_NAME",
            ),
            (
                400,
                r#"{"code":"Ravi Kumar","message":"x"}"#,
                "HTTP 400 Bad Request",
            ),
            (
                400,
                r#"{"code":"HIS-1000","message":"Validation failed","details":[{"message":"Ravi Kumar","attribute":{"key":"mobile","value":"9876543210"}}]}"#,
                "ABDM rejected request field(s): mobile",
            ),
        ];
        for (status, body, want) in cases {
            let e = AbdmError::parse(*status, body.as_bytes(), None);
            assert_eq!(e.message, *want, "{body}");
            let stored = ClientError::Abdm(e.clone()).stored_message();
            assert!(!stored.contains("Ravi"), "{stored}");
            assert!(!e.to_string().contains("Ravi"), "{e}");
        }
        let decode = ClientError::Decode {
            status: 200,
            reason: "invalid type: string \"Ravi Kumar\"".into(),
        };
        assert!(!decode.stored_message().contains("Ravi"));
        let session = ClientError::Session(Box::new(ClientError::Timeout));
        assert!(
            session
                .stored_message()
                .starts_with("gateway session failed")
        );
    }
}
