//! Personal identifiers: validated types whose `Debug`/`Display` are masked.
//!
//! An Aadhaar number, ABHA number, mobile, name or X-token is only ever held in one of these
//! types, so it cannot reach a log line or an error message by accident. The raw value is
//! reached with `expose()`, which only the ABDM client (to encrypt or send it) and the store
//! (to encrypt it at rest) call.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Why an identifier or field value was rejected. Never contains the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Aadhaar: not 12 digits.
    #[error("Aadhaar number must be 12 digits")]
    AadhaarLength,
    /// Aadhaar: starts with 0 or 1.
    #[error("Aadhaar number cannot start with 0 or 1")]
    AadhaarLeadingDigit,
    /// Aadhaar: Verhoeff check digit wrong.
    #[error("Aadhaar number fails the Verhoeff checksum (mistyped digit?)")]
    AadhaarChecksum,
    /// ABHA number: not 14 digits.
    #[error("ABHA number must be 14 digits, written 91-XXXX-XXXX-XXXX or 91XXXXXXXXXXXX")]
    AbhaNumber,
    /// ABHA number: 14 digits that do not start with 91.
    #[error("ABHA number must start with 91 (91-XXXX-XXXX-XXXX)")]
    AbhaPrefix,
    /// An ABHA address (`name@abdm`) where the 14-digit number is needed.
    #[error(
        "ABHA addresses (name@abdm, name@sbx) are not accepted: give the 14-digit ABHA number (91-XXXX-XXXX-XXXX)"
    )]
    AbhaAddress,
    /// Mobile: not 10 digits starting 6 to 9.
    #[error("mobile must be 10 digits starting with 6, 7, 8 or 9")]
    Mobile,
    /// Date: not dd-mm-yyyy or not a real date.
    #[error("date must be a real date written dd-mm-yyyy")]
    Date,
    /// Date: in the future.
    #[error("date cannot be in the future")]
    FutureDate,
    /// Date: a real date, but before 1900.
    #[error("date cannot be before 01-01-1900")]
    DateBefore1900,
    /// Gender: not M, F or O.
    #[error("gender must be M, F or O")]
    Gender,
    /// A required value is empty.
    #[error("value is required")]
    Empty,
    /// Name with characters ABDM does not accept, or too long.
    #[error(
        "name must be 1 to 100 letters (any script, with its vowel signs and marks), spaces, dots, apostrophes or hyphens"
    )]
    Name,
    /// X-token with characters a header value cannot carry (a line break, a space, ...).
    #[error(
        "X-token must be one token of letters, digits and - . _ ~ + / = (no spaces or line breaks), at most 8192 characters"
    )]
    XToken,
}

/// Masks all but the last `keep` characters of `s`, keeping separators.
fn mask_keep_last(s: &str, keep: usize) -> String {
    let digits = s.chars().filter(|c| c.is_ascii_alphanumeric()).count();
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                seen += 1;
                if seen + keep > digits { c } else { 'X' }
            } else {
                c
            }
        })
        .collect()
}

/// `Ravi Kumar` → `R*** K***`.
fn initials(s: &str) -> String {
    s.split_whitespace()
        .map(|w| format!("{}***", w.chars().next().unwrap_or('*')))
        .collect::<Vec<_>>()
        .join(" ")
}

macro_rules! masked_debug {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self.masked())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.masked())
            }
        }
    };
}

/// A 12-digit Aadhaar number with a valid Verhoeff check digit.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Aadhaar(String);

impl Aadhaar {
    /// Validates `input` (spaces and dashes allowed between digit groups).
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() {
            return Err(IdError::Empty);
        }
        if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::AadhaarLength);
        }
        if digits.starts_with('0') || digits.starts_with('1') {
            return Err(IdError::AadhaarLeadingDigit);
        }
        if !verhoeff::validate(&digits) {
            return Err(IdError::AadhaarChecksum);
        }
        Ok(Self(digits))
    }
    /// The 12 digits.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `XXXX-XXXX-1234`.
    pub fn masked(&self) -> String {
        format!("XXXX-XXXX-{}", &self.0[8..])
    }
}
masked_debug!(Aadhaar);

