//! The benefit (programme) name: parsed once where it enters (`submit --benefit`,
//! `reconcile --benefit`), then carried as a [`BenefitName`] that is known to be safe in an
//! HTTP header value, a file name fragment and a report.
//!
//! ABDM gives each integrator its benefit names (`PMJAY`, `COVIN`, and in the integrator guide
//! also `healthid api`), so case is kept and a space inside is allowed. A deployment may list
//! the names it serves (setting `benefits.served`); then any other name is refused, and a name that
//! differs only in case is refused with the configured spelling.

use std::fmt;

/// Longest accepted benefit name, in characters.
pub const MAX_BENEFIT_LEN: usize = 64;

/// Why a benefit name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BenefitError {
    /// Empty or only spaces.
    #[error("the benefit name is empty: give the name ABDM registered for the programme")]
    Empty,
    /// Longer than [`MAX_BENEFIT_LEN`].
    #[error("the benefit name is longer than {MAX_BENEFIT_LEN} characters")]
    TooLong,
    /// A character a header value or a report cannot safely carry.
    #[error(
        "the benefit name must start with a letter or digit and contain only ASCII letters, digits, spaces and - _ . / ( ) & (found {found})"
    )]
    Characters {
        /// What was found, described (`a line break`, `'='`), never the whole value.
        found: String,
    },
    /// Not one of the names this deployment serves.
    #[error("this deployment does not serve the benefit {name:?}; configured benefits: {}", .allowed.join(", "))]
    NotServed {
        /// The refused name (already known to be header-safe).
        name: String,
        /// The configured names.
        allowed: Vec<String>,
    },
    /// Differs from a configured name only in case.
    #[error("benefit names are case-sensitive: did you mean {suggestion:?}?")]
    Case {
        /// The configured spelling.
        suggestion: String,
    },
}

/// A validated benefit name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BenefitName(String);

impl BenefitName {
    /// Validates the form: trimmed, 1 to 64 characters, starting with an ASCII letter or
    /// digit, then ASCII letters, digits, spaces and `- _ . / ( ) &`. No control characters,
    /// so never a line break (no header injection), and never a leading `= + - @` (no
    /// spreadsheet formula).
    pub fn parse(input: &str) -> Result<Self, BenefitError> {
        let name = input.trim();
        if name.is_empty() {
            return Err(BenefitError::Empty);
        }
        if name.chars().count() > MAX_BENEFIT_LEN {
            return Err(BenefitError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || " -_./()&".contains(c);
        if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
            return Err(BenefitError::Characters {
                found: describe(bad),
            });
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(BenefitError::Characters {
                found: format!(
                    "{} at the start",
                    describe(name.chars().next().unwrap_or(' '))
                ),
            });
        }
        Ok(Self(name.to_string()))
    }

    /// [`Self::parse`], then, when `served` is not empty, the name must be one of them
    /// (exactly; a name that differs only in case is refused with the configured spelling).
    pub fn parse_served(input: &str, served: &[String]) -> Result<Self, BenefitError> {
        let name = Self::parse(input)?;
        if served.is_empty() || served.iter().any(|s| s.trim() == name.0) {
            return Ok(name);
        }
        if let Some(s) = served
            .iter()
            .find(|s| s.trim().eq_ignore_ascii_case(&name.0))
        {
            return Err(BenefitError::Case {
                suggestion: s.trim().to_string(),
            });
        }
        Err(BenefitError::NotServed {
            name: name.0,
            allowed: served.iter().map(|s| s.trim().to_string()).collect(),
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A refused character, described without echoing control characters.
fn describe(c: char) -> String {
    match c {
        '\r' | '\n' => "a line break".into(),
        '\t' => "a tab".into(),
        c if c.is_control() => format!("control character U+{:04X}", c as u32),
        c => format!("{c:?}"),
    }
}

impl fmt::Display for BenefitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BenefitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BenefitName({:?})", self.0)
    }
}

impl std::str::FromStr for BenefitName {
    type Err = BenefitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_names_only() {
        for good in [
            "PMJAY",
            "COVIN",
            "healthid api",
            "DEMO-BENEFIT",
            "NHM_HR.2026",
            "A&B (X)",
        ] {
            assert_eq!(BenefitName::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(BenefitName::parse("  PMJAY ").unwrap().as_str(), "PMJAY");
        assert_eq!(BenefitName::parse(""), Err(BenefitError::Empty));
        assert_eq!(BenefitName::parse("   "), Err(BenefitError::Empty));
        let e = BenefitName::parse("PMJAY\r\nX-Evil: 1").unwrap_err();
        assert!(matches!(e, BenefitError::Characters { .. }));
        assert!(e.to_string().contains("a line break"), "{e}");
        for bad in [
            "PM\nJAY",
            "PM\tJAY",
            "=cmd()",
            "-PMJAY",
            "@PMJAY",
            "PMJAY:1",
            "प्रधानमंत्री",
        ] {
            assert!(BenefitName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            BenefitName::parse(&"A".repeat(65)),
            Err(BenefitError::TooLong)
        );
        assert!(BenefitName::parse(&"A".repeat(64)).is_ok());
    }

    #[test]
    fn configured_list_refuses_unknown_and_wrong_case() {
        let served = vec!["PMJAY".to_string(), "COVIN".to_string()];
        assert!(BenefitName::parse_served("PMJAY", &served).is_ok());
        assert_eq!(
            BenefitName::parse_served("pmjay", &served),
            Err(BenefitError::Case {
                suggestion: "PMJAY".into()
            })
        );
        let e = BenefitName::parse_served("PMJAY2", &served).unwrap_err();
        assert!(matches!(e, BenefitError::NotServed { .. }));
        assert!(e.to_string().contains("PMJAY, COVIN"), "{e}");
        // Without a list, any well-formed name.
        assert!(BenefitName::parse_served("pmjay", &[]).is_ok());
        assert_eq!(
            BenefitName::parse_served("", &served),
            Err(BenefitError::Empty)
        );
    }
}
