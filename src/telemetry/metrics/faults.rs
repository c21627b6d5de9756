//! The metrics of faults and of how the service rides them out: the circuit breaker, a
//! replica's refused clock, holds let go and republished jobs (hour-long outages), rate
//! tokens dropped, leases kept, messages of a newer release, a stale `pii.key`. Apart from
//! `metrics.rs` only to keep files short; they are registered and listed with the others
//! (`super::NAMES`, `super::register_all`).

use std::sync::LazyLock;

use prometheus::{Gauge, IntCounter, IntCounterVec};

use super::{counter, gauge, plain_counter};

/// `abha_abdm_circuit_open`: 1 while the ABDM circuit breaker holds every job back.
pub static CIRCUIT_OPEN: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_abdm_circuit_open",
        "1 while the ABDM circuit breaker is open (ABDM down or credentials refused): no job starts",
    )
});

/// `abha_abdm_clock_rejected_total`: ABDM-1016 answers (our `TIMESTAMP` refused). Each
/// one is this replica's clock (or a stamp made long before its send), never the row.
pub static CLOCK_REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "abha_abdm_clock_rejected_total",
        "ABDM-1016 answers: ABDM refused this replica's TIMESTAMP header (check its clock/NTP)",
    )
});

/// `abha_abdm_clock_hold`: 1 while this replica takes no job because ABDM refuses its
/// `TIMESTAMP` (its clock is off); the other replicas go on.
pub static CLOCK_HOLD: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_abdm_clock_hold",
        "1 while this replica holds its jobs because ABDM refuses its TIMESTAMP (clock skew)",
    )
});

/// `abha_abdm_failure_ratio`: the share of this replica's recent ABDM results (over
/// `worker.circuit_window_secs`) that were 5xx, timeouts or broken connections.
pub static FAILURE_RATIO: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_abdm_failure_ratio",
        "Share of this replica's ABDM results in the breaker window that were 5xx/timeouts",
    )
});

/// `abha_abdm_circuit_probes_total`.
pub static CIRCUIT_PROBES: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "abha_abdm_circuit_probes_total",
        "Probes of ABDM sent by this replica while the circuit breaker was open",
    )
});

/// `abha_worker_holds_released_total{envelope}`: deliveries a worker could not start within
/// `worker.hold_max_secs` (Postgres unreachable, this replica's clock refused) and let go:
/// `stored` ones acked unrun (a recheck row republishes the job), `producer` ones requeued.
pub static HOLDS_RELEASED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_worker_holds_released_total",
        "Deliveries held longer than worker.hold_max_secs and let go (stored: acked unrun, republished later; producer: requeued)",
        &["envelope"],
    )
});

/// `abha_outbox_republished_total`: jobs published again by a due recheck row because they
/// were still waiting to run (their message was lost, acked unrun or dead-lettered).
pub static REPUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "abha_outbox_republished_total",
        "Jobs published again by the relay's recheck rows: their earlier message was lost, acked unrun after a bounded hold, or dead-lettered",
    )
});

/// `abha_ratelimit_stale_tokens_total`: rate tokens taken before a claim and dropped
/// because the claim took longer than `worker::gate::PREPAID_FRESH`. Each one is a slot
/// of the contract with ABDM left unused, so a steady climb means claims stall (Postgres
/// slow, CPU saturated) and the configured rate is not reached.
pub static RATELIMIT_STALE: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "abha_ratelimit_stale_tokens_total",
        "Rate tokens taken before a claim and dropped because the claim took too long",
    )
});

/// `abha_lease_kept_total`: lease extensions made while a claimed job waited for a rate
/// token (a `Retry-After` pause, the AIMD floor). The wait keeps the lease so that waiting
/// for ABDM's permission never costs a row an attempt (issue 18, item 2).
pub static LEASE_KEPT: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "abha_lease_kept_total",
        "Lease extensions while a claimed job waited for a rate token",
    )
});

/// `abha_unknown_envelopes_total{action}`: messages of a kind or envelope version this
/// release does not know (a newer release's, during a rolling deploy): `requeued` for a
/// worker that knows them, `left_to_postgres` (a stored job at the delivery limit: acked, the
/// outbox recheck republishes it), `dead_lettered` (a producer's, at the limit). Climbing
/// after a deploy has finished means no running worker knows them.
pub static UNKNOWN_ENVELOPES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_unknown_envelopes_total",
        "Messages of a kind or envelope version this release does not know, by what was done",
        &["action"],
    )
});

/// `abha_ratelimit_expired_tokens_total`: tokens leased from the shared bucket and dropped
/// unspent because spending them later could have let the fleet exceed the rate (see
/// `ratelimit::Leased`). A steady climb means replicas lease more than they spend.
pub static RATELIMIT_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "abha_ratelimit_expired_tokens_total",
        "Tokens leased from the shared rate budget and dropped unspent (too old to spend)",
    )
});

/// `abha_pii_key_stale`: 1 while this process takes no work because its `pii.key` and
/// `pii.previous_keys` do not include the fleet's newest key (`store::keyset`).
pub static PII_KEY_STALE: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_pii_key_stale",
        "1 while this process takes no work: its pii.key is older than the fleet's newest key",
    )
});
