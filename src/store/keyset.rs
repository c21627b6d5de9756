//! The fleet's key set: which `pii.key` is the newest any process started with (table
//! `pii_keys`), and whether this process is *stale*: its `pii.key` and `pii.previous_keys`
//! do not include that newest key, so rows written by the rest of the fleet do not decrypt
//! here.
//!
//! Why a stale process stops taking work instead of carrying on: during a rolling deploy of a
//! new key, pods still on the old key would mark every row a new pod wrote as a permanent
//! failure (`invalid_stored_job`), and their housekeeping would rewrite what it cannot read.
//! So a stale process stops consuming, hands back what it has not started, answers `/readyz`
//! with 503, skips its housekeeping writes, and refuses to start again until its keys are
//! brought up to date (docs/operations.md, "Rotating pii.key").
//!
//! `pii_key_check` (read by the previous release's startup check) keeps its meaning: the key
//! every stored value is under, replaced only when `rekey` completes.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use tokio_util::sync::CancellationToken;

use super::{QueryContext, Store, StoreError, Vault};
use crate::telemetry::metrics;

/// How often a running process compares its keys with the newest recorded key (besides at
/// start, and at once when a stored value names a key it does not hold).
pub const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// Whether this process is stale, and why. Shared by every clone of a [`Store`]; once stale,
/// always stale (only a restart with up-to-date keys makes it fresh).
#[derive(Debug, Default)]
pub struct KeyState {
    stale: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl KeyState {
    /// True once this process's keys are older than the newest recorded key.
    pub fn is_stale(&self) -> bool {
        self.stale.is_cancelled()
    }

    /// Why it is stale (for `/readyz`): names the setting and key ids, never key material.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().expect("not poisoned").clone()
    }

    /// Cancelled when the process goes stale: the worker's consume loop stops on it.
    pub fn stale_token(&self) -> CancellationToken {
        self.stale.clone()
    }

    /// Marks the process stale (once: one ERROR line, the gauge set to 1).
    pub fn mark_stale(&self, reason: String) {
        let mut r = self.reason.lock().expect("not poisoned");
        if r.is_some() {
            return;
        }
        tracing::error!(
            reason = %reason,
            "configuration key `pii.key` is stale: this process stops taking work (set pii.key \
             to the fleet's newest key, the old one in pii.previous_keys, and restart)"
        );
        metrics::PII_KEY_STALE.set(1.0);
        *r = Some(reason);
        self.stale.cancel();
    }
}

/// The newest recorded key: `(key_id, check_value)`.
async fn newest<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    sqlx::query_as("SELECT key_id, check_value FROM pii_keys ORDER BY seq DESC LIMIT 1")
        .fetch_optional(db)
        .await
        .ctx("reading the fleet's newest key")
}

fn stale_reason(vault: &Vault, newest_key_id: &str) -> String {
    format!(
        "pii.key (key id {}) and pii.previous_keys do not include the newest key recorded in the database (key id {newest_key_id})",
        vault.key_id()
    )
}

/// Inserts `pii.key` into `pii_keys` (nothing when it is recorded already).
async fn record(
    conn: &mut PgConnection,
    vault: &Vault,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO pii_keys (key_id, check_value) VALUES ($1, $2)
         ON CONFLICT (check_value) DO NOTHING",
    )
    .bind(vault.key_id())
    .bind(vault.check_value())
    .execute(conn)
    .await
}

/// At start, after `pii_key_check` accepted the key: records `pii.key` as the newest key when
/// a rotation starts (it is not recorded yet and the newest recorded key is one of
/// `pii.previous_keys`), or on a database that records none yet; refuses a stale key.
pub(super) async fn register(conn: &mut PgConnection, vault: &Vault) -> Result<(), StoreError> {
    match newest(&mut *conn).await? {
        Some((_, check)) if check == vault.check_value() => Ok(()),
        Some((_, check)) if vault.is_previous_check_value(&check) => {
            // Already recorded (an older entry) means a rollback to a key the fleet had: this
            // process still reads everything, and the newest entry stays as it is.
            let done = record(conn, vault).await.ctx("recording a new pii.key")?;
            if done.rows_affected() == 1 {
                tracing::warn!(
                    key_id = %vault.key_id(),
                    "pii.key recorded as the fleet's newest key: a process whose keys do not \
                     include it stops taking work; run `abha-bulk rekey` once every process has it"
                );
            }
            Ok(())
        }
        Some((newest_key_id, _)) => Err(StoreError::StaleKey {
            reason: stale_reason(vault, &newest_key_id),
        }),
        None => {
            record(conn, vault).await.ctx("recording pii.key")?;
            Ok(())
        }
    }
}

