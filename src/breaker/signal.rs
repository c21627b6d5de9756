//! What one job's result says about ABDM as a whole: an answer about the row (ABDM works),
//! nothing, a suspect failure (one is noise, many are an outage), a systemic one (fix
//! something before any row can run), or this replica's clock.

use crate::abdm::{ClientError, Disposition};

/// What one job's result says about ABDM as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An answer about the row: ABDM works.
    Healthy,
    /// Says nothing either way (throttling, a call the gate stopped).
    Neutral,
    /// A 5xx, timeout or broken connection: one is noise, a run is an outage.
    Suspect(String),
    /// Gateway login refused, ABDM unreachable: fix something before any row can run.
    Systemic(String),
    /// ABDM refused this replica's `TIMESTAMP` (ABDM-1016): its clock is off. A fault of this
    /// replica, not of ABDM: it holds its own jobs; the shared breaker stays as it is.
    Clock,
}

/// Classifies one job's final error (`None`: it succeeded). `client_id` names the client whose
/// secret was refused; no identifier ever enters a reason.
pub fn signal(result: Option<&ClientError>, client_id: &str) -> Signal {
    let Some(e) = result else {
        return Signal::Healthy;
    };
    match e {
        ClientError::Session(inner) => match inner.as_ref() {
            ClientError::Abdm(a) if matches!(a.status, 400 | 401 | 403) => {
                Signal::Systemic(format!(
                    "the ABDM gateway refused client id {client_id:?} (HTTP {}, {}): check abdm.client_secret \
                 (ABHA_BULK__ABDM__CLIENT_SECRET or _FILE) and abdm.client_id",
                    a.status,
                    inner.code()
                ))
            }
            ClientError::Connect(_) => Signal::Systemic(
                "cannot connect to the ABDM gateway: check abdm.session_url and the network".into(),
            ),
            other => Signal::Suspect(format!("gateway session failed ({})", other.code())),
        },
        ClientError::Connect(_) => Signal::Systemic(
            "cannot connect to ABDM: check abdm.base_url, DNS, TLS and the network".into(),
        ),
        ClientError::Timeout | ClientError::Transport(_) => {
            Signal::Suspect(format!("ABDM calls fail ({})", e.code()))
        }
        ClientError::Abdm(a) if a.status >= 500 => {
            Signal::Suspect(format!("ABDM answers HTTP {} ({})", a.status, e.code()))
        }
        ClientError::Abdm(_) if e.is_clock_skew() => Signal::Clock,
        ClientError::Abdm(a) if a.disposition() == Disposition::Throttled => Signal::Neutral,
        ClientError::NotSent(_) => Signal::Neutral,
        _ => Signal::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abdm::AbdmError;

    fn abdm(status: u16, body: &str) -> ClientError {
        ClientError::Abdm(AbdmError::parse(status, body.as_bytes(), None))
    }

    #[test]
    fn answers_about_rows_are_healthy_outages_are_not() {
        assert_eq!(signal(None, "c"), Signal::Healthy);
        let not_found = abdm(404, r#"{"code":"ABDM-1114","message":"User not found"}"#);
        assert_eq!(signal(Some(&not_found), "c"), Signal::Healthy);
        let throttled = abdm(429, r#"{"code":"ABDM-1022","message":"Too many requests"}"#);
        assert_eq!(signal(Some(&throttled), "c"), Signal::Neutral);
        let skew = abdm(400, r#"{"code":"ABDM-1016","message":"Invalid TIMESTAMP"}"#);
        assert_eq!(signal(Some(&skew), "c"), Signal::Clock);
        assert!(matches!(
            signal(Some(&abdm(503, "")), "c"),
            Signal::Suspect(_)
        ));
        assert!(matches!(
            signal(Some(&ClientError::Timeout), "c"),
            Signal::Suspect(_)
        ));
        assert!(matches!(
            signal(Some(&ClientError::Connect("refused".into())), "c"),
            Signal::Systemic(_)
        ));
        let refused = ClientError::Session(Box::new(abdm(
            401,
            r#"{"code":"900901","message":"Invalid Credentials"}"#,
        )));
        match signal(Some(&refused), "SBX_1") {
            Signal::Systemic(r) => {
                assert!(
                    r.contains("SBX_1") && r.contains("abdm.client_secret"),
                    "{r}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
