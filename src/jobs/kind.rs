//! The registry of job kinds: [`JobKind`] names every bulk operation, [`Job`] is one validated
//! row of any of them, and [`Kind`] is what each kind's own module (`kind/<name>.rs`) provides.
//!
//! Everything that differs between kinds (columns, payload, validation, subject, the ABDM call
//! and its outcomes) lives in that kind's module. This file only dispatches: the `registry!`
//! list below generates both enums and one `match` per operation from one line per kind, so
//! the compiler, not a reviewer, checks that a new kind answers every question.

use std::fmt;
use std::future::Future;

use chrono::NaiveDate;
use rand::Rng;

use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::ColumnSpec;
use crate::jobs::execute::Success;
use crate::jobs::fields::{FieldError, FieldMap, Fields};
use crate::jobs::sample::SampleRow;

/// What one kind provides. Implemented by a unit struct named after the [`JobKind`] variant,
/// in `kind/<name>.rs`.
pub trait Kind {
    /// The kebab-case name used on the command line, in the store, in queue names and in file
    /// names. It must be the kebab-case of the variant: serde and clap derive theirs from the
    /// variant, and a test checks that all three agree.
    const NAME: &'static str;
    /// True when the ABDM call changes something (a link, a profile, a new ABHA): a lost
    /// answer of such a job must never lead to acting twice, so its claim records the intent
    /// and its calls pass the lease fence.
    const CHANGES_STATE: bool;
    /// The payload columns (not `external_ref`, which every file may carry).
    const COLUMNS: &'static [ColumnSpec];
    /// Groups of optional columns of which a file must carry at least one, checked on the
    /// header before any row is read.
    const ONE_OF: &'static [&'static [&'static str]] = &[];

    /// What a valid row of this kind asks for.
    type Payload: fmt::Debug + Clone;

    /// Validates a row. Every invalid field is recorded in `row` (in column order), so the
    /// person fixing the file sees all of them; `None` when anything is missing or invalid.
    /// `today` is the date birth dates are checked against.
    fn parse(row: &mut Fields<'_, '_>, today: NaiveDate) -> Option<Self::Payload>;

    /// The canonical cells; [`Kind::parse`] of them gives the same payload back.
    fn to_fields(job: &Self::Payload, out: &mut FieldMap);

    /// The main identifier, raw, for a keyed hash (see [`Job::subject`]).
    fn subject(job: &Self::Payload) -> String;

    /// The masked subject for reports.
    fn subject_masked(job: &Self::Payload) -> String;

    /// Runs the job once: the ABDM call sequence and the mapping of its answer to an outcome
    /// (docs/report-format.md). `look_first` is the durable intent of an earlier attempt (see
    /// [`crate::jobs::execute`]).
    fn execute(
        client: &AbdmClient,
        benefit: &str,
        job: &Self::Payload,
        look_first: bool,
        trace: &mut CallTrace,
    ) -> impl Future<Output = Result<Success, ClientError>> + Send;

    /// This kind's weight in a sample (`sandbox::samples`): its share of the rows is its
    /// weight over the sum of all kinds' weights (today they add up to 100, so each reads as
    /// a percentage; a new kind need not change the others).
    const SAMPLE_WEIGHT: u32;
    /// The header of this kind's sample file: `external_ref`, then the columns its sample
    /// rows fill.
    const SAMPLE_HEADER: &'static [&'static str];

    /// A sample row that succeeds against `row.world`, seeding the world with what it needs
    /// (cells in [`Kind::SAMPLE_HEADER`] order).
    fn sample_row(row: &SampleRow<'_>, rng: &mut impl Rng) -> Vec<String>;

    /// Makes a sample row invalid with the mistake people typically make in this kind's files
    /// (one `submit` must reject with a clear reason).
    fn corrupt_sample(rec: &mut [String], rng: &mut impl Rng);

    /// One valid row, for the tests that every kind must pass.
    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)>;
}

