//! Erasure on request (DPDP Act 2023 s.12): a file of identifiers (Aadhaar, ABHA number or
//! mobile, one per line) → the keyed lookup hashes → every stored row about those people
//! within the caller's scope erased, the rows that had not run cancelled, and the request
//! recorded in `erasure_log` without the identifiers.
//!
//! The scan goes through the jobs a range of ids at a time (one short transaction each), so a
//! long run shows progress and holds no lock for long. Running it again with the same file is
//! harmless and finishes what an interrupted run left: erased rows no longer match.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::pii::{Aadhaar, AbhaNumber, Mobile};
use crate::store::erasure::{ErasureRequest, Rows};
use crate::store::{Store, StoreError, Vault};

/// A request that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// A line is not an identifier (the value is never repeated: it may be one).
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Nothing to erase.
    #[error("the file names no identifier (one Aadhaar, ABHA number or mobile per line)")]
    Empty,
    /// No reason given.
    #[error("an erasure needs a reason (recorded in the erasure log): pass --reason")]
    NoReason,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which identifier a line holds, written as a prefix when the digits alone are ambiguous.
fn parse_line(text: &str) -> Result<String, String> {
    if let Some((prefix, value)) = text.split_once(':') {
        let value = value.trim();
        return match prefix.trim().to_ascii_lowercase().as_str() {
            "aadhaar" => Aadhaar::parse(value).map(|a| a.expose().to_string()),
            "abha" | "abha_number" => AbhaNumber::parse(value).map(|a| a.expose().to_string()),
            "mobile" => Mobile::parse(value).map(|m| m.expose().to_string()),
            _ => {
                return Err(
                    "unknown prefix: write aadhaar:, abha: or mobile: before the value, or the value alone"
                        .into(),
                );
            }
        }
        .map_err(|e| e.to_string());
    }
    if text.contains('@') {
        return Err(
            "an ABHA address cannot be erased by: give the ABHA number, Aadhaar or mobile".into(),
        );
    }
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '+'))
        .collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an Aadhaar, ABHA number or mobile (digits only)".into());
    }
    match digits.len() {
        14 => AbhaNumber::parse(&digits)
            .map(|a| a.expose().to_string())
            .map_err(|e| e.to_string()),
        12 => {
            let aadhaar = Aadhaar::parse(&digits);
            let mobile = digits
                .starts_with("91")
                .then(|| Mobile::parse(&digits).ok())
                .flatten();
            match (aadhaar, mobile) {
                (Ok(_), Some(_)) => Err(
                    "12 digits starting with 91 could be an Aadhaar or a mobile with its country code: write aadhaar: or mobile: before it"
                        .into(),
                ),
                (Ok(a), None) => Ok(a.expose().to_string()),
                (Err(_), Some(m)) => Ok(m.expose().to_string()),
                (Err(e), None) => Err(e.to_string()),
            }
        }
        10 | 11 => Mobile::parse(&digits)
            .map(|m| m.expose().to_string())
            .map_err(|e| e.to_string()),
        _ => {
            Err("not an Aadhaar (12 digits), ABHA number (14 digits) or mobile (10 digits)".into())
        }
    }
}

/// One identifier in its normalised form (the form `submit` hashed), or why it is none.
/// The reason never repeats the value.
pub fn normalise(text: &str) -> Result<String, String> {
    parse_line(text.trim())
}

/// The lookup hashes of already normalised identifiers ([`normalise`]).
pub fn identifiers_of<'a>(values: impl IntoIterator<Item = &'a str>, vault: &Vault) -> Identifiers {
    let mut people = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for v in values {
        people.insert(vault.hash(v));
        hashes.extend(vault.hashes_all_keys(v));
    }
    Identifiers {
        hashes: hashes.into_iter().collect(),
        people: people.len(),
    }
}

/// The lookup hashes of a file's identifiers, the way `submit` computed each job's
/// `subject_hash` (the normalised form the job kinds use), under `pii.key` and every
/// previous key (a rotation may be half done). Blank lines, `#` comments and a
/// first line `identifier` are skipped; the first malformed line refuses the whole file.
pub fn parse_identifiers(text: &str, vault: &Vault) -> Result<Identifiers, EraseError> {
    let mut values = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim().trim_start_matches('\u{feff}');
        if line.is_empty()
            || line.starts_with('#')
            || (i == 0 && line.eq_ignore_ascii_case("identifier"))
        {
            continue;
        }
        let value = parse_line(line).map_err(|reason| EraseError::Malformed {
            line: i + 1,
            reason,
        })?;
        values.push(value);
    }
    if values.is_empty() {
        return Err(EraseError::Empty);
    }
    Ok(identifiers_of(values.iter().map(String::as_str), vault))
}

/// The lookup hashes of a request's people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifiers {
    /// Under every configured key.
    pub hashes: Vec<Vec<u8>>,
    /// Distinct identifiers named.
    pub people: usize,
}

/// Pacing of a request.
#[derive(Debug, Clone, Copy)]
pub struct EraseOptions {
    /// Job ids per transaction.
    pub chunk: i64,
    /// How long to wait for rows running right now to finish before giving up (they are left
    /// for the next run of the same request).
    pub wait: Duration,
    /// How often to look at them again.
    pub poll: Duration,
}

