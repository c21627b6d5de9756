//! ABHA creation by demographic authentication (integrator guide §5.0).

use chrono::NaiveDate;
use serde_json::Value;

use crate::pii::{Aadhaar, Gender, Mobile, PersonName, Sensitive};

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
