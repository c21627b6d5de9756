//! The Grafana dashboard shows every metric the service exports and nothing else, through a
//! datasource variable, and its provisioning matches the compose mounts.

use std::collections::BTreeSet;

use crate::helpers::*;

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