/// The items of [`Kind`] that every kind whose row names one beneficiary (an ABHA number or
/// an Aadhaar, [`crate::abdm::benefit::Beneficiary`]) shares: columns, parsing, subject,
/// sample rows (`seed_link`: whether a sample row's ABHA is linked first) and the test
/// example. The kind's module still states its name, whether it changes state and its call.
macro_rules! beneficiary_row {
    (seed_link: $seed_link:expr) => {
        const COLUMNS: &'static [$crate::jobs::columns::ColumnSpec] =
            $crate::jobs::columns::BENEFICIARY_COLUMNS;
        const ONE_OF: &'static [&'static [&'static str]] =
            $crate::jobs::columns::BENEFICIARY_ONE_OF;
        const SAMPLE_HEADER: &'static [&'static str] = $crate::jobs::sample::BENEFICIARY_HEADER;
        type Payload = $crate::abdm::benefit::Beneficiary;

        fn parse(
            row: &mut $crate::jobs::fields::Fields<'_, '_>,
            _today: chrono::NaiveDate,
        ) -> Option<Self::Payload> {
            row.beneficiary()
        }

        fn to_fields(who: &Self::Payload, out: &mut $crate::jobs::fields::FieldMap) {
            $crate::jobs::fields::beneficiary_fields(who, out);
        }

        fn subject(who: &Self::Payload) -> String {
            who.login_id().to_string()
        }

        fn subject_masked(who: &Self::Payload) -> String {
            who.masked()
        }

        fn sample_row(
            row: &$crate::jobs::sample::SampleRow<'_>,
            rng: &mut impl rand::Rng,
        ) -> Vec<String> {
            $crate::jobs::sample::beneficiary_row(row, rng, $seed_link)
        }

        fn corrupt_sample(rec: &mut [String], _rng: &mut impl rand::Rng) {
            $crate::jobs::sample::corrupt_beneficiary(rec);
        }

        #[cfg(test)]
        fn example() -> Vec<(&'static str, String)> {
            vec![("abha_number", "91-1234-5678-9012".into())]
        }
    };
}

