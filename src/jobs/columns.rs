//! Input columns: what a kind's CSV header may call each field, and the columns several kinds
//! share.
//!
//! Programme staff export files from whatever system they have, so a header rarely spells
//! `abha_number` exactly. A [`ColumnSpec`] lists the canonical name and the aliases met in
//! practice; [`ColumnSpec::matches`] normalises the header cell before comparing, so an alias
//! is written once, in normalised form, and every spelling of it is accepted.

/// One input column of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Canonical name (snake_case), the key of [`Job::from_fields`] and [`Job::to_fields`].
    ///
    /// [`Job::from_fields`]: crate::jobs::kind::Job::from_fields
    /// [`Job::to_fields`]: crate::jobs::kind::Job::to_fields
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

// Aliases and descriptions of the identifiers several kinds read, kept in one place so that
// `ABHA No.` means the same column in every kind's file.

pub(crate) const ABHA_ALIASES: &[&str] = &[
    "abha",
    "abha_no",
    "abha_num",
    "abha_id",
    "abhanumber",
    "health_id_number",
    "health_id_no",
];
pub(crate) const AADHAAR_ALIASES: &[&str] = &[
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
pub(crate) const MOBILE_ALIASES: &[&str] = &[
    "mobile_number",
    "mobile_no",
    "phone",
    "phone_number",
    "phone_no",
];
pub(crate) const NAME_ALIASES: &[&str] = &["full_name", "beneficiary_name", "name_as_in_aadhaar"];
pub(crate) const DOB_ALIASES: &[&str] = &["date_of_birth", "birth_date", "birthdate"];
pub(crate) const GENDER_ALIASES: &[&str] = &["sex"];

pub(crate) const AADHAAR_DESC: &str = "Aadhaar number, 12 digits (spaces or dashes between groups \
     allowed), not starting with 0 or 1, valid Verhoeff check digit";
pub(crate) const MOBILE_DESC: &str =
    "mobile, 10 digits starting 6-9 (a leading +91, 91 or 0 is removed)";
pub(crate) const NAME_DESC: &str = "name as in Aadhaar: 1 to 100 letters of any script (with \
     their vowel signs and marks), spaces, dots, apostrophes, hyphens";
pub(crate) const DOB_DESC: &str = "date of birth dd-mm-yyyy (or dd/mm/yyyy), not in the future";
pub(crate) const GENDER_DESC: &str = "M, F or O (male, female, other also accepted)";

/// A required ABHA number (lookup, profile update).
pub(crate) const ABHA_REQUIRED: ColumnSpec = ColumnSpec {
    name: "abha_number",
    required: true,
    aliases: ABHA_ALIASES,
    description: "ABHA number, 14 digits: 91-XXXX-XXXX-XXXX or 91XXXXXXXXXXXX",
};

/// Who a benefit search, link or de-link is about: exactly one of the two (read by
/// [`Fields::beneficiary`](crate::jobs::fields::Fields::beneficiary)).
pub(crate) const BENEFICIARY_COLUMNS: &[ColumnSpec] = &[
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

/// The header of a beneficiary file must carry at least one of the two columns.
pub(crate) const BENEFICIARY_ONE_OF: &[&[&str]] = &[&["abha_number", "aadhaar"]];

#[cfg(test)]
mod tests {
    use crate::jobs::kind::JobKind;
    use crate::jobs::testing::col;

    #[test]
    fn aliases_map() {
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
}
