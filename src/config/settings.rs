//! The settings types. Each value is parsed into the type its users need (an enum, a
//! `SocketAddr`, a `Duration`), so a bad value fails at load time naming its key instead of
//! wherever it is first used. `config/default.toml` says why each default is what it is.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// All settings of one process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How to reach ABDM (or the embedded sandbox).
    pub abdm: AbdmSettings,
    /// Postgres.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub rabbitmq: RabbitSettings,
    /// Worker throughput, retries and shutdown.
    pub worker: WorkerSettings,
    /// The outbox relay's pace.
    pub relay: RelaySettings,
    /// Encryption of identifiers at rest.
    pub pii: PiiSettings,
    /// Logs.
    pub telemetry: TelemetrySettings,
    /// Nightly reconciliation.
    pub reconcile: ReconcileSettings,
    /// The embedded ABDM simulator.
    pub sandbox: SandboxSettings,
    /// The benefit names this deployment serves.
    #[serde(default)]
    pub benefits: BenefitSettings,
    /// The programme API (`abha-bulk serve`).
    #[serde(default)]
    pub api: crate::api::ApiSettings,
    /// Webhook deliveries of the programme API (sent beside the relay).
    #[serde(default)]
    pub webhooks: crate::api::webhooks::WebhookSettings,
    /// How long personal data and operational debris are kept (docs/privacy.md).
    #[serde(default)]
    pub retention: RetentionSettings,
}

/// How long data is kept before the relay's housekeeping erases or purges it
/// (docs/privacy.md maps each to the DPDP Act 2023). Days, so an operator reads them as policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Days after a batch finishes before its identifiers are erased.
    pub identifiers_days: u32,
    /// Per-programme override of `identifiers_days`: `{ pmjay = 7 }`.
    pub benefit_identifiers_days: std::collections::BTreeMap<String, u32>,
    /// Days after the identifiers' erasure before the batch's rows themselves (and their
    /// attempts) are deleted; the batch and its counts stay.
    pub rows_days: u32,
    /// Days an ABDM attempt record (no identifiers: codes, durations) is kept.
    pub attempts_days: u32,
    /// Days a webhook delivery record is kept.
    pub webhook_deliveries_days: u32,
    /// Days an upload's Idempotency-Key answer is kept.
    pub api_idempotency_days: u32,
    /// Hours after which an Idempotency-Key record still marked running (its `serve` crashed
    /// mid-upload) is dropped, so the client's retry can upload again.
    pub api_idempotency_running_hours: u32,
    /// Days an outbox row of a finished job or batch (debris) is kept.
    pub outbox_debris_days: u32,
    /// Days the audit records (`reveal_audit`, `erasure_log`) are kept.
    pub audit_days: u32,
    /// Job ids per erasure chunk (one short transaction each).
    pub chunk: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            identifiers_days: 30,
            benefit_identifiers_days: Default::default(),
            rows_days: 60,
            attempts_days: 90,
            webhook_deliveries_days: 30,
            api_idempotency_days: 7,
            api_idempotency_running_hours: 6,
            outbox_debris_days: 1,
            audit_days: 365,
            chunk: 5000,
        }
    }
}

/// Benefit (programme) names; see `jobs::benefit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenefitSettings {
    /// `submit`/`reconcile --benefit` must be one of these; empty: any well-formed name.
    #[serde(default)]
    pub served: Vec<String>,
    /// Each programme's weight in the fair share of the one ABDM rate (exact benefit name →
    /// weight > 0); a programme not named weighs 1. Two backlogged programmes with weights 1
    /// and 3 get the rate 1 : 3; one alone gets all of it.
    #[serde(default)]
    pub weights: std::collections::HashMap<String, f64>,
    /// The priority a programme's batches get when `submit --priority` (or the API's
    /// `priority`) does not say; a programme not named gets `normal`.
    #[serde(default)]
    pub priorities: std::collections::HashMap<String, crate::scheduler::Priority>,
}

impl BenefitSettings {
    /// The weight of `programme` in the fair share (1 unless set).
    pub fn weight(&self, programme: &str) -> f64 {
        self.weights.get(programme).copied().unwrap_or(1.0)
    }

    /// The default priority of `programme`'s batches.
    pub fn priority(&self, programme: &str) -> crate::scheduler::Priority {
        self.priorities.get(programme).copied().unwrap_or_default()
    }
}