/// Declares the kind modules and generates [`JobKind`], [`Job`] and their dispatch from one
/// `Variant => module` line per kind.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident => $module:ident, )*) => {
        $( pub mod $module; )*

        /// One bulk operation.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, clap::ValueEnum,
        )]
        #[serde(rename_all = "kebab-case")]
        #[value(rename_all = "kebab-case")]
        pub enum JobKind {
            $( $(#[$doc])* $variant, )*
        }

        /// A validated job: what one CSV row asks for.
        #[derive(Debug, Clone)]
        pub enum Job {
            $( $(#[$doc])* $variant(<$module::$variant as Kind>::Payload), )*
        }

        impl JobKind {
            /// Every kind, in documentation order.
            pub const ALL: [JobKind; [$(JobKind::$variant),*].len()] = [$(JobKind::$variant),*];

            /// The kebab-case name used on the command line, in the store and in file names.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => <$module::$variant as Kind>::NAME,)* }
            }

            /// The payload columns of this kind (not `external_ref`, which every file may
            /// carry).
            pub fn columns(self) -> &'static [ColumnSpec] {
                match self { $(Self::$variant => <$module::$variant as Kind>::COLUMNS,)* }
            }

            /// Groups of optional columns of which a file must carry at least one (each group
            /// is "one of these is required" on every row). Empty for kinds without such a
            /// rule.
            pub(crate) fn one_of_groups(self) -> &'static [&'static [&'static str]] {
                match self { $(Self::$variant => <$module::$variant as Kind>::ONE_OF,)* }
            }

            /// True for kinds whose ABDM call changes something (a link, a profile, a new
            /// ABHA): a lost answer of theirs must never lead to acting twice.
            pub fn changes_state(self) -> bool {
                match self { $(Self::$variant => <$module::$variant as Kind>::CHANGES_STATE,)* }
            }

            fn parse_row(self, row: &mut Fields<'_, '_>, today: NaiveDate) -> Option<Job> {
                match self {
                    $(Self::$variant => {
                        <$module::$variant as Kind>::parse(row, today).map(Job::$variant)
                    })*
                }
            }

            /// This kind's weight in a sample ([`Kind::SAMPLE_WEIGHT`]).
            pub fn sample_weight(self) -> u32 {
                match self { $(Self::$variant => <$module::$variant as Kind>::SAMPLE_WEIGHT,)* }
            }

            /// The header of this kind's sample file ([`Kind::SAMPLE_HEADER`]).
            pub fn sample_header(self) -> &'static [&'static str] {
                match self { $(Self::$variant => <$module::$variant as Kind>::SAMPLE_HEADER,)* }
            }

            /// A sample row of this kind ([`Kind::sample_row`]).
            pub fn sample_row(self, row: &SampleRow<'_>, rng: &mut impl Rng) -> Vec<String> {
                match self {
                    $(Self::$variant => <$module::$variant as Kind>::sample_row(row, rng),)*
                }
            }

            /// Makes a sample row of this kind invalid ([`Kind::corrupt_sample`]).
            pub fn corrupt_sample(self, rec: &mut [String], rng: &mut impl Rng) {
                match self {
                    $(Self::$variant => <$module::$variant as Kind>::corrupt_sample(rec, rng),)*
                }
            }

            #[cfg(test)]
            pub(crate) fn example(self) -> Vec<(&'static str, String)> {
                match self { $(Self::$variant => <$module::$variant as Kind>::example(),)* }
            }
        }

        impl Job {
            /// The kind of this job.
            pub fn kind(&self) -> JobKind {
                match self { $(Self::$variant(_) => JobKind::$variant,)* }
            }

            fn write_fields(&self, out: &mut FieldMap) {
                match self {
                    $(Self::$variant(j) => <$module::$variant as Kind>::to_fields(j, out),)*
                }
            }

            /// The main identifier, raw, for a keyed hash: ABHA number (dashed form), Aadhaar
            /// (12 digits), mobile (10 digits); for child-create the parent ABHA number if
            /// given, else "x-token:" + hex SHA-256 of the token.
            pub fn subject(&self) -> String {
                match self { $(Self::$variant(j) => <$module::$variant as Kind>::subject(j),)* }
            }

            /// Masked form of the subject for reports (`XX-XXXX-XXXX-9012`,
            /// `XXXX-XXXX-1234`, `XXXXXX3210`, or `parent X-token ***` for a child-create row
            /// without parent ABHA).
            pub fn subject_masked(&self) -> String {
                match self {
                    $(Self::$variant(j) => <$module::$variant as Kind>::subject_masked(j),)*
                }
            }

            /// The kind's [`Kind::execute`]; called through [`crate::jobs::execute::execute`].
            pub(crate) async fn run(
                &self,
                client: &AbdmClient,
                benefit: &str,
                look_first: bool,
                trace: &mut CallTrace,
            ) -> Result<Success, ClientError> {
                match self {
                    $(Self::$variant(j) => {
                        <$module::$variant as Kind>::execute(client, benefit, j, look_first, trace)
                            .await
                    })*
                }
            }
        }
    };
}

// Adding a kind: its module `kind/<name>.rs`, and one line here.
registry! {
    /// Search benefit records by ABHA number or Aadhaar (read-only).
    BenefitSearch => benefit_search,
    /// List the programmes an ABHA number is linked to (read-only).
    BenefitLookup => benefit_lookup,
    /// Link an ABHA number (or the ABHA of an Aadhaar) to the programme.
    BenefitLink => benefit_link,
    /// De-link an ABHA number (or the ABHA of an Aadhaar) from the programme.
    BenefitDelink => benefit_delink,
    /// Patch mobile, account status or photo of a profile.
    ProfileUpdate => profile_update,
    /// Create a child ABHA under a parent's X-token.
    ChildCreate => child_create,
    /// Correct a child ABHA's name, birth date and gender.
    ChildUpdate => child_update,
    /// Find the ABHA accounts on a mobile (read-only).
    AbhaFind => abha_find,
    /// Create (or find) an ABHA by Aadhaar demographic authentication.
    AbhaCreateDemo => abha_create_demo,
}

