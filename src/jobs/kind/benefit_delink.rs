//! `benefit-delink`: de-link a beneficiary's ABHA number from the programme.

use chrono::NaiveDate;

use crate::abdm::benefit::{Beneficiary, LinkAction};
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{BENEFICIARY_COLUMNS, BENEFICIARY_ONE_OF, ColumnSpec};
use crate::jobs::execute::{Success, link};
use crate::jobs::fields::{FieldMap, Fields, beneficiary_fields};
use crate::jobs::kind::Kind;

/// De-link an ABHA number (or the ABHA of an Aadhaar) from the programme.
pub struct BenefitDelink;

impl Kind for BenefitDelink {
    const NAME: &'static str = "benefit-delink";
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
        link(client, trace, benefit, LinkAction::Delink, who, look_first).await
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![("abha_number", "91-1234-5678-9012".into())]
    }
}
