//! `child-update`: correct a child ABHA's name, birth date and gender.

use chrono::NaiveDate;
use rand::Rng;

use crate::abdm::child::ChildUpdate as Correction;
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{
    ABHA_ALIASES, ColumnSpec, DOB_ALIASES, DOB_DESC, GENDER_ALIASES, GENDER_DESC, NAME_ALIASES,
    NAME_DESC,
};
use crate::jobs::execute::Success;
use crate::jobs::fields::{FieldMap, Fields, id, past_date};
use crate::jobs::kind::Kind;
use crate::jobs::sample::{CHILD_NAMES, SampleRow};
use crate::pii::{AbhaNumber, Gender, PersonName, format_date};

/// Correct a child ABHA's name, birth date and gender.
pub struct ChildUpdate;

impl Kind for ChildUpdate {
    const NAME: &'static str = "child-update";
    const CHANGES_STATE: bool = true;
    const SAMPLE_WEIGHT: u32 = 7;
    const SAMPLE_HEADER: &'static [&'static str] =
        &["external_ref", "abha_number", "name", "dob", "gender"];
    const COLUMNS: &'static [ColumnSpec] = &[
        ColumnSpec {
            name: "abha_number",
            required: true,
            aliases: ABHA_ALIASES,
            description: "the child's ABHA number, 14 digits",
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
    ];
    type Payload = Correction;

    fn parse(row: &mut Fields<'_, '_>, today: NaiveDate) -> Option<Correction> {
        let abha = row.req("abha_number", id(AbhaNumber::parse));
        let name = row.req("name", id(PersonName::parse));
        let dob = row.req("dob", past_date(today));
        let gender = row.req("gender", id(Gender::parse));
        match (abha, name, dob, gender) {
            (Some(abha_number), Some(name), Some(birth_date), Some(gender)) => Some(Correction {
                abha_number,
                name,
                birth_date,
                gender,
            }),
            _ => None,
        }
    }

    fn to_fields(u: &Correction, out: &mut FieldMap) {
        out.insert("abha_number", u.abha_number.expose().to_string());
        out.insert("name", u.name.expose().to_string());
        out.insert("dob", format_date(u.birth_date));
        out.insert("gender", u.gender.as_str().to_string());
    }

    fn subject(u: &Correction) -> String {
        u.abha_number.expose().to_string()
    }

    fn subject_masked(u: &Correction) -> String {
        u.abha_number.masked()
    }

    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        update: &Correction,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        match client.update_child(trace, benefit, update).await {
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
        }
    }

    /// Corrects a child seeded under the person (an unknown ABHA for unknown rows).
    fn sample_row(row: &SampleRow<'_>, _rng: &mut impl Rng) -> Vec<String> {
        let i = row.i;
        let dob = NaiveDate::from_ymd_opt(2018, 6, 1 + (i % 28) as u32).expect("valid date");
        let child = if row.unknown {
            row.abha.clone()
        } else {
            row.world
                .seed_child(&row.person.abha, "Baby Demo", dob, "F")
        };
        vec![
            row.reference.clone(),
            child.expose().to_string(),
            format!("Baby {}", CHILD_NAMES[i % CHILD_NAMES.len()]),
            format_date(dob),
            "F".into(),
        ]
    }

    fn corrupt_sample(rec: &mut [String], _rng: &mut impl Rng) {
        rec[4] = "X".into();
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![
            ("abha_number", "91-1234-5678-9012".into()),
            ("name", "Asha Devi".into()),
            ("dob", "05-03-2020".into()),
            ("gender", "F".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind::ChildUpdate;
    use crate::jobs::testing::assert_example_refuses;

    #[test]
    fn each_rule_names_field_not_value() {
        assert_example_refuses(ChildUpdate, "dob", "11-01-2026");
        assert_example_refuses(ChildUpdate, "abha_number", "9112345678");
        assert_example_refuses(ChildUpdate, "gender", "unknown");
    }
}
