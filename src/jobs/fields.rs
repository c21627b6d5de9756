//! Reading one row's cells into typed values, the parsers several kinds share, and the error a
//! rejected field gives.
//!
//! A row is read whole even after a bad field: the person fixing the file should see every
//! problem of the row at once, not one per upload. So a kind's `parse` asks the [`Fields`]
//! reader for each field, the reader records each failure and the kind builds its payload
//! only when everything it needs is there.
//!
//! Error reasons name the field and the rule, never the value: a [`FieldError`] can be
//! written to a report or a log.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;

use crate::abdm::benefit::Beneficiary;
use crate::pii::{Aadhaar, AbhaNumber, IdError, parse_past_date};

/// A job's canonical cells with raw (exposed) values, by column name; sorted, so that its JSON
/// form is a stable dedup key.
pub type FieldMap = BTreeMap<&'static str, String>;

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

/// Reads one row's cells by canonical name and collects the errors of its fields.
pub struct Fields<'g, 'a> {
    get: &'g dyn Fn(&str) -> Option<&'a str>,
    errors: Vec<FieldError>,
}

impl<'g, 'a> Fields<'g, 'a> {
    pub(crate) fn new(get: &'g dyn Fn(&str) -> Option<&'a str>) -> Self {
        Self {
            get,
            errors: Vec::new(),
        }
    }

    /// The payload when the row had no invalid field, else every error of the row.
    pub(crate) fn finish<T>(self, payload: Option<T>) -> Result<T, Vec<FieldError>> {
        match payload {
            Some(p) if self.errors.is_empty() => Ok(p),
            _ => {
                debug_assert!(!self.errors.is_empty(), "no job and no error");
                Err(self.errors)
            }
        }
    }

    /// The trimmed cell, `None` when absent or empty.
    pub fn raw(&self, name: &str) -> Option<&'a str> {
        (self.get)(name).map(str::trim).filter(|s| !s.is_empty())
    }

    /// True once any field of the row was found invalid.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Records a rule the row breaks (for rules across fields; one field's parser returns
    /// its reason instead).
    pub fn error(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// Validates an optional field; `None` when absent or invalid (the error is recorded).
    pub fn opt<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
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
    pub fn req<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        if self.raw(name).is_none() {
            self.error(name, IdError::Empty.to_string());
            return None;
        }
        self.opt(name, parse)
    }

    /// `abha_number` xor `aadhaar`: the beneficiary columns of search, link and de-link.
    pub fn beneficiary(&mut self) -> Option<Beneficiary> {
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

/// The cells of a beneficiary: the one identifier the row gave.
pub(crate) fn beneficiary_fields(b: &Beneficiary, out: &mut FieldMap) {
    match b {
        Beneficiary::Abha(a) => out.insert("abha_number", a.expose().to_string()),
        Beneficiary::Aadhaar(a) => out.insert("aadhaar", a.expose().to_string()),
    };
}

/// Adapts a pii parser so its `IdError` becomes the reason.
pub fn id<T>(parse: fn(&str) -> Result<T, IdError>) -> impl FnOnce(&str) -> Result<T, String> {
    move |s| parse(s).map_err(|e| e.to_string())
}

/// A date not after `today` (dd-mm-yyyy or dd/mm/yyyy).
pub fn past_date(today: NaiveDate) -> impl FnOnce(&str) -> Result<NaiveDate, String> {
    move |s| parse_past_date(s, today).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::FieldError;
    use crate::jobs::kind::JobKind;
    use crate::jobs::testing::{aadhaar, errors, run};

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
}