/// The HTTP method of ABDM's "list children" call: the NHA OpenAPI and the integrator guide
/// disagree, so the deployment says which one its ABDM environment answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChildrenListMethod {
    /// `GET` (NHA OpenAPI).
    Get,
    /// `POST` (integrator guide).
    Post,
}

/// How to reach ABDM.
///
/// The timeouts stay integers here because `abdm::client` builds and reads them directly;
/// [`Self::connect_timeout`] and [`Self::request_timeout`] give them as durations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbdmSettings {
    /// Base URL of the ABHA V3 APIs (paths such as `/v3/profile/benefit/search` are appended).
    pub base_url: String,
    /// Gateway session URL (POST clientId/clientSecret).
    pub session_url: String,
    /// Gateway client id.
    pub client_id: String,
    /// Gateway client secret (secret: environment or secret file only).
    #[serde(default)]
    pub client_secret: SecretString,
    /// `X-CM-ID` header of the session request.
    pub cm_id: String,
    /// Name of the header that carries the benefit name.
    pub benefit_header: String,
    /// HTTP method of the children list call.
    pub children_list_method: ChildrenListMethod,
    /// Connect timeout of every call.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Total timeout of one HTTP attempt: also bounds how long a call can outlive the fence
    /// that let it go, hence the lease check in validation.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// Fraction of `expiresIn` after which the session token is refreshed.
    pub token_refresh_fraction: f64,
    /// Smallest interval between two fetches of the public key caused by rejected
    /// ciphertext: an invalid identifier must not cost a certificate call per row.
    #[serde(rename = "key_refresh_min_interval_secs", with = "secs")]
    pub key_refresh_min_interval: Duration,
    /// Seconds added to this process's clock in `TIMESTAMP` headers. Hidden (not in
    /// `config/default.toml`): it exists only to simulate a replica with a skewed clock in
    /// tests and the chaos run; in production it stays 0 and the node's NTP keeps time.
    #[serde(default)]
    pub clock_offset_secs: i64,
}

/// Postgres connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL without a password, e.g. `postgres://postgres@127.0.0.1:5432/abha_bulk`:
    /// the URL is logged and shown in errors, so the password travels apart.
    pub url: String,
    /// Password, added to the URL when connecting (secret: environment or secret file only).
    #[serde(default)]
    pub password: SecretString,
    /// Pool size.
    pub max_connections: u32,
    /// How long a query waits for a pooled connection before it fails.
    #[serde(rename = "acquire_timeout_secs", with = "secs")]
    pub acquire_timeout: Duration,
}

/// RabbitMQ connection and topology names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSettings {
    /// AMQP URL without a password, e.g. `amqp://guest@127.0.0.1:5672/%2f` (as for Postgres).
    pub url: String,
    /// Password, added to the URL when connecting (secret: environment or secret file only).
    #[serde(default)]
    pub password: SecretString,
    /// Topic exchange of job envelopes.
    pub exchange: String,
    /// Prefix of queue names.
    pub queue_prefix: String,
    /// Deliveries before a message is dead-lettered: ends a poison message's loop without
    /// losing it.
    pub delivery_limit: u32,
    /// One queue per job kind instead of one shared work queue (see
    /// [`crate::queue::Topology::per_kind`] for why shared is the default).
    pub queue_per_kind: bool,
}

