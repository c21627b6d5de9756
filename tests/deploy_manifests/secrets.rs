//! No secret value is ever committed: `deploy/secrets/` ignores everything but its README, and
//! the Kubernetes example Secret documents keys with empty values.

use crate::helpers::*;

#[test]
fn secrets_folder_and_example_hold_no_secret_values() {
    let mut failures = Vec::new();
    let dir = "deploy/secrets";
    let ignore = read(&format!("{dir}/.gitignore"));
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if rules != ["*", "!README.md", "!.gitignore"] {
        failures.push(format!(
            "{dir}/.gitignore: rules {rules:?}, expected [\"*\", \"!README.md\", \"!.gitignore\"]"
        ));
    }
    // Secret files may exist on an operator's machine, but never in git.
    for f in files_under(dir) {
        if f.ends_with("/README.md") || f.ends_with("/.gitignore") {
            continue;
        }
        let tracked = std::process::Command::new("git")
            .args(["ls-files", "--error-unmatch", &f])
            .current_dir(root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if tracked {
            failures.push(format!("{f}: a secret file is tracked by git"));
        }
    }
    // The README shows how to make values, never a value: no long base64/hex-looking token.
    let readme = read(&format!("{dir}/README.md"));
    for (n, line) in readme.lines().enumerate() {
        for word in line.split(|c: char| c.is_whitespace() || "`'\"|()".contains(c)) {
            let looks_random = word.len() >= 24
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
                && word.chars().any(|c| c.is_ascii_digit())
                && word.chars().any(|c| c.is_ascii_uppercase());
            if looks_random {
                failures.push(format!(
                    "{dir}/README.md: line {}: {word:?} looks like a secret value",
                    n + 1
                ));
            }
        }
    }
    // The Kubernetes example documents keys with empty values only.
    let doc = yaml_doc(SECRET_EXAMPLE);
    if !doc["data"].is_null() {
        failures.push(format!(
            "{SECRET_EXAMPLE}: has data: (base64 values); document keys in stringData with \"\" instead"
        ));
    }
    let (_, keys) = secret_example();
    for (key, value) in &keys {
        if !value.is_empty() {
            failures.push(format!(
                "{SECRET_EXAMPLE}: key {key} has a value; the example must hold \"\" only"
            ));
        }
    }
    for needed in [
        "abdm-client-secret",
        "database-password",
        "rabbitmq-password",
        "pii-key",
    ] {
        if !keys.contains_key(needed) {
            failures.push(format!("{SECRET_EXAMPLE}: does not document key {needed}"));
        }
    }
    assert_none("secrets", failures);
}
