//! The sandbox's deterministic population: beneficiary `i` (0 ≤ i < size) has an ABHA number,
//! an Aadhaar number, a mobile, a name, a gender and a birth date derived from the seed.
//!
//! Each identifier is an affine bijection of `i` modulo the size of its number space, so
//! "who owns this number?" is answered in O(1) without storing a million records, and tests,
//! benchmarks and the demo generate valid rows from the same seed.

use chrono::{Duration as Days, NaiveDate};
use sha2::{Digest, Sha256};

use crate::pii::{Aadhaar, AbhaNumber, Gender, Mobile, PersonName, verhoeff};

/// One seeded beneficiary: the person sample rows are made of ([`crate::jobs::sample`]).
pub use crate::jobs::sample::Person;

const ABHA_SPACE: u128 = 1_000_000_000_000; // 12 digits after "91"
const AADHAAR_SPACE: u128 = 80_000_000_000; // 11-digit bodies 20000000000..99999999999
const MOBILE_SPACE: u128 = 4_000_000_000; // 6000000000..9999999999
// Multipliers coprime to each space (odd, not divisible by 5).
const ABHA_MUL: u128 = 742_938_285_917;
const AADHAAR_MUL: u128 = 53_781_224_689;
const MOBILE_MUL: u128 = 2_718_281_829;

const FIRST: &[&str] = &[
    "Aarav", "Vivaan", "Aditya", "Ananya", "Diya", "Ishaan", "Kavya", "Lakshmi", "Meera", "Nikhil",
    "Pooja", "Rahul", "Riya", "Sanjay", "Sita", "Vikram", "Zoya", "Arjun", "Priya", "Rohan",
];
const LAST: &[&str] = &[
    "Sharma", "Verma", "Iyer", "Reddy", "Nair", "Patel", "Singh", "Das", "Khan", "Gupta", "Menon",
    "Joshi", "Kulkarni", "Banerjee", "Mehta",
];

/// The seeded population.
#[derive(Debug, Clone)]
pub struct Population {
    size: u64,
    seed: u64,
    abha_off: u128,
    aadhaar_off: u128,
    mobile_off: u128,
}

