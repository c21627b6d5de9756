//! Typed settings, layered loading and validation.
//!
//! Layers, later wins: the compiled-in `config/default.toml` → `config/<env>.toml`
//! (`ABHA_BULK_ENV`, default `local`; folder `ABHA_BULK_CONFIG_DIR`, default `config`) →
//! environment variables `ABHA_BULK__SECTION__KEY`. Secrets ([`Secret`] fields) come only from
//! the environment or from a file named by `ABHA_BULK__SECTION__KEY_FILE`; a secret found in a
//! TOML file is refused. Every failure names the key and what was expected.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The compiled-in defaults: the same file as `config/default.toml` in the repository.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of every environment variable that sets a key.
pub const ENV_PREFIX: &str = "ABHA_BULK__";

/// Keys whose values are secrets: environment or secret file only, never TOML.
pub const SECRET_KEYS: &[&str] = &[
    "abdm.client_secret",
    "database.password",
    "rabbitmq.password",
    "pii.key",
    "pii.previous_keys",
];

/// A setting could not be loaded or is invalid; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be parsed or a value had the wrong type.
    #[error("configuration: {0}")]
    Load(String),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `worker.rate_per_second`.
        key: String,
        /// What was expected.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// A secret value. `Debug` and `Display` never show it.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value itself; call only where it is sent or used.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(***)"
        })
    }
}

/// All settings of one process.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

/// Benefit (programme) names; see `jobs::benefit`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenefitSettings {
    /// `submit`/`reconcile --benefit` must be one of these; empty: any well-formed name.
    #[serde(default)]
    pub served: Vec<String>,
}

/// How to reach ABDM.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub client_secret: Secret,
    /// `X-CM-ID` header of the session request.
    pub cm_id: String,
    /// Name of the header that carries the benefit name.
    pub benefit_header: String,
    /// HTTP method of the children list call: `GET` or `POST`.
    pub children_list_method: String,
    /// Connect timeout of every call, milliseconds.
    pub connect_timeout_ms: u64,
    /// Total timeout of one HTTP attempt, milliseconds.
    pub request_timeout_ms: u64,
    /// Fraction of `expiresIn` after which the session token is refreshed.
    pub token_refresh_fraction: f64,
    /// Smallest interval between two fetches of the public key caused by rejected ciphertext, seconds.
    pub key_refresh_min_interval_secs: u64,
}

impl AbdmSettings {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Total timeout of one attempt.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Postgres connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL without a password, e.g. `postgres://postgres@127.0.0.1:5432/abha_bulk`.
    pub url: String,
    /// Password, added to the URL (secret: environment or secret file only).
    #[serde(default)]
    pub password: Secret,
    /// Pool size.
    pub max_connections: u32,
    /// Seconds to wait for a pooled connection.
    pub acquire_timeout_secs: u64,
}

/// RabbitMQ connection and topology names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSettings {
    /// AMQP URL without a password, e.g. `amqp://guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Password, added to the URL (secret: environment or secret file only).
    #[serde(default)]
    pub password: Secret,
    /// Topic exchange of job envelopes.
    pub exchange: String,
    /// Prefix of queue names.
    pub queue_prefix: String,
    /// Deliveries before a message is dead-lettered.
    pub delivery_limit: u32,
}