/// Worker throughput, retries and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// ABDM calls per second across all replicas: the contract with ABDM.
    pub rate_per_second: f64,
    /// Calls allowed back to back after idling.
    pub burst: u32,
    /// Share `rate_per_second` with every replica through a token bucket in Postgres; off,
    /// each replica would spend the whole rate on its own.
    pub global_rate_limit: bool,
    /// Calls in flight at once in one worker (and RabbitMQ prefetch).
    pub in_flight: u16,
    /// How much work, at the worker's current rate, it holds unacked: the prefetch is this
    /// many milliseconds of calls (at least 2, at most `in_flight`).
    #[serde(rename = "prefetch_horizon_ms", with = "millis")]
    pub prefetch_horizon: Duration,
    /// Attempts per job before it is dead.
    pub max_attempts: u32,
    /// First retry delay.
    #[serde(rename = "backoff_base_ms", with = "millis")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(rename = "backoff_cap_ms", with = "millis")]
    pub backoff_cap: Duration,
    /// How long a claimed job belongs to one worker. The invariant: the lease outlasts the
    /// longest a worker acts on a job without renewing it, so no other worker can take a job
    /// over while a call of its is in flight. That stretch is one HTTP attempt (at most
    /// `abdm.request_timeout_ms`, validated at start to be at most half the lease) sent
    /// either right after the claim or after the fence, which re-checks and extends the lease
    /// before every call that changes something at ABDM once a quarter of the lease has
    /// passed. Waiting for the rate does not count: the first token is taken before the
    /// claim, later ones before the fence.
    #[serde(rename = "lease_secs", with = "secs")]
    pub lease: Duration,
    /// Time to finish in-flight work on shutdown (the deployment's termination grace period
    /// must exceed it, or the pod is killed mid-outcome).
    #[serde(rename = "grace_period_secs", with = "secs")]
    pub grace_period: Duration,
    /// Longest a worker holds a delivery it cannot start (Postgres unreachable, the breaker or
    /// this replica's clock hold). Past it a stored job's message is acked unrun (its recheck
    /// row republishes the job later) and a producer's is requeued. Must stay below RabbitMQ's
    /// `consumer_timeout` (30 min by default), which closes the channel of a consumer that
    /// holds a delivery longer, and every close counts towards the delivery limit.
    #[serde(rename = "hold_max_secs", with = "secs")]
    pub hold_max: Duration,
    /// Address of the metrics and health endpoints.
    #[serde(deserialize_with = "addr::deserialize")]
    pub http_listen: SocketAddr,
    /// Refused gateway logins or connections in a row that open the circuit breaker.
    pub circuit_systemic_threshold: u32,
    /// 5xx answers, timeouts or broken connections in a row (across jobs) that open it.
    pub circuit_suspect_threshold: u32,
    /// Longest interval between probes while it is open.
    #[serde(rename = "circuit_probe_max_secs", with = "secs")]
    pub circuit_probe_max: Duration,
    /// The span over which the breaker measures the share of failed ABDM results.
    #[serde(rename = "circuit_window_secs", with = "secs")]
    pub circuit_window: Duration,
    /// Results in that window before its share counts.
    pub circuit_min_calls: u32,
    /// A failure share at or above this opens the breaker (0 < r <= 1).
    pub circuit_open_ratio: f64,
    /// A failure share at or above this postpones transient failures without spending an
    /// attempt (0 < r <= `circuit_open_ratio`).
    pub circuit_degraded_ratio: f64,
    /// AIMD: the shared rate is multiplied by this on a throttling answer (0 < f < 1).
    pub aimd_decrease_factor: f64,
    /// AIMD: the rate never drops below this fraction of `rate_per_second`, so a throttling
    /// storm slows the work down without stopping it.
    pub aimd_min_fraction: f64,
    /// AIMD: each recovery step adds this fraction of `rate_per_second`.
    pub aimd_increase_fraction: f64,
    /// AIMD: recovery steps come at most this often.
    #[serde(rename = "aimd_increase_every_ms", with = "millis")]
    pub aimd_increase_every: Duration,
    /// AIMD: ... and only after this long without a throttling answer.
    #[serde(rename = "aimd_quiet_ms", with = "millis")]
    pub aimd_quiet: Duration,
    /// AIMD: for `aimd_ceiling_memory` after a throttling answer, recovery stops at this
    /// fraction of the rate that was throttled (ABDM's limit lies below it).
    pub aimd_ceiling_margin: f64,
    /// AIMD: how long the throttled rate is remembered as a ceiling; afterwards recovery
    /// probes up to `rate_per_second` again (ABDM's limit may have been raised).
    #[serde(rename = "aimd_ceiling_memory_ms", with = "millis")]
    pub aimd_ceiling_memory: Duration,
}

impl WorkerSettings {
    /// The AIMD tuning.
    pub fn aimd(&self) -> crate::ratelimit::Aimd {
        crate::ratelimit::Aimd {
            decrease_factor: self.aimd_decrease_factor,
            min_fraction: self.aimd_min_fraction,
            increase_fraction: self.aimd_increase_fraction,
            increase_every: self.aimd_increase_every,
            quiet: self.aimd_quiet,
            ceiling_margin: self.aimd_ceiling_margin,
            ceiling_memory: self.aimd_ceiling_memory,
        }
    }

