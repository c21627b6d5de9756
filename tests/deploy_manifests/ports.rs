//! The metrics and sandbox ports agree everywhere they are named: defaults, compose, the
//! Dockerfile, the worker Deployment, its Service and Prometheus's scrape config.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::helpers::*;

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