impl Store {
    /// True once this process's keys are older than the newest recorded key.
    pub fn key_stale(&self) -> bool {
        self.keys.is_stale()
    }

    /// Refuses a write of new identifiers while this process is stale: a row it encrypted and
    /// hashed under its old key would not dedupe against the fleet's rows (the lookup hashes
    /// differ), and once `rekey` has completed and the old key is retired nothing could read
    /// it. Called by every store method that writes identifiers (a batch, a chunk of jobs, a
    /// producer's job, a webhook secret); the API answers 503, so the client retries and its
    /// next request reaches a replica with the fleet's key.
    pub fn refuse_if_stale(&self) -> Result<(), StoreError> {
        // A reason is recorded exactly when the process went stale (`KeyState::mark_stale`).
        match self.keys.reason() {
            Some(reason) => Err(StoreError::StaleKey { reason }),
            None => Ok(()),
        }
    }

    /// Compares this process's keys with the newest recorded key; marks the process stale
    /// when they do not include it. Returns whether it is stale.
    pub async fn check_key_set(&self) -> Result<bool, StoreError> {
        if self.keys.is_stale() {
            return Ok(true);
        }
        if let Some((key_id, check)) = newest(&self.pool).await?
            && !self.vault.holds_check_value(&check)
        {
            self.keys.mark_stale(stale_reason(&self.vault, &key_id));
        }
        Ok(self.keys.is_stale())
    }

    /// Why the stored lookup hashes may be under two keys, if they may: a rotation started
    /// (`pii_keys` records a key) and `rekey` has not completed it (`pii_key_check` still
    /// names another key), or this process's `pii.key` is not the newest. A reconciliation
    /// then refuses to start: it matches roster rows to the service's links by hash, and a
    /// link still hashed under the old key would look like one outside the roster (an
    /// `--apply` would de-link a rostered person).
    pub async fn rotation_unfinished(&self) -> Result<Option<String>, StoreError> {
        if !self.is_newest_key().await? {
            return Ok(Some(
                "pii.key is not the fleet's newest key (table pii_keys)".into(),
            ));
        }
        let check: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT check_value FROM pii_key_check WHERE singleton")
                .fetch_optional(&self.pool)
                .await
                .ctx("reading the key check value")?;
        Ok(check.filter(|c| *c != self.vault.check_value()).map(|_| {
            format!(
                "the stored values are not all under pii.key (key id {}) yet: run `abha-bulk rekey` to completion",
                self.vault.key_id()
            )
        }))
    }

    /// True when `pii.key` is the newest recorded key (what `rekey` must run with).
    pub async fn is_newest_key(&self) -> Result<bool, StoreError> {
        Ok(newest(&self.pool)
            .await?
            .is_none_or(|(_, check)| check == self.vault.check_value()))
    }

    /// A stored value names a key this process does not hold: a newer key, so this process
    /// is stale at once (no need to wait for the next [`KEY_CHECK_INTERVAL`]).
    pub fn saw_unknown_key(&self, key_id: &str) {
        self.keys.mark_stale(format!(
            "a stored value is encrypted with key id {key_id}, which neither pii.key (key id {}) nor pii.previous_keys holds",
            self.vault.key_id()
        ));
    }

    /// Checks the key set every [`KEY_CHECK_INTERVAL`] until `stop` (errors are logged and
    /// tried again next time: an unreachable database is not a reason to stop).
    pub async fn watch_key_set(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            match self.check_key_set().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "checking the fleet's key set failed"),
            }
            crate::relay::sleep_or_stop(KEY_CHECK_INTERVAL, &stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn going_stale_logs_one_error_naming_the_setting_and_stays_stale() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let state = KeyState::default();
        let token = state.stale_token();
        let vault = Vault::from_bytes(&[7; 32]);
        tracing::subscriber::with_default(subscriber, || {
            state.mark_stale(stale_reason(&vault, "0badc0de"));
            state.mark_stale("a second reason".into());
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{text}");
        assert!(
            errors[0].contains("`pii.key`") && errors[0].contains("0badc0de"),
            "{text}"
        );
        assert!(state.is_stale() && token.is_cancelled());
        assert!(state.reason().unwrap().contains(&vault.key_id()));
        assert_eq!(metrics::PII_KEY_STALE.get(), 1.0);
    }
}
