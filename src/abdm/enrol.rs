//! ABHA creation by demographic authentication (integrator guide §5.0).

use chrono::NaiveDate;
use reqwest::Method;
use serde_json::{Value, json};

use crate::abdm::client::AbdmClient;
use crate::abdm::crypto::Encryptor;
use crate::abdm::error::ClientError;
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{Body, Request};
use crate::pii::{Aadhaar, Gender, Mobile, PersonName, Sensitive, format_date};

/// What ABDM needs to create (or find) an ABHA for an Aadhaar holder without an OTP.
#[derive(Debug, Clone)]
pub struct DemoAuthRequest {
    /// Aadhaar number (sent encrypted).
    pub aadhaar: Aadhaar,
    /// Name as in Aadhaar.
    pub name: PersonName,
    /// Date of birth.
    pub birth_date: NaiveDate,
    /// Gender.
    pub gender: Gender,
    /// LGD state code.
    pub state_code: String,
    /// LGD district code.
    pub district_code: String,
    /// Optional mobile.
    pub mobile: Option<Mobile>,
    /// Optional PIN code.
    pub pin_code: Option<String>,
}

/// The ABHA created or found.
#[derive(Debug, Clone)]
pub struct DemoAuthCreated {
    /// The ABHA number as ABDM returned it.
    pub abha_number: Sensitive,
    /// False when the Aadhaar already had an ABHA ("existing" in reports).
    pub is_new: bool,
}

impl DemoAuthCreated {
    /// Reads the answer: the guide's shape (`healthIdNumber`, `new`) or the profile shape
    /// (`ABHANumber` or `ABHAProfile.ABHANumber`, `isNew`).
    pub(crate) fn from_json(v: &Value) -> Option<Self> {
        let number = v
            .get("healthIdNumber")
            .or_else(|| v.get("ABHANumber"))
            .or_else(|| v.get("ABHAProfile").and_then(|p| p.get("ABHANumber")))
            .and_then(Value::as_str)?;
        let is_new = v
            .get("new")
            .or_else(|| v.get("isNew"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        Some(Self {
            abha_number: Sensitive::new(number),
            is_new,
        })
    }
}

impl AbdmClient {
    /// `POST /v3/enrollment/enrol/byAadhaar` with `authMethods: ["demo_auth"]`: creates an
    /// ABHA, or returns the existing one with `is_new: false`.
    pub async fn create_by_demo_auth(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        req: &DemoAuthRequest,
    ) -> Result<DemoAuthCreated, ClientError> {
        let build = |e: &Encryptor| {
            let mut demo = serde_json::Map::new();
            demo.insert(
                "aadhaarNumber".into(),
                json!(e.encrypt(req.aadhaar.expose())?),
            );
            demo.insert("name".into(), json!(req.name.expose()));
            demo.insert("dateOfBirth".into(), json!(format_date(req.birth_date)));
            demo.insert("gender".into(), json!(req.gender.as_str()));
            demo.insert("stateCode".into(), json!(req.state_code));
            demo.insert("districtCode".into(), json!(req.district_code));
            if let Some(m) = &req.mobile {
                demo.insert("mobile".into(), json!(e.encrypt(m.expose())?));
            }
            if let Some(p) = &req.pin_code {
                demo.insert("pinCode".into(), json!(p));
            }
            Ok(json!({
                "authData": { "authMethods": ["demo_auth"], "demo_auth": Value::Object(demo) },
                "consent": { "code": "abha-enrollment", "version": "1.4" },
            }))
        };
        let answer: Value = self
            .execute(
                trace,
                Request {
                    op: Operation::DemoAuthCreate,
                    method: Method::POST,
                    path: "/v3/enrollment/enrol/byAadhaar".into(),
                    benefit: Some(benefit),
                    x_token: None,
                    body: Body::Encrypted(&build),
                },
            )
            .await?;
        DemoAuthCreated::from_json(&answer).ok_or(ClientError::Decode {
            status: 200,
            reason: "no healthIdNumber/ABHANumber in the enrolment answer".into(),
        })
    }
}