/// A 14-digit ABHA number, held as `91-XXXX-XXXX-XXXX`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AbhaNumber(String);

impl AbhaNumber {
    /// Validates and normalises (dashes and spaces optional). Every ABHA number ABDM issues
    /// starts with `91`; an ABHA address (`name@sbx`) is refused with its own reason.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() {
            return Err(IdError::Empty);
        }
        if digits.contains('@') {
            return Err(IdError::AbhaAddress);
        }
        if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::AbhaNumber);
        }
        if !digits.starts_with("91") {
            return Err(IdError::AbhaPrefix);
        }
        Ok(Self(format!(
            "{}-{}-{}-{}",
            &digits[0..2],
            &digits[2..6],
            &digits[6..10],
            &digits[10..14]
        )))
    }
    /// `91-1234-5678-9012`: the form ABDM expects (dashes kept).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The 14 digits without dashes.
    pub fn digits(&self) -> String {
        self.0.replace('-', "")
    }
    /// `XX-XXXX-XXXX-9012`.
    pub fn masked(&self) -> String {
        format!("XX-XXXX-XXXX-{}", &self.0[13..])
    }
}
masked_debug!(AbhaNumber);

/// A 10-digit Indian mobile number starting with 6 to 9.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mobile(String);

impl Mobile {
    /// Validates; a leading `+91`, `91` (on 12 digits) or `0` is removed.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let mut digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() {
            return Err(IdError::Empty);
        }
        if let Some(rest) = digits.strip_prefix("+91") {
            digits = rest.to_string();
        } else if digits.len() == 12 && digits.starts_with("91") {
            digits = digits[2..].to_string();
        } else if digits.len() == 11 && digits.starts_with('0') {
            digits = digits[1..].to_string();
        }
        if digits.len() != 10
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || !matches!(digits.as_bytes()[0], b'6'..=b'9')
        {
            return Err(IdError::Mobile);
        }
        Ok(Self(digits))
    }
    /// The 10 digits.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `XXXXXX1234`.
    pub fn masked(&self) -> String {
        format!("XXXXXX{}", &self.0[6..])
    }
}
masked_debug!(Mobile);

mod names;
use names::valid_name_chars;

/// A person's name as ABDM accepts it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

impl PersonName {
    /// Trims, collapses inner whitespace, normalises to Unicode NFC (so the same name typed
    /// in two encodings is one name) and validates: letters of any script with their
    /// combining marks (matras, virama, nukta, anusvara, Latin accents), ZWJ/ZWNJ inside a
    /// word, spaces, dots, apostrophes and hyphens; at most 100 characters. Digits (of any
    /// script), control characters and other punctuation are refused.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let name = input.split_whitespace().collect::<Vec<_>>().join(" ");
        if name.is_empty() {
            return Err(IdError::Empty);
        }
        let name = match unicode_normalization::is_nfc_quick(name.chars()) {
            unicode_normalization::IsNormalized::Yes => name,
            _ => name.nfc().collect(),
        };
        if name.chars().count() > 100 || !valid_name_chars(&name) {
            return Err(IdError::Name);
        }
        Ok(Self(name))
    }
    /// The name.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// First letter of each word, e.g. `R*** K***`.
    pub fn masked(&self) -> String {
        initials(&self.0)
    }
}
masked_debug!(PersonName);

/// A user's or parent's X-token (a bearer JWT); never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct XToken(String);

impl XToken {
    /// Accepts a token with or without its `Bearer ` prefix; refuses anything a header value
    /// cannot carry (line breaks, spaces, control characters).
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let t = input.trim();
        let t = t.strip_prefix("Bearer ").unwrap_or(t).trim();
        if t.is_empty() {
            return Err(IdError::Empty);
        }
        // RFC 7235 token68: what a JWT (and the sandbox's tokens) consist of, and header-safe.
        let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
        if t.len() > 8192 || !t.bytes().all(token68) {
            return Err(IdError::XToken);
        }
        Ok(Self(t.to_string()))
    }
    /// The token without `Bearer `.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Always `***`.
    pub fn masked(&self) -> String {
        "***".into()
    }
}
masked_debug!(XToken);

