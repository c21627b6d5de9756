//! `abha-bulk tour`: its inputs from the command line, and its printout.

use anyhow::Context;

use super::TourArgs;
use crate::abdm::AbdmClient;
use crate::config::Settings;
use crate::pii::{Aadhaar, AbhaNumber, Mobile, XToken};
use crate::tour::{self, TourInputs};

/// Prints the tour; true when a step failed in a way the tour did not expect (anything but
/// success and ABDM's idempotent answers).
pub(super) async fn print_tour(client: &AbdmClient, inputs: &TourInputs) -> bool {
    let steps = tour::run(client, inputs).await;
    let mut failed = false;
    for s in &steps {
        println!("{s}");
        failed |= !matches!(s.outcome.as_str(), "ok" | "idempotent_success");
    }
    failed
}

pub(super) fn tour_inputs(args: &TourArgs, settings: &Settings) -> anyhow::Result<TourInputs> {
    if args.sandbox_population {
        let p = crate::sandbox::Population::new(settings.sandbox.population, settings.sandbox.seed);
        return Ok(TourInputs::from_population(&p, args.benefit.as_str()));
    }
    let abha = args
        .abha
        .as_deref()
        .map(AbhaNumber::parse)
        .transpose()
        .context("--abha")?;
    let aadhaar = args
        .aadhaar
        .as_deref()
        .map(Aadhaar::parse)
        .transpose()
        .context("--aadhaar")?;
    let find_mobile = args
        .find_mobile
        .as_deref()
        .map(Mobile::parse)
        .transpose()
        .context("--find-mobile")?;
    let parent_x_token = match &args.parent_x_token_file {
        Some(p) => Some(
            XToken::parse(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
            .context("--parent-x-token-file")?,
        ),
        None => None,
    };
    Ok(TourInputs {
        benefit: args.benefit.to_string(),
        abha,
        aadhaar,
        patch_abha: None,
        new_mobile: None,
        find_mobile,
        parent_x_token,
        demo: None,
    })
}
