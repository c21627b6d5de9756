//! `benefit-link`: link a beneficiary's ABHA number to the programme.

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::execute::{Success, link};
use crate::jobs::kind::Kind;

/// Link an ABHA number (or the ABHA of an Aadhaar) to the programme.
pub struct BenefitLink;

impl Kind for BenefitLink {
    const NAME: &'static str = "benefit-link";
    const CHANGES_STATE: bool = true;
    const SAMPLE_WEIGHT: u32 = 25;
    // Columns, parsing, subject and sample rows: those of every beneficiary row.
    beneficiary_row!(seed_link: false);

    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        who: &Beneficiary,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        link(client, trace, benefit, LinkAction::Link, who, look_first).await
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
