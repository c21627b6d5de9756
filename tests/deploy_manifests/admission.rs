//! What a production cluster's admission policy would demand of `deploy/k8s/`: the
//! "restricted" Pod Security Standard (non-root, no privilege escalation, every capability
//! dropped, the RuntimeDefault seccomp profile, no host namespaces, ports or paths) plus what
//! policy engines commonly add (read-only root filesystem, requests and memory limits, probes
//! on the real endpoints of long-running containers, a PodDisruptionBudget that lets a node
//! drain finish).

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use crate::helpers::*;

/// Volume types the restricted profile allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The HTTP endpoints abha-bulk serves for probes (src/http, src/api).
const PROBE_PATHS: &[&str] = &["/healthz", "/readyz"];

fn seccomp_ok(v: &Value) -> bool {
    matches!(
        s(&v["seccompProfile"]["type"]),
        Some("RuntimeDefault" | "Localhost")
    )
}

/// Kubernetes quantities in base units (cores, bytes), enough for the suffixes used here.
fn quantity(v: &Value) -> Option<f64> {
    let text = scalar(v)?;
    let (num, mult) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("m", 0.001),
    ]
    .iter()
    .find_map(|(suffix, m)| text.strip_suffix(suffix).map(|n| (n.to_string(), *m)))
    .unwrap_or((text.clone(), 1.0));
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn check_pod(who: &str, kind: &str, pod: &Value, failures: &mut Vec<String>) {
    let psc = &pod["securityContext"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host].as_bool() == Some(true) {
            failures.push(format!("{who}: {host}: true"));
        }
    }
    if psc["runAsUser"].as_u64() == Some(0) {
        failures.push(format!("{who}: pod runAsUser 0"));
    }
    for v in seq(&pod["volumes"]) {
        let types: Vec<String> = map_entries(v)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != "name")
            .collect();
        if types
            .iter()
            .any(|t| !RESTRICTED_VOLUMES.contains(&t.as_str()))
        {
            failures.push(format!(
                "{who}: volume {} of type {types:?} is not allowed by the restricted profile",
                s(&v["name"]).unwrap_or("?")
            ));
        }
    }
    if pod["automountServiceAccountToken"].as_bool() != Some(false) {
        failures.push(format!(
            "{who}: automountServiceAccountToken is not false (abha-bulk never calls the Kubernetes API)"
        ));
    }
    for c in containers(pod) {
        let name = s(&c["name"]).unwrap_or("?");
        let who = format!("{who} container {name}");
        let sc = &c["securityContext"];
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(psc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            failures.push(format!(
                "{who}: runAsNonRoot is not true (pod or container)"
            ));
        }
        if sc["runAsUser"].as_u64() == Some(0) {
            failures.push(format!("{who}: runAsUser 0"));
        }
        if !seccomp_ok(sc) && !seccomp_ok(psc) {
            failures.push(format!(
                "{who}: no seccompProfile RuntimeDefault or Localhost (pod or container)"
            ));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            failures.push(format!("{who}: allowPrivilegeEscalation is not false"));
        }
        if sc["privileged"].as_bool() == Some(true) {
            failures.push(format!("{who}: privileged"));
        }
        let drop: Vec<&str> = seq(&sc["capabilities"]["drop"])
            .iter()
            .filter_map(s)
            .collect();
        if !drop.contains(&"ALL") {
            failures.push(format!("{who}: capabilities.drop does not list ALL"));
        }
        for add in seq(&sc["capabilities"]["add"]).iter().filter_map(s) {
            if add != "NET_BIND_SERVICE" {
                failures.push(format!("{who}: adds capability {add}"));
            }
        }
        if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
            failures.push(format!("{who}: readOnlyRootFilesystem is not true"));
        }
        for p in seq(&c["ports"]) {
            if !p["hostPort"].is_null() {
                failures.push(format!("{who}: hostPort {:?}", scalar(&p["hostPort"])));
            }
        }
        // Images are pinned: never `latest` or untagged.
        let image = s(&c["image"]).unwrap_or("");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        if tag.is_empty() || tag == "latest" || tag.contains('/') {
            failures.push(format!("{who}: image {image:?} has no pinned tag"));
        }
        // Requests for scheduling, a memory limit so one pod cannot starve a node.
        let res = &c["resources"];
        for (what, path) in [
            ("requests.cpu", &res["requests"]["cpu"]),
            ("requests.memory", &res["requests"]["memory"]),
            ("limits.memory", &res["limits"]["memory"]),
        ] {
            if quantity(path).is_none() {
                failures.push(format!("{who}: resources.{what} missing or unreadable"));
            }
        }
        for r in ["cpu", "memory"] {
            if let (Some(req), Some(lim)) =
                (quantity(&res["requests"][r]), quantity(&res["limits"][r]))
                && req > lim
            {
                failures.push(format!("{who}: requests.{r} above limits.{r}"));
            }
        }
        if kind == "Deployment" {
            check_probes(&who, c, failures);
        }
    }
}

