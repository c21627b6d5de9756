//! `abha-bulk migrate` beside a running fleet: the migrator's session gives up on a lock after
//! [`LOCK_TIMEOUT`] instead of queueing every worker's query behind its `ALTER TABLE`, and a
//! lock timeout is tried again a few times ([`LOCK_RETRIES`]) with a growing pause, naming
//! the migration that waited.
//!
//! Why: an `ALTER TABLE` needs an ACCESS EXCLUSIVE lock, however brief the change. Waiting
//! for it behind one long transaction (a report, a batch activation) puts every later query
//! on that table in the queue behind the `ALTER`: the whole fleet stops for as long as the
//! long transaction runs. Giving up after a few seconds and trying again costs the fleet at
//! most those seconds. The rules migrations themselves follow (checked by the test below):
//! docs/operations.md, "Upgrading".

use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgConnectOptions;

use super::{StoreError, startup};

/// The migrator session's `lock_timeout`. A migration may set its own (`SET lock_timeout`);
/// a `-- no-transaction` migration (one `CREATE INDEX CONCURRENTLY`) cannot and relies on
/// this one.
pub const LOCK_TIMEOUT: &str = "5s";

/// Attempts after the first when a lock timed out.
pub const LOCK_RETRIES: u32 = 4;

/// The pause before retry `n` (1-based): 2, 4, 8, 16 s.
fn pause(n: u32) -> Duration {
    Duration::from_secs(1 << n.min(5))
}

/// Runs the migrations of `migrator` on the database of `opts`, as described above.
pub async fn run(
    opts: &PgConnectOptions,
    target: &str,
    migrator: &Migrator,
) -> Result<(), StoreError> {
    let opts = opts.clone().options([("lock_timeout", LOCK_TIMEOUT)]);
    let mut attempt = 0;
    loop {
        let mut conn = startup::probe(&opts, target).await?;
        let result = migrator.run(&mut conn).await;
        let Err(e) = result else {
            let _ = sqlx::Connection::close(conn).await;
            return Ok(());
        };
        if !is_lock_timeout(&e) {
            return Err(StoreError::Migrate(e));
        }
        let what = waited_for(&e, migrator);
        if let Some(invalid) = invalid_indexes(&mut conn).await {
            return Err(StoreError::Refused(format!(
                "{what} gave up on a lock after {LOCK_TIMEOUT} and left the invalid index(es) {invalid}: drop them (`DROP INDEX CONCURRENTLY <name>`) and run `abha-bulk migrate` again"
            )));
        }
        let _ = sqlx::Connection::close(conn).await;
        attempt += 1;
        if attempt > LOCK_RETRIES {
            return Err(StoreError::Refused(format!(
                "{what} gave up on a lock {} times (lock_timeout {LOCK_TIMEOUT}): a long transaction holds its table; find it in pg_stat_activity, then run `abha-bulk migrate` again",
                attempt
            )));
        }
        let wait = pause(attempt);
        tracing::warn!(
            migration = %what,
            attempt,
            wait_secs = wait.as_secs(),
            "a migration gave up waiting for a lock (lock_timeout {LOCK_TIMEOUT}); trying again"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Postgres gave up waiting for a lock (`55P03 lock_not_available`).
fn is_lock_timeout(e: &MigrateError) -> bool {
    let cause = match e {
        MigrateError::Execute(c) | MigrateError::ExecuteMigration(c, _) => c,
        _ => return false,
    };
    cause
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

/// `migration 0017 (outbox recheck)`, or the migrator's own lock (another migrate running).
fn waited_for(e: &MigrateError, migrator: &Migrator) -> String {
    match e {
        MigrateError::ExecuteMigration(_, version) => {
            let name = migrator
                .iter()
                .find(|m| m.version == *version)
                .map(|m| m.description.to_string())
                .unwrap_or_default();
            format!("migration {version:04} ({name})")
        }
        _ => "the migration lock (is another `abha-bulk migrate` running?)".into(),
    }
}

/// Indexes left invalid (a `CREATE INDEX CONCURRENTLY` that failed part-way): a retry with
/// `IF NOT EXISTS` would skip them and record the migration as done.
async fn invalid_indexes(conn: &mut sqlx::PgConnection) -> Option<String> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND n.nspname = current_schema()",
    )
    .fetch_all(conn)
    .await
    .unwrap_or_default();
    (!names.is_empty()).then(|| names.join(", "))
}

#[cfg(test)]
mod lint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_pause_longer_each_time() {
        let waits: Vec<u64> = (1..=LOCK_RETRIES).map(|n| pause(n).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 16]);
    }
}
