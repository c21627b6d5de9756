//! `deploy/compose.yaml`: every abha-bulk service is built from `deploy/Dockerfile` (whose shape
//! is checked too), and its mounts, secrets and start order resolve.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use crate::helpers::*;

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
        (
            "FROM debian:bookworm-slim AS rootfs",
            "the runtime root's assembly",
        ),
        (
            "FROM scratch AS runtime",
            "distroless-style runtime: no shell, no package manager",
        ),
        ("COPY config /rootfs/app/config", "config overlays"),
        (
            "ARG GIT_COMMIT",
            "the commit stamped into the binary and labels",
        ),
        (
            "HEALTHCHECK",
            "a health check on the real endpoint (abha-bulk probe)",
        ),
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
    for needed in [
        "org.opencontainers.image.version=\"$VERSION\"",
        "org.opencontainers.image.revision=\"$GIT_COMMIT\"",
        "ABHA_BULK_GIT_COMMIT=\"$GIT_COMMIT\"",
        "\"probe\", \"http://127.0.0.1:9187/healthz\"",
    ] {
        if !dockerfile.contains(needed) {
            failures.push(format!("deploy/Dockerfile: does not contain {needed}"));
        }
    }
    if dockerfile.lines().any(|l| l.starts_with("# syntax=")) {
        failures.push(
            "deploy/Dockerfile: a `# syntax=` line makes BuildKit pull a frontend image".into(),
        );
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