impl Default for EraseOptions {
    fn default() -> Self {
        Self {
            chunk: 50_000,
            wait: Duration::from_secs(300),
            poll: Duration::from_millis(500),
        }
    }
}

/// Where a request stands (progress) or ended (summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EraseProgress {
    /// Job ids scanned.
    pub scanned: u64,
    /// Job ids to scan.
    pub total: u64,
    /// Rows erased.
    pub erased: u64,
    /// Of those, rows cancelled before they ran.
    pub cancelled: u64,
    /// Rows running right now, waited for.
    pub waiting: u64,
}

/// Runs an erasure request to its end: scans every job in chunks, then waits (up to
/// `opts.wait`) for the rows that were running, and logs the request's summary.
pub async fn run(
    store: &Store,
    req: &ErasureRequest,
    opts: EraseOptions,
    mut progress: impl FnMut(&EraseProgress),
) -> Result<EraseProgress, EraseError> {
    let (lo, hi) = store.job_id_bounds().await?;
    let mut p = EraseProgress {
        total: (hi - lo).max(0) as u64,
        ..EraseProgress::default()
    };
    let mut running = BTreeSet::new();
    let mut cursor = lo;
    while cursor < hi {
        let end = hi.min(cursor.saturating_add(opts.chunk.max(1)));
        let c = store.erase_subjects(req, Rows::Range(cursor, end)).await?;
        p.erased += c.erased;
        p.cancelled += c.cancelled;
        running.extend(c.running);
        p.scanned = (end - lo) as u64;
        p.waiting = running.len() as u64;
        cursor = end;
        progress(&p);
    }
    let started = Instant::now();
    while !running.is_empty() && started.elapsed() < opts.wait {
        tokio::time::sleep(opts.poll).await;
        let ids: Vec<i64> = running.iter().copied().collect();
        let c = store.erase_subjects(req, Rows::Ids(&ids)).await?;
        p.erased += c.erased;
        p.cancelled += c.cancelled;
        running = c.running.into_iter().collect();
        if p.waiting != running.len() as u64 {
            p.waiting = running.len() as u64;
            progress(&p);
        }
    }
    p.waiting = running.len() as u64;
    store
        .log_erasure_request(req, p.erased, p.cancelled, p.waiting)
        .await?;
    Ok(p)
}

/// A request with a fresh id.
pub fn request(
    ids: Identifiers,
    scope: Option<Vec<String>>,
    requested_by: String,
    operator: Option<String>,
    reason: &str,
) -> Result<ErasureRequest, EraseError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(EraseError::NoReason);
    }
    Ok(ErasureRequest {
        id: Uuid::new_v4(),
        hashes: ids.hashes,
        people: ids.people,
        scope,
        requested_by,
        operator: operator
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty()),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::from_bytes(&[3u8; 32])
    }

    #[test]
    fn identifiers_hash_as_submit_does() {
        let v = vault();
        let text = "identifier\n91-1234-5678-9012\n\n# comment\n9876543210\nabha:91123456789012\n";
        let ids = parse_identifiers(text, &v).unwrap();
        let h = ids.hashes;
        // The two ABHA spellings are one person.
        assert_eq!((h.len(), ids.people), (2, 2));
        assert!(h.contains(&v.hash("91-1234-5678-9012")));
        assert!(h.contains(&v.hash("9876543210")));
    }

    #[test]
    fn a_malformed_line_is_named_without_its_value() {
        let e = parse_identifiers("9876543210\n12345\n", &vault()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("line 2:"), "{msg}");
        assert!(!msg.contains("12345"), "{msg}");
        let e = parse_identifiers("someone@abdm\n", &vault()).unwrap_err();
        assert!(e.to_string().contains("line 1: an ABHA address"), "{e}");
        assert!(matches!(
            parse_identifiers("\n# nothing\n", &vault()),
            Err(EraseError::Empty)
        ));
        let e = parse_identifiers("passport:X\n", &vault()).unwrap_err();
        assert!(e.to_string().contains("unknown prefix"), "{e}");
    }

    #[test]
    fn an_ambiguous_twelve_digit_line_needs_a_prefix() {
        // Digits that pass the Aadhaar checksum and start with 91 (a mobile with +91).
        let ambiguous = (0..1000u32)
            .map(|i| format!("91987654{i:04}"))
            .find(|d| Aadhaar::parse(d).is_ok())
            .expect("one in ten passes Verhoeff");
        let e = parse_identifiers(&ambiguous, &vault()).unwrap_err();
        assert!(e.to_string().contains("write aadhaar: or mobile:"), "{e}");
        let h = parse_identifiers(&format!("mobile:{ambiguous}"), &vault())
            .unwrap()
            .hashes;
        assert_eq!(h, vec![vault().hash(&ambiguous[2..])]);
        let h = parse_identifiers(&format!("aadhaar:{ambiguous}"), &vault())
            .unwrap()
            .hashes;
        assert_eq!(h, vec![vault().hash(&ambiguous)]);
    }
}
