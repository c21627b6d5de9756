//! Checks the deployment artefacts under `deploy/` without Docker or Kubernetes: every YAML
//! and JSON file parses, and the references between them hold (environment variables →
//! `config/default.toml` keys, compose services → `deploy/Dockerfile`, ports, kustomize
//! resources, KEDA target, Secret and ConfigMap references, dashboard and alert metric names →
//! the DESIGN metric list, alert runbooks → `docs/operations.md` headings, no secret values in
//! `deploy/secrets/`). Every failure names the file and the offending value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// Metric names exported by abha-bulk (DESIGN.md, "Metrics").
const DESIGN_METRICS: &[&str] = abha_bulk::telemetry::metrics::NAMES;

/// Histograms: their `_bucket`, `_sum` and `_count` series are allowed too.
const HISTOGRAMS: &[&str] = &[
    "abha_job_duration_seconds",
    "abha_abdm_request_duration_seconds",
    "abha_ratelimit_wait_seconds",
];

/// Keys whose values are secrets (`src/config.rs`, `SECRET_KEYS`): environment or `_FILE` only.
const SECRET_KEYS: &[&str] = &[
    "abdm.client_secret",
    "database.password",
    "rabbitmq.password",
    "pii.key",
    "pii.previous_keys",
];

/// Job kinds; each has the quorum queue `abha.<kind>`.
const KINDS: &[&str] = &[
    "benefit-search",
    "benefit-lookup",
    "benefit-link",
    "benefit-delink",
    "profile-update",
    "child-create",
    "child-update",
    "abha-find",
    "abha-create-demo",
];

/// Subcommands of the abha-bulk binary, from its clap definition (never a copied list).
fn subcommands() -> Vec<String> {
    use clap::CommandFactory;
    abha_bulk::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

const METRICS_PORT: u64 = 9187;
const SANDBOX_PORT: u64 = 8089;
const WORKER_DEPLOYMENT: &str = "deploy/k8s/worker-deployment.yaml";
const COMPOSE: &str = "deploy/compose.yaml";
const SECRET_EXAMPLE: &str = "deploy/k8s/secret.example.yaml";

// ------------------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// Every document of a YAML file, with `<<` merge keys applied; empty documents dropped.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let mut v: Value = serde::Deserialize::deserialize(de)
            .unwrap_or_else(|e| panic!("{rel}: document {}: invalid YAML: {e}", i + 1));
        v.apply_merge()
            .unwrap_or_else(|e| panic!("{rel}: document {}: bad merge key: {e}", i + 1));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn yaml_doc(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

/// Files under `dir` (relative to the repository), recursively, as repository-relative paths.
fn files_under(dir: &str) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: cannot list: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("under the root");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root().join(dir), &mut out);
    out
}

fn yaml_files(dir: &str) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect()
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or(&[])
}

fn map_entries(v: &Value) -> Vec<(String, &Value)> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as text (numbers too).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn assert_none(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );
}

/// `section.key` → raw value text of `config/default.toml` (a minimal TOML reader: this file
/// holds only `[section]` headers and `key = value` lines).
fn default_toml_keys() -> BTreeMap<String, String> {
    toml_keys("config/default.toml", &read("config/default.toml"))
}

fn toml_keys(origin: &str, text: &str) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{origin}: line {}: not `key = value`: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "{origin}: line {}: key outside a section",
            n + 1
        );
        keys.insert(
            format!("{section}.{}", key.trim()),
            value.trim().to_string(),
        );
    }
    keys
}

fn unquote(v: &str) -> &str {
    v.trim().trim_matches('"')
}

/// `ABHA_BULK__ABDM__CLIENT_SECRET` → `abdm.client_secret` (as `src/config.rs` maps it).
fn env_to_key(name: &str) -> String {
    name.trim_start_matches("ABHA_BULK__")
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// The port of `host:port`, `scheme://host:port/...` or a bare port.
fn port_of(text: &str) -> Option<u64> {
    let after_scheme = text.split_once("://").map_or(text, |(_, r)| r);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    authority
        .rsplit_once(':')
        .map_or_else(|| authority.parse().ok(), |(_, p)| p.parse().ok())
}

/// True when a URL carries a password (`scheme://user:password@host`).
fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Names `abha_[a-z_]+` that appear in `text` (not preceded by a name character).
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("abha_") {
        let start = i + pos;
        let preceded = start > 0 && {
            let c = bytes[start - 1];
            c.is_ascii_alphanumeric() || c == b'_'
        };
        let mut end = start + "abha_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded && end > start + "abha_".len() {
            out.insert(text[start..end].trim_end_matches('_').to_string());
        }
        i = end;
    }
    out
}

