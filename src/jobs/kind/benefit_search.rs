//! `benefit-search`: the benefit records of one beneficiary (read-only).

use crate::abdm::benefit::Beneficiary;
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::execute::Success;
use crate::jobs::kind::Kind;

/// Search benefit records by ABHA number or Aadhaar.
pub struct BenefitSearch;

impl Kind for BenefitSearch {
    const NAME: &'static str = "benefit-search";
    const CHANGES_STATE: bool = false;
    const SAMPLE_WEIGHT: u32 = 12;
    // Columns, parsing, subject and sample rows: those of every beneficiary row.
    beneficiary_row!(seed_link: false);

    /// `found` when one of the records is of this programme, else `not_linked`; the report
    /// lists the programmes found, and for an Aadhaar row the (masked) ABHA number behind it.
    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        who: &Beneficiary,
        _look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        let records = client.benefit_search(trace, benefit, who).await?;
        let names: Vec<&str> = records.iter().map(|r| r.benefit_name.as_str()).collect();
        let abha = records.first().map(|r| r.abha_number.clone());
        let masked = if names.is_empty() {
            "no benefit records".to_string()
        } else {
            format!("{} benefit record(s): {}", names.len(), names.join(", "))
        };
        let outcome = if names.contains(&benefit) {
            "found"
        } else {
            "not_linked"
        };
        let mut s = Success::with(outcome, abha.as_ref(), masked);
        if let (Some(a), Beneficiary::Aadhaar(_)) = (&abha, who) {
            s.result_masked = Some(format!(
                "{}; ABHA {}",
                s.result_masked.unwrap_or_default(),
                a.masked()
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind;
    use crate::jobs::testing::{aadhaar, run};

    #[test]
    fn subject_is_the_identifier_given() {
        let aad = aadhaar("23456789012");
        let j = run(JobKind::BenefitSearch, &[("aadhaar", &aad)]).unwrap();
        assert_eq!(j.subject(), aad);
        assert_eq!(j.subject_masked(), format!("XXXX-XXXX-{}", &aad[8..]));
    }
}
