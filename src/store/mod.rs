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
pub mod jobs;
pub mod outbox;
pub mod outcomes;
pub mod reconcile;
pub mod vault;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Settings;
pub use vault::{Vault, VaultError};

/// Postgres errors, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not connect or create the database.
    #[error("cannot connect to Postgres ({what}): {source}")]
    Connect {
        /// What was attempted.
        what: &'static str,
        /// Cause.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error while {what}: {source}")]
    Query {
        /// What the query was for.
        what: &'static str,
        /// Cause.
        source: sqlx::Error,
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

/// Adds what a query was doing to its error.
pub(crate) trait QueryContext<T> {
    fn ctx(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { what, source })
    }
}

/// The database and the vault of one process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Connection pool.
    pub pool: PgPool,
    /// Encryption and keyed hashing of identifiers.
    pub vault: Arc<Vault>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects with the settings (the database must exist and be migrated: see [`Self::migrate`]).
    pub async fn connect(settings: &Settings) -> Result<Self, StoreError> {
        let vault = Arc::new(Vault::from_secret(&settings.pii.key)?);
        let url = settings.database_url()?;
        Self::connect_url(
            url.expose(),
            settings.database.max_connections,
            Duration::from_secs(settings.database.acquire_timeout_secs),
            vault,
        )
        .await
    }

    /// Connects to `url`.
    pub async fn connect_url(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        vault: Arc<Vault>,
    ) -> Result<Self, StoreError> {
        use std::str::FromStr;
        // Nothing may hold a transaction (and its row locks) across an unbounded wait: an idle
        // transaction is ended after a minute, a statement after five (the longest legitimate
        // one activates a multi-million-row batch).
        let options = sqlx::postgres::PgConnectOptions::from_str(url)
            .map_err(|source| StoreError::Connect {
                what: "reading database.url",
                source,
            })?
            .options([
                ("idle_in_transaction_session_timeout", "60s"),
                ("statement_timeout", "300s"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                what: "opening the pool",
                source,
            })?;
        Ok(Self { pool, vault })
    }

    /// Creates the database named in `url` when it does not exist, then runs the migrations.
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let exists = sqlx::Postgres::database_exists(url)
            .await
            .map_err(|source| StoreError::Connect {
                what: "checking that the database exists",
                source,
            })?;
        if !exists {
            sqlx::Postgres::create_database(url)
                .await
                .map_err(|source| StoreError::Connect {
                    what: "creating the database",
                    source,
                })?;
            tracing::info!("database created");
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                what: "migrating",
                source,
            })?;
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    /// True when a trivial query answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
