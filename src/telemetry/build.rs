//! Which build this is: the release (`Cargo.toml`'s version) and the commit it was built from
//! (stamped by `build.rs`). Operators read them from `abha-bulk --version`, from the image's OCI
//! labels and from the `abha_build_info` gauge, to see which versions run side by side during
//! a rolling deploy.

/// The release, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit (12 hex digits), or `unknown` for a build from a tree without git metadata and
/// no `ABHA_BULK_GIT_COMMIT`.
pub const COMMIT: &str = env!("ABHA_BULK_COMMIT");

/// What `abha-bulk --version` prints after the name: `0.1.0 (commit 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ABHA_BULK_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_release_and_the_commit() {
        assert_eq!(LONG_VERSION, format!("{VERSION} (commit {COMMIT})"));
        assert!(!COMMIT.is_empty());
        assert!(
            COMMIT == "unknown" || COMMIT.chars().all(|c| c.is_ascii_hexdigit()),
            "commit {COMMIT:?} is neither hex nor unknown"
        );
    }
}
