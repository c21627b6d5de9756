//! Environment variables and the Kubernetes overlay set only keys `config/default.toml` has,
//! and secrets only the way the loader accepts them (a `_FILE` or a Secret reference).

use crate::helpers::*;

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
