//! One job → one call sequence → one answer.
//!
//! Each kind's call and its outcome mapping are in its module (`Kind::execute` in
//! `jobs/kind/<name>.rs`); this module holds what they share: the [`Success`] they return and
//! the mapping of ABDM's "already done" answers.
//!
//! ABDM's "already done" answers (ABDM-1140, ABDM-1138) come back as success here.
//!
//! `look_first` is the job's durable intent (`jobs.effect_started_at`): an earlier attempt sent
//! a call that changes something and its answer was never recorded. Then a child creation
//! first lists the parent's children (if the child is there, ABDM created it and the answer
//! was lost; creating again would make a twin), and "already done" answers are reported as
//! `*_answer_lost` (done by this run, confirmed by looking) rather than `already_*` (done
//! before this run). The intent is decided from that record, never from the attempt counter,
//! which `retry-failed` resets. docs/report-format.md lists every outcome.

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::{AbdmClient, CallTrace, ClientError, Disposition};
use crate::jobs::kind::Job;
use crate::pii::Sensitive;

/// What a successful job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    /// For reports (docs/report-format.md): `linked`, `linked_answer_lost`, `already_linked`,
    /// `delinked`, `delinked_answer_lost`, `already_delinked`, `found`, `not_linked`,
    /// `updated`, `updated_answer_lost`, `created`, `created_answer_lost`, `existing`.
    pub outcome: &'static str,
    /// ABDM's code for an idempotent answer.
    pub code: Option<String>,
    /// An identifier worth keeping (encrypted at rest): the ABHA number found or created.
    pub result: Option<String>,
    /// What the report shows.
    pub result_masked: Option<String>,
}

impl Success {
    pub(crate) fn plain(outcome: &'static str) -> Self {
        Self {
            outcome,
            code: None,
            result: None,
            result_masked: None,
        }
    }

    pub(crate) fn with(outcome: &'static str, result: Option<&Sensitive>, masked: String) -> Self {
        Self {
            outcome,
            code: None,
            result: result
                .map(|r| r.expose().to_string())
                .filter(|r| !r.is_empty()),
            result_masked: Some(masked),
        }
    }
}

/// Runs `job` once (its HTTP attempts land in `trace`). `look_first`: an earlier attempt may
/// have changed something at ABDM without its answer being recorded (see the module docs).
pub async fn execute(
    client: &AbdmClient,
    benefit: &str,
    job: &Job,
    look_first: bool,
    trace: &mut CallTrace,
) -> Result<Success, ClientError> {
    job.run(client, benefit, look_first, trace).await
}

/// `created` when ABDM made a new ABHA now; `created_answer_lost` when it returned one that an
/// earlier attempt of this run (whose answer was lost) created; `existing` when the ABHA was
/// there before this run.
pub(crate) fn created_or_existing(is_new: bool, look_first: bool) -> &'static str {
    match (is_new, look_first) {
        (true, _) => "created",
        (false, true) => "created_answer_lost",
        (false, false) => "existing",
    }
}

/// A link or de-link, with ABDM's "already (de-)linked" answer as success: `already_*` when
/// it was so before this run, `*_answer_lost` when an earlier attempt did it (`look_first`).
pub(crate) async fn link(
    client: &AbdmClient,
    trace: &mut CallTrace,
    benefit: &str,
    action: LinkAction,
    who: &Beneficiary,
    look_first: bool,
) -> Result<Success, ClientError> {
    let (done, already) = match (action, look_first) {
        (LinkAction::Link, false) => ("linked", "already_linked"),
        (LinkAction::Link, true) => ("linked", "linked_answer_lost"),
        (LinkAction::Delink, false) => ("delinked", "already_delinked"),
        (LinkAction::Delink, true) => ("delinked", "delinked_answer_lost"),
    };
    match client.link(trace, benefit, action, who).await {
        Ok(r) => Ok(Success::with(
            done,
            Some(&r.health_id),
            format!("ABHA {}", r.health_id.masked()),
        )),
        Err(e) if e.disposition() == Disposition::IdempotentSuccess => Ok(Success {
            outcome: already,
            code: Some(e.code()),
            result: None,
            result_masked: None,
        }),
        Err(e) => Err(e),
    }
}