impl JobKind {
    /// Parses a kind name; case and `_`/`-` are not significant (`Benefit_Link` works).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True when running the job changes something at ABDM (so it must not run twice); the
    /// same as [`JobKind::changes_state`].
    pub fn has_side_effect(self) -> bool {
        self.changes_state()
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Job {
    /// Validates the canonical fields (`get(name)` returns the trimmed cell; empty = absent).
    ///
    /// All invalid fields of the row are reported, in column order. `today` is the date
    /// against which birth dates are checked (not in the future; a child under 18).
    pub fn from_fields<'a>(
        kind: JobKind,
        get: impl Fn(&str) -> Option<&'a str>,
        today: NaiveDate,
    ) -> Result<Job, Vec<FieldError>> {
        let mut row = Fields::new(&get);
        let job = kind.parse_row(&mut row, today);
        row.finish(job)
    }

    /// Canonical field map with raw (exposed) values; `from_fields(kind, |k| map.get(k).map(String::as_str), today)` gives the same job back.
    pub fn to_fields(&self) -> FieldMap {
        let mut m = FieldMap::new();
        self.write_fields(&mut m);
        m
    }

    /// Canonical string of kind + all fields (sorted), used to detect duplicate rows (it will be HMAC'd; it contains raw values, never log it).
    pub fn dedup_key(&self) -> String {
        let fields = serde_json::to_string(&self.to_fields()).expect("a string map serialises");
        format!("{}\n{}", self.kind().as_str(), fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::columns::normalise_header;
    use crate::jobs::testing::{run, run_owned, today};

    #[test]
    fn kind_names_round_trip() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.as_str()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            let v = <JobKind as clap::ValueEnum>::from_str(k.as_str(), false).unwrap();
            assert_eq!(v, k);
        }
        assert_eq!(JobKind::parse(" Benefit_Link "), Some(JobKind::BenefitLink));
        assert_eq!(JobKind::parse("benefit"), None);
        assert!(JobKind::BenefitLink.has_side_effect());
        assert!(JobKind::AbhaCreateDemo.has_side_effect());
        assert!(!JobKind::BenefitSearch.has_side_effect());
        assert!(!JobKind::BenefitLookup.has_side_effect());
        assert!(!JobKind::AbhaFind.has_side_effect());
    }

    #[test]
    fn every_kind_accepts_and_round_trips() {
        for kind in JobKind::ALL {
            let cells = kind.example();
            let job = run_owned(kind, &cells).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
            assert_eq!(job.kind(), kind);
            let map = job.to_fields();
            let again =
                Job::from_fields(kind, |k| map.get(k).map(String::as_str), today()).unwrap();
            assert_eq!(again.to_fields(), map, "{kind}");
            assert_eq!(again.dedup_key(), job.dedup_key());
            assert!(job.dedup_key().starts_with(kind.as_str()));
            // Every field name in the map is a column of the kind.
            for k in map.keys() {
                assert!(kind.columns().iter().any(|c| c.name == *k), "{kind} {k}");
            }
            // Debug output is masked.
            let debug = format!("{job:?}");
            for v in map.values().filter(|v| v.len() >= 10) {
                assert!(!debug.contains(v.as_str()), "{kind} Debug leaks a value");
            }
            assert!(!job.subject_masked().is_empty());
        }
    }

    #[test]
    fn every_kind_has_samples_and_their_headers_name_columns() {
        for kind in JobKind::ALL {
            assert!(kind.sample_weight() > 0, "{kind}");
            let header = kind.sample_header();
            assert_eq!(header[0], "external_ref", "{kind}");
            for n in &header[1..] {
                assert!(kind.columns().iter().any(|c| c.name == *n), "{kind} {n}");
            }
        }
    }

    #[test]
    fn normalised_values_give_same_dedup_key() {
        let a = run(JobKind::BenefitLink, &[("abha_number", "91123456789012")]).unwrap();
        let b = run(
            JobKind::BenefitLink,
            &[("abha_number", " 91-1234-5678-9012 ")],
        )
        .unwrap();
        assert_eq!(a.dedup_key(), b.dedup_key());
        let c = run(JobKind::BenefitDelink, &[("abha_number", "91123456789012")]).unwrap();
        assert_ne!(a.dedup_key(), c.dedup_key());
    }

    #[test]
    fn column_names_are_unambiguous() {
        for kind in JobKind::ALL {
            let mut seen = std::collections::HashSet::new();
            for c in kind.columns() {
                assert_eq!(normalise_header(c.name), c.name);
                for n in std::iter::once(&c.name).chain(c.aliases) {
                    assert_eq!(normalise_header(n), *n, "alias not normalised: {n}");
                    assert!(seen.insert(*n), "{kind}: {n} names two columns");
                }
            }
            for group in kind.one_of_groups() {
                for n in *group {
                    assert!(kind.columns().iter().any(|c| c.name == *n && !c.required));
                }
            }
        }
    }
}
