//! Prometheus alerts: the required ones exist, each has a runbook heading in
//! `docs/operations.md`, uses exported metrics only, and is unit-tested firing and silent.

use std::collections::BTreeSet;

use crate::helpers::*;

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