    /// The circuit breaker tuning.
    pub fn breaker(&self) -> crate::breaker::BreakerConfig {
        crate::breaker::BreakerConfig {
            systemic_threshold: self.circuit_systemic_threshold.max(1),
            suspect_threshold: self.circuit_suspect_threshold.max(1),
            probe_max: self.circuit_probe_max.max(Duration::from_secs(1)),
            window: self.circuit_window.max(Duration::from_secs(1)),
            min_calls: self.circuit_min_calls.max(1),
            open_ratio: self.circuit_open_ratio,
            degraded_ratio: self.circuit_degraded_ratio,
            ..Default::default()
        }
    }
}

/// The outbox relay's pace (`abha-bulk relay` and the relay inside `abha-bulk worker`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// Outbox rows leased and published per round: one transaction and one wait for confirms.
    pub batch: u32,
    /// Pause after a round that found nothing due: bounds the delay a new row sees and the
    /// queries an idle relay makes.
    #[serde(rename = "idle_ms", with = "millis")]
    pub idle: Duration,
    /// Interval of the housekeeping (lease expiry, abandoned submits, batch closing,
    /// webhooks): bounds how late a lost job is re-queued after its lease ends.
    #[serde(rename = "housekeeping_ms", with = "millis")]
    pub housekeeping: Duration,
    /// How long a round waits for RabbitMQ's confirms before it reconnects; its rows are
    /// leased for this plus 5 s, so a relay that dies mid-round delays them that long.
    #[serde(rename = "publish_timeout_ms", with = "millis")]
    pub publish_timeout: Duration,
    /// How many seconds of work RabbitMQ holds: the relay publishes only while the work
    /// queue's ready messages are below the fleet's rate times this (the rest waits in
    /// Postgres, where the fair scheduler picks what goes next).
    #[serde(rename = "broker_horizon_ms", with = "millis")]
    pub broker_horizon: Duration,
    /// The fewest ready messages the relay keeps in the work queue, whatever the rate.
    pub broker_min: u32,
    /// The most ready messages the relay keeps in the work queue, whatever the rate (and
    /// when the rate is unknown: no shared rate budget).
    pub broker_max: u32,
    /// How long after publishing a job the relay looks again (its recheck row): a job still
    /// waiting to run then lost its message (purged, acked unrun after a bounded hold,
    /// dead-lettered) and is published again.
    #[serde(rename = "republish_after_secs", with = "secs")]
    pub republish_after: Duration,
}

/// Encryption of identifiers at rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    /// base64 of 32 bytes (secret: environment or secret file only).
    #[serde(default)]
    pub key: SecretString,
    /// Keys that still decrypt during a rotation: base64 keys separated by commas (secret).
    #[serde(default)]
    pub previous_keys: SecretString,
}

/// Nightly reconciliation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// ABDM lookups per second (taken from the same global budget as the workers, so the
    /// contract holds while both run).
    pub rate_per_second: f64,
    /// Lookups in flight at once.
    pub concurrency: usize,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human on a terminal, JSON otherwise (what a log collector wants).
    Auto,
    /// Always human-readable.
    Human,
    /// Always JSON lines.
    Json,
}

/// Logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Log line format.
    pub log_format: LogFormat,
    /// Filter used when `RUST_LOG` is not set.
    pub log_filter: String,
}

/// The embedded ABDM simulator. `token_ttl_secs` and `latency_ms` stay integers: they go
/// straight into the sandbox's fault settings, which its admin API shows in those units.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Listen address.
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    /// RSA key size.
    pub key_bits: usize,
    /// Number of seeded beneficiaries.
    pub population: u64,
    /// Seed of the population.
    pub seed: u64,
    /// Known benefit names.
    pub benefits: Vec<String>,
    /// Access token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Accepted requests per second (0 = unlimited).
    pub rate_limit: f64,
    /// Percentage of calls answered 500 before any side effect.
    pub fault_5xx_percent: f64,
    /// Percentage of calls held back past the client timeout after the side effect.
    pub fault_timeout_percent: f64,
    /// Percentage of calls whose connection drops after the side effect.
    pub fault_drop_percent: f64,
    /// Added latency, milliseconds.
    pub latency_ms: u64,
}

/// `key_ms = 1500` → 1.5 s: the unit stays in the key's name, the type in the field's.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads a whole number of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `"127.0.0.1:9187"` → a socket address, or an error that shows the expected form.
pub(crate) mod addr {
    use std::net::SocketAddr;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    /// Reads `IP:PORT` (no host names: a listen address binds one interface).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            D::Error::custom(format!(
                "expected IP:PORT such as 127.0.0.1:8089, got {text:?}"
            ))
        })
    }
}

/// `key_secs = 30` → 30 s.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads a whole number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}
