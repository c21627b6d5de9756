//! The programme API against its own OpenAPI description, fuzzed by schemathesis (a
//! property-based API tester from PyPI) against the live server: no 5xx, every answer matches
//! the schema, schema-valid requests are accepted and invalid ones refused.
//!
//! `scripts/test.sh` installs schemathesis in `target/tools` and sets
//! `ABHA_BULK_SCHEMATHESIS`; under CI the test fails without it, elsewhere it says it skipped.

mod common;

use std::time::Duration;

use abha_bulk::api::{ApiSettings, ApiState, Guards, app};
use common::{BENEFIT, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_to_its_openapi_description_under_fuzzing() {
    let Ok(st) = std::env::var("ABHA_BULK_SCHEMATHESIS") else {
        assert!(
            std::env::var("CI").is_err(),
            "ABHA_BULK_SCHEMATHESIS is not set: run the suite with scripts/test.sh"
        );
        eprintln!("skipped: ABHA_BULK_SCHEMATHESIS not set (scripts/test.sh sets it)");
        return;
    };
    let env = TestEnv::new().await;
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload: 1 << 20,
        read_timeout: Duration::from_secs(5),
        spool: env.dir.path().to_path_buf(),
        guards: Guards::new(&ApiSettings::default()),
        priorities: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    let (_, key) = env
        .store
        .create_api_key(
            None,
            &[BENEFIT.into()],
            &["submit".into(), "read".into(), "reveal".into()],
            None,
        )
        .await
        .unwrap();
    let out = tokio::process::Command::new(st)
        .args([
            "run",
            &format!("http://{addr}/v1/openapi.json"),
            "-H",
            &format!("Authorization: Bearer {key}"),
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261203",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    server.abort();
    env.cleanup().await;
}
