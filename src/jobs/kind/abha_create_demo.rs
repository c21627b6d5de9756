//! `abha-create-demo`: create (or find) an ABHA by Aadhaar demographic authentication.

use chrono::NaiveDate;
use rand::Rng;

use crate::abdm::enrol::DemoAuthRequest;
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{
    AADHAAR_ALIASES, AADHAAR_DESC, ColumnSpec, DOB_ALIASES, DOB_DESC, GENDER_ALIASES,
    GENDER_DESC, MOBILE_ALIASES, MOBILE_DESC, NAME_ALIASES, NAME_DESC,
};
use crate::jobs::execute::{Success, created_or_existing};
use crate::jobs::fields::{FieldMap, Fields, id, past_date};
use crate::jobs::kind::Kind;
use crate::jobs::sample::{SampleRow, bad_aadhaar};
use crate::pii::{Aadhaar, Gender, Mobile, PersonName, format_date};

/// Create (or find) an ABHA by Aadhaar demographic authentication.
pub struct AbhaCreateDemo;

impl Kind for AbhaCreateDemo {
    const NAME: &'static str = "abha-create-demo";
    const CHANGES_STATE: bool = true;
    const SAMPLE_WEIGHT: u32 = 10;
    const SAMPLE_HEADER: &'static [&'static str] = &[
        "external_ref",
        "aadhaar",
        "name",
        "dob",
        "gender",
        "state_code",
        "district_code",
    ];
    const COLUMNS: &'static [ColumnSpec] = &[
        ColumnSpec {
            name: "aadhaar",
            required: true,
            aliases: AADHAAR_ALIASES,
            description: AADHAAR_DESC,
        },
        ColumnSpec {
            name: "name",
            required: true,
            aliases: NAME_ALIASES,
            description: NAME_DESC,
        },
        ColumnSpec {
            name: "dob",
            required: true,
            aliases: DOB_ALIASES,
            description: DOB_DESC,
        },
        ColumnSpec {
            name: "gender",
            required: true,
            aliases: GENDER_ALIASES,
            description: GENDER_DESC,
        },
        ColumnSpec {
            name: "state_code",
            required: true,
            aliases: &["lgd_state_code", "state_lgd_code"],
            description: "LGD state code, 1 or 2 digits",
        },
        ColumnSpec {
            name: "district_code",
            required: true,
            aliases: &["lgd_district_code", "district_lgd_code"],
            description: "LGD district code, 1 to 3 digits",
        },
        ColumnSpec {
            name: "mobile",
            required: false,
            aliases: MOBILE_ALIASES,
            description: MOBILE_DESC,
        },
        ColumnSpec {
            name: "pin_code",
            required: false,
            aliases: &["pincode", "pin", "postal_code"],
            description: "PIN code, 6 digits, not starting with 0",
        },
    ];
    type Payload = DemoAuthRequest;

    fn parse(row: &mut Fields<'_, '_>, today: NaiveDate) -> Option<DemoAuthRequest> {
        let aadhaar = row.req("aadhaar", id(Aadhaar::parse));
        let name = row.req("name", id(PersonName::parse));
        let dob = row.req("dob", past_date(today));
        let gender = row.req("gender", id(Gender::parse));
        let state = row.req("state_code", digits(1, 2, "state_code"));
        let district = row.req("district_code", digits(1, 3, "district_code"));
        let mobile = row.opt("mobile", id(Mobile::parse));
        let pin = row.opt("pin_code", pin_code);
        match (aadhaar, name, dob, gender, state, district) {
            (
                Some(aadhaar),
                Some(name),
                Some(birth_date),
                Some(gender),
                Some(state_code),
                Some(district_code),
            ) if !row.has_errors() => Some(DemoAuthRequest {
                aadhaar,
                name,
                birth_date,
                gender,
                state_code,
                district_code,
                mobile,
                pin_code: pin,
            }),
            _ => None,
        }
    }

    fn to_fields(d: &DemoAuthRequest, out: &mut FieldMap) {
        out.insert("aadhaar", d.aadhaar.expose().to_string());
        out.insert("name", d.name.expose().to_string());
        out.insert("dob", format_date(d.birth_date));
        out.insert("gender", d.gender.as_str().to_string());
        out.insert("state_code", d.state_code.clone());
        out.insert("district_code", d.district_code.clone());
        if let Some(mobile) = &d.mobile {
            out.insert("mobile", mobile.expose().to_string());
        }
        if let Some(pin) = &d.pin_code {
            out.insert("pin_code", pin.clone());
        }
    }

    fn subject(d: &DemoAuthRequest) -> String {
        d.aadhaar.expose().to_string()
    }

    fn subject_masked(d: &DemoAuthRequest) -> String {
        d.aadhaar.masked()
    }

    /// The creation is idempotent at ABDM (`isNew: false` for an ABHA that exists), so a lost
    /// answer needs no look first, only the right outcome name.
    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        req: &DemoAuthRequest,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        let created = client.create_by_demo_auth(trace, benefit, req).await?;
        Ok(Success::with(
            created_or_existing(created.is_new, look_first),
            Some(&created.abha_number),
            format!("ABHA {}", created.abha_number.masked()),
        ))
    }

    /// Half are new to ABDM (`created`), half already have an ABHA (`existing`).
    fn sample_row(row: &SampleRow<'_>, _rng: &mut impl Rng) -> Vec<String> {
        let p = &row.person;
        let aadhaar = if row.i % 2 == 0 {
            row.world.unknown_aadhaar(row.index)
        } else {
            p.aadhaar.clone()
        };
        vec![
            row.reference.clone(),
            aadhaar.expose().to_string(),
            p.name.expose().to_string(),
            format_date(p.birth_date),
            p.gender.as_str().into(),
            p.state_code.clone(),
            p.district_code.clone(),
        ]
    }

    fn corrupt_sample(rec: &mut [String], _rng: &mut impl Rng) {
        rec[1] = bad_aadhaar(&rec[1]);
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![
            ("aadhaar", crate::jobs::testing::aadhaar("23456789012")),
            ("name", "Ravi Kumar".into()),
            ("dob", "01-01-1990".into()),
            ("gender", "m".into()),
            ("state_code", "9".into()),
            ("district_code", "143".into()),
            ("mobile", "9876543210".into()),
            ("pin_code", "226001".into()),
        ]
    }
}

