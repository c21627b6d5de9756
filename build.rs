//! Stamps the binary with the commit it was built from, so `abha-bulk --version` and the
//! `abha_build_info` gauge tell which build runs where during a rolling deploy.
//!
//! The commit comes from `ABHA_BULK_GIT_COMMIT` when set (builds without `.git`, such as the
//! Docker build, whose context excludes it), else from `git rev-parse`, else `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=ABHA_BULK_GIT_COMMIT");
    let from_env = std::env::var("ABHA_BULK_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let commit = from_env
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ABHA_BULK_COMMIT={commit}");

    // Rebuild when HEAD moves: HEAD itself (a branch switch), the branch's ref file (a
    // commit) and packed-refs (a ref packed by gc). In a worktree HEAD lives in the worktree's
    // git dir and the refs in the common one; `git rev-parse --git-path` knows both.
    // A path that does not exist would make cargo rerun this script on every build, so only
    // existing ones are named.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(head_ref);
    }
    for path in &watched {
        if let Some(p) = git(&["rev-parse", "--git-path", path]).map(PathBuf::from)
            && p.exists()
        {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
