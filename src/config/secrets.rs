//! Secrets: which keys are secret, where their values may come from, and the URLs they are
//! added to.
//!
//! A secret is held in `secrecy`'s [`SecretString`]: `Debug` prints `[REDACTED]` (so a
//! logged `Settings` shows none), the memory is wiped on drop, and reading it takes an
//! explicit [`ExposeSecret::expose_secret`], easy to find in review. Secret values come only
//! from the environment or from a file named by `<VARIABLE>_FILE` (Docker and Kubernetes
//! secrets): a TOML file is committed or baked into an image, so a secret found in one is
//! refused rather than used.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
pub use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, ENV_PREFIX, Settings};

/// Keys whose values are secrets: environment or secret file only, never TOML.
pub const SECRET_KEYS: &[&str] = &[
    "abdm.client_secret",
    "database.password",
    "rabbitmq.password",
    "pii.key",
    "pii.previous_keys",
];

/// True for a dotted key of [`SECRET_KEYS`].
pub(super) fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// The variable that sets `key`: `abdm.client_secret` → `ABHA_BULK__ABDM__CLIENT_SECRET`.
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Refuses a TOML layer that sets a secret, naming the key and the variables to use instead.
pub(super) fn refuse_secrets_in(path: &Path) -> Result<(), ConfigError> {
    let layer = Figment::from(Toml::file_exact(path));
    for key in SECRET_KEYS {
        if layer.find_value(key).is_ok() {
            let var = env_name(key);
            return Err(ConfigError::invalid(
                key,
                format!(
                    "is a secret and must not be in {}; set {var} or {var}_FILE instead",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Merges the secrets named by `ABHA_BULK__*_FILE` variables (`name`, `key`, file path) into
/// `figment`; only secret keys may be read from a file, so a typo cannot silently read some
/// other setting from disk. A trailing newline (how editors and `echo` write) is dropped.
pub(super) fn merge_secret_files(
    mut figment: Figment,
    files: impl IntoIterator<Item = (String, String, String)>,
) -> Result<Figment, ConfigError> {
    for (name, key, path) in files {
        if !is_secret(&key) {
            return Err(ConfigError::invalid(
                &key,
                format!("{name}: only secrets can be read from a file"),
            ));
        }
        let secret = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::invalid(
                &key,
                format!("cannot read secret file named by {name}: {e}"),
            )
        })?;
        figment = figment.merge(Serialized::default(&key, secret.trim_end().to_string()));
    }
    Ok(figment)
}

impl Settings {
    /// The Postgres URL with the password from the environment, if any.
    pub fn database_url(&self) -> Result<SecretString, ConfigError> {
        with_password("database.url", &self.database.url, &self.database.password)
    }

    /// Whether each of [`SECRET_KEYS`] has a value: `Debug` redacts every secret alike, so
    /// this is how `abha-bulk config` tells a missing secret from a set one.
    pub fn secrets_set(&self) -> [(&'static str, bool); 5] {
        let set = |s: &SecretString| !s.expose_secret().is_empty();
        [
            ("abdm.client_secret", set(&self.abdm.client_secret)),
            ("database.password", set(&self.database.password)),
            ("rabbitmq.password", set(&self.rabbitmq.password)),
            ("pii.key", set(&self.pii.key)),
            ("pii.previous_keys", set(&self.pii.previous_keys)),
        ]
    }

    /// The AMQP URL with the password from the environment, if any.
    pub fn rabbitmq_url(&self) -> Result<SecretString, ConfigError> {
        with_password("rabbitmq.url", &self.rabbitmq.url, &self.rabbitmq.password)
    }
}

/// `url` with `password` added: the result carries the secret, so it is one too.
fn with_password(
    key: &str,
    url: &str,
    password: &SecretString,
) -> Result<SecretString, ConfigError> {
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    let password = password.expose_secret();
    if !password.is_empty() {
        parsed
            .set_password(Some(password))
            .map_err(|_| ConfigError::invalid(key, "this URL cannot carry a password"))?;
    }
    Ok(SecretString::from(String::from(parsed)))
}
