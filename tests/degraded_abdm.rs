//! Partial and degraded ABDM outages (issue 18, item 3), against the sandbox: the ABHA
//! endpoints answering 5xx while gateway sessions and the certificate work must keep the
//! breaker open (a probe is a real read-only ABHA call), and a 50 % 5xx degradation must open
//! it or slow the work down without any row dying.

mod common;

use std::time::Duration;

use abha_bulk::breaker::BreakerConfig;
use abha_bulk::sandbox::{FaultScope, Faults};
use common::{PipelineOpts, TestEnv, no_faults};

fn received(env: &TestEnv, class: &str) -> u64 {
    env.sandbox
        .state()
        .call_log()
        .received
        .get(class)
        .copied()
        .unwrap_or(0)
}

async fn circuit_open(env: &TestEnv) -> bool {
    env.store
        .circuit(abha_bulk::sandbox::DEFAULT_CLIENT_ID)
        .await
        .expect("circuit")
        .open
}

async fn max_attempts(env: &TestEnv, batch: uuid::Uuid) -> i32 {
    sqlx::query_scalar("SELECT COALESCE(max(attempts), 0) FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.store.pool)
        .await
        .expect("attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_abha_endpoints_alone_keeps_the_breaker_open() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let batch = env.submit_links("A", 0..60).await;
    // Every ABHA endpoint answers 500; gateway sessions and the certificate still work.
    env.set_faults(Faults {
        error_5xx_percent: 100.0,
        error_5xx_scope: FaultScope::Abha,
        ..no_faults()
    });
    let (api_before, sessions_before) = (received(&env, "api"), received(&env, "session"));
    let pipeline = env.start(PipelineOpts {
        max_attempts: 3,
        breaker: Some(BreakerConfig {
            probe_max: Duration::from_secs(4),
            ..BreakerConfig::default()
        }),
        ..PipelineOpts::default()
    });
    // 12 s of outage: long enough for several probes (1 s, 2 s, 4 s, 4 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let api = received(&env, "api") - api_before;
    let sessions = received(&env, "session") - sessions_before;
    let probes = abha_bulk::telemetry::metrics::CIRCUIT_PROBES.get();
    println!("12 s ABHA-only outage: {api} ABHA calls, {sessions} sessions, {probes} probes");
    assert!(
        circuit_open(&env).await,
        "the probes saw the ABHA endpoints fail"
    );
    assert!(probes >= 3, "probes were sent: {probes}");
    // The run that opened it (12 in a row), the calls in flight then, and one lookup per probe.
    assert!(api <= 40, "{api} ABHA calls during the outage");
    let counts = env.counts(batch).await;
    assert_eq!(counts.get("dead") + counts.get("failed"), 0, "{counts:?}");
    assert!(
        max_attempts(&env, batch).await <= 1,
        "no attempt spent twice"
    );
    // ABDM is back: the next probe closes the breaker and every row runs once.
    env.set_faults(no_faults());
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    let counts = env.counts(batch).await;
    assert_eq!(counts.get("succeeded"), 60, "{counts:?}");
    assert!(!circuit_open(&env).await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_the_calls_failing_kills_no_row() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let batch = env.submit_links("H", 100..300).await;
    env.set_faults(Faults {
        error_5xx_percent: 50.0,
        ..no_faults()
    });
    // Three attempts: with a run that any good answer resets (the breaker before), each row
    // died with probability 0.5³ = 12.5 % (about 25 of 200).
    let pipeline = env.start(PipelineOpts {
        max_attempts: 3,
        breaker: Some(BreakerConfig {
            probe_max: Duration::from_secs(2),
            min_calls: 10,
            ..BreakerConfig::default()
        }),
        ..PipelineOpts::default()
    });
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    let counts = env.counts(batch).await;
    let api = received(&env, "api");
    let probes = abha_bulk::telemetry::metrics::CIRCUIT_PROBES.get();
    println!(
        "50 % 5xx, 200 rows: {counts:?}, {api} ABHA calls, {probes} probes, max attempts {}",
        max_attempts(&env, batch).await
    );
    assert_eq!(counts.get("succeeded"), 200, "{counts:?}");
    assert_eq!(counts.get("dead") + counts.get("failed"), 0);
    env.cleanup().await;
}

/// A probe after an outage meets one stray 5xx (noise, not the outage): it tries once more and
/// closes the breaker, instead of waiting for the next probe (16 or 32 s later once the
/// interval has doubled). A throttled answer (ABDM-1022) is ABDM up: it closes the breaker
/// too. Two 5xx in a row keep it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_shrugs_off_one_stray_error_and_counts_a_throttle_as_up() {
    use abha_bulk::breaker::Breaker;
    use abha_bulk::sandbox::ScriptedResponse;
    let env = TestEnv::new().await;
    let client = abha_bulk::sandbox::DEFAULT_CLIENT_ID;
    let breaker = Breaker::new(env.store.clone(), client, BreakerConfig::default());
    let script = |status: u16, body: &str, times: u32| ScriptedResponse {
        path_contains: "/benefit/abha/91-0000-0000-0000".into(),
        status,
        body: body.into(),
        retry_after: None,
        times,
    };
    // Opens with its first probe due at once; returns whether one probe closed it.
    let probe = |answers: Vec<ScriptedResponse>| {
        let (env, breaker) = (&env, &breaker);
        async move {
            assert!(env.store.open_circuit(client, "test", 0.0).await.unwrap());
            for a in answers {
                env.sandbox.state().push_script(a);
            }
            // The replica's cached view is re-read after `refresh` (1 s).
            tokio::time::sleep(Duration::from_millis(1100)).await;
            breaker.probe_if_due(&env.client).await;
            !circuit_open(env).await
        }
    };
    assert!(probe(vec![script(503, "", 1)]).await, "one stray 503");
    let throttled = r#"{"code":"ABDM-1022","message":"Too many requests"}"#;
    assert!(probe(vec![script(429, throttled, 1)]).await, "throttled");
    assert!(!probe(vec![script(503, "", 2)]).await, "two 503s in a row");
    env.cleanup().await;
}
