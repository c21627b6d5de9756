//! `abha-find`: the ABHA accounts on a mobile (read-only).

use chrono::NaiveDate;
use rand::Rng;

use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{ColumnSpec, MOBILE_ALIASES, MOBILE_DESC};
use crate::jobs::execute::Success;
use crate::jobs::fields::{FieldMap, Fields, id};
use crate::jobs::kind::Kind;
use crate::jobs::sample::SampleRow;
use crate::pii::{Mobile, Sensitive};

/// Find the ABHA accounts on a mobile.
pub struct AbhaFind;

impl Kind for AbhaFind {
    const NAME: &'static str = "abha-find";
    const CHANGES_STATE: bool = false;
    const SAMPLE_WEIGHT: u32 = 8;
    const SAMPLE_HEADER: &'static [&'static str] = &["external_ref", "mobile"];
    const COLUMNS: &'static [ColumnSpec] = &[ColumnSpec {
        name: "mobile",
        required: true,
        aliases: MOBILE_ALIASES,
        description: MOBILE_DESC,
    }];
    type Payload = Mobile;

    fn parse(row: &mut Fields<'_, '_>, _today: NaiveDate) -> Option<Mobile> {
        row.req("mobile", id(Mobile::parse))
    }

    fn to_fields(mobile: &Mobile, out: &mut FieldMap) {
        out.insert("mobile", mobile.expose().to_string());
    }

    fn subject(mobile: &Mobile) -> String {
        mobile.expose().to_string()
    }

    fn subject_masked(mobile: &Mobile) -> String {
        mobile.masked()
    }

    /// `found`, keeping every ABHA number on the mobile (space-separated, encrypted at rest).
    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        mobile: &Mobile,
        _look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
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

    fn sample_row(row: &SampleRow<'_>, _rng: &mut impl Rng) -> Vec<String> {
        vec![
            row.reference.clone(),
            row.person.mobile.expose().to_string(),
        ]
    }

    fn corrupt_sample(rec: &mut [String], _rng: &mut impl Rng) {
        rec[1] = "98765".into();
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![("mobile", "9876543210".into())]
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind::AbhaFind;
    use crate::jobs::testing::{assert_one, run};

    #[test]
    fn subject_is_the_ten_digits() {
        let j = run(AbhaFind, &[("mobile", "+919876543210")]).unwrap();
        assert_eq!(j.subject(), "9876543210");
        assert_eq!(j.subject_masked(), "XXXXXX3210");
    }

    #[test]
    fn mobile_rule_named_not_shown() {
        assert_one(AbhaFind, &[("mobile", "5876543210")], "mobile", "5876543210");
    }
}
