//! The worker's HTTP endpoints after a real batch: `/healthz`, `/readyz` (Postgres, RabbitMQ,
//! ABDM session), and `/metrics` with every metric of the design, accepted by
//! `promtool check metrics`.

mod common;

use common::{PipelineOpts, TestEnv};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn endpoints_answer_and_promtool_accepts_the_metrics() {
    let env = TestEnv::new().await;
    let batch = env.submit_links("m", 0..20).await;
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    let run = env
        .store
        .start_or_resume_reconcile(common::BENEFIT, "roster.csv", &[0; 32], true)
        .await
        .unwrap()
        .id;
    let drift = abha_bulk::store::reconcile::RunCounts {
        roster_rows: 3,
        linked_ok: 1,
        missing_link: 2,
        ..Default::default()
    };
    env.store
        .finish_reconcile(run, &drift, "r.csv", None, None, (0, 0, 0))
        .await
        .unwrap();
    abha_bulk::relay::housekeeping::round(&env.store).await;
    abha_bulk::relay::housekeeping::batch_gauges(&env.store).await;
    abha_bulk::telemetry::metrics::QUEUE_MESSAGES
        .with_label_values(&[env.topology.dead_letter_queue.as_str()])
        .set(0.0);
    // Per-programme series appear once the scheduling relay published for a programme.
    abha_bulk::telemetry::metrics::SCHED_SHARE
        .with_label_values(&["DEMO-BENEFIT"])
        .set(1.0);
    abha_bulk::telemetry::metrics::SCHED_PUBLISHED
        .with_label_values(&["DEMO-BENEFIT"])
        .inc_by(0);

    let stop = CancellationToken::new();
    let addr = abha_bulk::http::serve(
        "127.0.0.1:0",
        abha_bulk::http::Readiness {
            store: env.store.clone(),
            client: env.client.clone(),
            amqp_url: env.amqp_url.clone(),
            breaker: None,
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
    let health = get("/healthz").await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = get("/readyz").await.unwrap();
    let status = ready.status();
    let body = ready.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("postgres ok")
            && body.contains("rabbitmq ok")
            && body.contains("abdm_session ok"),
        "{body}"
    );

    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for m in abha_bulk::telemetry::metrics::NAMES {
        assert!(
            metrics.contains(&format!("# TYPE {m} ")),
            "/metrics lacks {m}"
        );
    }
    assert!(
        metrics.contains("abha_jobs_total{kind=\"benefit-link\",outcome=\"succeeded\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "abha_reconcile_drift{{benefit=\"{}\",class=\"missing_link\"}} 2",
            common::BENEFIT
        )),
        "{metrics}"
    );

    match std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            use std::io::Write;
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(metrics.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED promtool check metrics: promtool is not installed (scripts/promtool.sh installs it)"
            );
        }
        Err(e) => panic!("promtool is required in CI (scripts/test.sh installs it): {e}"),
    }
    stop.cancel();
    env.cleanup().await;
}