/// True when `name` is a DESIGN metric or a series of a DESIGN histogram.
fn is_design_metric(name: &str) -> bool {
    DESIGN_METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{h}{suffix}"))
        })
}

/// The base metric of a name (`..._bucket` → the histogram).
fn base_metric(name: &str) -> &str {
    for h in HISTOGRAMS {
        if name.starts_with(h) {
            return h;
        }
    }
    name
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn operations_anchors() -> BTreeSet<String> {
    read("docs/operations.md")
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Every Kubernetes object under `deploy/k8s/`, with the file it came from.
fn k8s_objects() -> Vec<(String, Value)> {
    yaml_files("deploy/k8s")
        .into_iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn kind_of(v: &Value) -> &str {
    s(&v["kind"]).unwrap_or("")
}

fn name_of(v: &Value) -> &str {
    s(&v["metadata"]["name"]).unwrap_or("")
}

/// The pod spec of a Deployment, Job or CronJob.
fn pod_spec(v: &Value) -> Option<&Value> {
    match kind_of(v) {
        "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => Some(&v["spec"]["template"]["spec"]),
        "CronJob" => Some(&v["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    seq(&pod["containers"])
        .iter()
        .chain(seq(&pod["initContainers"]))
        .collect()
}

fn compose() -> Value {
    yaml_doc(COMPOSE)
}

/// A compose service's environment as pairs (mapping or `KEY=value` list form).
fn compose_env(service: &Value) -> Vec<(String, Option<String>)> {
    let env = &service["environment"];
    if let Some(list) = env.as_sequence() {
        list.iter()
            .filter_map(|item| item.as_str())
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item.to_string(), None),
            })
            .collect()
    } else {
        map_entries(env)
            .into_iter()
            .map(|(k, v)| (k, scalar(v)))
            .collect()
    }
}

/// The command of a compose service as a list of words.
fn compose_command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::String(text) => text.split_whitespace().map(str::to_string).collect(),
        other => seq(other).iter().filter_map(scalar).collect(),
    }
}

fn secret_example() -> (String, BTreeMap<String, String>) {
    let doc = yaml_doc(SECRET_EXAMPLE);
    assert_eq!(
        kind_of(&doc),
        "Secret",
        "{SECRET_EXAMPLE}: expected kind Secret"
    );
    let keys = map_entries(&doc["stringData"])
        .into_iter()
        .map(|(k, v)| (k, scalar(v).unwrap_or_default()))
        .collect();
    (name_of(&doc).to_string(), keys)
}

// -------------------------------------------------------------------------------- tests

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

#[test]
fn environment_variables_map_to_config_keys() {
    let keys = default_toml_keys();
    let mut failures = Vec::new();
    let mut check = |origin: &str, name: &str, literal: Option<&str>, from_secret: bool| {
        if !name.starts_with("ABHA_BULK__") {
            return;
        }
        if let Some(base) = name.strip_suffix("_FILE") {
            let key = env_to_key(base);
            if !SECRET_KEYS.contains(&key.as_str()) {
                failures.push(format!(
                    "{origin}: {name}: only the secrets {SECRET_KEYS:?} may be read from a _FILE, not `{key}`"
                ));
            }
            return;
        }
        let key = env_to_key(name);
        if SECRET_KEYS.contains(&key.as_str()) {
            if !from_secret {
                failures.push(format!(
                    "{origin}: {name}: secret `{key}` set as a literal value; use {name}_FILE (compose) or secretKeyRef (Kubernetes)"
                ));
            }
            return;
        }
        if !keys.contains_key(&key) {
            failures.push(format!(
                "{origin}: {name}: no key `{key}` in config/default.toml"
            ));
        }
        if key.ends_with(".url") && literal.is_some_and(url_has_password) {
            failures.push(format!(
                "{origin}: {name}: the URL carries a password; set the .password secret instead"
            ));
        }
    };

    let compose = compose();
    let mut seen = 0;
    for (service, def) in map_entries(&compose["services"]) {
        for (name, value) in compose_env(def) {
            seen += 1;
            check(
                &format!("{COMPOSE} service {service}"),
                &name,
                value.as_deref(),
                false,
            );
        }
    }
    for (file, obj) in k8s_objects() {
        let Some(pod) = pod_spec(&obj) else { continue };
        for c in containers(pod) {
            for env in seq(&c["env"]) {
                let name = s(&env["name"]).unwrap_or("");
                seen += 1;
                check(
                    &format!(
                        "{file} {} {} container {}",
                        kind_of(&obj),
                        name_of(&obj),
                        s(&c["name"]).unwrap_or("?")
                    ),
                    name,
                    s(&env["value"]),
                    !env["valueFrom"]["secretKeyRef"].is_null(),
                );
            }
        }
    }
    assert!(seen > 10, "found only {seen} environment variables");
    assert_none("environment variables", failures);
}

#[test]
fn configmap_overlay_sets_only_known_non_secret_keys() {
    let file = "deploy/k8s/configmap.yaml";
    let doc = yaml_doc(file);
    let toml = s(&doc["data"]["production.toml"])
        .unwrap_or_else(|| panic!("{file}: no data.production.toml"));
    let defaults = default_toml_keys();
    let overlay = toml_keys(&format!("{file} production.toml"), toml);
    let mut failures = Vec::new();
    for (key, value) in &overlay {
        if SECRET_KEYS.contains(&key.as_str()) {
            failures.push(format!(
                "{file}: production.toml sets the secret `{key}` (abha-bulk refuses to start)"
            ));
        } else if !defaults.contains_key(key) {
            failures.push(format!(
                "{file}: production.toml sets `{key}`, which config/default.toml does not have"
            ));
        }
        if key.ends_with(".url") && url_has_password(unquote(value)) {
            failures.push(format!("{file}: `{key}` carries a password"));
        }
    }
    if let Some(listen) = overlay.get("worker.http_listen") {
        if port_of(unquote(listen)) != Some(METRICS_PORT) {
            failures.push(format!(
                "{file}: worker.http_listen = {listen}, expected port {METRICS_PORT}"
            ));
        }
    }
    // The pod must outlive the worker's own grace period.
    let grace: u64 = overlay
        .get("worker.grace_period_secs")
        .or(defaults.get("worker.grace_period_secs"))
        .and_then(|v| v.parse().ok())
        .expect("worker.grace_period_secs is a number");
    let deployment = yaml_doc(WORKER_DEPLOYMENT);
    let termination = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    if termination <= grace {
        failures.push(format!(
            "{WORKER_DEPLOYMENT}: terminationGracePeriodSeconds {termination} must exceed worker.grace_period_secs {grace}"
        ));
    }
    assert_none("configmap overlay", failures);
}

#[test]
fn abha_bulk_compose_services_are_built_from_the_dockerfile() {
    let compose = compose();
    let mut failures = Vec::new();
    let mut image_of_build = BTreeSet::new();
    for (service, def) in map_entries(&compose["services"]) {
        let command = compose_command(def);
        let runs_abha_bulk = command.first().is_some_and(|c| subcommands().contains(c))
            || s(&def["image"]).is_some_and(|i| i.starts_with("abha-bulk"))
            || !def["build"].is_null();
        if !runs_abha_bulk {
            continue;
        }
        let build = &def["build"];
        let (context, dockerfile) = match build {
            Value::String(ctx) => (ctx.clone(), "Dockerfile".to_string()),
            Value::Mapping(_) => (
                s(&build["context"]).unwrap_or(".").to_string(),
                s(&build["dockerfile"]).unwrap_or("Dockerfile").to_string(),
            ),
            _ => {
                failures.push(format!(
                    "{COMPOSE}: service {service} runs abha-bulk (command {command:?}) but has no build: section for deploy/Dockerfile"
                ));
                continue;
            }
        };
        let resolved = root().join("deploy").join(&context).join(&dockerfile);
        let expected = root().join("deploy/Dockerfile");
        let same = resolved
            .canonicalize()
            .ok()
            .zip(expected.canonicalize().ok())
            .is_some_and(|(a, b)| a == b);
        if !same {
            failures.push(format!(
                "{COMPOSE}: service {service} builds {context}/{dockerfile}, not deploy/Dockerfile"
            ));
        }
        if let Some(image) = s(&def["image"]) {
            image_of_build.insert(image.to_string());
        }
    }
    for needed in ["sandbox", "migrate", "worker"] {
        let def = &compose["services"][needed];
        if def.is_null() {
            failures.push(format!("{COMPOSE}: no service {needed}"));
            continue;
        }
        let command = compose_command(def);
        if command.first().map(String::as_str) != Some(needed) {
            failures.push(format!(
                "{COMPOSE}: service {needed} runs {command:?}, expected the `{needed}` subcommand"
            ));
        }
    }
    if image_of_build.len() > 1 {
        failures.push(format!(
            "{COMPOSE}: the abha-bulk services tag different images {image_of_build:?}; one image serves them all"
        ));
    }

    // The Dockerfile's shape.
    let dockerfile = read("deploy/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    for (prefix, why) in [
        ("FROM rust:1-bookworm AS builder", "builder stage"),
        ("FROM debian:bookworm-slim", "runtime stage"),
        ("COPY config /app/config", "config overlays"),
        ("ENV ABHA_BULK_CONFIG_DIR=/app/config", "config folder"),
        ("USER 10001", "non-root user"),
        (
            "ENTRYPOINT [\"/usr/local/bin/abha-bulk\"]",
            "the binary as entrypoint",
        ),
        ("CMD [\"worker\"]", "worker by default"),
    ] {
        if !has(prefix) {
            failures.push(format!(
                "deploy/Dockerfile: no line starting with `{prefix}` ({why})"
            ));
        }
    }
    if !dockerfile.contains("--locked") {
        failures.push("deploy/Dockerfile: cargo build without --locked".into());
    }
    let dockerignore = read(".dockerignore");
    for entry in ["target", ".git", "reports"] {
        if !dockerignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == entry)
        {
            failures.push(format!(".dockerignore: does not ignore {entry}/"));
        }
    }
    assert_none("compose images", failures);
}