/// Any other personal value from an ABDM answer (names, masked mobiles, addresses, photos):
/// kept as given, `Debug`/`Display` masked.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into())
    }
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Text without digits (a name) as its initials (`R*** K***`); anything else with all
    /// but the last four letters or digits replaced by `X`.
    pub fn masked(&self) -> String {
        let has_digit = self.0.chars().any(|c| c.is_ascii_digit());
        if !has_digit && self.0.chars().any(char::is_alphabetic) {
            initials(&self.0)
        } else {
            mask_keep_last(&self.0, 4)
        }
    }
}
masked_debug!(Sensitive);

/// M, F or O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gender {
    /// Male.
    M,
    /// Female.
    F,
    /// Other.
    O,
}

impl Gender {
    /// Accepts M/F/O (any case) and the words male/female/other.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        match input.trim().to_ascii_uppercase().as_str() {
            "M" | "MALE" => Ok(Self::M),
            "F" | "FEMALE" => Ok(Self::F),
            "O" | "OTHER" | "T" => Ok(Self::O),
            "" => Err(IdError::Empty),
            _ => Err(IdError::Gender),
        }
    }
    /// `M`, `F` or `O`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::M => "M",
            Self::F => "F",
            Self::O => "O",
        }
    }
}

/// Parses a `dd-mm-yyyy` date that is real and not after `today`.
pub fn parse_past_date(input: &str, today: NaiveDate) -> Result<NaiveDate, IdError> {
    let t = input.trim();
    if t.is_empty() {
        return Err(IdError::Empty);
    }
    let parts: Vec<&str> = t.split(['-', '/']).collect();
    let [d, m, y] = parts.as_slice() else {
        return Err(IdError::Date);
    };
    if y.len() != 4 || d.is_empty() || d.len() > 2 || m.is_empty() || m.len() > 2 {
        return Err(IdError::Date);
    }
    let (Ok(d), Ok(m), Ok(y)) = (d.parse::<u32>(), m.parse::<u32>(), y.parse::<i32>()) else {
        return Err(IdError::Date);
    };
    let date = NaiveDate::from_ymd_opt(y, m, d).ok_or(IdError::Date)?;
    if date > today {
        return Err(IdError::FutureDate);
    }
    if date.year() < 1900 {
        return Err(IdError::DateBefore1900);
    }
    Ok(date)
}

/// Formats a date the way ABDM writes it: `dd-mm-yyyy`.
pub fn format_date(date: NaiveDate) -> String {
    date.format("%d-%m-%Y").to_string()
}

/// Replaces every run of six or more digits (dashes and spaces allowed inside) in free text,
/// such as an ABDM error message that echoes an identifier, with `X`s but the last four digits.
pub fn scrub_digits(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let mut j = i;
            let mut digits = 0;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || (matches!(chars[j], '-' | ' ')
                        && j + 1 < chars.len()
                        && chars[j + 1].is_ascii_digit()))
            {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                }
                j += 1;
            }
            let run: String = chars[i..j].iter().collect();
            if digits >= 6 {
                out.push_str(&mask_keep_last(&run, 4));
            } else {
                out.push_str(&run);
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The Verhoeff checksum used by Aadhaar.
pub mod verhoeff {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    const INV: [u8; 10] = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9];

    /// True when the last digit of `digits` is its Verhoeff check digit.
    pub fn validate(digits: &str) -> bool {
        let mut c = 0u8;
        for (i, b) in digits.bytes().rev().enumerate() {
            if !b.is_ascii_digit() {
                return false;
            }
            c = D[c as usize][P[i % 8][(b - b'0') as usize] as usize];
        }
        c == 0
    }

    /// The check digit to append to `digits`.
    pub fn check_digit(digits: &str) -> u8 {
        let mut c = 0u8;
        for (i, b) in digits.bytes().rev().enumerate() {
            c = D[c as usize][P[(i + 1) % 8][(b - b'0') as usize] as usize];
        }
        INV[c as usize]
    }
}

#[cfg(test)]
mod tests;
