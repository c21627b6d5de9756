//! Clock skew (issue 18, item 4), against the sandbox (which refuses a `TIMESTAMP` further
//! than its tolerance from its clock with ABDM-1016): a request is stamped when it is sent,
//! after the gate's wait; a replica whose clock is 10 minutes off holds its own jobs (metric,
//! ERROR naming it) and no row fails or spends an attempt; the shared breaker stays closed, so
//! the other replicas go on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::abdm::{AbdmClient, CallGate, CallTrace, ClientError, Operation};
use abha_bulk::pii::AbhaNumber;
use abha_bulk::sandbox::{Faults, settings_for_sandbox};
use abha_bulk::telemetry::metrics::{CLOCK_HOLD, CLOCK_REJECTED};
use common::{BENEFIT, PipelineOpts, TestEnv, no_faults};
use futures::future::BoxFuture;

/// A gate that makes every request wait `0`: a long wait for a rate token or a shared
/// `Retry-After` pause.
struct SlowGate(Duration);

impl CallGate for SlowGate {
    fn before_send(&self, _op: Operation) -> BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_stamped_after_the_gate_not_before() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    // The sandbox accepts a stamp at most 1 s off; the gate waits 2 s. A stamp made before
    // the wait (the code before) was 2 s old at the sandbox and refused with ABDM-1016.
    env.set_faults(Faults {
        timestamp_tolerance_secs: 1,
        ..no_faults()
    });
    let abha = AbhaNumber::parse(env.pop().abha(5).expose()).expect("abha");
    let mut trace = CallTrace::gated(Arc::new(SlowGate(Duration::from_secs(2))));
    let answer = env.client.benefit_lookup(&mut trace, BENEFIT, &abha).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(
        trace.attempts.len(),
        1,
        "accepted the first time, no 1016 retry"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ten_minutes_off_holds_itself_and_no_row_pays() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let batch = env.submit_links("C", 500..520).await;
    let mut settings = settings_for_sandbox(&env.sandbox.url());
    settings.clock_offset_secs = 600;
    let skewed = Arc::new(AbdmClient::new(&settings).expect("client"));
    let rejected_before = CLOCK_REJECTED.get();
    let api_before = env
        .sandbox
        .state()
        .call_log()
        .answers
        .get("ABDM-1016")
        .copied()
        .unwrap_or(0);
    let pipeline = env.start(PipelineOpts {
        client: Some(skewed),
        max_attempts: 2,
        ..PipelineOpts::default()
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held = CLOCK_HOLD.get();
    pipeline.stop().await;
    let refused = env
        .sandbox
        .state()
        .call_log()
        .answers
        .get("ABDM-1016")
        .copied()
        .unwrap_or(0)
        - api_before;
    println!(
        "skewed replica, 6 s: {refused} calls refused with ABDM-1016, {} counted by the client",
        CLOCK_REJECTED.get() - rejected_before
    );
    assert_eq!(held, 1.0, "the skewed replica holds its jobs");
    assert_eq!(
        CLOCK_REJECTED.get() - rejected_before,
        refused,
        "the metric counts every refusal"
    );
    // The jobs in flight when the first refusal came (8), each retried once by the client, and
    // the replica's own probes (1 s, 2 s, 4 s), each also retried once: 18-20 on a quiet
    // machine, up to 34 under a loaded suite (more deliveries reach the gate before the hold
    // is seen). Without the hold the same 6 s made 82: the bound keeps the two apart.
    assert!(refused <= 48, "{refused} refused calls in 6 s");
    let counts = env.counts(batch).await;
    assert_eq!(counts.open(), 20, "no row ended: {counts:?}");
    let attempts: i32 =
        sqlx::query_scalar("SELECT COALESCE(max(attempts), 0) FROM jobs WHERE batch_id = $1")
            .bind(batch)
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 0, "a refused TIMESTAMP costs no attempt");
    let circuit = env
        .store
        .circuit(abha_bulk::sandbox::DEFAULT_CLIENT_ID)
        .await
        .unwrap();
    assert!(!circuit.open, "one replica's clock does not stop the fleet");
    // A replica with a good clock runs every row, once.
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[batch]).await;
    pipeline.stop().await;
    assert_eq!(env.counts(batch).await.get("succeeded"), 20);
    env.cleanup().await;
}
