//! Layered loading and validation: the compiled-in defaults, then `config/<env>.toml` and an
//! explicit overlay file, then secret files, then `ABHA_BULK__*` variables; then the checks
//! that types cannot express (ranges, relations between keys). Every failure names the key.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Toml};

use super::secrets::{is_secret, merge_secret_files, refuse_secrets_in};
use super::{ConfigError, DEFAULT_TOML, ENV_PREFIX, Settings};

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
        let secret_files = vars.iter().filter_map(|(name, path)| {
            let key = env_to_key(name.strip_suffix("_FILE")?);
            Some((name.clone(), key, path.clone()))
        });
        let figment = merge_secret_files(figment, secret_files)?;
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
        if self.abdm.request_timeout.is_zero() || self.abdm.connect_timeout.is_zero() {
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
        if w.backoff_base.is_zero() || w.backoff_cap < w.backoff_base {
            return Err(ConfigError::invalid(
                "worker.backoff_cap_ms",
                "backoff_base_ms must be > 0 and backoff_cap_ms >= backoff_base_ms",
            ));
        }
        let attempt = self.abdm.request_timeout.max(self.abdm.connect_timeout);
        if w.lease < attempt.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "worker.lease_secs",
                format!(
                    "must be at least twice abdm.request_timeout_ms ({} ms), so a job's lease \
                     outlasts any call in flight; got {} s",
                    attempt.as_millis(),
                    w.lease.as_secs()
                ),
            ));
        }
        for (key, f) in [
            ("worker.aimd_decrease_factor", w.aimd_decrease_factor),
            ("worker.aimd_min_fraction", w.aimd_min_fraction),
            ("worker.aimd_ceiling_margin", w.aimd_ceiling_margin),
        ] {
            if !(f > 0.0 && f < 1.0) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be between 0 and 1, got {f}"),
                ));
            }
        }
        let (open, degraded) = (w.circuit_open_ratio, w.circuit_degraded_ratio);
        if !(open > 0.0 && open <= 1.0 && degraded > 0.0 && degraded <= open) {
            return Err(ConfigError::invalid(
                "worker.circuit_degraded_ratio",
                format!(
                    "must satisfy 0 < circuit_degraded_ratio <= circuit_open_ratio <= 1, got \
                     {degraded} and {open}"
                ),
            ));
        }
        // A hold of a second or two would drop messages on every Postgres restart blip; the
        // upper bound (RabbitMQ's consumer_timeout) is the broker's setting, documented only.
        if w.hold_max < std::time::Duration::from_secs(5) {
            return Err(ConfigError::invalid(
                "worker.hold_max_secs",
                format!(
                    "must be at least 5 s (and below RabbitMQ's consumer_timeout, 30 min by default), got {} s",
                    w.hold_max.as_secs()
                ),
            ));
        }
        let r = &self.relay;
        // A recheck row being expanded is leased for `publish_timeout + 5 s`; a round's new
        // ranges join rows due in the last tenth of `republish_after` (store::recheck). At
        // twice the lease or more, a leased row can never look "recent", so no range joins a
        // row whose expansion would then delete it (and the range's cover with it).
        let lease = r.publish_timeout + std::time::Duration::from_secs(5);
        if r.republish_after < 2 * lease {
            return Err(ConfigError::invalid(
                "relay.republish_after_secs",
                format!(
                    "must be at least twice the relay's lease (relay.publish_timeout_ms + 5 s = {} s), got {} s",
                    lease.as_secs(),
                    r.republish_after.as_secs()
                ),
            ));
        }
        if r.batch == 0 {
            return Err(ConfigError::invalid("relay.batch", "must be at least 1"));
        }
        for (key, value) in [
            ("relay.idle_ms", r.idle),
            ("relay.housekeeping_ms", r.housekeeping),
            ("relay.publish_timeout_ms", r.publish_timeout),
            ("relay.broker_horizon_ms", r.broker_horizon),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if r.broker_min == 0 || r.broker_max < r.broker_min {
            return Err(ConfigError::invalid(
                "relay.broker_min",
                format!(
                    "needs 1 <= relay.broker_min <= relay.broker_max, got {} and {}",
                    r.broker_min, r.broker_max
                ),
            ));
        }
        for (programme, w) in &self.benefits.weights {
            if !(w.is_finite() && *w > 0.0) {
                return Err(ConfigError::invalid(
                    "benefits.weights",
                    format!("the weight of {programme:?} must be above 0, got {w}"),
                ));
            }
        }
        let s = &self.sandbox;
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
}

fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    reqwest::Url::parse(value)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("expected a URL, got {value:?} ({e})")))
}

/// `ABHA_BULK__ABDM__CLIENT_SECRET` → `abdm.client_secret`.
fn env_to_key(name: &str) -> String {
    name.trim_start_matches(ENV_PREFIX)
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
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
            let parsed = if is_secret(&key) {
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
