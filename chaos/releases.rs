//! The two releases a run may use: the new one (the binary beside this driver) and the
//! previous one (commit 56dcb3c, built once by `scripts/previous-release.sh`), each with the
//! settings it accepts.
//!
//! Settings are `deny_unknown_fields`: a binary refuses to start with an `ABHA_BULK__*`
//! variable it does not know. Settings added after the previous release are therefore
//! *optional* here: each is passed to a binary only when `abha-bulk config` with that variable
//! set succeeds. So the previous release never gets one, and the run also works before the
//! branch that adds a setting is merged (the setting is then left out for both).

use std::path::{Path, PathBuf};

use crate::error::{ChaosError, Result};
use crate::procs::Launcher;

/// Which release a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The binary under test.
    New,
    /// The previous release (56dcb3c).
    Previous,
}

impl Release {
    /// Short name for logs and figures.
    pub fn label(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Previous => "previous",
        }
    }
}

/// The commit of the previous release.
pub const PREVIOUS_COMMIT: &str = "56dcb3c";

/// Settings newer than the previous release, passed only to a binary that accepts them:
/// hold no delivery longer than 10 s (below the run's 20 s `consumer_timeout`), and have the
/// relay republish a job still queued 30 s after it was published.
pub const OPTIONAL: [(&str, &str); 2] = [
    ("ABHA_BULK__WORKER__HOLD_MAX_SECS", "10"),
    ("ABHA_BULK__RELAY__REPUBLISH_AFTER_SECS", "30"),
];

/// A launcher per release.
#[derive(Debug, Clone)]
pub struct Releases {
    /// The new release.
    pub new: Launcher,
    /// The previous release, when the run uses it.
    pub previous: Option<Launcher>,
}

impl Releases {
    /// The launcher of `release` (the new one when the previous is not loaded).
    pub fn get(&self, release: Release) -> &Launcher {
        match release {
            Release::Previous => self.previous.as_ref().unwrap_or(&self.new),
            Release::New => &self.new,
        }
    }
}

/// `base` for `bin`, plus each [`OPTIONAL`] setting `bin` accepts; the names accepted.
pub async fn launcher_for(
    base: &Launcher,
    bin: &Path,
    name: &str,
) -> Result<(Launcher, Vec<String>)> {
    let mut l = Launcher {
        bin: bin.to_path_buf(),
        ..base.clone()
    };
    l.run(&format!("config-{name}"), &["config".into()], 30)
        .await
        .map_err(|e| ChaosError::Command {
            what: format!("the {name} release's `config`"),
            detail: e.to_string(),
        })?;
    let mut accepted = Vec::new();
    for (k, v) in OPTIONAL {
        let mut probe = l.clone();
        probe.env.push((k.to_string(), v.to_string()));
        if probe
            .run(&format!("config-{name}"), &["config".into()], 30)
            .await
            .is_ok()
        {
            l = probe;
            accepted.push(k.to_string());
        }
    }
    Ok((l, accepted))
}

/// The previous release's binary: `given`, or what `scripts/previous-release.sh` (run from
/// the current folder, the repository's root under `scripts/chaos.sh`) prints, building it
/// once into `target/previous-release`.
pub async fn previous_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b.to_path_buf());
    }
    let script = Path::new("scripts/previous-release.sh");
    if !script.exists() {
        return Err(ChaosError::Command {
            what: "finding the previous release".into(),
            detail: "no --previous-bin and no scripts/previous-release.sh in the current folder"
                .into(),
        });
    }
    eprintln!(
        "[chaos] the previous release ({PREVIOUS_COMMIT}): scripts/previous-release.sh (builds it once)"
    );
    // Its build output goes to this run's stderr; the binary's path is its last stdout line.
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(crate::error::io("running scripts/previous-release.sh"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text.lines().last().unwrap_or("").trim().to_string();
    if !out.status.success() || path.is_empty() || !Path::new(&path).exists() {
        return Err(ChaosError::Command {
            what: "scripts/previous-release.sh".into(),
            detail: format!("{}: {}", out.status, text.trim()),
        });
    }
    Ok(PathBuf::from(path))
}
