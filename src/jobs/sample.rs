//! Sample rows: what each kind writes into the sample files of `abha-bulk demo` and
//! `abha-bulk sandbox --write-samples` (`sandbox::samples` writes the files).
//!
//! A kind knows which of its rows succeed and what world state they need (a de-link needs a
//! link, a child update needs a child), so it writes them in its own module
//! ([`crate::jobs::kind::Kind::sample_row`]) and a new kind brings its samples with it. The
//! world is reached through [`SampleWorld`], implemented by the sandbox: `jobs` must not
//! depend on `sandbox`.

use chrono::NaiveDate;
use rand::{Rng, RngExt};

use crate::pii::{Aadhaar, AbhaNumber, Gender, Mobile, PersonName, verhoeff};

/// One person of the world's population (the sandbox's seeded beneficiaries are these).
#[derive(Debug, Clone)]
pub struct Person {
    /// ABHA number.
    pub abha: AbhaNumber,
    /// Aadhaar number.
    pub aadhaar: Aadhaar,
    /// Mobile on the ABHA.
    pub mobile: Mobile,
    /// Full name.
    pub name: PersonName,
    /// Gender.
    pub gender: Gender,
    /// Birth date.
    pub birth_date: NaiveDate,
    /// LGD state code.
    pub state_code: String,
    /// LGD district code.
    pub district_code: String,
}

/// What sample rows may read from, and seed into, the world they are written for.
pub trait SampleWorld {
    /// Number of people in the population.
    fn size(&self) -> u64;
    /// Person `index` (below [`SampleWorld::size`]).
    fn person(&self, index: u64) -> Person;
    /// The ABHA number of index `index`; at or beyond the size, one ABDM does not know.
    fn abha(&self, index: u64) -> AbhaNumber;
    /// The mobile of index `index`; at or beyond the size, one on no ABHA.
    fn mobile(&self, index: u64) -> Mobile;
    /// A valid Aadhaar number that has no ABHA yet.
    fn unknown_aadhaar(&self, k: u64) -> Aadhaar;
    /// An X-token of `abha`'s account that expires at `expires_unix`.
    fn x_token(&self, abha: &AbhaNumber, expires_unix: i64) -> String;
    /// Links `abha` to `benefit` without a call.
    fn seed_link(&self, benefit: &str, abha: &AbhaNumber);
    /// Creates a child ABHA under `parent` without a call; returns its ABHA number.
    fn seed_child(
        &self,
        parent: &AbhaNumber,
        name: &str,
        dob: NaiveDate,
        gender: &str,
    ) -> AbhaNumber;
}

/// Everything one sample row is made from.
pub struct SampleRow<'a> {
    /// The world the row must succeed against.
    pub world: &'a dyn SampleWorld,
    /// Row number within the kind's file, from 0.
    pub i: usize,
    /// Population index of the row's person.
    pub index: u64,
    /// The row's person.
    pub person: Person,
    /// The ABHA number to use: the person's, or one ABDM does not know when `unknown`.
    pub abha: AbhaNumber,
    /// True when the row is to name a beneficiary unknown to ABDM.
    pub unknown: bool,
    /// The row's `external_ref`.
    pub reference: String,
    /// The benefit the rows run for.
    pub benefit: &'a str,
    /// Percentage of de-link rows whose ABHA is left unlinked.
    pub never_linked_percent: f64,
    /// Expiry of the parents' X-tokens (unix seconds).
    pub x_token_expires: i64,
}

/// A percentage as a probability for `random_bool`.
pub fn chance(percent: f64) -> f64 {
    (percent / 100.0).clamp(0.0, 1.0)
}

/// First names of the children that samples create or correct.
pub const CHILD_NAMES: [&str; 8] = [
    "Anu", "Bala", "Chitra", "Dev", "Esha", "Faiz", "Gita", "Hari",
];

/// Sample header of the kinds whose row names one beneficiary.
pub const BENEFICIARY_HEADER: &[&str] = &["external_ref", "abha_number", "aadhaar"];

/// A row naming one beneficiary: by Aadhaar about a third of the time, else by ABHA number.
/// With `seed_link` (de-link rows) the ABHA is linked first, except for unknown beneficiaries
/// and the never-linked share.
pub fn beneficiary_row(row: &SampleRow<'_>, rng: &mut impl Rng, seed_link: bool) -> Vec<String> {
    let never_linked = rng.random_bool(chance(row.never_linked_percent));
    if seed_link && !row.unknown && !never_linked {
        row.world.seed_link(row.benefit, &row.person.abha);
    }
    if rng.random_bool(0.3) && !row.unknown {
        vec![
            row.reference.clone(),
            String::new(),
            row.person.aadhaar.expose().to_string(),
        ]
    } else {
        vec![
            row.reference.clone(),
            row.abha.expose().to_string(),
            String::new(),
        ]
    }
}

/// The typical mistake of a beneficiary row: a mistyped Aadhaar, or a truncated ABHA number.
pub fn corrupt_beneficiary(rec: &mut [String]) {
    if !rec[2].is_empty() {
        rec[2] = bad_aadhaar(&rec[2]);
    } else {
        rec[1] = rec[1][..10].to_string();
    }
}

/// `aadhaar` with a wrong Verhoeff check digit (a mistyped digit), or too short.
pub fn bad_aadhaar(aadhaar: &str) -> String {
    if aadhaar.len() != 12 {
        return "12345".into();
    }
    let body = &aadhaar[..11];
    let good = verhoeff::check_digit(body);
    format!("{body}{}", (good + 1) % 10)
}
