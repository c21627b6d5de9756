//! `deploy/k8s/` against real schemas: the built-in kinds against Kubernetes' own OpenAPI
//! schemas (the `kubernetes-validate` tool from PyPI, which bundles them offline; strict, so an
//! unknown or misspelt field fails), KEDA's kinds against `keda-2.17.schema.json` (written here
//! from KEDA's reference, closed so a misspelt trigger field fails). Each check also proves
//! it can fail, on a deliberately misspelt copy.
//!
//! The tool is installed by `scripts/test.sh` into `target/tools/venv` and named by
//! `ABHA_BULK_KUBERNETES_VALIDATE`; under CI the tests fail without it, elsewhere they say
//! they skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::*;

/// The Kubernetes release whose schemas the manifests must match (the newest that
/// `kubernetes-validate` 1.37.0, pinned in scripts/test.sh, bundles).
const KUBERNETES_VERSION: &str = "1.37.0";
const KEDA_SCHEMA: &str = "tests/deploy_manifests/keda-2.17.schema.json";
const CRD_VALIDATOR: &str = "tests/deploy_manifests/validate_crds.py";

fn kubernetes_validate() -> Option<PathBuf> {
    let Ok(tool) = std::env::var("ABHA_BULK_KUBERNETES_VALIDATE") else {
        assert!(
            std::env::var("CI").is_err(),
            "ABHA_BULK_KUBERNETES_VALIDATE is not set: run the suite with scripts/test.sh"
        );
        eprintln!(
            "SKIPPED: the Kubernetes schema checks: ABHA_BULK_KUBERNETES_VALIDATE is not set \
             (scripts/test.sh installs kubernetes-validate and sets it)"
        );
        return None;
    };
    Some(PathBuf::from(tool))
}

/// The manifests Kubernetes itself validates: every file under deploy/k8s but kustomize's own
/// (read by kubectl, never sent to the cluster) and the KEDA file (custom resources).
fn builtin_manifests() -> Vec<String> {
    yaml_files("deploy/k8s")
        .into_iter()
        .filter(|f| {
            yaml_docs(f).iter().all(|d| {
                let api = s(&d["apiVersion"]).unwrap_or("");
                !api.starts_with("keda.sh/") && !api.starts_with("kustomize.config.k8s.io/")
            })
        })
        .collect()
}

fn run_kubernetes_validate(tool: &Path, files: &[PathBuf]) -> Output {
    Command::new(tool)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
}

fn run_crd_validator(tool: &Path, files: &[PathBuf]) -> Output {
    // The venv's python: it has jsonschema and PyYAML (kubernetes-validate's dependencies).
    let python = tool.with_file_name("python");
    Command::new(&python)
        .arg(root().join(CRD_VALIDATOR))
        .arg(root().join(KEDA_SCHEMA))
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of `rel` with `from` replaced by `to` (which must occur), in a temporary folder.
fn misspelt_copy(dir: &Path, rel: &str, from: &str, to: &str) -> PathBuf {
    let original = read(rel);
    assert!(original.contains(from), "{rel}: no {from:?} to misspell");
    let path = dir.join(Path::new(rel).file_name().expect("a file name"));
    std::fs::write(&path, original.replacen(from, to, 1)).expect("write the copy");
    path
}

#[test]
fn builtin_kinds_match_the_kubernetes_schemas() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let files = builtin_manifests();
    assert!(
        files.len() >= 9,
        "expected the Deployments, Services, Job, CronJob, PDB, ConfigMap, Namespace and Secret, got {files:?}"
    );
    let paths: Vec<PathBuf> = files.iter().map(|f| root().join(f)).collect();
    let out = run_kubernetes_validate(&tool, &paths);
    let report = text(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict (Kubernetes {KUBERNETES_VERSION}) failed:\n{report}"
    );
    for f in &files {
        assert!(
            report
                .lines()
                .any(|l| l.contains(f.as_str()) && l.contains("passed")),
            "{f}: kubernetes-validate did not say it passed:\n{report}"
        );
    }

    // The check can fail: a misspelt probe and a misspelt PDB field are refused.
    let dir = tempfile::tempdir().expect("temp dir");
    for (rel, from, to) in [
        (WORKER_DEPLOYMENT, "readinessProbe:", "readinesProbe:"),
        (
            "deploy/k8s/worker-pdb.yaml",
            "maxUnavailable:",
            "maxUnavailble:",
        ),
    ] {
        let bad = misspelt_copy(dir.path(), rel, from, to);
        let out = run_kubernetes_validate(&tool, &[bad]);
        assert!(
            !out.status.success(),
            "kubernetes-validate accepted {rel} with {from:?} misspelt as {to:?}:\n{}",
            text(&out)
        );
    }
}

#[test]
fn keda_resources_match_the_keda_schema() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    // Every file: the validator also fails on a custom resource of a group it has no schema for.
    let paths: Vec<PathBuf> = yaml_files("deploy/k8s")
        .iter()
        .map(|f| root().join(f))
        .collect();
    let out = run_crd_validator(&tool, &paths);
    let report = text(&out);
    assert!(out.status.success(), "{CRD_VALIDATOR} failed:\n{report}");
    for kind in ["ScaledObject", "TriggerAuthentication"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(kind)),
            "no {kind} was checked:\n{report}"
        );
    }

    // A misspelt trigger field, a misspelt spec field and an unknown mode are refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = "deploy/k8s/keda-scaledobject.yaml";
    for (from, to) in [
        ("queueName:", "queueNmae:"),
        ("cooldownPeriod:", "cooldownPeriods:"),
        ("mode: QueueLength", "mode: QueueLenght"),
    ] {
        let bad = misspelt_copy(dir.path(), file, from, to);
        let out = run_crd_validator(&tool, &[bad]);
        assert!(
            !out.status.success(),
            "{CRD_VALIDATOR} accepted {file} with {from:?} misspelt as {to:?}:\n{}",
            text(&out)
        );
    }
}