/// Worker throughput, retries and shutdown.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// ABDM calls per second across all replicas.
    pub rate_per_second: f64,
    /// Calls allowed back to back after idling.
    pub burst: u32,
    /// Share `rate_per_second` with every replica through a token bucket in Postgres.
    pub global_rate_limit: bool,
    /// Calls in flight at once in one worker (and RabbitMQ prefetch).
    pub in_flight: u16,
    /// Attempts per job before it is dead.
    pub max_attempts: u32,
    /// First retry delay, milliseconds.
    pub backoff_base_ms: u64,
    /// Longest retry delay, milliseconds.
    pub backoff_cap_ms: u64,
    /// Seconds a running job is leased to one worker. The fence re-checks and extends the
    /// lease right before every call that changes something at ABDM; it must outlast one HTTP
    /// attempt with room to spare (validated: at least twice `abdm.request_timeout_ms`), so
    /// no other worker can take a job over while its call is in flight.
    pub lease_secs: u64,
    /// Seconds to finish in-flight work on shutdown.
    pub grace_period_secs: u64,
    /// Address of the metrics and health endpoints.
    pub http_listen: String,
    /// Refused gateway logins or connections in a row that open the circuit breaker.
    pub circuit_systemic_threshold: u32,
    /// 5xx answers, timeouts or broken connections in a row (across jobs) that open it.
    pub circuit_suspect_threshold: u32,
    /// Longest interval between probes while it is open, seconds.
    pub circuit_probe_max_secs: u64,
    /// AIMD: the shared rate is multiplied by this on a throttling answer (0 < f < 1).
    pub aimd_decrease_factor: f64,
    /// AIMD: each recovery step adds this fraction of `rate_per_second`.
    pub aimd_increase_fraction: f64,
    /// AIMD: recovery steps come at most this often, milliseconds.
    pub aimd_increase_every_ms: u64,
    /// AIMD: ... and only after this long without a throttling answer, milliseconds.
    pub aimd_quiet_ms: u64,
}

impl WorkerSettings {
    /// The AIMD tuning.
    pub fn aimd(&self) -> crate::ratelimit::Aimd {
        crate::ratelimit::Aimd {
            decrease_factor: self.aimd_decrease_factor,
            increase_fraction: self.aimd_increase_fraction,
            increase_every: Duration::from_millis(self.aimd_increase_every_ms),
            quiet: Duration::from_millis(self.aimd_quiet_ms),
            ..Default::default()
        }
    }

    /// The circuit breaker tuning.
    pub fn breaker(&self) -> crate::breaker::BreakerConfig {
        crate::breaker::BreakerConfig {
            systemic_threshold: self.circuit_systemic_threshold.max(1),
            suspect_threshold: self.circuit_suspect_threshold.max(1),
            probe_max: Duration::from_secs(self.circuit_probe_max_secs.max(1)),
            ..Default::default()
        }
    }
}

/// The outbox relay's pace (`abha-bulk relay` and the relay inside `abha-bulk worker`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// Outbox rows leased and published per round: one transaction and one wait for confirms.
    pub batch: u32,
    /// Pause after a round that found nothing due, milliseconds: bounds the delay a new row
    /// sees and the queries an idle relay makes.
    pub idle_ms: u64,
    /// Interval of the housekeeping (lease expiry, abandoned submits, batch closing,
    /// webhooks), milliseconds: bounds how late a lost job is re-queued after its lease ends.
    pub housekeeping_ms: u64,
    /// How long a round waits for RabbitMQ's confirms before it reconnects, milliseconds; its
    /// rows are leased for this plus 5 s, so a relay that dies mid-round delays them that long.
    pub publish_timeout_ms: u64,
}

/// Encryption of identifiers at rest.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    /// base64 of 32 bytes (secret: environment or secret file only).
    #[serde(default)]
    pub key: Secret,
    /// Keys that still decrypt during a rotation: base64 keys separated by commas (secret).
    #[serde(default)]
    pub previous_keys: Secret,
}

/// Nightly reconciliation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// ABDM lookups per second (taken from the same global budget as the workers).
    pub rate_per_second: f64,
    /// Lookups in flight at once.
    pub concurrency: usize,
}

/// Logs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `auto`, `human` or `json`.
    pub log_format: String,
    /// Filter used when `RUST_LOG` is not set.
    pub log_filter: String,
}

/// The embedded ABDM simulator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Listen address.
    pub listen: String,
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

/// Where to look for overlay files and which environment is active.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Folder that holds `<env>.toml`.
    pub dir: PathBuf,
    /// Environment name (`local`, `production`, ...).
    pub env: String,
    /// Extra overlay file given on the command line, applied after `<env>.toml`.
    pub file: Option<PathBuf>,
}

