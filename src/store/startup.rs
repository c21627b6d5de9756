//! What every command that needs the database checks first: Postgres answers at the
//! configured address (within seconds, naming it and the setting), the schema is migrated,
//! and `pii.key` is the key the stored identifiers are encrypted with (a key check value in
//! table `pii_key_check`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::{QueryContext, StoreError, Vault};
use crate::store::vault::Aad;

/// How long the first connection may take before the command gives up.
pub const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements slower than this are logged, at debug level (they are expected in reports and
/// cancels of large batches, and the log line carries the whole SQL text).
const SLOW_STATEMENT: Duration = Duration::from_secs(5);

/// Connection options from `url`, with slow statements logged at debug level only.
pub fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| StoreError::Unreachable {
        target: "(unparsable URL)".into(),
        cause: format!("invalid URL: {}", without_url(&e.to_string())),
    })?;
    Ok(opts.log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT))
}

/// `host:port/database`, never the user or password.
pub fn target(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("postgres")
    )
}

fn without_url(text: &str) -> String {
    // sqlx's URL errors may quote the URL; a password must never be printed.
    text.split_whitespace()
        .filter(|w| !w.contains("://"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One direct connection, within [`FIRST_CONNECT_TIMEOUT`].
pub async fn probe(opts: &PgConnectOptions, target: &str) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, PgConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(StoreError::Unreachable {
            target: target.to_string(),
            cause: without_url(&e.to_string()),
        }),
        Err(_) => Err(StoreError::Unreachable {
            target: target.to_string(),
            cause: format!("no answer within {} s", FIRST_CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// Every migration of this binary is applied.
pub async fn check_schema(
    conn: &mut PgConnection,
    target: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .ctx("checking the schema")?;
    if !exists {
        return Err(StoreError::NotMigrated {
            target: target.to_string(),
            detail: "no schema".into(),
        });
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await
            .ctx("checking the schema")?;
    let missing: Vec<String> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{:04}", m.version))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StoreError::NotMigrated {
            target: target.to_string(),
            detail: format!("migration(s) {} not applied", missing.join(", ")),
        })
    }
}

/// `pii.key` matches the database's key check value (or, during a rotation, the stored one
/// is a `pii.previous_keys` entry). The first start records it; on a database that already
/// holds jobs, only after the newest payload decrypted with the configured keys.
pub async fn check_key(conn: &mut PgConnection, vault: &Vault) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT check_value FROM pii_key_check WHERE singleton")
            .fetch_optional(&mut *conn)
            .await
            .ctx("reading the key check value")?;
    let mismatch = || StoreError::KeyMismatch {
        key_id: vault.key_id(),
    };
    match stored {
        Some(check) if check == vault.check_value() => Ok(()),
        Some(check) if vault.is_previous_check_value(&check) => {
            tracing::info!(
                key_id = %vault.key_id(),
                "pii.key is new and the database still uses a key in pii.previous_keys: run `abha-bulk rekey`"
            );
            Ok(())
        }
        Some(_) => Err(mismatch()),
        None => {
            let newest = sqlx::query(
                "SELECT dedup_hash, payload FROM jobs WHERE erased_at IS NULL
                     ORDER BY id DESC LIMIT 1",
            )
            .fetch_optional(&mut *conn)
            .await
            .ctx("reading a stored job")?;
            if let Some(row) = newest {
                let dedup: Vec<u8> = row.get(0);
                let payload: Vec<u8> = row.get(1);
                if vault.decrypt(&payload, Aad::JobPayload(&dedup)).is_err() {
                    return Err(mismatch());
                }
            }
            record_key(conn, vault, false).await
        }
    }
}

/// Stores `pii.key`'s check value (`replace`: also over another one, after `rekey`).
pub async fn record_key(
    conn: &mut PgConnection,
    vault: &Vault,
    replace: bool,
) -> Result<(), StoreError> {
    let sql = if replace {
        "INSERT INTO pii_key_check (singleton, key_id, check_value) VALUES (true, $1, $2)
         ON CONFLICT (singleton) DO UPDATE SET key_id = $1, check_value = $2, updated_at = now()"
    } else {
        "INSERT INTO pii_key_check (singleton, key_id, check_value) VALUES (true, $1, $2)
         ON CONFLICT (singleton) DO NOTHING"
    };
    sqlx::query(sql)
        .bind(vault.key_id())
        .bind(vault.check_value())
        .execute(&mut *conn)
        .await
        .ctx("recording the key check value")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_host_port_and_database_but_not_the_password() {
        let o = options("postgres://u:hunter2@db.example:6543/abha").unwrap();
        assert_eq!(target(&o), "db.example:6543/abha");
        let e = options("postgres://u:hunter2@db.example:notaport/abha")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
