//! `profile-update`: patch the mobile, account status or photo of a profile.

use base64::Engine;
use chrono::NaiveDate;
use rand::Rng;

use crate::abdm::profile::{AccountStatus, ProfilePatch};
use crate::abdm::{AbdmClient, CallTrace, ClientError};
use crate::jobs::columns::{ABHA_REQUIRED, ColumnSpec, MOBILE_ALIASES};
use crate::jobs::execute::Success;
use crate::jobs::fields::{FieldMap, Fields, id};
use crate::jobs::kind::Kind;
use crate::jobs::sample::SampleRow;
use crate::pii::{AbhaNumber, Mobile, Sensitive};

/// Largest decoded profile photo ABDM accepts.
const MAX_PHOTO_BYTES: usize = 1024 * 1024;

/// Patch mobile, account status or photo of a profile.
pub struct ProfileUpdate;

impl Kind for ProfileUpdate {
    const NAME: &'static str = "profile-update";
    const CHANGES_STATE: bool = true;
    const SAMPLE_WEIGHT: u32 = 10;
    const SAMPLE_HEADER: &'static [&'static str] =
        &["external_ref", "abha_number", "mobile", "account_status"];
    const COLUMNS: &'static [ColumnSpec] = &[
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
            description: "base64 (standard alphabet, padded) JPEG or PNG, at most 1 MiB \
                 decoded; a data:image/...;base64, prefix is removed",
        },
    ];
    // A patch that changes nothing is a mistake in the file, not a job.
    const ONE_OF: &'static [&'static [&'static str]] =
        &[&["mobile", "account_status", "profile_photo"]];
    type Payload = ProfilePatch;

    fn parse(row: &mut Fields<'_, '_>, _today: NaiveDate) -> Option<ProfilePatch> {
        let abha = row.req("abha_number", id(AbhaNumber::parse));
        let given = Self::ONE_OF
            .iter()
            .all(|group| group.iter().any(|n| row.raw(n).is_some()));
        let mobile = row.opt("mobile", id(Mobile::parse));
        let status = row.opt("account_status", account_status);
        let photo = row.opt("profile_photo", profile_photo);
        if !given {
            row.error(
                "mobile",
                "give at least one of mobile, account_status, profile_photo",
            );
        }
        match abha {
            Some(abha_number) if !row.has_errors() => Some(ProfilePatch {
                abha_number,
                mobile,
                account_status: status,
                profile_photo: photo,
            }),
            _ => None,
        }
    }

    fn to_fields(p: &ProfilePatch, out: &mut FieldMap) {
        out.insert("abha_number", p.abha_number.expose().to_string());
        if let Some(mobile) = &p.mobile {
            out.insert("mobile", mobile.expose().to_string());
        }
        if let Some(s) = p.account_status {
            out.insert("account_status", s.as_str().to_string());
        }
        if let Some(photo) = &p.profile_photo {
            out.insert("profile_photo", photo.expose().to_string());
        }
    }

    fn subject(p: &ProfilePatch) -> String {
        p.abha_number.expose().to_string()
    }

    fn subject_masked(p: &ProfilePatch) -> String {
        p.abha_number.masked()
    }

    /// `updated`. The patch sets absolute values, so running it again after a lost answer is
    /// harmless and needs no look first.
    async fn execute(
        client: &AbdmClient,
        benefit: &str,
        patch: &ProfilePatch,
        _look_first: bool,
        trace: &mut CallTrace,
    ) -> Result<Success, ClientError> {
        client.update_profile(trace, benefit, patch).await?;
        Ok(Success::plain("updated"))
    }

    /// A new mobile (one on no ABHA) and `ACTIVE`.
    fn sample_row(row: &SampleRow<'_>, _rng: &mut impl Rng) -> Vec<String> {
        let world = row.world;
        vec![
            row.reference.clone(),
            row.abha.expose().to_string(),
            world.mobile(world.size() + row.index).expose().to_string(),
            "ACTIVE".into(),
        ]
    }

    fn corrupt_sample(rec: &mut [String], _rng: &mut impl Rng) {
        rec[2] = "5123456789".into();
    }

    #[cfg(test)]
    fn example() -> Vec<(&'static str, String)> {
        vec![
            ("abha_number", "91-1234-5678-9012".into()),
            ("mobile", "+91 98765 43210".into()),
            ("account_status", "active".into()),
            ("profile_photo", tests::png_base64()),
        ]
    }
}

/// `ACTIVE` is the only status a benefit programme may set (see [`AccountStatus`]).
fn account_status(s: &str) -> Result<AccountStatus, String> {
    if s.eq_ignore_ascii_case("ACTIVE") {
        Ok(AccountStatus::Active)
    } else {
        Err("account_status can only be ACTIVE".into())
    }
}

/// Validates a base64 photo and returns it cleaned (no data-URL prefix, no whitespace).
fn profile_photo(s: &str) -> Result<Sensitive, String> {
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
    Ok(Sensitive::new(clean))
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::MAX_PHOTO_BYTES;
    use crate::jobs::kind::JobKind::ProfileUpdate;
    use crate::jobs::testing::{assert_one, errors, run};

    /// A 1x1 PNG.
    pub(super) fn png_base64() -> String {
        let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        bytes.extend_from_slice(&[0; 32]);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn each_rule_names_field_not_value() {
        let abha = "91-1234-5678-9012";
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
    }

    #[test]
    fn photo_size_and_prefix() {
        let abha = "91-1234-5678-9012";
        let mut big = vec![0xFF, 0xD8, 0xFF];
        big.resize(MAX_PHOTO_BYTES + 1, 0);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
        let e = errors(
            ProfileUpdate,
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
                ProfileUpdate,
                &[("abha_number", abha), ("profile_photo", &b64)]
            )
            .is_ok()
        );
        // A data URL and line breaks are cleaned away.
        let png = png_base64();
        let wrapped = format!("data:image/png;base64,{}\n{}", &png[..20], &png[20..]);
        let j = run(
            ProfileUpdate,
            &[("abha_number", abha), ("profile_photo", &wrapped)],
        )
        .unwrap();
        assert_eq!(j.to_fields()["profile_photo"], png);
    }
}
