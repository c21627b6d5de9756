//! Identifiers stay private: a batch of every identifier-bearing kind runs through the whole
//! pipeline with debug logging, and none of its identifiers appears in plaintext in the captured
//! logs, the `/metrics` output, a `pg_dump` of the database, or the messages that crossed
//! RabbitMQ (tapped with an extra queue bound to every routing key).

mod common;

use std::sync::{Arc, Mutex};

use abha_bulk::jobs::kind::JobKind;
use chrono::Utc;
use common::{PipelineOpts, TestEnv};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn assert_absent(what: &str, haystack: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !haystack.contains(s.as_str()),
            "{what} contains an identifier in plaintext (masked: {})",
            abha_bulk::pii::Sensitive::new(s.clone()).masked()
        );
    }
}

#[tokio::test]
async fn no_identifier_in_logs_metrics_database_or_queue() {
    let logs = Captured::default();
    let telemetry = abha_bulk::config::TelemetrySettings {
        log_format: abha_bulk::config::LogFormat::Json,
        log_filter: "debug".into(),
    };
    abha_bulk::telemetry::init_with_writer(&telemetry, true, false, logs.clone());

    let env = TestEnv::new().await;
    let pop = env.pop();
    // Tap every message published to the job exchange.
    let (conn, _publisher) = env.publisher().await;
    let ch = conn.create_channel().await.unwrap();
    let tap = format!("{}.tap", env.topology.queue_prefix);
    ch.queue_declare(
        tap.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        tap.as_str().into(),
        env.topology.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let mut secrets: Vec<String> = Vec::new();
    let mut batches = Vec::new();
    let people: Vec<_> = (300..306u64).map(|i| pop.person(i)).collect();
    for p in &people {
        secrets.push(p.abha.expose().to_string());
        secrets.push(p.abha.digits());
        secrets.push(p.aadhaar.expose().to_string());
        secrets.push(p.mobile.expose().to_string());
        secrets.push(p.name.expose().to_string());
    }
    let link: Vec<Vec<String>> = people
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i % 2 == 0 {
                vec![format!("l{i}"), p.abha.expose().into(), String::new()]
            } else {
                vec![format!("l{i}"), String::new(), p.aadhaar.expose().into()]
            }
        })
        .collect();
    batches.push(
        env.submit_rows(
            JobKind::BenefitLink,
            &["external_ref", "abha_number", "aadhaar"],
            &link,
        )
        .await
        .batch,
    );
    let lookup: Vec<Vec<String>> = people
        .iter()
        .enumerate()
        .map(|(i, p)| vec![format!("k{i}"), p.abha.expose().into()])
        .collect();
    batches.push(
        env.submit_rows(
            JobKind::BenefitLookup,
            &["external_ref", "abha_number"],
            &lookup,
        )
        .await
        .batch,
    );
    let find: Vec<Vec<String>> = people
        .iter()
        .enumerate()
        .map(|(i, p)| vec![format!("f{i}"), p.mobile.expose().into()])
        .collect();
    batches.push(
        env.submit_rows(JobKind::AbhaFind, &["external_ref", "mobile"], &find)
            .await
            .batch,
    );
    let new_mobile = pop.mobile(pop.size() + 77);
    secrets.push(new_mobile.expose().to_string());
    batches.push(
        env.submit_rows(
            JobKind::ProfileUpdate,
            &["external_ref", "abha_number", "mobile"],
            &[vec![
                "p0".into(),
                people[0].abha.expose().into(),
                new_mobile.expose().into(),
            ]],
        )
        .await
        .batch,
    );
    let fresh = pop.unknown_aadhaar(4242);
    secrets.push(fresh.expose().to_string());
    let demo: Vec<Vec<String>> = vec![vec![
        "d0".into(),
        fresh.expose().into(),
        people[1].name.expose().into(),
        abha_bulk::pii::format_date(people[1].birth_date),
        people[1].gender.as_str().into(),
        "27".into(),
        "490".into(),
    ]];
    batches.push(
        env.submit_rows(
            JobKind::AbhaCreateDemo,
            &[
                "external_ref",
                "aadhaar",
                "name",
                "dob",
                "gender",
                "state_code",
                "district_code",
            ],
            &demo,
        )
        .await
        .batch,
    );
    let token = pop.x_token(&people[2].abha, Utc::now().timestamp() + 600);
    secrets.push(token.clone());
    secrets.push("Meenakshi Iyer".into());
    batches.push(
        env.submit_rows(
            JobKind::ChildCreate,
            &[
                "external_ref",
                "parent_x_token",
                "child_name",
                "child_dob",
                "child_gender",
            ],
            &[vec![
                "c0".into(),
                token,
                "Meenakshi Iyer".into(),
                "02-11-2021".into(),
                "F".into(),
            ]],
        )
        .await
        .batch,
    );

    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&batches).await;
    pipeline.stop().await;
    let mut succeeded = 0;
    for b in &batches {
        succeeded += env.counts(*b).await.get("succeeded");
    }
    assert!(
        succeeded >= 15,
        "the batch really ran ({succeeded} succeeded)"
    );

    // Logs.
    let captured = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(captured.contains("ABDM call"), "debug logs were captured");
    assert_absent("the logs", &captured, &secrets);

    // Metrics.
    assert_absent(
        "/metrics",
        &abha_bulk::telemetry::metrics::render(),
        &secrets,
    );

    // A pg_dump of the test database.
    match std::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(&env.db_url)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "pg_dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dump = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(dump.contains("COPY public.jobs"), "the dump has the jobs");
            assert_absent("the pg_dump", &dump, &secrets);
        }
        Err(e) => panic!("pg_dump is needed for this test (Debian: postgresql-client): {e}"),
    }

    // Every message that crossed RabbitMQ (bodies and headers).
    let mut seen = 0;
    while let Some(msg) = ch
        .basic_get(tap.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        seen += 1;
        let text = format!(
            "{} {:?}",
            String::from_utf8_lossy(&msg.delivery.data),
            msg.delivery.properties
        );
        assert_absent("a RabbitMQ message", &text, &secrets);
    }
    assert!(seen >= 20, "the tap saw the published jobs ({seen})");
    ch.queue_delete(tap.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}
