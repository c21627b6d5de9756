//! `deploy/k8s/`: kustomize lists every manifest, KEDA scales the worker on the job queues,
//! and workloads reference only the documented Secret keys and existing ConfigMaps.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use crate::helpers::*;

#[test]
fn kustomization_lists_every_manifest_and_only_existing_files() {
    let file = "deploy/k8s/kustomization.yaml";
    let doc = yaml_doc(file);
    let listed: Vec<String> = seq(&doc["resources"])
        .iter()
        .filter_map(s)
        .map(str::to_string)
        .collect();
    let mut failures = Vec::new();
    for r in &listed {
        if !root().join("deploy/k8s").join(r).is_file() {
            failures.push(format!("{file}: resource {r} does not exist"));
        }
    }
    for f in yaml_files("deploy/k8s") {
        let name = f.trim_start_matches("deploy/k8s/");
        if name == "kustomization.yaml" || name == "secret.example.yaml" {
            continue;
        }
        if !listed.iter().any(|r| r == name) {
            failures.push(format!("{file}: does not list {f}"));
        }
    }
    if listed.iter().any(|r| r == "secret.example.yaml") {
        failures.push(format!(
            "{file}: lists secret.example.yaml; applying it would blank the real Secret"
        ));
    }
    if s(&doc["namespace"]) != Some("abha-bulk") {
        failures.push(format!(
            "{file}: namespace {:?}, expected abha-bulk",
            scalar(&doc["namespace"])
        ));
    }
    assert_none("kustomization", failures);
}

#[test]
fn keda_scales_the_worker_deployment_on_the_job_queues() {
    let file = "deploy/k8s/keda-scaledobject.yaml";
    let docs = yaml_docs(file);
    let deployment = yaml_doc(WORKER_DEPLOYMENT);
    let (secret_name, secret_keys) = secret_example();
    let mut failures = Vec::new();
    let scaled: Vec<&Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "ScaledObject")
        .collect();
    let auths: BTreeSet<&str> = docs
        .iter()
        .filter(|d| kind_of(d) == "TriggerAuthentication")
        .map(name_of)
        .collect();
    assert_eq!(scaled.len(), 1, "{file}: expected one ScaledObject");
    let so = scaled[0];
    let target = &so["spec"]["scaleTargetRef"];
    if s(&target["name"]) != Some(name_of(&deployment))
        || s(&target["kind"]).unwrap_or("Deployment") != "Deployment"
    {
        failures.push(format!(
            "{file}: scaleTargetRef {:?} {:?} is not the Deployment {} of {WORKER_DEPLOYMENT}",
            scalar(&target["kind"]),
            scalar(&target["name"]),
            name_of(&deployment)
        ));
    }
    let min = so["spec"]["minReplicaCount"].as_u64();
    let max = so["spec"]["maxReplicaCount"].as_u64();
    if min != Some(1) || max != Some(10) {
        failures.push(format!("{file}: replicas {min:?}..{max:?}, expected 1..10"));
    }
    let queues: BTreeSet<String> = job_queues();
    let triggers = seq(&so["spec"]["triggers"]);
    if triggers.is_empty() {
        failures.push(format!("{file}: no triggers"));
    }
    for t in triggers {
        let queue = s(&t["metadata"]["queueName"]).unwrap_or("");
        if s(&t["type"]) != Some("rabbitmq") {
            failures.push(format!(
                "{file}: trigger on {queue}: type {:?}, expected rabbitmq",
                scalar(&t["type"])
            ));
        }
        if !queues.contains(queue) {
            failures.push(format!(
                "{file}: trigger queue {queue:?} is not one of the job queues {queues:?}"
            ));
        }
        if s(&t["metadata"]["mode"]) != Some("QueueLength") {
            failures.push(format!(
                "{file}: trigger on {queue}: mode is not QueueLength"
            ));
        }
        let auth = s(&t["authenticationRef"]["name"]).unwrap_or("");
        if !auths.contains(auth) {
            failures.push(format!(
                "{file}: trigger on {queue}: authenticationRef {auth:?} is not a TriggerAuthentication of this file {auths:?}"
            ));
        }
    }
    for d in docs
        .iter()
        .filter(|d| kind_of(d) == "TriggerAuthentication")
    {
        for r in seq(&d["spec"]["secretTargetRef"]) {
            let (name, key) = (s(&r["name"]).unwrap_or(""), s(&r["key"]).unwrap_or(""));
            if name != secret_name || !secret_keys.contains_key(key) {
                failures.push(format!(
                    "{file}: TriggerAuthentication {} reads {name}/{key}, which {SECRET_EXAMPLE} does not document",
                    name_of(d)
                ));
            }
        }
    }
    assert_none("KEDA", failures);
}

