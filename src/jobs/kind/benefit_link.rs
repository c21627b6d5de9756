//! `benefit-link`: link a beneficiary's ABHA number to the programme.

use chrono::NaiveDate;

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{BENEFICIARY_COLUMNS, BENEFICIARY_ONE_OF, ColumnSpec};
use crate::jobs::execute::{Success, link};
use crate::jobs::fields::{FieldMap, Fields, beneficiary_fields};
use crate::jobs::kind::Kind;

/// Link an ABHA number (or the ABHA of an Aadhaar) to the programme.
pub struct BenefitLink;

impl Kind for BenefitLink {
    const NAME: &'static str = "benefit-link";
    const CHANGES_STATE: bool = true;
    const COLUMNS: &'static [ColumnSpec] = BENEFICIARY_COLUMNS;
    const ONE_OF: &'static [&'static [&'static str]] = BENEFICIARY_ONE_OF;
    type Payload = Beneficiary;

    fn parse(row: &mut Fields<'_, '_>, _today: NaiveDate) -> Option<Beneficiary> {
        row.beneficiary()
    }

    fn to_fields(who: &Beneficiary, out: &mut FieldMap) {
        beneficiary_fields(who, out);
    }

    fn subject(who: &Beneficiary) -> String {
        who.login_id().to_string()
    }

    fn subject_masked(who: &Beneficiary) -> String {
        who.masked()
    }

    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        who: &Beneficiary,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        link(client, trace, benefit, LinkAction::Link, who, look_first).await
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![("abha_number", "91-1234-5678-9012".into())]
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind;
    use crate::jobs::testing::{aadhaar, assert_one};
    use crate::pii::IdError;

    #[test]
    fn aadhaar_check_digit_named_not_shown() {
        let good = aadhaar("23456789012");
        let last = (good.as_bytes()[11] - b'0' + 1) % 10;
        let bad_aadhaar = format!("{}{last}", &good[..11]);
        assert_eq!(
            assert_one(
                JobKind::BenefitLink,
                &[("aadhaar", &bad_aadhaar)],
                "aadhaar",
                &bad_aadhaar
            ),
            IdError::AadhaarChecksum.to_string()
        );
    }
}