/// A long-running container has liveness and readiness probes on the endpoints abha-bulk
/// serves, on a port the container declares.
fn check_probes(who: &str, c: &Value, failures: &mut Vec<String>) {
    let ports: BTreeSet<u64> = seq(&c["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &c[probe]["httpGet"];
        if get.is_null() {
            failures.push(format!("{who}: no {probe}.httpGet"));
            continue;
        }
        let path = s(&get["path"]).unwrap_or("");
        if !PROBE_PATHS.contains(&path) {
            failures.push(format!(
                "{who}: {probe} probes {path:?}, not one of {PROBE_PATHS:?}"
            ));
        }
        if !get["port"].as_u64().is_some_and(|p| ports.contains(&p)) {
            failures.push(format!(
                "{who}: {probe} port {:?} is not a containerPort {ports:?}",
                scalar(&get["port"])
            ));
        }
    }
}

#[test]
fn workloads_pass_the_restricted_pod_security_standard_and_policy() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, obj) in k8s_objects() {
        let Some(pod) = pod_spec(&obj) else { continue };
        checked += 1;
        let who = format!("{file} {} {}", kind_of(&obj), name_of(&obj));
        check_pod(&who, kind_of(&obj), pod, &mut failures);
    }
    assert!(checked >= 4, "only {checked} workloads under deploy/k8s");
    assert_none("admission policy", failures);
}

#[test]
fn the_namespace_enforces_the_restricted_pod_security_standard() {
    let file = "deploy/k8s/namespace.yaml";
    let ns = yaml_doc(file);
    let labels = &ns["metadata"]["labels"];
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("pod-security.kubernetes.io/{mode}");
        assert_eq!(
            s(&labels[key.as_str()]),
            Some("restricted"),
            "{file}: label {key} is not restricted"
        );
    }
}

#[test]
fn the_policy_check_can_fail() {
    // A root, privileged container with no probes or limits: every rule must speak.
    let bad: Value = serde_yaml_ng::from_str(
        r#"
containers:
  - name: bad
    image: abha-bulk:latest
    ports: [{containerPort: 9187, hostPort: 9187}]
    securityContext: {runAsUser: 0, privileged: true, capabilities: {add: [SYS_ADMIN]}}
volumes:
  - {name: host, hostPath: {path: /}}
hostNetwork: true
"#,
    )
    .expect("valid YAML");
    let mut failures = Vec::new();
    check_pod("bad", "Deployment", &bad, &mut failures);
    let all = failures.join("\n");
    for needle in [
        "hostNetwork",
        "hostPath",
        "automountServiceAccountToken",
        "runAsNonRoot",
        "runAsUser 0",
        "seccompProfile",
        "allowPrivilegeEscalation",
        "privileged",
        "drop does not list ALL",
        "adds capability SYS_ADMIN",
        "readOnlyRootFilesystem",
        "hostPort",
        "no pinned tag",
        "requests.cpu",
        "limits.memory",
        "no livenessProbe",
        "no readinessProbe",
    ] {
        assert!(all.contains(needle), "no failure about {needle}:\n{all}");
    }
    assert_eq!(quantity(&Value::from("250m")), Some(0.25));
    assert_eq!(
        quantity(&Value::from("512Mi")),
        Some(512.0 * 1024.0 * 1024.0)
    );
}

/// The worker PDB lets a node drain finish at every replica count KEDA may choose (a PDB whose
/// minAvailable equals the replica count blocks `kubectl drain` forever), while keeping at
/// least one worker when there are two or more; and the worker's grace period covers
/// worker.grace_period_secs of the shipped production settings.
#[test]
fn the_worker_pdb_allows_a_drain_and_the_grace_period_covers_the_shutdown() {
    let pdb_file = "deploy/k8s/worker-pdb.yaml";
    let pdb = yaml_doc(pdb_file);
    let keda = yaml_docs("deploy/k8s/keda-scaledobject.yaml");
    let so = keda
        .iter()
        .find(|d| kind_of(d) == "ScaledObject")
        .expect("a ScaledObject");
    let min_replicas = so["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
    let spec = &pdb["spec"];
    let allowed_at_min = match (
        spec["maxUnavailable"].as_u64(),
        spec["minAvailable"].as_u64(),
    ) {
        (Some(max), None) => max.min(min_replicas),
        (None, Some(min)) => min_replicas.saturating_sub(min),
        _ => panic!("{pdb_file}: set exactly one of minAvailable / maxUnavailable, as integers"),
    };
    assert!(
        allowed_at_min >= 1,
        "{pdb_file}: at KEDA's minimum of {min_replicas} replica(s) the PDB allows no eviction: a node drain would hang"
    );
    assert!(
        spec["maxUnavailable"].as_u64().is_none_or(|m| m < 2),
        "{pdb_file}: maxUnavailable above 1 can take every worker down at two replicas"
    );
    assert_eq!(
        s(&spec["unhealthyPodEvictionPolicy"]),
        Some("AlwaysAllow"),
        "{pdb_file}: a crash-looping worker must not block a drain"
    );

    let deployment = yaml_doc(WORKER_DEPLOYMENT);
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let cm = yaml_doc("deploy/k8s/configmap.yaml");
    let toml = s(&cm["data"]["production.toml"]).expect("production.toml");
    let worker_grace: u64 = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("grace_period_secs ="))
        .and_then(|v| v.trim().parse().ok())
        .expect("worker.grace_period_secs in production.toml");
    assert!(
        grace >= worker_grace + 10,
        "{WORKER_DEPLOYMENT}: terminationGracePeriodSeconds {grace} leaves under 10 s after worker.grace_period_secs {worker_grace}"
    );
}
