//! One job → one call sequence → one answer.
//!
//! ABDM's "already done" answers (ABDM-1140, ABDM-1138) come back as success here. A child
//! creation on its second or later attempt first lists the parent's children: if the child
//! is there, the first attempt's answer was lost after ABDM created it, and creating again would
//! make a twin.

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::{AbdmClient, CallTrace, ClientError, Disposition};
use crate::jobs::kind::Job;
use crate::pii::Sensitive;

/// What a successful job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    /// For reports: `linked`, `already_linked`, `delinked`, `already_delinked`, `found`,
    /// `not_linked`, `updated`, `created`, `existing`, `created_before` (found after a lost answer).
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

/// Runs `job` once (its HTTP attempts land in `trace`). `attempt` is the job's attempt number:
/// from the second attempt on, a child creation first looks for the child.
pub async fn execute(
    client: &AbdmClient,
    benefit: &str,
    job: &Job,
    attempt: i32,
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
        Job::BenefitLink(who) => link(client, trace, benefit, LinkAction::Link, who).await,
        Job::BenefitDelink(who) => link(client, trace, benefit, LinkAction::Delink, who).await,
        Job::ProfileUpdate(patch) => {
            client.update_profile(trace, benefit, patch).await?;
            Ok(Success::plain("updated"))
        }
        Job::ChildCreate {
            parent_x_token,
            child,
            ..
        } => {
            if attempt > 1 {
                let children = client.list_children(trace, benefit, parent_x_token).await?;
                if let Some(found) = children.children.iter().find(|c| c.matches(child)) {
                    return Ok(Success::with(
                        "created_before",
                        Some(&found.abha_number),
                        format!("child ABHA {}", found.abha_number.masked()),
                    ));
                }
            }
            let created = client
                .create_child(trace, benefit, parent_x_token, child)
                .await?;
            Ok(Success::with(
                created_or_existing(created.is_new),
                Some(&created.profile.abha_number),
                format!("child ABHA {}", created.profile.abha_number.masked()),
            ))
        }
        Job::ChildUpdate(update) => match client.update_child(trace, benefit, update).await {
            Ok(_) => Ok(Success::plain("updated")),
            // ABDM allows one update of a non-KYC child. On a retry, ABDM-1160 means the first
            // attempt (whose answer was lost) did the update.
            Err(e) if attempt > 1 && e.code() == "ABDM-1160" => Ok(Success {
                outcome: "updated_before",
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
                created_or_existing(created.is_new),
                Some(&created.abha_number),
                format!("ABHA {}", created.abha_number.masked()),
            ))
        }
    }
}

/// `created` when ABDM made a new ABHA, `existing` when it returned one it had.
fn created_or_existing(is_new: bool) -> &'static str {
    if is_new { "created" } else { "existing" }
}

async fn link(
    client: &AbdmClient,
    trace: &mut CallTrace,
    benefit: &str,
    action: LinkAction,
    who: &Beneficiary,
) -> Result<Success, ClientError> {
    let (done, already) = match action {
        LinkAction::Link => ("linked", "already_linked"),
        LinkAction::Delink => ("delinked", "already_delinked"),
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
