//! `child-create`: create a child ABHA under a parent's X-token.

use chrono::NaiveDate;
use rand::{Rng, RngExt};
use sha2::{Digest, Sha256};

use crate::abdm::child::ChildDetails;
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{ColumnSpec, GENDER_DESC, NAME_DESC};
use crate::jobs::execute::{Success, created_or_existing};
use crate::jobs::fields::{FieldMap, Fields, id};
use crate::jobs::kind::Kind;
use crate::jobs::sample::{CHILD_NAMES, SampleRow};
use crate::pii::{AbhaNumber, Gender, PersonName, XToken, format_date, parse_past_date};

/// Create a child ABHA under a parent's X-token.
pub struct ChildCreate;

/// A child to create, and whose child it is.
#[derive(Debug, Clone)]
pub struct NewChild {
    /// The parent's X-token.
    pub parent_x_token: XToken,
    /// The parent's ABHA number, when the file gives it.
    pub parent_abha: Option<AbhaNumber>,
    /// The child.
    pub child: ChildDetails,
}

impl Kind for ChildCreate {
    const NAME: &'static str = "child-create";
    const CHANGES_STATE: bool = true;
    const SAMPLE_WEIGHT: u32 = 8;
    const SAMPLE_HEADER: &'static [&'static str] = &[
        "external_ref",
        "parent_x_token",
        "parent_abha_number",
        "child_name",
        "child_dob",
        "child_gender",
    ];
    const COLUMNS: &'static [ColumnSpec] = &[
        ColumnSpec {
            name: "parent_x_token",
            required: true,
            aliases: &["x_token", "xtoken", "parent_xtoken", "parent_token"],
            description: "the parent's X-token from the parent's ABHA login (a leading \
                 \"Bearer \" is removed)",
        },
        ColumnSpec {
            name: "parent_abha_number",
            required: false,
            aliases: &["parent_abha", "parent_abha_no", "parent_health_id_number"],
            description: "the parent's ABHA number, 14 digits (used to key and report the row)",
        },
        ColumnSpec {
            name: "child_name",
            required: true,
            aliases: &["childs_name", "child_full_name"],
            description: NAME_DESC,
        },
        ColumnSpec {
            name: "child_dob",
            required: true,
            aliases: &[
                "child_date_of_birth",
                "child_birth_date",
                "dob",
                "date_of_birth",
            ],
            description: "child's date of birth dd-mm-yyyy, not in the future, \
                 child under 18 on the day the file is checked",
        },
        ColumnSpec {
            name: "child_gender",
            required: true,
            aliases: &["child_sex", "gender", "sex"],
            description: GENDER_DESC,
        },
    ];
    type Payload = NewChild;

    fn parse(row: &mut Fields<'_, '_>, today: NaiveDate) -> Option<NewChild> {
        let token = row.req("parent_x_token", id(XToken::parse));
        let parent = row.opt("parent_abha_number", id(AbhaNumber::parse));
        let name = row.req("child_name", id(PersonName::parse));
        let dob = row.req("child_dob", |s| {
            let d = parse_past_date(s, today).map_err(|e| e.to_string())?;
            match today.years_since(d) {
                Some(years) if years < 18 => Ok(d),
                _ => Err(
                    "child must be under 18 years old on the day the file is checked".to_string(),
                ),
            }
        });
        let gender = row.req("child_gender", id(Gender::parse));
        match (token, name, dob, gender) {
            (Some(parent_x_token), Some(name), Some(birth_date), Some(gender))
                if !row.has_errors() =>
            {
                Some(NewChild {
                    parent_x_token,
                    parent_abha: parent,
                    child: ChildDetails {
                        name,
                        birth_date,
                        gender,
                    },
                })
            }
            _ => None,
        }
    }

    fn to_fields(j: &NewChild, out: &mut FieldMap) {
        out.insert("parent_x_token", j.parent_x_token.expose().to_string());
        if let Some(p) = &j.parent_abha {
            out.insert("parent_abha_number", p.expose().to_string());
        }
        out.insert("child_name", j.child.name.expose().to_string());
        out.insert("child_dob", format_date(j.child.birth_date));
        out.insert("child_gender", j.child.gender.as_str().to_string());
    }

    /// The parent ABHA number if given, else `x-token:` and the hex SHA-256 of the token.
    fn subject(j: &NewChild) -> String {
        match &j.parent_abha {
            Some(a) => a.expose().to_string(),
            None => format!("x-token:{}", sha256_hex(j.parent_x_token.expose())),
        }
    }

    fn subject_masked(j: &NewChild) -> String {
        match &j.parent_abha {
            Some(a) => a.masked(),
            None => format!("parent X-token {}", j.parent_x_token.masked()),
        }
    }

    /// After a lost answer (`look_first`) the parent's children are listed first: if the child
    /// is there, ABDM created it and creating again would make a twin.
    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        j: &NewChild,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        if look_first {
            let children = client
                .list_children(trace, benefit, &j.parent_x_token)
                .await?;
            if let Some(found) = children.children.iter().find(|c| c.matches(&j.child)) {
                return Ok(Success::with(
                    "created_answer_lost",
                    Some(&found.abha_number),
                    format!("child ABHA {}", found.abha_number.masked()),
                ));
            }
        }
        let created = client
            .create_child(trace, benefit, &j.parent_x_token, &j.child)
            .await?;
        Ok(Success::with(
            created_or_existing(created.is_new, look_first),
            Some(&created.profile.abha_number),
            format!("child ABHA {}", created.profile.abha_number.masked()),
        ))
    }

    /// A child born 2015-2024 under the person's X-token, with the person's family name.
    fn sample_row(row: &SampleRow<'_>, _rng: &mut impl Rng) -> Vec<String> {
        let (i, p) = (row.i, &row.person);
        let dob = NaiveDate::from_ymd_opt(
            2015 + (i % 10) as i32,
            1 + (i % 12) as u32,
            1 + (i % 28) as u32,
        )
        .expect("valid date");
        vec![
            row.reference.clone(),
            row.world.x_token(&p.abha, row.x_token_expires),
            p.abha.expose().to_string(),
            format!(
                "{} {}",
                CHILD_NAMES[i % CHILD_NAMES.len()],
                p.name.expose().split(' ').next_back().unwrap_or("Kumar")
            ),
            format_date(dob),
            ["M", "F"][i % 2].into(),
        ]
    }

    /// An impossible or a future birth date.
    fn corrupt_sample(rec: &mut [String], rng: &mut impl Rng) {
        rec[4] = if rng.random_bool(0.5) {
            "31-02-2020".into()
        } else {
            "01-01-2090".into()
        }
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![
            (
                "parent_x_token",
                "Bearer sbx1.12345678901234.1767225600.sig".into(),
            ),
            ("parent_abha_number", "91-1111-2222-3333".into()),
            ("child_name", "Asha  Devi".into()),
            ("child_dob", "5/3/2020".into()),
            ("child_gender", "female".into()),
        ]
    }
}

fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::kind::JobKind;
    use crate::jobs::testing::{col, errors, run_owned};
    use crate::pii::IdError;

    #[test]
    fn subject_is_the_parent() {
        let mut cells = ChildCreate::example();
        let j = run_owned(JobKind::ChildCreate, &cells).unwrap();
        assert_eq!(j.subject(), "91-1111-2222-3333");
        cells.retain(|(k, _)| *k != "parent_abha_number");
        let j = run_owned(JobKind::ChildCreate, &cells).unwrap();
        let expected = sha256_hex("sbx1.12345678901234.1767225600.sig");
        assert_eq!(j.subject(), format!("x-token:{expected}"));
        assert_eq!(j.subject_masked(), "parent X-token ***");
    }

    #[test]
    fn all_errors_of_a_row_are_reported() {
        let e = errors(
            JobKind::ChildCreate,
            &[("child_dob", "01-01-2000"), ("child_gender", "F")],
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["parent_x_token", "child_name", "child_dob"]);
    }

    #[test]
    fn child_must_be_under_18() {
        let mut cells = ChildCreate::example();
        let set = |cells: &mut Vec<(&'static str, String)>, dob: &str| {
            for c in cells.iter_mut() {
                if c.0 == "child_dob" {
                    c.1 = dob.to_string();
                }
            }
        };
        // Turns 18 on today's date: rejected.
        set(&mut cells, "10-01-2008");
        let e = run_owned(JobKind::ChildCreate, &cells).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "child_dob");
        assert!(e[0].reason.contains("under 18"));
        assert!(!e[0].reason.contains("2008"));
        // Turns 18 tomorrow: accepted.
        set(&mut cells, "11-01-2008");
        assert!(run_owned(JobKind::ChildCreate, &cells).is_ok());
        // Not born yet.
        set(&mut cells, "11-01-2026");
        let e = run_owned(JobKind::ChildCreate, &cells).unwrap_err();
        assert_eq!(e[0].reason, IdError::FutureDate.to_string());
    }

    #[test]
    fn aliases_map() {
        let token = col(JobKind::ChildCreate, "parent_x_token");
        assert!(token.matches("X-Token"));
        assert!(token.matches("parentXToken"));
        assert!(col(JobKind::ChildCreate, "child_name").matches("Child's Name"));
    }
}
