//! From a job's result to the outcome to record: success, a permanent failure, a retry with
//! backoff, death after the last attempt, or a postponement that costs no attempt.

use chrono::Utc;

use super::Worker;
use crate::abdm::{ClientError, Disposition};
use crate::store::jobs::{ClaimedJob, Outcome};
use crate::telemetry::metrics;

impl Worker {
    /// What to record for a job's result. Attempts count only answers about the row: a refused
    /// login, a refused connection, throttling, a call the gate stopped, a refused `TIMESTAMP`
    /// (ABDM-1016: this replica's clock) and any transient failure while the breaker spares
    /// attempts (`breaker_open`: open, ABDM degraded, or this replica's clock refused) cost the
    /// job no attempt.
    pub(super) fn classify(
        &self,
        job: &ClaimedJob,
        result: Result<crate::jobs::execute::Success, ClientError>,
        breaker_open: bool,
    ) -> Outcome {
        let e = match result {
            Ok(s) => {
                return Outcome::Succeeded {
                    outcome: s.outcome.to_string(),
                    code: s.code,
                    result: s.result,
                    result_masked: s.result_masked,
                };
            }
            Err(e) => e,
        };
        let code = e.code();
        let message = e.stored_message();
        let disposition = e.disposition();
        // Never about the row: the call was not sent, ABDM throttled us, no session could be
        // had, or ABDM could not be reached at all.
        let systemic = matches!(
            e,
            ClientError::NotSent(_) | ClientError::Session(_) | ClientError::Connect(_)
        ) || disposition == Disposition::Throttled
            || e.is_clock_skew()
            || (breaker_open && matches!(disposition, Disposition::Transient | Disposition::Auth));
        match disposition {
            Disposition::Success | Disposition::IdempotentSuccess => Outcome::Succeeded {
                outcome: "already_done".into(),
                code: Some(code),
                result: None,
                result_masked: None,
            },
            Disposition::Permanent => Outcome::Failed { code, message },
            _ if systemic => {
                metrics::RETRIES
                    .with_label_values(&[job.kind.as_str(), "postponed"])
                    .inc();
                let wait = self
                    .cfg
                    .postpone_delay(e.retry_after(), disposition == Disposition::Throttled);
                Outcome::Postpone {
                    due_at: Utc::now() + wait,
                    code,
                    message,
                }
            }
            Disposition::Transient | Disposition::Throttled | Disposition::Auth => {
                if job.attempt as u32 >= self.cfg.max_attempts {
                    Outcome::Dead { code, message }
                } else {
                    metrics::RETRIES
                        .with_label_values(&[job.kind.as_str(), disposition.as_str()])
                        .inc();
                    let delay = self.cfg.retry_delay(job.attempt as u32, e.retry_after());
                    Outcome::Retry {
                        due_at: Utc::now() + delay,
                        code,
                        message,
                    }
                }
            }
        }
    }

    /// A job whose payload names a key this process does not hold (a newer `pii.key`, written
    /// by an up-to-date replica during a rotation): postponed without spending an attempt,
    /// and this process goes stale at once, so it takes no more work (`store::keyset`). Only a
    /// value that fails under a key this process holds is `invalid_stored_job`.
    pub(super) fn postpone_unknown_key(&self, job: &ClaimedJob, key_id: &str) -> Outcome {
        self.store.saw_unknown_key(key_id);
        metrics::RETRIES
            .with_label_values(&[job.kind.as_str(), "postponed"])
            .inc();
        Outcome::Postpone {
            due_at: Utc::now() + self.cfg.postpone_delay(None, false),
            code: "pii_key_unknown".into(),
            message: format!(
                "payload encrypted with key id {key_id}, which this replica's pii.key and pii.previous_keys do not hold; left to an up-to-date replica"
            ),
        }
    }
}
