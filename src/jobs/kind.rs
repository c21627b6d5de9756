//! Job kinds, their input columns, and validation of one row's fields into a [`Job`].
//!
//! Every bulk operation is one [`JobKind`]. A kind names its input columns ([`ColumnSpec`]:
//! canonical name, aliases accepted in a CSV header, whether required). [`Job::from_fields`]
//! validates a row's cells (looked up by canonical name) into a typed [`Job`], reporting every
//! invalid field at once; [`Job::to_fields`] gives the canonical cells back.
//!
//! Error reasons name the field and the rule, never the value: a [`FieldError`] can be
//! written to a report or a log.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::abdm::benefit::Beneficiary;
use crate::abdm::child::{ChildDetails, ChildUpdate};
use crate::abdm::enrol::DemoAuthRequest;
use crate::abdm::profile::{AccountStatus, ProfilePatch};
use crate::pii::{
    Aadhaar, AbhaNumber, Gender, IdError, Mobile, PersonName, XToken, format_date, parse_past_date,
};

/// One bulk operation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum JobKind {
    /// Search benefit records by ABHA number or Aadhaar (read-only).
    BenefitSearch,
    /// List the programmes an ABHA number is linked to (read-only).
    BenefitLookup,
    /// Link an ABHA number (or the ABHA of an Aadhaar) to the programme.
    BenefitLink,
    /// De-link an ABHA number (or the ABHA of an Aadhaar) from the programme.
    BenefitDelink,
    /// Patch mobile, account status or photo of a profile.
    ProfileUpdate,
    /// Create a child ABHA under a parent's X-token.
    ChildCreate,
    /// Correct a child ABHA's name, birth date and gender.
    ChildUpdate,
    /// Find the ABHA accounts on a mobile (read-only).
    AbhaFind,
    /// Create (or find) an ABHA by Aadhaar demographic authentication.
    AbhaCreateDemo,
}

impl JobKind {
    /// True for kinds whose ABDM call changes something (a link, a profile, a new ABHA): a
    /// lost answer of theirs must never lead to acting twice.
    pub fn changes_state(self) -> bool {
        !matches!(
            self,
            Self::BenefitSearch | Self::BenefitLookup | Self::AbhaFind
        )
    }

    /// Every kind, in documentation order.
    pub const ALL: [JobKind; 9] = [
        JobKind::BenefitSearch,
        JobKind::BenefitLookup,
        JobKind::BenefitLink,
        JobKind::BenefitDelink,
        JobKind::ProfileUpdate,
        JobKind::ChildCreate,
        JobKind::ChildUpdate,
        JobKind::AbhaFind,
        JobKind::AbhaCreateDemo,
    ];

    /// The kebab-case name used on the command line, in the store and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BenefitSearch => "benefit-search",
            Self::BenefitLookup => "benefit-lookup",
            Self::BenefitLink => "benefit-link",
            Self::BenefitDelink => "benefit-delink",
            Self::ProfileUpdate => "profile-update",
            Self::ChildCreate => "child-create",
            Self::ChildUpdate => "child-update",
            Self::AbhaFind => "abha-find",
            Self::AbhaCreateDemo => "abha-create-demo",
        }
    }

    /// Parses a kind name; case and `_`/`-` are not significant (`Benefit_Link` works).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The payload columns of this kind (not `external_ref`, which every file may carry).
    pub fn columns(self) -> &'static [ColumnSpec] {
        match self {
            Self::BenefitSearch | Self::BenefitLink | Self::BenefitDelink => &BENEFICIARY_COLUMNS,
            Self::BenefitLookup => &LOOKUP_COLUMNS,
            Self::ProfileUpdate => &PROFILE_COLUMNS,
            Self::ChildCreate => &CHILD_CREATE_COLUMNS,
            Self::ChildUpdate => &CHILD_UPDATE_COLUMNS,
            Self::AbhaFind => &FIND_COLUMNS,
            Self::AbhaCreateDemo => &DEMO_COLUMNS,
        }
    }

    /// True when running the job changes something at ABDM (so it must not run twice).
    pub fn has_side_effect(self) -> bool {
        !matches!(
            self,
            Self::BenefitSearch | Self::BenefitLookup | Self::AbhaFind
        )
    }

    /// Groups of optional columns of which a file must carry at least one (each group is
    /// "one of these is required" on every row). Empty for kinds without such a rule.
    pub(crate) fn one_of_groups(self) -> &'static [&'static [&'static str]] {
        match self {
            Self::BenefitSearch | Self::BenefitLink | Self::BenefitDelink => {
                &[&["abha_number", "aadhaar"]]
            }
            Self::ProfileUpdate => &[&["mobile", "account_status", "profile_photo"]],
            _ => &[],
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One input column of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Canonical name (snake_case), the key of [`Job::from_fields`] and [`Job::to_fields`].
    pub name: &'static str,
    /// Whether every row must give a value. Optional columns may still be subject to an
    /// "exactly one" or "at least one" rule; see `description`.
    pub required: bool,
    /// Other header names accepted for this column, in normalised form (see
    /// [`ColumnSpec::matches`]).
    pub aliases: &'static [&'static str],
    /// Format and rule, for help texts and the documentation.
    pub description: &'static str,
}