impl ConfigSource {
    /// From `ABHA_BULK_CONFIG_DIR` and `ABHA_BULK_ENV`.
    pub fn from_env() -> Self {
        Self {
            dir: std::env::var_os("ABHA_BULK_CONFIG_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("config")),
            env: std::env::var("ABHA_BULK_ENV").unwrap_or_else(|_| "local".into()),
            file: None,
        }
    }
}

impl Settings {
    /// Loads every layer from the real environment.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// Loads every layer, taking environment variables from `vars` (tests pass their own).
    pub fn load_with_env(
        source: &ConfigSource,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        let mut files = vec![source.dir.join(format!("{}.toml", source.env))];
        files.extend(source.file.clone());
        for (i, path) in files.iter().enumerate() {
            let explicit = i > 0;
            if !path.exists() {
                if explicit {
                    return Err(ConfigError::Load(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                continue;
            }
            refuse_secrets_in(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        for (name, value) in &vars {
            let Some(key_env) = name.strip_suffix("_FILE") else {
                continue;
            };
            let key = env_to_key(key_env);
            if !SECRET_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::invalid(
                    &key,
                    format!("{name}: only secrets can be read from a file"),
                ));
            }
            let secret = std::fs::read_to_string(value).map_err(|e| {
                ConfigError::invalid(
                    &key,
                    format!("cannot read secret file named by {name}: {e}"),
                )
            })?;
            figment = figment.merge(Serialized::default(&key, secret.trim_end().to_string()));
        }
        let env_pairs: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| !k.ends_with("_FILE"))
            .collect();
        let figment = figment.merge(EnvPairs(env_pairs));
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url("abdm.base_url", &self.abdm.base_url)?;
        check_url("abdm.session_url", &self.abdm.session_url)?;
        if self.abdm.client_id.trim().is_empty() {
            return Err(ConfigError::invalid("abdm.client_id", "must not be empty"));
        }
        if self.abdm.benefit_header.trim().is_empty()
            || !self
                .abdm
                .benefit_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                "abdm.benefit_header",
                "expected an HTTP header name such as BENEFIT-NAME",
            ));
        }
        if !matches!(self.abdm.children_list_method.as_str(), "GET" | "POST") {
            return Err(ConfigError::invalid(
                "abdm.children_list_method",
                format!(
                    "expected \"GET\" or \"POST\", got {:?}",
                    self.abdm.children_list_method
                ),
            ));
        }
        if self.abdm.request_timeout_ms == 0 || self.abdm.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "abdm.request_timeout_ms",
                "timeouts must be greater than 0",
            ));
        }
        let f = self.abdm.token_refresh_fraction;
        if !(f > 0.0 && f < 1.0) {
            return Err(ConfigError::invalid(
                "abdm.token_refresh_fraction",
                format!("expected a number between 0 and 1 (exclusive), got {f}"),
            ));
        }
        for (key, url) in [
            ("database.url", &self.database.url),
            ("rabbitmq.url", &self.rabbitmq.url),
        ] {
            check_url(key, url)?;
            if reqwest::Url::parse(url).is_ok_and(|u| u.password().is_some()) {
                let pw = key.replace(".url", ".password");
                return Err(ConfigError::invalid(
                    key,
                    format!("must not carry a password; set {pw} through the environment"),
                ));
            }
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        let w = &self.worker;
        if !(w.rate_per_second > 0.0 && w.rate_per_second.is_finite()) {
            return Err(ConfigError::invalid(
                "worker.rate_per_second",
                format!(
                    "expected a positive number of calls per second, got {}",
                    w.rate_per_second
                ),
            ));
        }
        if w.burst == 0 {
            return Err(ConfigError::invalid("worker.burst", "must be at least 1"));
        }
        if w.in_flight == 0 {
            return Err(ConfigError::invalid(
                "worker.in_flight",
                "must be at least 1",
            ));
        }
        if w.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "worker.max_attempts",
                "must be at least 1",
            ));
        }
        if w.backoff_base_ms == 0 || w.backoff_cap_ms < w.backoff_base_ms {
            return Err(ConfigError::invalid(
                "worker.backoff_cap_ms",
                "backoff_base_ms must be > 0 and backoff_cap_ms >= backoff_base_ms",
            ));
        }
        check_addr("worker.http_listen", &w.http_listen)?;
        let attempt_ms = self
            .abdm
            .request_timeout_ms
            .max(self.abdm.connect_timeout_ms);
        if w.lease_secs.saturating_mul(1000) < attempt_ms.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "worker.lease_secs",
                format!(
                    "must be at least twice abdm.request_timeout_ms ({attempt_ms} ms), so a job's \
                     lease outlasts any call in flight; got {} s",
                    w.lease_secs
                ),
            ));
        }
        if !(w.aimd_decrease_factor > 0.0 && w.aimd_decrease_factor < 1.0) {
            return Err(ConfigError::invalid(
                "worker.aimd_decrease_factor",
                format!("must be between 0 and 1, got {}", w.aimd_decrease_factor),
            ));
        }
        if !matches!(
            self.telemetry.log_format.as_str(),
            "auto" | "human" | "json"
        ) {
            return Err(ConfigError::invalid(
                "telemetry.log_format",
                format!(
                    "expected \"auto\", \"human\" or \"json\", got {:?}",
                    self.telemetry.log_format
                ),
            ));
        }
        let r = &self.relay;
        for (key, value) in [
            ("relay.batch", u64::from(r.batch)),
            ("relay.idle_ms", r.idle_ms),
            ("relay.housekeeping_ms", r.housekeeping_ms),
            ("relay.publish_timeout_ms", r.publish_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        let s = &self.sandbox;
        check_addr("sandbox.listen", &s.listen)?;
        if !(1024..=8192).contains(&s.key_bits) {
            return Err(ConfigError::invalid(
                "sandbox.key_bits",
                format!("expected 1024 to 8192, got {}", s.key_bits),
            ));
        }
        for (key, pct) in [
            ("sandbox.fault_5xx_percent", s.fault_5xx_percent),
            ("sandbox.fault_timeout_percent", s.fault_timeout_percent),
            ("sandbox.fault_drop_percent", s.fault_drop_percent),
        ] {
            if !(0.0..=100.0).contains(&pct) {
                return Err(ConfigError::invalid(
                    key,
                    format!("expected 0 to 100, got {pct}"),
                ));
            }
        }
        Ok(())
    }

    /// The Postgres URL with the password from the environment, if any.
    pub fn database_url(&self) -> Result<Secret, ConfigError> {
        with_password("database.url", &self.database.url, &self.database.password)
    }

    /// The AMQP URL with the password from the environment, if any.
    pub fn rabbitmq_url(&self) -> Result<Secret, ConfigError> {
        with_password("rabbitmq.url", &self.rabbitmq.url, &self.rabbitmq.password)
    }
}

