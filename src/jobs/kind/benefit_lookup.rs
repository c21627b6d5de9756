//! `benefit-lookup`: the programmes an ABHA number is linked to (read-only).

use chrono::NaiveDate;
use rand::Rng;

use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{ABHA_REQUIRED, ColumnSpec};
use crate::jobs::execute::Success;
use crate::jobs::fields::{FieldMap, Fields, id};
use crate::jobs::kind::Kind;
use crate::jobs::sample::SampleRow;
use crate::pii::AbhaNumber;

/// List the programmes an ABHA number is linked to.
pub struct BenefitLookup;

impl Kind for BenefitLookup {
    const NAME: &'static str = "benefit-lookup";
    const CHANGES_STATE: bool = false;
    const SAMPLE_WEIGHT: u32 = 10;
    const SAMPLE_HEADER: &'static [&'static str] = &["external_ref", "abha_number"];
    const COLUMNS: &'static [ColumnSpec] = &[ABHA_REQUIRED];
    type Payload = AbhaNumber;

    fn parse(row: &mut Fields<'_, '_>, _today: NaiveDate) -> Option<AbhaNumber> {
        row.req("abha_number", id(AbhaNumber::parse))
    }

    fn to_fields(abha: &AbhaNumber, out: &mut FieldMap) {
        out.insert("abha_number", abha.expose().to_string());
    }

    fn subject(abha: &AbhaNumber) -> String {
        abha.expose().to_string()
    }

    fn subject_masked(abha: &AbhaNumber) -> String {
        abha.masked()
    }

    /// `found` when this programme is among the ABHA's, else `not_linked`; the report lists
    /// them all.
    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        abha: &AbhaNumber,
        _look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
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

    fn sample_row(row: &SampleRow<'_>, _rng: &mut impl Rng) -> Vec<String> {
        vec![row.reference.clone(), row.abha.expose().to_string()]
    }

    fn corrupt_sample(rec: &mut [String], _rng: &mut impl Rng) {
        rec[1] = "91-1234-5678".into();
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![("abha_number", "91123456789012".into())]
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind::BenefitLookup;
    use crate::jobs::testing::{assert_one, run};
    use crate::pii::IdError;

    #[test]
    fn subject_is_the_dashed_abha_number() {
        let j = run(BenefitLookup, &[("abha_number", "91123456789012")]).unwrap();
        assert_eq!(j.subject(), "91-1234-5678-9012");
        assert_eq!(j.subject_masked(), "XX-XXXX-XXXX-9012");
    }

    #[test]
    fn abha_number_rule_named_not_shown() {
        let bad_abha = "91-1234-5678-901";
        assert_eq!(
            assert_one(
                BenefitLookup,
                &[("abha_number", bad_abha)],
                "abha_number",
                bad_abha
            ),
            IdError::AbhaNumber.to_string()
        );
        assert_eq!(
            assert_one(BenefitLookup, &[("abha_number", "  ")], "abha_number", "x"),
            IdError::Empty.to_string()
        );
    }
}