impl ColumnSpec {
    /// True when the CSV header `header` names this column: the header is trimmed, text in
    /// parentheses is dropped, camelCase is split, spaces, dashes, dots and slashes become
    /// underscores, other punctuation is dropped, and the result is compared, ignoring case,
    /// with the name and the aliases. `ABHA Number`, `abha-number`, `abha` and
    /// `healthIdNumber` all name `abha_number`. Case is not significant either way: the
    /// header is also compared without the camelCase split, so `AbHa_NuMbEr` and
    /// `ABHA_NUMBER` name `abha_number` too.
    pub fn matches(&self, header: &str) -> bool {
        let named = |h: String| h == self.name || self.aliases.contains(&h.as_str());
        named(normalise_header(header)) || named(normalise_header_with(header, false))
    }
}

/// The normalised form of a header cell, as compared by [`ColumnSpec::matches`].
pub(crate) fn normalise_header(header: &str) -> String {
    normalise_header_with(header, true)
}

/// [`normalise_header`], with or without splitting camelCase words.
fn normalise_header_with(header: &str, split_camel: bool) -> String {
    let mut out = String::with_capacity(header.len());
    let mut prev_lower = false;
    let mut depth = 0u32;
    for c in header.trim().chars() {
        match c {
            '(' => {
                depth += 1;
                continue;
            }
            ')' => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ if depth > 0 => continue,
            _ => {}
        }
        if split_camel && c.is_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if matches!(c, ' ' | '-' | '_' | '.' | '/' | '\t') && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

const ABHA_ALIASES: &[&str] = &[
    "abha",
    "abha_no",
    "abha_num",
    "abha_id",
    "abhanumber",
    "health_id_number",
    "health_id_no",
];
const AADHAAR_ALIASES: &[&str] = &[
    "aadhaar_number",
    "aadhaar_no",
    "aadhar",
    "aadhar_number",
    "aadhar_no",
    "uid",
    "uid_number",
    "xml_uid",
    "xmluid",
];
const MOBILE_ALIASES: &[&str] = &[
    "mobile_number",
    "mobile_no",
    "phone",
    "phone_number",
    "phone_no",
];
const NAME_ALIASES: &[&str] = &["full_name", "beneficiary_name", "name_as_in_aadhaar"];
const DOB_ALIASES: &[&str] = &["date_of_birth", "birth_date", "birthdate"];
const GENDER_ALIASES: &[&str] = &["sex"];

const ABHA_DESC: &str = "ABHA number, 14 digits: 91-XXXX-XXXX-XXXX or 91XXXXXXXXXXXX";
const AADHAAR_DESC: &str = "Aadhaar number, 12 digits (spaces or dashes between groups allowed), \
     not starting with 0 or 1, valid Verhoeff check digit";
const MOBILE_DESC: &str = "mobile, 10 digits starting 6-9 (a leading +91, 91 or 0 is removed)";
const NAME_DESC: &str = "name as in Aadhaar: 1 to 100 letters of any script (with their vowel \
     signs and marks), spaces, dots, apostrophes, hyphens";
const DOB_DESC: &str = "date of birth dd-mm-yyyy (or dd/mm/yyyy), not in the future";
const GENDER_DESC: &str = "M, F or O (male, female, other also accepted)";

const ABHA_REQUIRED: ColumnSpec = ColumnSpec {
    name: "abha_number",
    required: true,
    aliases: ABHA_ALIASES,
    description: ABHA_DESC,
};

static BENEFICIARY_COLUMNS: [ColumnSpec; 2] = [
    ColumnSpec {
        name: "abha_number",
        required: false,
        aliases: ABHA_ALIASES,
        description: "ABHA number, 14 digits: 91-XXXX-XXXX-XXXX or 91XXXXXXXXXXXX; \
             give exactly one of abha_number and aadhaar",
    },
    ColumnSpec {
        name: "aadhaar",
        required: false,
        aliases: AADHAAR_ALIASES,
        description: "Aadhaar number, 12 digits, valid Verhoeff check digit; \
             give exactly one of abha_number and aadhaar",
    },
];

static LOOKUP_COLUMNS: [ColumnSpec; 1] = [ABHA_REQUIRED];

static PROFILE_COLUMNS: [ColumnSpec; 4] = [
    ABHA_REQUIRED,
    ColumnSpec {
        name: "mobile",
        required: false,
        aliases: MOBILE_ALIASES,
        description: "new mobile, 10 digits starting 6-9; \
             at least one of mobile, account_status, profile_photo",
    },
    ColumnSpec {
        name: "account_status",
        required: false,
        aliases: &["status"],
        description: "only ACTIVE (any case): re-activates a deactivated account",
    },
    ColumnSpec {
        name: "profile_photo",
        required: false,
        aliases: &["photo", "photo_base64"],
        description: "base64 (standard alphabet, padded) JPEG or PNG, at most 1 MiB decoded; \
             a data:image/...;base64, prefix is removed",
    },
];

static CHILD_CREATE_COLUMNS: [ColumnSpec; 5] = [
    ColumnSpec {
        name: "parent_x_token",
        required: true,
        aliases: &["x_token", "xtoken", "parent_xtoken", "parent_token"],
        description: "the parent's X-token from the parent's ABHA login (a leading \
             \"Bearer \" is removed)",
    },
    ColumnSpec {
        name: "parent_abha_number",
        required: false,
        aliases: &["parent_abha", "parent_abha_no", "parent_health_id_number"],
        description: "the parent's ABHA number, 14 digits (used to key and report the row)",
    },
    ColumnSpec {
        name: "child_name",
        required: true,
        aliases: &["childs_name", "child_full_name"],
        description: NAME_DESC,
    },
    ColumnSpec {
        name: "child_dob",
        required: true,
        aliases: &[
            "child_date_of_birth",
            "child_birth_date",
            "dob",
            "date_of_birth",
        ],
        description: "child's date of birth dd-mm-yyyy, not in the future, \
             child under 18 on the day the file is checked",
    },
    ColumnSpec {
        name: "child_gender",
        required: true,
        aliases: &["child_sex", "gender", "sex"],
        description: GENDER_DESC,
    },
];

static CHILD_UPDATE_COLUMNS: [ColumnSpec; 4] = [
    ColumnSpec {
        name: "abha_number",
        required: true,
        aliases: ABHA_ALIASES,
        description: "the child's ABHA number, 14 digits",
    },
    ColumnSpec {
        name: "name",
        required: true,
        aliases: NAME_ALIASES,
        description: NAME_DESC,
    },
    ColumnSpec {
        name: "dob",
        required: true,
        aliases: DOB_ALIASES,
        description: DOB_DESC,
    },
    ColumnSpec {
        name: "gender",
        required: true,
        aliases: GENDER_ALIASES,
        description: GENDER_DESC,
    },
];

static FIND_COLUMNS: [ColumnSpec; 1] = [ColumnSpec {
    name: "mobile",
    required: true,
    aliases: MOBILE_ALIASES,
    description: MOBILE_DESC,
}];

static DEMO_COLUMNS: [ColumnSpec; 8] = [
    ColumnSpec {
        name: "aadhaar",
        required: true,
        aliases: AADHAAR_ALIASES,
        description: AADHAAR_DESC,
    },
    ColumnSpec {
        name: "name",
        required: true,
        aliases: NAME_ALIASES,
        description: NAME_DESC,
    },
    ColumnSpec {
        name: "dob",
        required: true,
        aliases: DOB_ALIASES,
        description: DOB_DESC,
    },
    ColumnSpec {
        name: "gender",
        required: true,
        aliases: GENDER_ALIASES,
        description: GENDER_DESC,
    },
    ColumnSpec {
        name: "state_code",
        required: true,
        aliases: &["lgd_state_code", "state_lgd_code"],
        description: "LGD state code, 1 or 2 digits",
    },
    ColumnSpec {
        name: "district_code",
        required: true,
        aliases: &["lgd_district_code", "district_lgd_code"],
        description: "LGD district code, 1 to 3 digits",
    },
    ColumnSpec {
        name: "mobile",
        required: false,
        aliases: MOBILE_ALIASES,
        description: MOBILE_DESC,
    },
    ColumnSpec {
        name: "pin_code",
        required: false,
        aliases: &["pincode", "pin", "postal_code"],
        description: "PIN code, 6 digits, not starting with 0",
    },
];

/// A validated job: what one CSV row asks for.
#[derive(Debug, Clone)]
pub enum Job {
    /// Benefit search.
    BenefitSearch(Beneficiary),
    /// Programmes of an ABHA number.
    BenefitLookup(AbhaNumber),
    /// Link to the programme.
    BenefitLink(Beneficiary),
    /// De-link from the programme.
    BenefitDelink(Beneficiary),
    /// Profile patch.
    ProfileUpdate(ProfilePatch),
    /// Child ABHA creation.
    ChildCreate {
        /// The parent's X-token.
        parent_x_token: XToken,
        /// The parent's ABHA number, when the file gives it.
        parent_abha: Option<AbhaNumber>,
        /// The child.
        child: ChildDetails,
    },
    /// Child ABHA correction.
    ChildUpdate(ChildUpdate),
    /// Find ABHA accounts by mobile.
    AbhaFind(Mobile),
    /// ABHA creation by demographic authentication.
    AbhaCreateDemo(DemoAuthRequest),
}

/// One invalid field; `reason` never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Canonical field name (`abha_number`, ...).
    pub field: String,
    /// The rule broken, e.g. "ABHA number must be 14 digits, ...".
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Largest decoded profile photo ABDM accepts.
const MAX_PHOTO_BYTES: usize = 1024 * 1024;

/// Collects field errors while reading one row.
struct Fields<'a, F: Fn(&str) -> Option<&'a str>> {
    get: F,
    errors: Vec<FieldError>,
}

impl<'a, F: Fn(&str) -> Option<&'a str>> Fields<'a, F> {
    /// The trimmed cell, `None` when absent or empty.
    fn raw(&self, name: &str) -> Option<&'a str> {
        (self.get)(name).map(str::trim).filter(|s| !s.is_empty())
    }

    fn error(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// Validates an optional field; `None` when absent or invalid (the error is recorded).
    fn opt<T>(&mut self, name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let v = self.raw(name)?;
        match parse(v) {
            Ok(t) => Some(t),
            Err(reason) => {
                self.error(name, reason);
                None
            }
        }
    }

    /// Validates a required field; `None` when absent or invalid (the error is recorded).
    fn req<T>(&mut self, name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        if self.raw(name).is_none() {
            self.error(name, IdError::Empty.to_string());
            return None;
        }
        self.opt(name, parse)
    }

    /// `abha_number` xor `aadhaar`.
    fn beneficiary(&mut self) -> Option<Beneficiary> {
        let has_abha = self.raw("abha_number").is_some();
        let has_aadhaar = self.raw("aadhaar").is_some();
        match (has_abha, has_aadhaar) {
            (true, true) => {
                // Still check the ABHA number, so a row with two problems shows both.
                self.opt("abha_number", id(AbhaNumber::parse));
                self.error("aadhaar", "give abha_number or aadhaar, not both");
                None
            }
            (false, false) => {
                self.error("abha_number", "abha_number or aadhaar is required");
                None
            }
            (true, false) => self
                .opt("abha_number", id(AbhaNumber::parse))
                .map(Beneficiary::Abha),
            (false, true) => self
                .opt("aadhaar", id(Aadhaar::parse))
                .map(Beneficiary::Aadhaar),
        }
    }
}

/// Adapts a pii parser so its `IdError` becomes the reason.
fn id<T>(parse: fn(&str) -> Result<T, IdError>) -> impl FnOnce(&str) -> Result<T, String> {
    move |s| parse(s).map_err(|e| e.to_string())
}

fn past_date(today: NaiveDate) -> impl FnOnce(&str) -> Result<NaiveDate, String> {
    move |s| parse_past_date(s, today).map_err(|e| e.to_string())
}

fn digits(
    min: usize,
    max: usize,
    what: &'static str,
) -> impl FnOnce(&str) -> Result<String, String> {
    move |s| {
        if (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(s.to_string())
        } else if min == max {
            Err(format!("{what} must be {min} digits"))
        } else {
            Err(format!("{what} must be {min} to {max} digits"))
        }
    }
}

fn pin_code(s: &str) -> Result<String, String> {
    if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0') {
        Ok(s.to_string())
    } else {
        Err("PIN code must be 6 digits, not starting with 0".into())
    }
}