fn with_password(key: &str, url: &str, password: &Secret) -> Result<Secret, ConfigError> {
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    if !password.is_empty() {
        parsed
            .set_password(Some(password.expose()))
            .map_err(|_| ConfigError::invalid(key, "this URL cannot carry a password"))?;
    }
    Ok(Secret::new(parsed.to_string()))
}

fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    reqwest::Url::parse(value)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("expected a URL, got {value:?} ({e})")))
}

fn check_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    value.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
        ConfigError::invalid(
            key,
            format!("expected HOST:PORT such as 127.0.0.1:8089, got {value:?}"),
        )
    })
}

/// `ABHA_BULK__ABDM__CLIENT_SECRET` → `abdm.client_secret`.
fn env_to_key(name: &str) -> String {
    name.trim_start_matches(ENV_PREFIX)
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

fn refuse_secrets_in(path: &Path) -> Result<(), ConfigError> {
    let layer = Figment::from(Toml::file_exact(path));
    for key in SECRET_KEYS {
        if layer.find_value(key).is_ok() {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "is a secret and must not be in {}; set {}{} or {}{}_FILE instead",
                    path.display(),
                    ENV_PREFIX,
                    key.replace('.', "__").to_ascii_uppercase(),
                    ENV_PREFIX,
                    key.replace('.', "__").to_ascii_uppercase()
                ),
            ));
        }
    }
    Ok(())
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|one| {
            let key = if one.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", one.path.join("."))
            };
            let from = one
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            format!("{key}{}{from}", one.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figment provider over given `ABHA_BULK__A__B` pairs: values parse like figment's `Env`
/// (numbers, booleans, arrays), and the source is named in errors.
struct EnvPairs(Vec<(String, String)>);

impl figment::Provider for EnvPairs {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s) ABHA_BULK__*")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let key = env_to_key(name);
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            // Secrets stay strings even when they look like numbers.
            let parsed = if SECRET_KEYS.contains(&key.as_str()) {
                figment::value::Value::from(value.clone())
            } else {
                parsed
            };
            let nested = figment::util::nest(&key, parsed);
            if let Some(d) = nested.into_dict() {
                merge_dict(&mut dict, d);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dict(into: &mut figment::value::Dict, from: figment::value::Dict) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (
                Some(figment::value::Value::Dict(_, existing)),
                figment::value::Value::Dict(_, new),
            ) => merge_dict(existing, new),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let source = ConfigSource {
            dir: PathBuf::from("/nonexistent"),
            env: "local".into(),
            file: None,
        };
        Settings::load_with_env(
            &source,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = load(&[]).unwrap();
        assert_eq!(s.abdm.benefit_header, "BENEFIT-NAME");
        assert_eq!(s.worker.rate_per_second, 20.0);
        assert!(s.abdm.client_secret.is_empty());
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = load(&[
            ("ABHA_BULK__WORKER__RATE_PER_SECOND", "7.5"),
            ("ABHA_BULK__ABDM__CLIENT_SECRET", "12345"),
            ("OTHER", "x"),
        ])
        .unwrap();
        assert_eq!(s.worker.rate_per_second, 7.5);
        assert_eq!(s.abdm.client_secret.expose(), "12345");
        assert_eq!(format!("{:?}", s.abdm.client_secret), "Secret(***)");
    }

    #[test]
    fn wrong_type_names_the_key_and_the_variable() {
        let err = load(&[("ABHA_BULK__WORKER__IN_FLIGHT", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker.in_flight"), "{err}");
        assert!(err.contains("ABHA_BULK__"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = load(&[("ABHA_BULK__WORKER__RATE", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rate"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = load(&[("ABHA_BULK__WORKER__RATE_PER_SECOND", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker.rate_per_second"), "{err}");
        let err = load(&[("ABHA_BULK__ABDM__CHILDREN_LIST_METHOD", "PUT")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("abdm.children_list_method"), "{err}");
    }

    #[test]
    fn secret_in_toml_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.toml"),
            "[abdm]\nclient_secret = \"oops\"\n",
        )
        .unwrap();
        let source = ConfigSource {
            dir: dir.path().to_path_buf(),
            env: "local".into(),
            file: None,
        };
        let err = Settings::load_with_env(&source, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("abdm.client_secret"), "{err}");
        assert!(err.contains("ABHA_BULK__ABDM__CLIENT_SECRET"), "{err}");
    }

    #[test]
    fn overlay_file_and_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prod.toml"), "[worker]\nburst = 9\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let source = ConfigSource {
            dir: dir.path().to_path_buf(),
            env: "prod".into(),
            file: None,
        };
        let s = Settings::load_with_env(
            &source,
            vec![(
                "ABHA_BULK__ABDM__CLIENT_SECRET_FILE".to_string(),
                secret.display().to_string(),
            )],
        )
        .unwrap();
        assert_eq!(s.worker.burst, 9);
        assert_eq!(s.abdm.client_secret.expose(), "s3cr3t");
    }

    #[test]
    fn password_in_url_is_refused_and_added_from_secret() {
        let err = load(&[("ABHA_BULK__DATABASE__URL", "postgres://u:pw@h/db")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.password"), "{err}");
        let s = load(&[
            ("ABHA_BULK__DATABASE__URL", "postgres://u@h/db"),
            ("ABHA_BULK__DATABASE__PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(s.database_url().unwrap().expose(), "postgres://u:pw@h/db");
    }
}
