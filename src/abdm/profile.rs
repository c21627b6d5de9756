//! Profile patch and find-ABHA-by-mobile (integrator guide §11.4, §11.6.1).

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::abdm::client::AbdmClient;
use crate::abdm::crypto::Encryptor;
use crate::abdm::error::ClientError;
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{Body, OneOrMany, Request};
use crate::pii::{AbhaNumber, Mobile, Sensitive};

/// `accountStatus` values a benefit programme may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Re-activate a deactivated account.
    Active,
}

impl AccountStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
        }
    }
}

/// `PATCH /v3/profile/account` by a benefit programme.
#[derive(Debug, Clone)]
pub struct ProfilePatch {
    /// Whose profile.
    pub abha_number: AbhaNumber,
    /// New mobile (sent encrypted).
    pub mobile: Option<Mobile>,
    /// New account status.
    pub account_status: Option<AccountStatus>,
    /// New photo, base64 JPEG/PNG.
    pub profile_photo: Option<Sensitive>,
}

/// The profile ABDM returns after a patch (the fields a bulk job reports; the rest is ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    /// ABHA number (masked by ABDM).
    #[serde(
        rename = "ABHANumber",
        alias = "healthIdNumber",
        alias = "abhaNumber",
        default
    )]
    pub abha_number: Sensitive,
    /// Full name.
    #[serde(default)]
    pub name: Sensitive,
    /// Gender.
    #[serde(default)]
    pub gender: Option<String>,
    /// Masked mobile.
    #[serde(default)]
    pub mobile: Option<Sensitive>,
    /// Account status (`ACTIVE`, ...). ABDM sends `status` twice in some answers; the last wins.
    #[serde(default, rename = "status")]
    pub status: Option<String>,
    /// `dd-mm-yyyy` when ABDM sends it as one field.
    #[serde(default)]
    pub dob: Option<Sensitive>,
    /// Year of birth.
    #[serde(default, rename = "yearOfBirth")]
    pub year_of_birth: Option<String>,
}

/// One account in a find-by-mobile answer.
#[derive(Debug, Clone, Deserialize)]
pub struct FoundAbha {
    /// Index to use in a later OTP login.
    #[serde(default)]
    pub index: u32,
    /// ABHA number (masked by ABDM).
    #[serde(rename = "ABHANumber", default)]
    pub abha_number: Sensitive,
    /// Name.
    #[serde(default)]
    pub name: Sensitive,
    /// Gender.
    #[serde(default)]
    pub gender: Option<String>,
}

/// One element of the find-by-mobile answer.
#[derive(Debug, Clone, Deserialize)]
pub struct FoundAccounts {
    /// Transaction id for an OTP follow-up.
    #[serde(rename = "txnId", default)]
    pub txn_id: String,
    /// Accounts on that mobile.
    #[serde(rename = "ABHA", default)]
    pub abha: Vec<FoundAbha>,
}

impl AbdmClient {
    /// `PATCH /v3/profile/account`: mobile (encrypted), account status, photo.
    pub async fn update_profile(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        patch: &ProfilePatch,
    ) -> Result<Profile, ClientError> {
        let build = |e: &Encryptor| {
            let mut body = serde_json::Map::new();
            body.insert("abhaNumber".into(), json!(patch.abha_number.expose()));
            if let Some(m) = &patch.mobile {
                body.insert("mobile".into(), json!(e.encrypt(m.expose())?));
            }
            if let Some(s) = patch.account_status {
                body.insert("accountStatus".into(), json!(s.as_str()));
            }
            if let Some(p) = &patch.profile_photo {
                body.insert("profilePhoto".into(), json!(p.expose()));
            }
            Ok(Value::Object(body))
        };
        self.execute(
            trace,
            Request {
                op: Operation::ProfileUpdate,
                method: Method::PATCH,
                path: "/v3/profile/account".into(),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Encrypted(&build),
            },
        )
        .await
    }

    /// `POST /v3/profile/account/abha/search`: ABHA accounts on a mobile.
    pub async fn find_by_mobile(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        mobile: &Mobile,
    ) -> Result<Vec<FoundAccounts>, ClientError> {
        let build = |e: &Encryptor| {
            Ok(json!({
                "scope": ["search-abha"],
                "mobile": e.encrypt(mobile.expose())?,
            }))
        };
        let answer: OneOrMany<FoundAccounts> = self
            .execute(
                trace,
                Request {
                    op: Operation::AbhaFind,
                    method: Method::POST,
                    path: "/v3/profile/account/abha/search".into(),
                    benefit: Some(benefit),
                    x_token: None,
                    body: Body::Encrypted(&build),
                },
            )
            .await?;
        Ok(answer.into_vec())
    }
}