fn account_status(s: &str) -> Result<AccountStatus, String> {
    if s.eq_ignore_ascii_case("ACTIVE") {
        Ok(AccountStatus::Active)
    } else {
        Err("account_status can only be ACTIVE".into())
    }
}

/// Validates a base64 photo and returns it cleaned (no data-URL prefix, no whitespace).
fn profile_photo(s: &str) -> Result<crate::pii::Sensitive, String> {
    let s = match s.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => s,
    };
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    // Refuse an oversized photo before decoding it.
    if clean.len() / 4 * 3 > MAX_PHOTO_BYTES + 3 {
        return Err("profile_photo must be at most 1 MiB once decoded".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|_| {
            "profile_photo must be standard base64 (with = padding) of a JPEG or PNG image"
                .to_string()
        })?;
    if bytes.len() > MAX_PHOTO_BYTES {
        return Err("profile_photo must be at most 1 MiB once decoded".into());
    }
    let jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
    let png = bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
    if !(jpeg || png) {
        return Err("profile_photo must be a JPEG or PNG image".into());
    }
    Ok(crate::pii::Sensitive::new(clean))
}

impl Job {
    /// The kind of this job.
    pub fn kind(&self) -> JobKind {
        match self {
            Self::BenefitSearch(_) => JobKind::BenefitSearch,
            Self::BenefitLookup(_) => JobKind::BenefitLookup,
            Self::BenefitLink(_) => JobKind::BenefitLink,
            Self::BenefitDelink(_) => JobKind::BenefitDelink,
            Self::ProfileUpdate(_) => JobKind::ProfileUpdate,
            Self::ChildCreate { .. } => JobKind::ChildCreate,
            Self::ChildUpdate(_) => JobKind::ChildUpdate,
            Self::AbhaFind(_) => JobKind::AbhaFind,
            Self::AbhaCreateDemo(_) => JobKind::AbhaCreateDemo,
        }
    }

