//! Checks the deployment artefacts under `deploy/` without Docker or Kubernetes: every YAML
//! and JSON file parses, and the references between them hold (environment variables →
//! `config/default.toml` keys, compose services → `deploy/Dockerfile`, ports, kustomize
//! resources, KEDA target, Secret and ConfigMap references, dashboard and alert metric names →
//! the exported metric list, alert runbooks → `docs/operations.md` headings, no secret values
//! in `deploy/secrets/`), the Kubernetes manifests against Kubernetes' and KEDA's schemas
//! (`schemas`) and against what an admission policy demands (`admission`). Every failure
//! names the file and the offending value. One module per area; the names the service defines (secret keys, job kinds, subcommands, metrics) come from
//! the crate, never from a copy.

mod admission;
mod alerts;
mod compose;
mod config;
mod dashboard;
mod helpers;
mod k8s;
mod ports;
mod schemas;
mod secrets;

use helpers::*;

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let files = files_under("deploy");
    let mut parsed = 0;
    for f in &files {
        if f.ends_with(".yaml") || f.ends_with(".yml") {
            let docs = yaml_docs(f);
            assert!(!docs.is_empty(), "{f}: holds no YAML document");
            parsed += 1;
        } else if f.ends_with(".json") {
            let _: serde_json::Value =
                serde_json::from_str(&read(f)).unwrap_or_else(|e| panic!("{f}: invalid JSON: {e}"));
            parsed += 1;
        }
    }
    assert!(
        parsed >= 15,
        "expected the compose, Kubernetes, Prometheus and Grafana files under deploy/, parsed only {parsed}: {files:?}"
    );
}
