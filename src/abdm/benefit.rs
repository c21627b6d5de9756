//! Benefit search, lookup, link and de-link (integrator guide §11.3, §11.5).

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::abdm::client::AbdmClient;
use crate::abdm::crypto::Encryptor;
use crate::abdm::error::ClientError;
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{Body, OneOrMany, Request};
use crate::pii::{Aadhaar, AbhaNumber, Sensitive};

/// Who a benefit call is about: an ABHA number or an Aadhaar number (ABDM's "xmlUid").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beneficiary {
    /// By ABHA number (sent with its dashes).
    Abha(AbhaNumber),
    /// By Aadhaar number.
    Aadhaar(Aadhaar),
}

impl Beneficiary {
    /// The plaintext that is encrypted into `loginId`.
    pub(crate) fn login_id(&self) -> &str {
        match self {
            Self::Abha(a) => a.expose(),
            Self::Aadhaar(a) => a.expose(),
        }
    }

    /// `loginHint` of the search call (§11.5: `abha-number` / `xmlUid`).
    pub(crate) fn search_hint(&self) -> &'static str {
        match self {
            Self::Abha(_) => "abha-number",
            Self::Aadhaar(_) => "xmlUid",
        }
    }

    /// `loginHint` of the link call (§11.3: `abha-number` / `xmluid`).
    pub(crate) fn link_hint(&self) -> &'static str {
        match self {
            Self::Abha(_) => "abha-number",
            Self::Aadhaar(_) => "xmluid",
        }
    }

    /// Masked form for reports.
    pub fn masked(&self) -> String {
        match self {
            Self::Abha(a) => a.masked(),
            Self::Aadhaar(a) => a.masked(),
        }
    }
}

/// Link or de-link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// `scope: ["link"]`.
    Link,
    /// `scope: ["de-link"]`.
    Delink,
}

impl LinkAction {
    /// The scope value.
    pub fn scope(self) -> &'static str {
        match self {
            Self::Link => "link",
            Self::Delink => "de-link",
        }
    }
}

/// One benefit record from `POST /v3/profile/benefit/search`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenefitRecord {
    /// State code (a number in the guide, a string in some answers).
    #[serde(default)]
    pub state_code: Value,
    /// Benefit (programme) name.
    pub benefit_name: String,
    /// ABDM's id of the benefit record.
    #[serde(default)]
    pub benefit_id: Option<String>,
    /// The ABHA number (ABDM masks its last digits).
    #[serde(default)]
    pub abha_number: Sensitive,
    /// Record status as ABDM sends it (0 = active in the guide).
    #[serde(default)]
    pub status: Value,
}

/// One programme in the lookup answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Programme {
    /// Benefit name.
    pub benefit_name: String,
}

/// Answer of `GET /v3/profile/benefit/abha/{abhaNumber}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenefitProgrammes {
    /// The ABHA number.
    #[serde(default)]
    pub abha_number: Sensitive,
    /// Programmes the ABHA is linked to.
    #[serde(default)]
    pub programme: Vec<Programme>,
}

impl BenefitProgrammes {
    /// True when `benefit` is among the programmes.
    pub fn has(&self, benefit: &str) -> bool {
        self.programme.iter().any(|p| p.benefit_name == benefit)
    }
}

/// Answer of `POST /v3/profile/benefit/linkAndDelink`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkResult {
    /// Benefit name.
    #[serde(default)]
    pub benefit_name: String,
    /// The ABHA number (masked by ABDM).
    #[serde(default)]
    pub health_id: Sensitive,
    /// ABDM's status text.
    #[serde(default)]
    pub status: String,
}

impl AbdmClient {
    /// `POST /v3/profile/benefit/search`: benefit records of an ABHA or Aadhaar holder.
    pub async fn benefit_search(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        who: &Beneficiary,
    ) -> Result<Vec<BenefitRecord>, ClientError> {
        let build = |e: &Encryptor| {
            Ok(json!({
                "scope": ["search"],
                "loginHint": who.search_hint(),
                "loginId": e.encrypt(who.login_id())?,
            }))
        };
        let answer: OneOrMany<BenefitRecord> = self
            .execute(
                trace,
                Request {
                    op: Operation::BenefitSearch,
                    method: Method::POST,
                    path: "/v3/profile/benefit/search".into(),
                    benefit: Some(benefit),
                    x_token: None,
                    body: Body::Encrypted(&build),
                },
            )
            .await?;
        Ok(answer.into_vec())
    }

    /// `GET /v3/profile/benefit/abha/{abhaNumber}`: programmes an ABHA is linked to.
    pub async fn benefit_lookup(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        abha: &AbhaNumber,
    ) -> Result<BenefitProgrammes, ClientError> {
        self.execute(
            trace,
            Request {
                op: Operation::BenefitLookup,
                method: Method::GET,
                path: format!("/v3/profile/benefit/abha/{}", abha.expose()),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Empty,
            },
        )
        .await
    }

    /// `POST /v3/profile/benefit/linkAndDelink`. ABDM-1140 (already linked) and ABDM-1138
    /// (already de-linked) come back as `Err` with [`Disposition::IdempotentSuccess`].
    pub async fn link(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        action: LinkAction,
        who: &Beneficiary,
    ) -> Result<LinkResult, ClientError> {
        let build = |e: &Encryptor| {
            Ok(json!({
                "scope": [action.scope()],
                "loginHint": who.link_hint(),
                "loginId": e.encrypt(who.login_id())?,
            }))
        };
        self.execute(
            trace,
            Request {
                op: match action {
                    LinkAction::Link => Operation::Link,
                    LinkAction::Delink => Operation::Delink,
                },
                method: Method::POST,
                path: "/v3/profile/benefit/linkAndDelink".into(),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Encrypted(&build),
            },
        )
        .await
    }
}
