//! `abha-bulk tour`: one real call of every operation, with what each returned.
//!
//! Against the embedded sandbox the identifiers come from its seeded population; against ABDM
//! they come from the command line (operations without the identifiers they need are skipped).
//! Output shows identifiers masked only.

use std::fmt::Write as _;

use chrono::{NaiveDate, Utc};

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::child::{ChildDetails, ChildUpdate};
use crate::abdm::enrol::DemoAuthRequest;
use crate::abdm::profile::{AccountStatus, ProfilePatch};
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::pii::{Aadhaar, AbhaNumber, Gender, Mobile, PersonName, XToken};
use crate::sandbox::Population;

/// Identifiers the tour uses.
#[derive(Debug, Clone)]
pub struct TourInputs {
    /// Benefit name to call with.
    pub benefit: String,
    /// An ABHA number to search, link and de-link.
    pub abha: Option<AbhaNumber>,
    /// An Aadhaar number to search by.
    pub aadhaar: Option<Aadhaar>,
    /// An ABHA number whose profile to patch (status ACTIVE, and `new_mobile` if given).
    pub patch_abha: Option<AbhaNumber>,
    /// New mobile for the profile patch.
    pub new_mobile: Option<Mobile>,
    /// A mobile to find ABHAs by.
    pub find_mobile: Option<Mobile>,
    /// A parent's X-token for child creation and listing.
    pub parent_x_token: Option<XToken>,
    /// Demographic details for ABHA creation.
    pub demo: Option<DemoAuthRequest>,
}

impl TourInputs {
    /// Inputs drawn from the sandbox population: persons 0 to 4, and one Aadhaar nobody has.
    pub fn from_population(p: &Population, benefit: &str) -> Self {
        let person = |i| p.person(i);
        let parent = person(3);
        let stranger = person(4);
        Self {
            benefit: benefit.to_string(),
            abha: Some(person(0).abha),
            aadhaar: Some(person(0).aadhaar),
            patch_abha: Some(person(1).abha),
            new_mobile: Some(p.mobile(p.size() + 7)),
            find_mobile: Some(person(2).mobile),
            parent_x_token: Some(
                XToken::parse(&p.x_token(&parent.abha, Utc::now().timestamp() + 1800))
                    .expect("token"),
            ),
            demo: Some(DemoAuthRequest {
                aadhaar: p.unknown_aadhaar(Utc::now().timestamp_subsec_micros() as u64),
                name: stranger.name,
                birth_date: stranger.birth_date,
                gender: stranger.gender,
                state_code: stranger.state_code,
                district_code: stranger.district_code,
                mobile: None,
                pin_code: Some("560001".into()),
            }),
        }
    }
}

/// One line of the tour's output.
#[derive(Debug, Clone)]
pub struct TourStep {
    /// Operation name.
    pub operation: &'static str,
    /// HTTP status of the last attempt.
    pub http_status: Option<u16>,
    /// `ok`, or the disposition of the error.
    pub outcome: String,
    /// What came back (masked).
    pub detail: String,
}

impl std::fmt::Display for TourStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self
            .http_status
            .map_or_else(|| "---".to_string(), |s| s.to_string());
        write!(
            f,
            "{:<22} HTTP {status}  {:<19} {}",
            self.operation, self.outcome, self.detail
        )
    }
}

fn step<T>(
    operation: &'static str,
    trace: &CallTrace,
    result: Result<T, ClientError>,
    describe: impl FnOnce(T) -> String,
) -> TourStep {
    let http_status = trace.last().and_then(|a| a.http_status);
    match result {
        Ok(v) => TourStep {
            operation,
            http_status,
            outcome: "ok".into(),
            detail: describe(v),
        },
        Err(e) => TourStep {
            operation,
            http_status,
            outcome: e.disposition().as_str().into(),
            detail: format!("{} ({})", e.code(), e),
        },
    }
}

