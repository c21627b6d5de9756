//! Log lines: when RabbitMQ is unreachable, one ERROR per state change naming the broker's
//! address (never the password), then quiet retries; the first depth read on a broker without
//! the queues logs no error; a slow SQL statement is no WARN line with its SQL. (Its own test
//! binary: the log subscriber is global.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use abha_bulk::relay::{self, RelayConfig};
use common::TestEnv;
use tokio_util::sync::CancellationToken;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_error_per_broker_state_change_and_no_noise() {
    let logs = Captured::default();
    let telemetry = abha_bulk::config::TelemetrySettings {
        log_format: abha_bulk::config::LogFormat::Human,
        log_filter: "info".into(),
    };
    abha_bulk::telemetry::init_with_writer(&telemetry, false, false, logs.clone());
    let env = TestEnv::new().await;

    // A broker that is not there: the relay retries (0.2 s, 0.4 s, ... backoff).
    let stop = CancellationToken::new();
    let relay = tokio::spawn(relay::run(
        env.store.clone(),
        "amqp://guest:s3cr3t-pw@127.0.0.1:1/%2f".into(),
        env.topology.clone(),
        RelayConfig::default(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    relay.await.unwrap();

    // Reading queue depths before anything declared the queues logs no error.
    let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let fresh = abha_bulk::queue::Topology::named("t-fresh-depth.jobs", "t-fresh-depth", 20);
    let depths = fresh
        .depths(&ch)
        .await
        .expect("depths of undeclared queues");
    assert!(depths.iter().all(|(_, n)| *n == 0));
    fresh.delete(&ch).await.unwrap();
    let _ = conn.close(200, "done".into()).await;

    // A statement slower than sqlx's default threshold (1 s, logged at WARN with its SQL).
    sqlx::query("SELECT pg_sleep(1.2)")
        .execute(&env.store.pool)
        .await
        .unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("pg_sleep"), "slow statement logged:\n{text}");
    assert!(!text.contains("WARN"), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one ERROR for the state change:\n{text}");
    assert!(errors[0].contains("127.0.0.1:1"), "{}", errors[0]);
    assert!(errors[0].contains("rabbitmq.url"), "{}", errors[0]);
    assert!(
        !text.contains("s3cr3t-pw"),
        "the password is logged:\n{text}"
    );
    assert!(!text.contains("NOT_FOUND"), "{text}");
    assert!(
        text.contains("RabbitMQ connected"),
        "the change back is logged:\n{text}"
    );
    env.cleanup().await;
}
