//! Postgres: batches, jobs, attempts, outbox, rejected rows and the global rate budget.
//!
//! All queries are runtime-checked (`sqlx::query`), so a build needs no database.
//! Identifiers are stored through the [`vault::Vault`] only.

pub mod api_keys;
pub mod batch_views;
pub mod batches;
pub mod budget;
pub mod circuit;
pub mod claims;
pub mod console_sessions;
pub mod erasure;
pub mod jobs;
pub mod keyset;
pub mod migrations;
pub mod outbox;
pub mod outcomes;
pub mod recheck;
pub mod reconcile;
pub mod reconcile_rows;
pub mod rekey;
pub mod retention;
pub mod schedule;
pub mod startup;
pub mod submits;
pub mod vault;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::{ExposeSecret, Settings};
pub use vault::{Vault, VaultError};

/// Postgres errors, with what was being done.
///
/// Causes that are part of the message are not also a `source`, so a printed chain never
/// says the same thing twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not connect or create the database.
    #[error("cannot connect to Postgres ({what}): {cause}")]
    Connect {
        /// What was attempted.
        what: &'static str,
        /// Cause.
        cause: sqlx::Error,
    },
    /// Postgres did not answer at the configured address.
    #[error(
        "cannot connect to Postgres at {target}: {cause}; check the setting `database.url` (ABHA_BULK__DATABASE__URL) and that Postgres runs there"
    )]
    Unreachable {
        /// `host:port/database` (never the password).
        target: String,
        /// What went wrong.
        cause: String,
    },
    /// The schema is missing or older than this binary.
    #[error("database {target} is not migrated ({detail}): run `abha-bulk migrate`")]
    NotMigrated {
        /// `host:port/database`.
        target: String,
        /// What is missing.
        detail: String,
    },
    /// `pii.key` is not the key the database's identifiers are encrypted with.
    #[error(
        "configuration key `pii.key` (key id {key_id}) does not match the key check value stored in the database: set ABHA_BULK__PII__KEY (or ABHA_BULK__PII__KEY_FILE) to the key this database uses; to rotate, set the new key as `pii.key`, the old one in `pii.previous_keys`, and run `abha-bulk rekey`"
    )]
    KeyMismatch {
        /// Id of the configured key.
        key_id: String,
    },
    /// This process's keys are older than the newest key the fleet recorded.
    #[error(
        "configuration key `pii.key` is stale: {reason}; set ABHA_BULK__PII__KEY (or ABHA_BULK__PII__KEY_FILE) to the fleet's newest key and the old one in `pii.previous_keys` (or add the newest key to `pii.previous_keys`), then restart"
    )]
    StaleKey {
        /// Which keys (ids only).
        reason: String,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error while {what}: {cause}")]
    Query {
        /// What the query was for.
        what: &'static str,
        /// Cause.
        cause: sqlx::Error,
    },
    /// Stored data could not be decrypted or decoded.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A stored payload no longer parses (schema drift).
    #[error("stored job {job_id} is corrupt: {reason}")]
    Corrupt {
        /// The job.
        job_id: i64,
        /// Why.
        reason: String,
    },
    /// Input that the store refuses.
    #[error("{0}")]
    Refused(String),
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

/// Adds what a query was doing to its error.
pub(crate) trait QueryContext<T> {
    fn ctx(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|cause| StoreError::Query { what, cause })
    }
}

/// The database and the vault of one process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Connection pool.
    pub pool: PgPool,
    /// Encryption and keyed hashing of identifiers.
    pub vault: Arc<Vault>,
    /// Whether this process's keys are still the fleet's ([`keyset`]).
    pub keys: Arc<keyset::KeyState>,
    /// Where the X-token sweep goes on ([`Store::delete_final_tokens`]): past rows it could
    /// not rewrite, so they never block it.
    token_sweep: Arc<std::sync::atomic::AtomicI64>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects with the settings. Fails within [`startup::FIRST_CONNECT_TIMEOUT`] when
    /// Postgres does not answer, and refuses a database that is not migrated or whose
    /// identifiers are encrypted with another key than `pii.key`.
    pub async fn connect(settings: &Settings) -> Result<Self, StoreError> {
        let vault = Arc::new(Vault::from_secrets(
            &settings.pii.key,
            &settings.pii.previous_keys,
        )?);
        let url = settings.database_url()?;
        Self::connect_url(
            url.expose_secret(),
            settings.database.max_connections,
            settings.database.acquire_timeout,
            vault,
        )
        .await
    }

    /// Connects to `url`: one direct connection first (fast failure naming the address, the
    /// schema and key checks), then the pool, whose `acquire_timeout` applies under load.
    pub async fn connect_url(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        vault: Arc<Vault>,
    ) -> Result<Self, StoreError> {
        // Nothing may hold a transaction (and its row locks) across an unbounded wait: an idle
        // transaction is ended after a minute, a statement after five (the longest legitimate
        // one activates a multi-million-row batch).
        let opts = startup::options(url)?.options([
            ("idle_in_transaction_session_timeout", "60s"),
            ("statement_timeout", "300s"),
        ]);
        let target = startup::target(&opts);
        let mut conn = startup::probe(&opts, &target).await?;
        startup::check_schema(&mut conn, &target, &MIGRATOR).await?;
        startup::check_key(&mut conn, &vault).await?;
        keyset::register(&mut conn, &vault).await?;
        let _ = sqlx::Connection::close(conn).await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(opts);
        Ok(Self {
            pool,
            vault,
            keys: Arc::default(),
            token_sweep: Arc::default(),
        })
    }

    /// Creates the database named in `url` when it does not exist, then runs the migrations
    /// with a bounded `lock_timeout`, retrying lock timeouts ([`migrations::run`]).
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let opts = startup::options(url)?;
        let target = startup::target(&opts);
        let unreachable = |e: sqlx::Error| StoreError::Unreachable {
            target: target.clone(),
            cause: e.to_string(),
        };
        let exists = tokio::time::timeout(
            startup::FIRST_CONNECT_TIMEOUT,
            sqlx::Postgres::database_exists(url),
        )
        .await
        .map_err(|_| StoreError::Unreachable {
            target: target.clone(),
            cause: format!(
                "no answer within {} s",
                startup::FIRST_CONNECT_TIMEOUT.as_secs()
            ),
        })?
        .map_err(unreachable)?;
        if !exists {
            sqlx::Postgres::create_database(url)
                .await
                .map_err(|cause| StoreError::Connect {
                    what: "creating the database",
                    cause,
                })?;
            tracing::info!(database = %target, "database created");
        }
        // Beside the running fleet: bounded lock waits, retried (store/migrations.rs).
        migrations::run(&opts, &target, &MIGRATOR).await
    }

    /// True when a trivial query answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
