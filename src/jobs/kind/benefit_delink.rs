//! `benefit-delink`: de-link a beneficiary's ABHA number from the programme.

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::execute::{Success, link};
use crate::jobs::kind::Kind;

/// De-link an ABHA number (or the ABHA of an Aadhaar) from the programme.
pub struct BenefitDelink;

impl Kind for BenefitDelink {
    const NAME: &'static str = "benefit-delink";
    const CHANGES_STATE: bool = true;
    const SAMPLE_WEIGHT: u32 = 10;
    // Columns, parsing, subject and sample rows: those of every beneficiary row.
    beneficiary_row!(seed_link: true);

    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        who: &Beneficiary,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        link(client, trace, benefit, LinkAction::Delink, who, look_first).await
    }
}