fn hash64(seed: u64, tag: &str, i: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(i.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn mod_inverse(a: u128, m: u128) -> u128 {
    let (mut t, mut new_t) = (0i128, 1i128);
    let (mut r, mut new_r) = (m as i128, a as i128);
    while new_r != 0 {
        let q = r / new_r;
        (t, new_t) = (new_t, t - q * new_t);
        (r, new_r) = (new_r, r - q * new_r);
    }
    assert_eq!(r, 1, "multiplier must be invertible");
    if t < 0 {
        (t + m as i128) as u128
    } else {
        t as u128
    }
}

impl Population {
    /// `size` people derived from `seed`.
    pub fn new(size: u64, seed: u64) -> Self {
        Self {
            size,
            seed,
            abha_off: hash64(seed, "abha", 0) as u128 % ABHA_SPACE,
            aadhaar_off: hash64(seed, "aadhaar", 0) as u128 % AADHAAR_SPACE,
            mobile_off: hash64(seed, "mobile", 0) as u128 % MOBILE_SPACE,
        }
    }

    /// Number of people.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// ABHA number of index `i` (any `i`, also beyond `size`: used for new enrolments).
    pub fn abha(&self, i: u64) -> AbhaNumber {
        let n = (i as u128 * ABHA_MUL + self.abha_off) % ABHA_SPACE;
        AbhaNumber::parse(&format!("91{n:012}")).expect("14 digits")
    }

    /// Index that owns `abha`, whether or not it is below `size`.
    pub fn abha_index(&self, abha: &AbhaNumber) -> Option<u64> {
        let digits = abha.digits();
        let n: u128 = digits.strip_prefix("91")?.parse().ok()?;
        let i = ((n + ABHA_SPACE - self.abha_off) % ABHA_SPACE) * mod_inverse(ABHA_MUL, ABHA_SPACE)
            % ABHA_SPACE;
        u64::try_from(i).ok()
    }

    /// Aadhaar number of index `i`.
    pub fn aadhaar(&self, i: u64) -> Aadhaar {
        let body =
            20_000_000_000u128 + (i as u128 * AADHAAR_MUL + self.aadhaar_off) % AADHAAR_SPACE;
        let body = body.to_string();
        Aadhaar::parse(&format!("{body}{}", verhoeff::check_digit(&body))).expect("valid Aadhaar")
    }

    /// Index that owns `aadhaar`.
    pub fn aadhaar_index(&self, aadhaar: &Aadhaar) -> Option<u64> {
        let body: u128 = aadhaar.expose()[..11].parse().ok()?;
        let j = body.checked_sub(20_000_000_000)?;
        let i = ((j + AADHAAR_SPACE - self.aadhaar_off) % AADHAAR_SPACE)
            * mod_inverse(AADHAAR_MUL, AADHAAR_SPACE)
            % AADHAAR_SPACE;
        u64::try_from(i).ok()
    }

    /// A valid Aadhaar number that belongs to nobody in the population (index ≥ size + k).
    pub fn unknown_aadhaar(&self, k: u64) -> Aadhaar {
        self.aadhaar(self.size + 1_000_000 + k)
    }

    /// Mobile of index `i`.
    pub fn mobile(&self, i: u64) -> Mobile {
        let n = 6_000_000_000u128 + (i as u128 * MOBILE_MUL + self.mobile_off) % MOBILE_SPACE;
        Mobile::parse(&n.to_string()).expect("valid mobile")
    }

    /// Index that owns `mobile`.
    pub fn mobile_index(&self, mobile: &Mobile) -> Option<u64> {
        let n: u128 = mobile.expose().parse().ok()?;
        let j = n.checked_sub(6_000_000_000)?;
        let i = ((j + MOBILE_SPACE - self.mobile_off) % MOBILE_SPACE)
            * mod_inverse(MOBILE_MUL, MOBILE_SPACE)
            % MOBILE_SPACE;
        u64::try_from(i).ok()
    }

    /// True when `i` is a seeded person.
    pub fn contains(&self, i: u64) -> bool {
        i < self.size
    }

    /// Everything about person `i`.
    pub fn person(&self, i: u64) -> Person {
        let h = hash64(self.seed, "person", i);
        let first = FIRST[(h % FIRST.len() as u64) as usize];
        let last = LAST[((h >> 16) % LAST.len() as u64) as usize];
        let gender = match (h >> 32) % 2 {
            0 => Gender::M,
            _ => Gender::F,
        };
        let birth_date = NaiveDate::from_ymd_opt(1950, 1, 1).expect("valid date")
            + Days::days(((h >> 40) % 20_000) as i64);
        Person {
            abha: self.abha(i),
            aadhaar: self.aadhaar(i),
            mobile: self.mobile(i),
            name: PersonName::parse(&format!("{first} {last}")).expect("valid name"),
            gender,
            birth_date,
            state_code: format!("{}", 1 + (h >> 48) % 36),
            district_code: format!("{}", 100 + (h >> 52) % 600),
        }
    }

    /// An X-token for person `abha`, valid until `expires_unix` (seconds). The sandbox accepts
    /// it as that person's login; real X-tokens come from an OTP login.
    pub fn x_token(&self, abha: &AbhaNumber, expires_unix: i64) -> String {
        let payload = format!("{}.{}", abha.digits(), expires_unix);
        format!("sbx1.{payload}.{}", self.sign(&payload))
    }

    /// Checks an X-token made by [`Self::x_token`]: `Ok(abha)` or why not.
    pub fn verify_x_token(&self, token: &str, now_unix: i64) -> Result<AbhaNumber, &'static str> {
        let rest = token.strip_prefix("sbx1.").ok_or("not a sandbox X-token")?;
        let mut parts = rest.split('.');
        let (Some(digits), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed X-token");
        };
        let payload = format!("{digits}.{exp}");
        if self.sign(&payload) != sig {
            return Err("X-token signature invalid");
        }
        let exp: i64 = exp.parse().map_err(|_| "malformed X-token")?;
        if exp < now_unix {
            return Err("X-token expired");
        }
        AbhaNumber::parse(digits).map_err(|_| "malformed X-token")
    }

    fn sign(&self, payload: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"abha-bulk-sandbox-x-token");
        h.update(self.seed.to_le_bytes());
        h.update(payload.as_bytes());
        h.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_round_trip_and_are_distinct() {
        let p = Population::new(1000, 7);
        let mut seen = std::collections::HashSet::new();
        for i in [0u64, 1, 2, 999, 123_456_789] {
            assert_eq!(p.abha_index(&p.abha(i)), Some(i));
            assert_eq!(p.aadhaar_index(&p.aadhaar(i)), Some(i));
            assert_eq!(p.mobile_index(&p.mobile(i)), Some(i));
            assert!(seen.insert(p.abha(i)));
        }
        assert!(!p.contains(p.aadhaar_index(&p.unknown_aadhaar(0)).unwrap()));
        let other = Population::new(1000, 8);
        assert_ne!(p.abha(0), other.abha(0));
    }

    #[test]
    fn x_tokens_verify_and_expire() {
        let p = Population::new(10, 1);
        let abha = p.abha(3);
        let t = p.x_token(&abha, 2_000);
        assert_eq!(p.verify_x_token(&t, 1_000), Ok(abha.clone()));
        assert_eq!(p.verify_x_token(&t, 3_000), Err("X-token expired"));
        let forged = t.replace(&abha.digits(), &p.abha(4).digits());
        assert!(p.verify_x_token(&forged, 1_000).is_err());
    }
}