    /// Validates the canonical fields (`get(name)` returns the trimmed cell; empty = absent).
    ///
    /// All invalid fields of the row are reported, in column order. `today` is the date
    /// against which birth dates are checked (not in the future; a child under 18).
    pub fn from_fields<'a>(
        kind: JobKind,
        get: impl Fn(&str) -> Option<&'a str>,
        today: NaiveDate,
    ) -> Result<Job, Vec<FieldError>> {
        let mut f = Fields {
            get,
            errors: Vec::new(),
        };
        let job = match kind {
            JobKind::BenefitSearch => f.beneficiary().map(Job::BenefitSearch),
            JobKind::BenefitLink => f.beneficiary().map(Job::BenefitLink),
            JobKind::BenefitDelink => f.beneficiary().map(Job::BenefitDelink),
            JobKind::BenefitLookup => f
                .req("abha_number", id(AbhaNumber::parse))
                .map(Job::BenefitLookup),
            JobKind::ProfileUpdate => {
                let abha = f.req("abha_number", id(AbhaNumber::parse));
                let given = kind
                    .one_of_groups()
                    .iter()
                    .all(|group| group.iter().any(|n| f.raw(n).is_some()));
                let mobile = f.opt("mobile", id(Mobile::parse));
                let status = f.opt("account_status", account_status);
                let photo = f.opt("profile_photo", profile_photo);
                if !given {
                    f.error(
                        "mobile",
                        "give at least one of mobile, account_status, profile_photo",
                    );
                }
                match abha {
                    Some(abha_number) if f.errors.is_empty() => {
                        Some(Job::ProfileUpdate(ProfilePatch {
                            abha_number,
                            mobile,
                            account_status: status,
                            profile_photo: photo,
                        }))
                    }
                    _ => None,
                }
            }
            JobKind::ChildCreate => {
                let token = f.req("parent_x_token", id(XToken::parse));
                let parent = f.opt("parent_abha_number", id(AbhaNumber::parse));
                let name = f.req("child_name", id(PersonName::parse));
                let dob = f.req("child_dob", |s| {
                    let d = parse_past_date(s, today).map_err(|e| e.to_string())?;
                    match today.years_since(d) {
                        Some(years) if years < 18 => Ok(d),
                        _ => Err("child must be under 18 years old on the day the file is \
                             checked"
                            .to_string()),
                    }
                });
                let gender = f.req("child_gender", id(Gender::parse));
                match (token, name, dob, gender) {
                    (Some(parent_x_token), Some(name), Some(birth_date), Some(gender))
                        if f.errors.is_empty() =>
                    {
                        Some(Job::ChildCreate {
                            parent_x_token,
                            parent_abha: parent,
                            child: ChildDetails {
                                name,
                                birth_date,
                                gender,
                            },
                        })
                    }
                    _ => None,
                }
            }
            JobKind::ChildUpdate => {
                let abha = f.req("abha_number", id(AbhaNumber::parse));
                let name = f.req("name", id(PersonName::parse));
                let dob = f.req("dob", past_date(today));
                let gender = f.req("gender", id(Gender::parse));
                match (abha, name, dob, gender) {
                    (Some(abha_number), Some(name), Some(birth_date), Some(gender)) => {
                        Some(Job::ChildUpdate(ChildUpdate {
                            abha_number,
                            name,
                            birth_date,
                            gender,
                        }))
                    }
                    _ => None,
                }
            }
            JobKind::AbhaFind => f.req("mobile", id(Mobile::parse)).map(Job::AbhaFind),
            JobKind::AbhaCreateDemo => {
                let aadhaar = f.req("aadhaar", id(Aadhaar::parse));
                let name = f.req("name", id(PersonName::parse));
                let dob = f.req("dob", past_date(today));
                let gender = f.req("gender", id(Gender::parse));
                let state = f.req("state_code", digits(1, 2, "state_code"));
                let district = f.req("district_code", digits(1, 3, "district_code"));
                let mobile = f.opt("mobile", id(Mobile::parse));
                let pin = f.opt("pin_code", pin_code);
                match (aadhaar, name, dob, gender, state, district) {
                    (
                        Some(aadhaar),
                        Some(name),
                        Some(birth_date),
                        Some(gender),
                        Some(state_code),
                        Some(district_code),
                    ) if f.errors.is_empty() => Some(Job::AbhaCreateDemo(DemoAuthRequest {
                        aadhaar,
                        name,
                        birth_date,
                        gender,
                        state_code,
                        district_code,
                        mobile,
                        pin_code: pin,
                    })),
                    _ => None,
                }
            }
        };
        match job {
            Some(job) if f.errors.is_empty() => Ok(job),
            _ => {
                debug_assert!(!f.errors.is_empty(), "no job and no error");
                Err(f.errors)
            }
        }
    }

    /// Canonical field map with raw (exposed) values; `from_fields(kind, |k| map.get(k).map(String::as_str), today)` gives the same job back.
    pub fn to_fields(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        let beneficiary = |m: &mut BTreeMap<&'static str, String>, b: &Beneficiary| match b {
            Beneficiary::Abha(a) => {
                m.insert("abha_number", a.expose().to_string());
            }
            Beneficiary::Aadhaar(a) => {
                m.insert("aadhaar", a.expose().to_string());
            }
        };
        match self {
            Self::BenefitSearch(b) | Self::BenefitLink(b) | Self::BenefitDelink(b) => {
                beneficiary(&mut m, b)
            }
            Self::BenefitLookup(a) => {
                m.insert("abha_number", a.expose().to_string());
            }
            Self::ProfileUpdate(p) => {
                m.insert("abha_number", p.abha_number.expose().to_string());
                if let Some(mobile) = &p.mobile {
                    m.insert("mobile", mobile.expose().to_string());
                }
                if let Some(s) = p.account_status {
                    m.insert("account_status", s.as_str().to_string());
                }
                if let Some(photo) = &p.profile_photo {
                    m.insert("profile_photo", photo.expose().to_string());
                }
            }
            Self::ChildCreate {
                parent_x_token,
                parent_abha,
                child,
            } => {
                m.insert("parent_x_token", parent_x_token.expose().to_string());
                if let Some(p) = parent_abha {
                    m.insert("parent_abha_number", p.expose().to_string());
                }
                m.insert("child_name", child.name.expose().to_string());
                m.insert("child_dob", format_date(child.birth_date));
                m.insert("child_gender", child.gender.as_str().to_string());
            }
            Self::ChildUpdate(u) => {
                m.insert("abha_number", u.abha_number.expose().to_string());
                m.insert("name", u.name.expose().to_string());
                m.insert("dob", format_date(u.birth_date));
                m.insert("gender", u.gender.as_str().to_string());
            }
            Self::AbhaFind(mobile) => {
                m.insert("mobile", mobile.expose().to_string());
            }
            Self::AbhaCreateDemo(d) => {
                m.insert("aadhaar", d.aadhaar.expose().to_string());
                m.insert("name", d.name.expose().to_string());
                m.insert("dob", format_date(d.birth_date));
                m.insert("gender", d.gender.as_str().to_string());
                m.insert("state_code", d.state_code.clone());
                m.insert("district_code", d.district_code.clone());
                if let Some(mobile) = &d.mobile {
                    m.insert("mobile", mobile.expose().to_string());
                }
                if let Some(pin) = &d.pin_code {
                    m.insert("pin_code", pin.clone());
                }
            }
        }
        m
    }

    /// The main identifier, raw, for a keyed hash: ABHA number (dashed form), Aadhaar (12 digits), mobile (10 digits); for child-create the parent ABHA number if given, else "x-token:" + hex SHA-256 of the token.
    pub fn subject(&self) -> String {
        match self {
            Self::BenefitSearch(b) | Self::BenefitLink(b) | Self::BenefitDelink(b) => {
                b.login_id().to_string()
            }
            Self::BenefitLookup(a) => a.expose().to_string(),
            Self::ProfileUpdate(p) => p.abha_number.expose().to_string(),
            Self::ChildCreate {
                parent_x_token,
                parent_abha,
                ..
            } => match parent_abha {
                Some(a) => a.expose().to_string(),
                None => format!("x-token:{}", sha256_hex(parent_x_token.expose())),
            },
            Self::ChildUpdate(u) => u.abha_number.expose().to_string(),
            Self::AbhaFind(m) => m.expose().to_string(),
            Self::AbhaCreateDemo(d) => d.aadhaar.expose().to_string(),
        }
    }

    /// Masked form of the subject for reports (`XX-XXXX-XXXX-9012`, `XXXX-XXXX-1234`,
    /// `XXXXXX3210`, or `parent X-token ***` for a child-create row without parent ABHA).
    pub fn subject_masked(&self) -> String {
        match self {
            Self::BenefitSearch(b) | Self::BenefitLink(b) | Self::BenefitDelink(b) => b.masked(),
            Self::BenefitLookup(a) => a.masked(),
            Self::ProfileUpdate(p) => p.abha_number.masked(),
            Self::ChildCreate {
                parent_x_token,
                parent_abha,
                ..
            } => match parent_abha {
                Some(a) => a.masked(),
                None => format!("parent X-token {}", parent_x_token.masked()),
            },
            Self::ChildUpdate(u) => u.abha_number.masked(),
            Self::AbhaFind(m) => m.masked(),
            Self::AbhaCreateDemo(d) => d.aadhaar.masked(),
        }
    }

    /// Canonical string of kind + all fields (sorted), used to detect duplicate rows (it will be HMAC'd; it contains raw values, never log it).
    pub fn dedup_key(&self) -> String {
        let fields = serde_json::to_string(&self.to_fields()).expect("a string map serialises");
        format!("{}\n{}", self.kind().as_str(), fields)
    }
}

fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::verhoeff;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 10).unwrap()
    }

    fn aadhaar(body: &str) -> String {
        format!("{body}{}", verhoeff::check_digit(body))
    }

    fn run(kind: JobKind, cells: &[(&str, &str)]) -> Result<Job, Vec<FieldError>> {
        let map: BTreeMap<&str, &str> = cells.iter().copied().collect();
        Job::from_fields(kind, |k| map.get(k).copied(), today())
    }

    fn errors(kind: JobKind, cells: &[(&str, &str)]) -> Vec<FieldError> {
        run(kind, cells).expect_err("row should be rejected")
    }

    /// A 1x1 PNG.
    fn png_base64() -> String {
        let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        bytes.extend_from_slice(&[0; 32]);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// One valid field set per kind.
    fn valid(kind: JobKind) -> Vec<(&'static str, String)> {
        let a = |s: &str| s.to_string();
        match kind {
            JobKind::BenefitSearch | JobKind::BenefitLink | JobKind::BenefitDelink => {
                vec![("abha_number", a("91-1234-5678-9012"))]
            }
            JobKind::BenefitLookup => vec![("abha_number", a("91123456789012"))],
            JobKind::ProfileUpdate => vec![
                ("abha_number", a("91-1234-5678-9012")),
                ("mobile", a("+91 98765 43210")),
                ("account_status", a("active")),
                ("profile_photo", png_base64()),
            ],
            JobKind::ChildCreate => vec![
                (
                    "parent_x_token",
                    a("Bearer sbx1.12345678901234.1767225600.sig"),
                ),
                ("parent_abha_number", a("91-1111-2222-3333")),
                ("child_name", a("Asha  Devi")),
                ("child_dob", a("5/3/2020")),
                ("child_gender", a("female")),
            ],
            JobKind::ChildUpdate => vec![
                ("abha_number", a("91-1234-5678-9012")),
                ("name", a("Asha Devi")),
                ("dob", a("05-03-2020")),
                ("gender", a("F")),
            ],
            JobKind::AbhaFind => vec![("mobile", a("9876543210"))],
            JobKind::AbhaCreateDemo => vec![
                ("aadhaar", aadhaar("23456789012")),
                ("name", a("Ravi Kumar")),
                ("dob", a("01-01-1990")),
                ("gender", a("m")),
                ("state_code", a("9")),
                ("district_code", a("143")),
                ("mobile", a("9876543210")),
                ("pin_code", a("226001")),
            ],
        }
    }

    fn run_owned(kind: JobKind, cells: &[(&'static str, String)]) -> Result<Job, Vec<FieldError>> {
        let borrowed: Vec<(&str, &str)> = cells.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(kind, &borrowed)
    }

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
            let cells = valid(kind);
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
    fn subjects() {
        let aad = aadhaar("23456789012");
        let j = run(JobKind::BenefitSearch, &[("aadhaar", &aad)]).unwrap();
        assert_eq!(j.subject(), aad);
        assert_eq!(j.subject_masked(), format!("XXXX-XXXX-{}", &aad[8..]));
        let j = run(JobKind::BenefitLookup, &[("abha_number", "91123456789012")]).unwrap();
        assert_eq!(j.subject(), "91-1234-5678-9012");
        assert_eq!(j.subject_masked(), "XX-XXXX-XXXX-9012");
        let j = run(JobKind::AbhaFind, &[("mobile", "+919876543210")]).unwrap();
        assert_eq!(j.subject(), "9876543210");
        assert_eq!(j.subject_masked(), "XXXXXX3210");

        let mut cells = valid(JobKind::ChildCreate);
        let j = run_owned(JobKind::ChildCreate, &cells).unwrap();
        assert_eq!(j.subject(), "91-1111-2222-3333");
        cells.retain(|(k, _)| *k != "parent_abha_number");
        let j = run_owned(JobKind::ChildCreate, &cells).unwrap();
        let expected = sha256_hex("sbx1.12345678901234.1767225600.sig");
        assert_eq!(j.subject(), format!("x-token:{expected}"));
        assert_eq!(j.subject_masked(), "parent X-token ***");
    }

    /// Asserts exactly one error, on `field`, whose reason does not contain `value`.
    fn assert_one(kind: JobKind, cells: &[(&str, &str)], field: &str, value: &str) -> String {
        let e = errors(kind, cells);
        assert_eq!(e.len(), 1, "{kind} {field}: {e:?}");
        assert_eq!(e[0].field, field);
        assert!(
            !e[0].reason.contains(value),
            "reason of {field} contains the value"
        );
        e[0].reason.clone()
    }

    #[test]
    fn each_rule_names_field_not_value() {
        use JobKind::*;
        let abha = "91-1234-5678-9012";
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
        let good = aadhaar("23456789012");
        let last = (good.as_bytes()[11] - b'0' + 1) % 10;
        let bad_aadhaar = format!("{}{last}", &good[..11]);
        assert_eq!(
            assert_one(
                BenefitLink,
                &[("aadhaar", &bad_aadhaar)],
                "aadhaar",
                &bad_aadhaar
            ),
            IdError::AadhaarChecksum.to_string()
        );
        assert_one(
            AbhaFind,
            &[("mobile", "5876543210")],
            "mobile",
            "5876543210",
        );
        assert_one(
            ProfileUpdate,
            &[("abha_number", abha), ("account_status", "INACTIVE")],
            "account_status",
            "INACTIVE",
        );
        assert_one(
            ProfileUpdate,
            &[("abha_number", abha), ("profile_photo", "not base64!!")],
            "profile_photo",
            "not base64",
        );
        // Valid base64, but not an image.
        let text = base64::engine::general_purpose::STANDARD.encode("hello world");
        assert!(
            assert_one(
                ProfileUpdate,
                &[("abha_number", abha), ("profile_photo", &text)],
                "profile_photo",
                &text
            )
            .contains("JPEG or PNG")
        );
        assert_one(ProfileUpdate, &[("abha_number", abha)], "mobile", abha);

        let demo = |field: &'static str, value: &'static str| {
            let mut cells = valid(AbhaCreateDemo);
            for c in &mut cells {
                if c.0 == field {
                    c.1 = value.to_string();
                }
            }
            let borrowed: Vec<(&str, &str)> = cells.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_one(AbhaCreateDemo, &borrowed, field, value);
        };
        demo("name", "R2D2");
        demo("dob", "31-02-1990");
        demo("dob", "01-01-2027");
        demo("gender", "X");
        demo("state_code", "123");
        demo("district_code", "1234");
        demo("district_code", "12a");
        demo("pin_code", "012345");
        demo("pin_code", "22600");
        demo("mobile", "12345");
        demo("aadhaar", "123456789012");

        let update = |field: &'static str, value: &'static str| {
            let mut cells = valid(ChildUpdate);
            for c in &mut cells {
                if c.0 == field {
                    c.1 = value.to_string();
                }
            }
            let borrowed: Vec<(&str, &str)> = cells.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_one(ChildUpdate, &borrowed, field, value);
        };
        update("dob", "11-01-2026");
        update("abha_number", "9112345678");
        update("gender", "unknown");
    }

    #[test]
    fn beneficiary_needs_exactly_one() {
        let aad = aadhaar("23456789012");
        for kind in [
            JobKind::BenefitSearch,
            JobKind::BenefitLink,
            JobKind::BenefitDelink,
        ] {
            let e = errors(
                kind,
                &[("abha_number", "91-1234-5678-9012"), ("aadhaar", &aad)],
            );
            assert_eq!(
                e,
                vec![FieldError {
                    field: "aadhaar".into(),
                    reason: "give abha_number or aadhaar, not both".into()
                }]
            );
            let e = errors(kind, &[("abha_number", ""), ("aadhaar", " ")]);
            assert_eq!(
                e,
                vec![FieldError {
                    field: "abha_number".into(),
                    reason: "abha_number or aadhaar is required".into()
                }]
            );
            let j = run(kind, &[("aadhaar", &aad)]).unwrap();
            assert_eq!(
                j.to_fields().keys().copied().collect::<Vec<_>>(),
                ["aadhaar"]
            );
        }
        // Both given and the ABHA number invalid: both problems shown.
        let e = errors(
            JobKind::BenefitLink,
            &[("abha_number", "91-1234"), ("aadhaar", &aad)],
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["abha_number", "aadhaar"]);
    }

    #[test]
    fn all_errors_of_a_row_are_reported() {
        let e = errors(
            JobKind::AbhaCreateDemo,
            &[
                ("aadhaar", "12345"),
                ("name", "R2D2"),
                ("dob", ""),
                ("gender", "Q"),
                ("state_code", "100"),
                ("district_code", "7"),
                ("pin_code", "0"),
            ],
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["aadhaar", "name", "dob", "gender", "state_code", "pin_code"]
        );
        let e = errors(
            JobKind::ChildCreate,
            &[("child_dob", "01-01-2000"), ("child_gender", "F")],
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["parent_x_token", "child_name", "child_dob"]);
    }

    #[test]
    fn child_must_be_under_18() {
        let mut cells = valid(JobKind::ChildCreate);
        let set = |cells: &mut Vec<(&'static str, String)>, dob: &str| {
            for c in cells.iter_mut() {
                if c.0 == "child_dob" {
                    c.1 = dob.to_string();
                }
            }
        };
        // Turns 18 on today's date: rejected.
        set(&mut cells, "10-01-2008");
        let e = run_owned(JobKind::ChildCreate, &cells).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "child_dob");
        assert!(e[0].reason.contains("under 18"));
        assert!(!e[0].reason.contains("2008"));
        // Turns 18 tomorrow: accepted.
        set(&mut cells, "11-01-2008");
        assert!(run_owned(JobKind::ChildCreate, &cells).is_ok());
        // Not born yet.
        set(&mut cells, "11-01-2026");
        let e = run_owned(JobKind::ChildCreate, &cells).unwrap_err();
        assert_eq!(e[0].reason, IdError::FutureDate.to_string());
    }

    #[test]
    fn photo_size_and_prefix() {
        let abha = "91-1234-5678-9012";
        let mut big = vec![0xFF, 0xD8, 0xFF];
        big.resize(MAX_PHOTO_BYTES + 1, 0);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
        let e = errors(
            JobKind::ProfileUpdate,
            &[("abha_number", abha), ("profile_photo", &b64)],
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "profile_photo");
        assert!(e[0].reason.contains("1 MiB"), "{}", e[0].reason);
        // Exactly 1 MiB passes.
        big.truncate(MAX_PHOTO_BYTES);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
        assert!(
            run(
                JobKind::ProfileUpdate,
                &[("abha_number", abha), ("profile_photo", &b64)]
            )
            .is_ok()
        );
        // A data URL and line breaks are cleaned away.
        let png = png_base64();
        let wrapped = format!("data:image/png;base64,{}\n{}", &png[..20], &png[20..]);
        let j = run(
            JobKind::ProfileUpdate,
            &[("abha_number", abha), ("profile_photo", &wrapped)],
        )
        .unwrap();
        assert_eq!(j.to_fields()["profile_photo"], png);
    }

    #[test]
    fn aliases_map() {
        let col = |kind: JobKind, name: &str| {
            *kind
                .columns()
                .iter()
                .find(|c| c.name == name)
                .expect("column")
        };
        let abha = col(JobKind::BenefitLink, "abha_number");
        for h in [
            "abha_number",
            "ABHA Number",
            "abha-number",
            "abha",
            "healthIdNumber",
            "ABHANumber",
            " ABHA No. ",
            "Health ID Number",
            "ABHA number (14 digits)",
        ] {
            assert!(abha.matches(h), "{h}");
        }
        assert!(!abha.matches("aadhaar"));
        let aad = col(JobKind::BenefitLink, "aadhaar");
        for h in ["Aadhaar", "aadhaar_number", "UID", "xmlUid", "Aadhar No"] {
            assert!(aad.matches(h), "{h}");
        }
        let mobile = col(JobKind::AbhaFind, "mobile");
        for h in ["Mobile Number", "phone", "mobileNumber"] {
            assert!(mobile.matches(h), "{h}");
        }
        let dob = col(JobKind::AbhaCreateDemo, "dob");
        for h in ["DOB", "Date of Birth", "dateOfBirth"] {
            assert!(dob.matches(h), "{h}");
        }
        assert!(col(JobKind::AbhaCreateDemo, "gender").matches("Sex"));
        assert!(col(JobKind::ChildCreate, "parent_x_token").matches("X-Token"));
        assert!(col(JobKind::ChildCreate, "parent_x_token").matches("parentXToken"));
        assert!(col(JobKind::ChildCreate, "child_name").matches("Child's Name"));
        // Any mix of case, with or without separators.
        for h in [
            "AbHa_NuMbEr",
            "ABHA_NUMBER",
            "Abha_Number",
            "aBHA nUMBER",
            "ABHANUMBER",
        ] {
            assert!(abha.matches(h), "{h}");
        }
        assert!(col(JobKind::AbhaCreateDemo, "dob").matches("DaTe_Of_BiRtH"));
        assert!(!abha.matches("AbHa_NuMbEr_2"));
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
