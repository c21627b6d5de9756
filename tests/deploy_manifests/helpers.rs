//! What every check shares: the repository's files read as YAML, JSON or `key = value` TOML,
//! the names the service itself defines (metrics, secret keys, job kinds, subcommands), and
//! small readers for compose and Kubernetes objects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// Metric names exported by abha-bulk (DESIGN.md, "Metrics").
pub const DESIGN_METRICS: &[&str] = abha_bulk::telemetry::metrics::NAMES;

/// Histograms: their `_bucket`, `_sum` and `_count` series are allowed too.
pub const HISTOGRAMS: &[&str] = &[
    "abha_job_duration_seconds",
    "abha_abdm_request_duration_seconds",
    "abha_ratelimit_wait_seconds",
];

/// Keys whose values are secrets: environment or `_FILE` only (the list the loader enforces).
pub use abha_bulk::config::SECRET_KEYS;

/// The job queues of the shipped default settings (`abha.work`; one per kind with
/// `rabbitmq.queue_per_kind`), from the crate's own topology (never a copied list).
pub fn job_queues() -> BTreeSet<String> {
    let settings = abha_bulk::config::Settings::load_with_env(
        &abha_bulk::config::ConfigSource {
            dir: std::path::PathBuf::from("/nonexistent"),
            env: "test".into(),
            file: None,
        },
        Vec::new(),
    )
    .expect("default settings");
    abha_bulk::queue::Topology::from_settings(&settings.rabbitmq)
        .job_queues()
        .into_iter()
        .collect()
}

/// Subcommands of the abha-bulk binary, from its clap definition (never a copied list).
pub fn subcommands() -> Vec<String> {
    use clap::CommandFactory;
    abha_bulk::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

pub const METRICS_PORT: u64 = 9187;
pub const SANDBOX_PORT: u64 = 8089;
pub const WORKER_DEPLOYMENT: &str = "deploy/k8s/worker-deployment.yaml";
pub const COMPOSE: &str = "deploy/compose.yaml";
pub const SECRET_EXAMPLE: &str = "deploy/k8s/secret.example.yaml";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// Every document of a YAML file, with `<<` merge keys applied; empty documents dropped.
pub fn yaml_docs(rel: &str) -> Vec<Value> {
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

pub fn yaml_doc(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

/// Files under `dir` (relative to the repository), recursively, as repository-relative paths.
pub fn files_under(dir: &str) -> Vec<String> {
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

pub fn yaml_files(dir: &str) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect()
}

pub fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

pub fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or(&[])
}

pub fn map_entries(v: &Value) -> Vec<(String, &Value)> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as text (numbers too).
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn assert_none(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );
}

/// `section.key` → raw value text of `config/default.toml` (a minimal TOML reader: this file
/// holds only `[section]` headers and `key = value` lines).
pub fn default_toml_keys() -> BTreeMap<String, String> {
    toml_keys("config/default.toml", &read("config/default.toml"))
}

pub fn toml_keys(origin: &str, text: &str) -> BTreeMap<String, String> {
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

pub fn unquote(v: &str) -> &str {
    v.trim().trim_matches('"')
}

/// `ABHA_BULK__ABDM__CLIENT_SECRET` → `abdm.client_secret` (as `src/config.rs` maps it).
pub fn env_to_key(name: &str) -> String {
    name.trim_start_matches("ABHA_BULK__")
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// The port of `host:port`, `scheme://host:port/...` or a bare port.
pub fn port_of(text: &str) -> Option<u64> {
    let after_scheme = text.split_once("://").map_or(text, |(_, r)| r);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    authority
        .rsplit_once(':')
        .map_or_else(|| authority.parse().ok(), |(_, p)| p.parse().ok())
}

/// True when a URL carries a password (`scheme://user:password@host`).
pub fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Names `abha_[a-z_]+` that appear in `text` (not preceded by a name character).
pub fn metric_names(text: &str) -> BTreeSet<String> {
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
pub fn is_design_metric(name: &str) -> bool {
    DESIGN_METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{h}{suffix}"))
        })
}

/// The base metric of a name (`..._bucket` → the histogram).
pub fn base_metric(name: &str) -> &str {
    for h in HISTOGRAMS {
        if name.starts_with(h) {
            return h;
        }
    }
    name
}

/// GitHub's anchor of a Markdown heading.
pub fn anchor(heading: &str) -> String {
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

pub fn operations_anchors() -> BTreeSet<String> {
    read("docs/operations.md")
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Every Kubernetes object under `deploy/k8s/`, with the file it came from.
pub fn k8s_objects() -> Vec<(String, Value)> {
    yaml_files("deploy/k8s")
        .into_iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

pub fn kind_of(v: &Value) -> &str {
    s(&v["kind"]).unwrap_or("")
}

pub fn name_of(v: &Value) -> &str {
    s(&v["metadata"]["name"]).unwrap_or("")
}

/// The pod spec of a Deployment, Job or CronJob.
pub fn pod_spec(v: &Value) -> Option<&Value> {
    match kind_of(v) {
        "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => Some(&v["spec"]["template"]["spec"]),
        "CronJob" => Some(&v["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

pub fn containers(pod: &Value) -> Vec<&Value> {
    seq(&pod["containers"])
        .iter()
        .chain(seq(&pod["initContainers"]))
        .collect()
}

pub fn compose() -> Value {
    yaml_doc(COMPOSE)
}

/// A compose service's environment as pairs (mapping or `KEY=value` list form).
pub fn compose_env(service: &Value) -> Vec<(String, Option<String>)> {
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
pub fn compose_command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::String(text) => text.split_whitespace().map(str::to_string).collect(),
        other => seq(other).iter().filter_map(scalar).collect(),
    }
}

pub fn secret_example() -> (String, BTreeMap<String, String>) {
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