#[test]
fn workloads_reference_the_documented_secret_and_configmaps() {
    let (secret_name, secret_keys) = secret_example();
    let configmaps: BTreeSet<String> = k8s_objects()
        .iter()
        .filter(|(_, o)| kind_of(o) == "ConfigMap")
        .map(|(_, o)| name_of(o).to_string())
        .collect();
    // Created by the operator (docs/operations.md), not by kustomize.
    let external_configmaps = ["abha-bulk-roster"];
    let mut failures = Vec::new();
    let mut workloads = BTreeSet::new();
    for (file, obj) in k8s_objects() {
        let Some(pod) = pod_spec(&obj) else { continue };
        workloads.insert(format!("{} {}", kind_of(&obj), name_of(&obj)));
        let who = format!("{file} {} {}", kind_of(&obj), name_of(&obj));
        for c in containers(pod) {
            for env in seq(&c["env"]) {
                let r = &env["valueFrom"]["secretKeyRef"];
                if r.is_null() {
                    continue;
                }
                let (name, key) = (s(&r["name"]).unwrap_or(""), s(&r["key"]).unwrap_or(""));
                if name != secret_name || !secret_keys.contains_key(key) {
                    failures.push(format!(
                        "{who}: env {} reads secret {name}/{key}, not documented in {SECRET_EXAMPLE}",
                        s(&env["name"]).unwrap_or("?")
                    ));
                }
            }
            let args: Vec<String> = seq(&c["args"]).iter().filter_map(scalar).collect();
            if let Some(first) = args.first().filter(|a| !subcommands().contains(a)) {
                failures.push(format!(
                    "{who}: container args start with {first:?}, not an abha-bulk subcommand"
                ));
            }
            let sc = &c["securityContext"];
            if sc["readOnlyRootFilesystem"].as_bool() != Some(true)
                || sc["allowPrivilegeEscalation"].as_bool() != Some(false)
            {
                failures.push(format!(
                    "{who}: container {} needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false",
                    s(&c["name"]).unwrap_or("?")
                ));
            }
        }
        if pod["securityContext"]["runAsNonRoot"].as_bool() != Some(true) {
            failures.push(format!(
                "{who}: pod securityContext.runAsNonRoot is not true"
            ));
        }
        for v in seq(&pod["volumes"]) {
            if let Some(cm) = s(&v["configMap"]["name"])
                .filter(|cm| !configmaps.contains(*cm) && !external_configmaps.contains(cm))
            {
                failures.push(format!(
                    "{who}: volume {} uses ConfigMap {cm}, defined nowhere under deploy/k8s",
                    s(&v["name"]).unwrap_or("?")
                ));
            }
        }
    }
    for needed in [
        "Deployment abha-bulk-worker",
        "Job abha-bulk-migrate",
        "CronJob abha-bulk-reconcile",
    ] {
        if !workloads.contains(needed) {
            failures.push(format!("deploy/k8s: no {needed} (found {workloads:?})"));
        }
    }

    // The reconcile CronJob's schedule.
    let cron_file = "deploy/k8s/reconcile-cronjob.yaml";
    let cron = yaml_doc(cron_file);
    for (field, want) in [
        ("schedule", "30 1 * * *"),
        ("timeZone", "Asia/Kolkata"),
        ("concurrencyPolicy", "Forbid"),
    ] {
        if s(&cron["spec"][field]) != Some(want) {
            failures.push(format!(
                "{cron_file}: spec.{field} = {:?}, expected {want:?}",
                scalar(&cron["spec"][field])
            ));
        }
    }
    // The PDB selects the worker pods.
    let pdb_file = "deploy/k8s/worker-pdb.yaml";
    let pdb = yaml_doc(pdb_file);
    let deployment = yaml_doc(WORKER_DEPLOYMENT);
    if pdb["spec"]["selector"] != deployment["spec"]["selector"] {
        failures.push(format!(
            "{pdb_file}: selector differs from the selector of {WORKER_DEPLOYMENT}"
        ));
    }
    assert_none("Kubernetes references", failures);
}
