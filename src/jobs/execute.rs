//! One job → one call sequence → one answer.
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
    fn plain(outcome: &'static str) -> Self {
        Self {
            outcome,
            code: None,
            result: None,
            result_masked: None,
        }
    }

    fn with(outcome: &'static str, result: Option<&Sensitive>, masked: String) -> Self {
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
    match job {
        Job::BenefitSearch(who) => {
            let records = client.benefit_search(trace, benefit, who).await?;
            let names: Vec<&str> = records.iter().map(|r| r.benefit_name.as_str()).collect();
            let abha = records.first().map(|r| r.abha_number.clone());
            let masked = if names.is_empty() {
                "no benefit records".to_string()
            } else {
                format!("{} benefit record(s): {}", names.len(), names.join(", "))
            };
            let outcome = if names.contains(&benefit) {
                "found"
            } else {
                "not_linked"
            };
            let mut s = Success::with(outcome, abha.as_ref(), masked);
            if let (Some(a), Beneficiary::Aadhaar(_)) = (&abha, who) {
                s.result_masked = Some(format!(
                    "{}; ABHA {}",
                    s.result_masked.unwrap_or_default(),
                    a.masked()
                ));
            }
            Ok(s)
        }
        Job::BenefitLookup(abha) => {
            let p = client.benefit_lookup(trace, benefit, abha).await?;
            let names: Vec<&str> = p
                .programme
                .iter()
                .map(|x| x.benefit_name.as_str())
                .collect();
            let outcome = if p.has(benefit) {
                "found"
            } else {
                "not_linked"
            };
            Ok(Success::with(
                outcome,
                None,
                format!(
                    "programmes: {}",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ),
            ))
        }
        Job::BenefitLink(who) => {
            link(client, trace, benefit, LinkAction::Link, who, look_first).await
        }
        Job::BenefitDelink(who) => {
            link(client, trace, benefit, LinkAction::Delink, who, look_first).await
        }
        Job::ProfileUpdate(patch) => {
            client.update_profile(trace, benefit, patch).await?;
            Ok(Success::plain("updated"))
        }
        Job::ChildCreate {
            parent_x_token,
            child,
            ..
        } => {
            if look_first {
                let children = client.list_children(trace, benefit, parent_x_token).await?;
                if let Some(found) = children.children.iter().find(|c| c.matches(child)) {
                    return Ok(Success::with(
                        "created_answer_lost",
                        Some(&found.abha_number),
                        format!("child ABHA {}", found.abha_number.masked()),
                    ));
                }
            }
            let created = client
                .create_child(trace, benefit, parent_x_token, child)
                .await?;
            Ok(Success::with(
                created_or_existing(created.is_new, look_first),
                Some(&created.profile.abha_number),
                format!("child ABHA {}", created.profile.abha_number.masked()),
            ))
        }
        Job::ChildUpdate(update) => match client.update_child(trace, benefit, update).await {
            Ok(_) => Ok(Success::plain("updated")),
            // ABDM allows one update of a non-KYC child. After a lost answer, ABDM-1160 means
            // the earlier attempt did the update.
            Err(e) if look_first && e.code() == "ABDM-1160" => Ok(Success {
                outcome: "updated_answer_lost",
                code: Some(e.code()),
                result: None,
                result_masked: None,
            }),
            Err(e) => Err(e),
        },
        Job::AbhaFind(mobile) => {
            let found = client.find_by_mobile(trace, benefit, mobile).await?;
            let numbers: Vec<&Sensitive> = found
                .iter()
                .flat_map(|f| f.abha.iter().map(|a| &a.abha_number))
                .collect();
            let joined = Sensitive::new(
                numbers
                    .iter()
                    .map(|n| n.expose())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            Ok(Success::with(
                "found",
                Some(&joined),
                format!(
                    "{} ABHA(s): {}",
                    numbers.len(),
                    numbers
                        .iter()
                        .map(|n| n.masked())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        Job::AbhaCreateDemo(req) => {
            let created = client.create_by_demo_auth(trace, benefit, req).await?;
            Ok(Success::with(
                created_or_existing(created.is_new, look_first),
                Some(&created.abha_number),
                format!("ABHA {}", created.abha_number.masked()),
            ))
        }
    }
}

/// `created` when ABDM made a new ABHA now; `created_answer_lost` when it returned one that an
/// earlier attempt of this run (whose answer was lost) created; `existing` when the ABHA was
/// there before this run.
fn created_or_existing(is_new: bool, look_first: bool) -> &'static str {
    match (is_new, look_first) {
        (true, _) => "created",
        (false, true) => "created_answer_lost",
        (false, false) => "existing",
    }
}

async fn link(
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