/// Runs every operation once (twice for link/de-link, to show ABDM-1140/1138) and returns the
/// steps in order. Errors are steps too: the tour always runs to the end.
pub async fn run(client: &AbdmClient, inputs: &TourInputs) -> Vec<TourStep> {
    let b = inputs.benefit.as_str();
    let mut steps = Vec::new();
    macro_rules! call {
        ($name:literal, |$t:ident| $call:expr, $describe:expr) => {{
            let mut trace = CallTrace::default();
            let $t = &mut trace;
            let result = $call.await;
            steps.push(step($name, &trace, result, $describe));
        }};
    }
    call!("session", |t| client.session().token(t), |_| {
        "gateway access token obtained".to_string()
    });
    call!(
        "certificate",
        |t| client.encryptor(t),
        |e: std::sync::Arc<crate::abdm::crypto::Encryptor>| format!(
            "key fingerprint {}, {:?}",
            e.fingerprint(),
            e.padding()
        )
    );
    if let Some(abha) = &inputs.abha {
        let who = Beneficiary::Abha(abha.clone());
        call!(
            "benefit-search (ABHA)",
            |t| client.benefit_search(t, b, &who),
            |r: Vec<crate::abdm::benefit::BenefitRecord>| format!("{} benefit record(s)", r.len())
        );
        for _ in 0..2 {
            call!(
                "benefit-link",
                |t| client.link(t, b, LinkAction::Link, &who),
                |r: crate::abdm::benefit::LinkResult| format!(
                    "{} ({})",
                    r.status,
                    r.health_id.masked()
                )
            );
        }
        call!(
            "benefit-lookup",
            |t| client.benefit_lookup(t, b, abha),
            |r: crate::abdm::benefit::BenefitProgrammes| format!(
                "programmes: {}",
                r.programme
                    .iter()
                    .map(|p| p.benefit_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
    }
    if let Some(aadhaar) = &inputs.aadhaar {
        let who = Beneficiary::Aadhaar(aadhaar.clone());
        call!(
            "benefit-search (Aadhaar)",
            |t| client.benefit_search(t, b, &who),
            |r: Vec<crate::abdm::benefit::BenefitRecord>| {
                let mut s = format!("{} benefit record(s)", r.len());
                for rec in &r {
                    let _ = write!(s, "; {} on {}", rec.benefit_name, rec.abha_number.masked());
                }
                s
            }
        );
    }
    if let Some(abha) = &inputs.patch_abha {
        let patch = ProfilePatch {
            abha_number: abha.clone(),
            mobile: inputs.new_mobile.clone(),
            account_status: Some(AccountStatus::Active),
            profile_photo: None,
        };
        call!(
            "profile-update",
            |t| client.update_profile(t, b, &patch),
            |p: crate::abdm::profile::Profile| format!(
                "status {}, mobile {}",
                p.status.unwrap_or_default(),
                p.mobile.map(|m| m.masked()).unwrap_or_default()
            )
        );
    }
    if let Some(mobile) = &inputs.find_mobile {
        call!(
            "abha-find (mobile)",
            |t| client.find_by_mobile(t, b, mobile),
            |r: Vec<crate::abdm::profile::FoundAccounts>| format!(
                "{} account(s): {}",
                r.iter().map(|a| a.abha.len()).sum::<usize>(),
                r.iter()
                    .flat_map(|a| a.abha.iter().map(|x| x.abha_number.masked()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
    }
    if let Some(parent) = &inputs.parent_x_token {
        let child = ChildDetails {
            name: PersonName::parse("Baby Tour").expect("valid"),
            birth_date: NaiveDate::from_ymd_opt(2023, 5, 17).expect("valid"),
            gender: Gender::F,
        };
        let mut created = None;
        {
            let mut trace = CallTrace::default();
            let result = client.create_child(&mut trace, b, parent, &child).await;
            if let Ok(c) = &result {
                created = AbhaNumber::parse(c.profile.abha_number.expose()).ok();
            }
            steps.push(step("child-create", &trace, result, |c| {
                format!(
                    "{} {} ({})",
                    c.message,
                    c.profile.abha_number.masked(),
                    c.profile.abha_type.unwrap_or_default()
                )
            }));
        }
        call!(
            "child-list",
            |t| client.list_children(t, b, parent),
            |c: crate::abdm::child::Children| format!("{} child(ren)", c.children_count)
        );
        if let Some(abha) = created {
            let update = ChildUpdate {
                abha_number: abha,
                name: PersonName::parse("Baby Tour Renamed").expect("valid"),
                birth_date: child.birth_date,
                gender: child.gender,
            };
            call!(
                "child-update",
                |t| client.update_child(t, b, &update),
                |p: crate::abdm::profile::Profile| format!("name now {}", p.name.masked())
            );
        }
    }
    if let Some(demo) = &inputs.demo {
        for _ in 0..2 {
            call!(
                "abha-create-demo",
                |t| client.create_by_demo_auth(t, b, demo),
                |r: crate::abdm::enrol::DemoAuthCreated| format!(
                    "{} {}",
                    if r.is_new { "created" } else { "existing" },
                    r.abha_number.masked()
                )
            );
        }
    }
    if let Some(abha) = &inputs.abha {
        let who = Beneficiary::Abha(abha.clone());
        for _ in 0..2 {
            call!(
                "benefit-delink",
                |t| client.link(t, b, LinkAction::Delink, &who),
                |r: crate::abdm::benefit::LinkResult| format!(
                    "{} ({})",
                    r.status,
                    r.health_id.masked()
                )
            );
        }
    }
    steps
}
