//! `abha-bulk tour`: its inputs, which never come from the command line (visible in `ps` and
//! shell history) but from a file or stdin (`--inputs`) or the environment, and its printout.

use std::io::Read;
use std::path::Path;

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

/// Environment variables `tour` reads identifiers from (when `--inputs` does not name them).
pub const TOUR_ENV: [(&str, &str); 3] = [
    ("abha", "ABHA_BULK_TOUR_ABHA"),
    ("aadhaar", "ABHA_BULK_TOUR_AADHAAR"),
    ("find_mobile", "ABHA_BULK_TOUR_FIND_MOBILE"),
];

/// Parses `key=value` lines (blank lines and `#` comments ignored).
fn parse_inputs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("--inputs line {}: expected key=value", i + 1))?;
        let k = k.trim().to_string();
        if !TOUR_ENV.iter().any(|(name, _)| *name == k) {
            anyhow::bail!(
                "--inputs line {}: unknown key {k:?} (expected abha, aadhaar or find_mobile)",
                i + 1
            );
        }
        out.push((k, v.trim().to_string()));
    }
    Ok(out)
}

fn read_inputs(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read --inputs from stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --inputs {}", path.display()))
    }
}

/// The tour's identifiers from `--inputs` (file or `-`), then the environment.
pub(super) fn tour_inputs(args: &TourArgs, settings: &Settings) -> anyhow::Result<TourInputs> {
    if args.sandbox_population {
        let p = crate::sandbox::Population::new(settings.sandbox.population, settings.sandbox.seed);
        return Ok(TourInputs::from_population(&p, args.benefit.as_str()));
    }
    let from_file = match &args.inputs {
        Some(path) => parse_inputs(&read_inputs(path)?)?,
        None => Vec::new(),
    };
    tour_inputs_from(args, from_file, |name| std::env::var(name).ok())
}

fn tour_inputs_from(
    args: &TourArgs,
    from_file: Vec<(String, String)>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<TourInputs> {
    let get = |key: &str| -> Option<(String, String)> {
        let var = TOUR_ENV.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)?;
        from_file
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| (v.clone(), format!("--inputs {key}")))
            .or_else(|| {
                env(var)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (v, var.to_string()))
            })
    };
    let abha = get("abha")
        .map(|(v, src)| AbhaNumber::parse(&v).with_context(|| src))
        .transpose()?;
    let aadhaar = get("aadhaar")
        .map(|(v, src)| Aadhaar::parse(&v).with_context(|| src))
        .transpose()?;
    let find_mobile = get("find_mobile")
        .map(|(v, src)| Mobile::parse(&v).with_context(|| src))
        .transpose()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TourArgs {
        TourArgs {
            benefit: "B".parse().unwrap(),
            sandbox_population: false,
            embedded: false,
            inputs: None,
            parent_x_token_file: None,
        }
    }

    #[test]
    fn identifiers_come_from_the_inputs_file_then_the_environment() {
        let file = parse_inputs("# tour\nabha = 91-1111-2222-3333\n\n").unwrap();
        let env = |name: &str| (name == "ABHA_BULK_TOUR_FIND_MOBILE").then(|| "9876543210".into());
        let got = tour_inputs_from(&args(), file, env).unwrap();
        assert!(got.abha.is_some() && got.find_mobile.is_some() && got.aadhaar.is_none());
        assert!(parse_inputs("mobile=1").is_err());
        assert!(parse_inputs("abha").is_err());
        let e = tour_inputs_from(&args(), vec![("find_mobile".into(), "12".into())], |_| None)
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("--inputs find_mobile") && !text.contains("12\""),
            "{text}"
        );
    }

    #[test]
    fn tour_takes_no_identifier_on_the_command_line() {
        use clap::Parser;
        for flag in ["--abha", "--aadhaar", "--find-mobile"] {
            let r = super::super::Cli::try_parse_from(["abha-bulk", "tour", flag, "x"]);
            assert!(r.is_err(), "{flag} must not be accepted");
        }
    }
}
