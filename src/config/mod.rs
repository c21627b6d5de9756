//! Typed settings, layered loading and validation.
//!
//! Layers, later wins: the compiled-in `config/default.toml` → `config/<env>.toml`
//! (`ABHA_BULK_ENV`, default `local`; folder `ABHA_BULK_CONFIG_DIR`, default `config`) →
//! environment variables `ABHA_BULK__SECTION__KEY`. Secrets ([`SECRET_KEYS`], held as
//! [`SecretString`]) come only from the environment or from a file named by
//! `ABHA_BULK__SECTION__KEY_FILE`; a secret found in a TOML file is refused. Every failure
//! names the key and what was expected.
//!
//! - `settings`: the types, parsed into what their users need (enums, addresses, durations);
//! - `load`: the layers and the checks types cannot express;
//! - `secrets`: which keys are secret, where they may come from, the URLs they go into.

mod load;
mod secrets;
mod settings;

pub use load::ConfigSource;
pub use secrets::{ExposeSecret, SECRET_KEYS, SecretString};
pub use settings::{
    AbdmSettings, BenefitSettings, ChildrenListMethod, DatabaseSettings, LogFormat, PiiSettings,
    RabbitSettings, ReconcileSettings, RelaySettings, RetentionSettings, SandboxSettings, Settings,
    TelemetrySettings, WorkerSettings,
};
pub(crate) use settings::{addr, millis, secs};

/// The compiled-in defaults: the same file as `config/default.toml` in the repository, so
/// a binary runs with no config folder at all.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of every environment variable that sets a key.
pub const ENV_PREFIX: &str = "ABHA_BULK__";

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

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
        assert!(s.abdm.client_secret.expose_secret().is_empty());
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
        assert_eq!(s.abdm.client_secret.expose_secret(), "12345");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("12345") && shown.contains("REDACTED"),
            "{shown}"
        );
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
    }

    #[test]
    fn typed_values_name_the_key_and_what_was_expected() {
        for (var, key, expected) in [
            (
                "ABHA_BULK__ABDM__CHILDREN_LIST_METHOD",
                "abdm.children_list_method",
                "POST",
            ),
            (
                "ABHA_BULK__TELEMETRY__LOG_FORMAT",
                "telemetry.log_format",
                "json",
            ),
            (
                "ABHA_BULK__WORKER__HTTP_LISTEN",
                "worker.http_listen",
                "IP:PORT",
            ),
            ("ABHA_BULK__RELAY__IDLE_MS", "relay.idle_ms", "u64"),
        ] {
            let err = load(&[(var, "PUT")]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(expected), "{err}");
        }
        let s = load(&[
            ("ABHA_BULK__ABDM__CHILDREN_LIST_METHOD", "POST"),
            ("ABHA_BULK__TELEMETRY__LOG_FORMAT", "json"),
            ("ABHA_BULK__WORKER__HTTP_LISTEN", "0.0.0.0:9187"),
            ("ABHA_BULK__WORKER__AIMD_QUIET_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(s.abdm.children_list_method, ChildrenListMethod::Post);
        assert_eq!(s.telemetry.log_format, LogFormat::Json);
        assert_eq!(s.worker.http_listen.port(), 9187);
        assert_eq!(s.worker.aimd_quiet, Duration::from_millis(1500));
    }

    #[test]
    fn secrets_set_covers_every_secret_key() {
        let s = load(&[("ABHA_BULK__PII__KEY", "k")]).unwrap();
        let listed: Vec<&str> = s.secrets_set().iter().map(|(k, _)| *k).collect();
        assert_eq!(listed, SECRET_KEYS);
        assert!(s.secrets_set().contains(&("pii.key", true)));
        assert!(s.secrets_set().contains(&("abdm.client_secret", false)));
    }

    #[test]
    fn aimd_defaults_are_the_tuning_the_limiter_uses_without_settings() {
        assert_eq!(
            load(&[]).unwrap().worker.aimd(),
            crate::ratelimit::Aimd::default()
        );
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
        assert_eq!(s.abdm.client_secret.expose_secret(), "s3cr3t");
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
        assert_eq!(
            s.database_url().unwrap().expose_secret(),
            "postgres://u:pw@h/db"
        );
    }
}