#[test]
fn ports_are_consistent() {
    let mut failures = Vec::new();

    // default.toml
    let defaults = default_toml_keys();
    let listen = defaults
        .get("worker.http_listen")
        .expect("worker.http_listen in config/default.toml");
    if port_of(unquote(listen)) != Some(METRICS_PORT) {
        failures.push(format!(
            "config/default.toml: worker.http_listen = {listen}, expected port {METRICS_PORT}"
        ));
    }
    // Loopback by default; the deployments Prometheus scrapes open it explicitly.
    if !unquote(listen).starts_with("127.0.0.1:") {
        failures.push(format!(
            "config/default.toml: worker.http_listen = {listen}, expected a loopback address"
        ));
    }
    let compose_listen = compose_env(&compose()["services"]["worker"])
        .into_iter()
        .find(|(k, _)| k == "ABHA_BULK__WORKER__HTTP_LISTEN")
        .and_then(|(_, v)| v);
    if compose_listen.as_deref() != Some("0.0.0.0:9187") {
        failures.push(format!(
            "{COMPOSE}: the worker must set ABHA_BULK__WORKER__HTTP_LISTEN=0.0.0.0:9187 (the default is loopback), got {compose_listen:?}"
        ));
    }
    let cm = yaml_doc("deploy/k8s/configmap.yaml");
    let overlay = toml_keys(
        "deploy/k8s/configmap.yaml production.toml",
        s(&cm["data"]["production.toml"]).unwrap_or_default(),
    );
    if overlay.get("worker.http_listen").map(|v| unquote(v)) != Some("0.0.0.0:9187") {
        failures.push(
            "deploy/k8s/configmap.yaml: production.toml must set worker.http_listen = \"0.0.0.0:9187\" (the default is loopback)".into(),
        );
    }

    // Dockerfile EXPOSE
    let exposed: Vec<u64> = read("deploy/Dockerfile")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(|ports| {
            ports
                .split_whitespace()
                .filter_map(|p| p.split('/').next()?.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    if !exposed.contains(&METRICS_PORT) {
        failures.push(format!(
            "deploy/Dockerfile: EXPOSE {exposed:?} lacks {METRICS_PORT}"
        ));
    }

    // Deployment: container port, probes, scrape annotations.
    let deployment = yaml_doc(WORKER_DEPLOYMENT);
    let pod = &deployment["spec"]["template"]["spec"];
    let worker = containers(pod)
        .into_iter()
        .find(|c| seq(&c["args"]).first().and_then(s) == Some("worker"))
        .unwrap_or_else(|| panic!("{WORKER_DEPLOYMENT}: no container with args [worker]"));
    let named_ports: BTreeMap<String, u64> = seq(&worker["ports"])
        .iter()
        .filter_map(|p| Some((s(&p["name"])?.to_string(), p["containerPort"].as_u64()?)))
        .collect();
    let container_ports: Vec<u64> = seq(&worker["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    if !container_ports.contains(&METRICS_PORT) {
        failures.push(format!(
            "{WORKER_DEPLOYMENT}: containerPorts {container_ports:?} lack {METRICS_PORT}"
        ));
    }
    let resolve = |v: &Value| -> Option<u64> {
        v.as_u64()
            .or_else(|| s(v).and_then(|n| named_ports.get(n).copied()))
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &worker[probe]["httpGet"];
        if resolve(&get["port"]) != Some(METRICS_PORT) {
            failures.push(format!(
                "{WORKER_DEPLOYMENT}: {probe} port {:?}, expected {METRICS_PORT}",
                scalar(&get["port"])
            ));
        }
        if s(&get["path"]) != Some(path) {
            failures.push(format!(
                "{WORKER_DEPLOYMENT}: {probe} path {:?}, expected {path}",
                s(&get["path"])
            ));
        }
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    if s(&annotations["prometheus.io/scrape"]) != Some("true") {
        failures.push(format!(
            "{WORKER_DEPLOYMENT}: pod annotation prometheus.io/scrape is not \"true\""
        ));
    }
    if s(&annotations["prometheus.io/port"]) != Some(&METRICS_PORT.to_string()) {
        failures.push(format!(
            "{WORKER_DEPLOYMENT}: pod annotation prometheus.io/port = {:?}, expected \"{METRICS_PORT}\"",
            scalar(&annotations["prometheus.io/port"])
        ));
    }

    // Service
    let service_file = "deploy/k8s/worker-service.yaml";
    let service = yaml_doc(service_file);
    let service_ports = seq(&service["spec"]["ports"]);
    if !service_ports.iter().any(|p| {
        p["port"].as_u64() == Some(METRICS_PORT) && resolve(&p["targetPort"]) == Some(METRICS_PORT)
    }) {
        failures.push(format!(
            "{service_file}: no port {METRICS_PORT} with targetPort {METRICS_PORT}"
        ));
    }
    let selector: BTreeMap<String, String> = map_entries(&service["spec"]["selector"])
        .into_iter()
        .filter_map(|(k, v)| Some((k, scalar(v)?)))
        .collect();
    let pod_labels: BTreeMap<String, String> =
        map_entries(&deployment["spec"]["template"]["metadata"]["labels"])
            .into_iter()
            .filter_map(|(k, v)| Some((k, scalar(v)?)))
            .collect();
    for (k, v) in &selector {
        if pod_labels.get(k) != Some(v) {
            failures.push(format!(
                "{service_file}: selector {k}={v} does not match the worker pod labels {pod_labels:?}"
            ));
        }
    }

    // Prometheus scrape config
    let prom_file = "deploy/prometheus/prometheus.yml";
    let prom = yaml_doc(prom_file);
    let mut scrape_ports = Vec::new();
    for job in seq(&prom["scrape_configs"]) {
        if s(&job["job_name"]) != Some("abha-bulk-worker") {
            continue;
        }
        for sd in seq(&job["dns_sd_configs"]) {
            scrape_ports.extend(sd["port"].as_u64());
        }
        for st in seq(&job["static_configs"]) {
            scrape_ports.extend(seq(&st["targets"]).iter().filter_map(s).filter_map(port_of));
        }
    }
    if scrape_ports.is_empty() || scrape_ports.iter().any(|p| *p != METRICS_PORT) {
        failures.push(format!(
            "{prom_file}: job abha-bulk-worker scrapes ports {scrape_ports:?}, expected {METRICS_PORT}"
        ));
    }

    // Compose: worker and sandbox.
    let compose = compose();
    let worker = &compose["services"]["worker"];
    let published: Vec<String> = seq(&worker["ports"]).iter().filter_map(scalar).collect();
    if !published
        .iter()
        .any(|p| p.rsplit(':').next() == Some(&METRICS_PORT.to_string()))
    {
        failures.push(format!(
            "{COMPOSE}: worker ports {published:?} do not publish {METRICS_PORT}"
        ));
    }
    let sandbox = &compose["services"]["sandbox"];
    let command = compose_command(sandbox);
    let listen_at = command
        .iter()
        .position(|w| w == "--listen")
        .and_then(|i| command.get(i + 1));
    if listen_at.and_then(|l| port_of(l)) != Some(SANDBOX_PORT)
        || !listen_at.is_some_and(|l| l.starts_with("0.0.0.0:"))
    {
        failures.push(format!(
            "{COMPOSE}: sandbox command {command:?} must listen on 0.0.0.0:{SANDBOX_PORT}"
        ));
    }
    let sandbox_published: Vec<String> = seq(&sandbox["ports"]).iter().filter_map(scalar).collect();
    if !sandbox_published
        .iter()
        .any(|p| p.rsplit(':').next() == Some(&SANDBOX_PORT.to_string()))
    {
        failures.push(format!(
            "{COMPOSE}: sandbox ports {sandbox_published:?} do not publish {SANDBOX_PORT}"
        ));
    }
    for (name, value) in compose_env(worker) {
        let Some(value) = value else { continue };
        let expect = match name.as_str() {
            "ABHA_BULK__ABDM__BASE_URL" | "ABHA_BULK__ABDM__SESSION_URL" => {
                if !value.starts_with(&format!("http://sandbox:{SANDBOX_PORT}/")) {
                    failures.push(format!(
                        "{COMPOSE}: worker {name} = {value}, expected http://sandbox:{SANDBOX_PORT}/..."
                    ));
                }
                continue;
            }
            "ABHA_BULK__WORKER__HTTP_LISTEN" => METRICS_PORT,
            "ABHA_BULK__DATABASE__URL" => 5432,
            "ABHA_BULK__RABBITMQ__URL" => 5672,
            _ => continue,
        };
        if port_of(&value) != Some(expect) {
            failures.push(format!(
                "{COMPOSE}: worker {name} = {value}, expected port {expect}"
            ));
        }
    }
    assert_none("ports", failures);
}

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
    let queues: BTreeSet<String> = KINDS.iter().map(|k| format!("abha.{k}")).collect();
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

#[test]
fn dashboard_uses_the_design_metrics_and_a_datasource_variable() {
    let file = "deploy/grafana/dashboards/abha-bulk.json";
    let dash: serde_json::Value =
        serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut failures = Vec::new();
    let mut used = BTreeSet::new();
    let mut panels = 0;
    for p in dash["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            continue;
        }
        panels += 1;
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            failures.push(format!("{file}: panel {title:?} has no query"));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            for m in metric_names(expr) {
                if !is_design_metric(&m) {
                    failures.push(format!(
                        "{file}: panel {title:?} queries {m}, which is not a DESIGN metric"
                    ));
                }
                used.insert(base_metric(&m).to_string());
            }
            let ds = t["datasource"]["uid"]
                .as_str()
                .or(p["datasource"]["uid"].as_str());
            if ds != Some("${datasource}") {
                failures.push(format!(
                    "{file}: panel {title:?} query {expr:?} uses datasource {ds:?}, not ${{datasource}}"
                ));
            }
        }
    }
    for m in DESIGN_METRICS {
        if !used.contains(*m) {
            failures.push(format!("{file}: no panel shows {m}"));
        }
    }
    let has_ds_var = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource");
    if !has_ds_var {
        failures.push(format!(
            "{file}: no templating variable `datasource` of type datasource"
        ));
    }
    if panels < 11 {
        failures.push(format!("{file}: only {panels} panels"));
    }

    // Provisioning: the provider reads the folder compose mounts the dashboards at.
    let provider_file = "deploy/grafana/provisioning/dashboards/abha-bulk.yaml";
    let provider = yaml_doc(provider_file);
    let compose = compose();
    let mounts: Vec<String> = seq(&compose["services"]["grafana"]["volumes"])
        .iter()
        .filter_map(scalar)
        .collect();
    for p in seq(&provider["providers"]) {
        let path = s(&p["options"]["path"]).unwrap_or("");
        let mounted = mounts.iter().any(|m| {
            let mut parts = m.split(':');
            parts.next() == Some("./grafana/dashboards") && parts.next() == Some(path)
        });
        if !mounted {
            failures.push(format!(
                "{provider_file}: path {path:?} is not where {COMPOSE} mounts ./grafana/dashboards ({mounts:?})"
            ));
        }
    }
    let ds_file = "deploy/grafana/provisioning/datasources/prometheus.yaml";
    let ds = yaml_doc(ds_file);
    for d in seq(&ds["datasources"]) {
        let url = s(&d["url"]).unwrap_or("");
        let host = url
            .split_once("://")
            .map(|(_, r)| r.split(':').next().unwrap_or(""))
            .unwrap_or("");
        if compose["services"][host].is_null() || port_of(url) != Some(9090) {
            failures.push(format!(
                "{ds_file}: url {url} does not name the compose prometheus service on 9090"
            ));
        }
    }
    assert_none("dashboard", failures);
}

#[test]
fn alerts_are_complete_documented_and_tested() {
    let file = "deploy/prometheus/alerts.yml";
    let rules = yaml_doc(file);
    let anchors = operations_anchors();
    let prom = yaml_doc("deploy/prometheus/prometheus.yml");
    let jobs: BTreeSet<&str> = seq(&prom["scrape_configs"])
        .iter()
        .filter_map(|j| s(&j["job_name"]))
        .collect();
    let mut failures = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in seq(&rules["groups"]) {
        for rule in seq(&group["rules"]) {
            let Some(name) = s(&rule["alert"]) else {
                continue;
            };
            alerts.insert(name.to_string());
            let severity = s(&rule["labels"]["severity"]).unwrap_or("");
            if !["critical", "warning", "info"].contains(&severity) {
                failures.push(format!(
                    "{file}: alert {name}: severity {severity:?}, expected critical, warning or info"
                ));
            }
            for a in ["summary", "description", "runbook_url"] {
                if s(&rule["annotations"][a]).is_none_or(|v| v.trim().is_empty()) {
                    failures.push(format!("{file}: alert {name}: no {a} annotation"));
                }
            }
            if let Some(url) = s(&rule["annotations"]["runbook_url"]) {
                match url.split_once("docs/operations.md#") {
                    Some((_, a)) if anchors.contains(a) => {}
                    Some((_, a)) => failures.push(format!(
                        "{file}: alert {name}: runbook anchor #{a} is no heading of docs/operations.md"
                    )),
                    None => failures.push(format!(
                        "{file}: alert {name}: runbook_url {url} does not point at docs/operations.md#..."
                    )),
                }
            }
            let expr = s(&rule["expr"]).unwrap_or("");
            for m in metric_names(expr) {
                if !is_design_metric(&m) {
                    failures.push(format!(
                        "{file}: alert {name}: expr uses {m}, which is not a DESIGN metric"
                    ));
                }
            }
            if let Some((_, rest)) = expr.split_once("job=\"") {
                let job = rest.split('"').next().unwrap_or("");
                if !jobs.contains(job) {
                    failures.push(format!(
                        "{file}: alert {name}: job {job:?} is no scrape job of deploy/prometheus/prometheus.yml {jobs:?}"
                    ));
                }
            }
        }
    }
    for required in [
        "NoProgressWithBacklog",
        "ErrorRatioSpike",
        "AbdmThrottling",
        "SessionRefreshFailures",
        "DeadLetterQueueNotEmpty",
        "OutboxLagHigh",
    ] {
        if !alerts.contains(required) {
            failures.push(format!("{file}: no alert {required}"));
        }
    }

    // Every alert is tested firing and not firing.
    let test_file = "deploy/prometheus/alerts.test.yaml";
    let tests = yaml_doc(test_file);
    if !seq(&tests["rule_files"])
        .iter()
        .any(|f| s(f) == Some("alerts.yml"))
    {
        failures.push(format!("{test_file}: rule_files does not load alerts.yml"));
    }
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in seq(&tests["tests"]) {
        for case in seq(&t["alert_rule_test"]) {
            let name = s(&case["alertname"]).unwrap_or("").to_string();
            if !alerts.contains(&name) {
                failures.push(format!("{test_file}: tests unknown alert {name:?}"));
            }
            if seq(&case["exp_alerts"]).is_empty() {
                silent.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for a in &alerts {
        if !fires.contains(a) {
            failures.push(format!("{test_file}: no test where {a} fires"));
        }
        if !silent.contains(a) {
            failures.push(format!("{test_file}: no test where {a} stays silent"));
        }
    }

    // Prometheus loads the rules from where compose mounts them.
    let compose = compose();
    let mounts: Vec<String> = seq(&compose["services"]["prometheus"]["volumes"])
        .iter()
        .filter_map(scalar)
        .collect();
    for rf in seq(&prom["rule_files"]).iter().filter_map(s) {
        if !mounts
            .iter()
            .any(|m| m.starts_with("./prometheus/alerts.yml:") && m.split(':').nth(1) == Some(rf))
        {
            failures.push(format!(
                "deploy/prometheus/prometheus.yml: rule file {rf} is not mounted from ./prometheus/alerts.yml in {COMPOSE}"
            ));
        }
    }
    assert_none("alerts", failures);
}

#[test]
fn compose_mounts_and_secrets_resolve() {
    let compose = compose();
    let mut failures = Vec::new();
    let declared: BTreeMap<String, String> = map_entries(&compose["secrets"])
        .into_iter()
        .map(|(name, def)| (name, s(&def["file"]).unwrap_or("").to_string()))
        .collect();
    for (name, file) in &declared {
        if !file.starts_with("./secrets/") {
            failures.push(format!(
                "{COMPOSE}: secret {name} reads {file:?}, expected a file under ./secrets/"
            ));
        }
    }
    for (service, def) in map_entries(&compose["services"]) {
        let granted: BTreeSet<String> = seq(&def["secrets"])
            .iter()
            .filter_map(|v| s(v).or_else(|| s(&v["source"])))
            .map(str::to_string)
            .collect();
        for g in &granted {
            if !declared.contains_key(g) {
                failures.push(format!(
                    "{COMPOSE}: service {service} uses undeclared secret {g}"
                ));
            }
        }
        for (name, value) in compose_env(def) {
            if !name.ends_with("_FILE") {
                continue;
            }
            let value = value.unwrap_or_default();
            let secret = value.strip_prefix("/run/secrets/").unwrap_or("");
            if !granted.contains(secret) {
                failures.push(format!(
                    "{COMPOSE}: service {service}: {name} = {value} is not /run/secrets/<a secret the service lists> ({granted:?})"
                ));
            }
        }
        for volume in seq(&def["volumes"]).iter().filter_map(scalar) {
            let source = volume.split(':').next().unwrap_or("");
            if source.starts_with("./") && !root().join("deploy").join(source).exists() {
                failures.push(format!(
                    "{COMPOSE}: service {service} mounts {source}, which does not exist under deploy/"
                ));
            }
        }
    }
    for (service, needs) in [
        ("migrate", vec!["postgres"]),
        ("worker", vec!["migrate", "rabbitmq", "sandbox"]),
    ] {
        let deps = &compose["services"][service]["depends_on"];
        for n in needs {
            if deps[n].is_null() {
                failures.push(format!("{COMPOSE}: {service} does not depend on {n}"));
            }
        }
    }
    if s(&compose["services"]["worker"]["depends_on"]["migrate"]["condition"])
        != Some("service_completed_successfully")
    {
        failures.push(format!(
            "{COMPOSE}: worker must wait for migrate with condition service_completed_successfully"
        ));
    }
    assert_none("compose mounts and secrets", failures);
}

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

#[test]
fn helpers_behave() {
    assert_eq!(
        env_to_key("ABHA_BULK__ABDM__CLIENT_SECRET"),
        "abdm.client_secret"
    );
    assert_eq!(port_of("0.0.0.0:9187"), Some(9187));
    assert_eq!(port_of("http://sandbox:8089/abha/api"), Some(8089));
    assert_eq!(port_of("amqp://guest@rabbitmq:5672/%2f"), Some(5672));
    assert!(url_has_password("postgres://u:p@h:5432/db"));
    assert!(!url_has_password("postgres://u@h:5432/db"));
    assert_eq!(
        metric_names("sum(rate(abha_jobs_total{x=\"abha-bulk\"}[5m])) / xabha_no"),
        BTreeSet::from(["abha_jobs_total".to_string()])
    );
    assert!(is_design_metric("abha_job_duration_seconds_bucket"));
    assert!(!is_design_metric("abha_jobs_total_bucket"));
    assert_eq!(anchor(" NoProgressWithBacklog"), "noprogresswithbacklog");
    assert_eq!(anchor("Scaling out (KEDA)"), "scaling-out-keda");
}