/// `min` to `max` ASCII digits (LGD codes).
fn digits(
    min: usize,
    max: usize,
    what: &'static str,
) -> impl FnOnce(&str) -> Result<String, String> {
    move |s| {
        if (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(s.to_string())
        } else if min == max {
            Err(format!("{what} must be {min} digits"))
        } else {
            Err(format!("{what} must be {min} to {max} digits"))
        }
    }
}

fn pin_code(s: &str) -> Result<String, String> {
    if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0') {
        Ok(s.to_string())
    } else {
        Err("PIN code must be 6 digits, not starting with 0".into())
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind::AbhaCreateDemo;
    use crate::jobs::testing::{assert_example_refuses, errors};

    #[test]
    fn each_rule_names_field_not_value() {
        let refuses = |field, value| assert_example_refuses(AbhaCreateDemo, field, value);
        refuses("name", "R2D2");
        refuses("dob", "31-02-1990");
        refuses("dob", "01-01-2027");
        refuses("gender", "X");
        refuses("state_code", "123");
        refuses("district_code", "1234");
        refuses("district_code", "12a");
        refuses("pin_code", "012345");
        refuses("pin_code", "22600");
        refuses("mobile", "12345");
        refuses("aadhaar", "123456789012");
    }

    #[test]
    fn all_errors_of_a_row_are_reported() {
        let e = errors(
            AbhaCreateDemo,
            &[
                ("aadhaar", "12345"),
                ("name", "R2D2"),
                ("dob", ""),
                ("gender", "Q"),
                ("state_code", "100"),
                ("district_code", "7"),
                ("pin_code", "0"),
            ],
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["aadhaar", "name", "dob", "gender", "state_code", "pin_code"]
        );
    }
}
