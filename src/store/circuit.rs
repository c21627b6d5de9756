//! The circuit breaker's shared state: one `abdm_circuit` row per ABDM client, so that every
//! worker replica stops taking jobs when one of them sees ABDM down, and only one of them
//! probes per interval.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{QueryContext, Store, StoreError};

/// The breaker as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitRow {
    /// Open: no job may start.
    pub open: bool,
    /// Why it opened (no identifiers: a code and the setting to check).
    pub reason: Option<String>,
    /// When it opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// When the next probe is due (while open): a job postponed by an open breaker comes back
    /// around then.
    pub next_probe_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The breaker of `client` (closed when it was never opened).
    pub async fn circuit(&self, client: &str) -> Result<CircuitRow, StoreError> {
        let row = sqlx::query(
            "SELECT state, reason, opened_at, next_probe_at FROM abdm_circuit WHERE client = $1",
        )
        .bind(client)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading the ABDM circuit breaker")?;
        Ok(match row {
            None => CircuitRow {
                open: false,
                reason: None,
                opened_at: None,
                next_probe_at: None,
            },
            Some(r) => CircuitRow {
                open: r.get::<String, _>(0) == "open",
                reason: r.get(1),
                opened_at: r.get(2),
                next_probe_at: r.get(3),
            },
        })
    }

    /// Opens the breaker unless it is open already; returns whether this call opened it (the
    /// replica that did logs the one ERROR of the change). The first probe is due after
    /// `first_probe_secs`.
    pub async fn open_circuit(
        &self,
        client: &str,
        reason: &str,
        first_probe_secs: f64,
    ) -> Result<bool, StoreError> {
        let opened = sqlx::query(
            "INSERT INTO abdm_circuit (client, state, reason, opened_at, next_probe_at, probe_interval, changed_at)
             VALUES ($1, 'open', $2, now(), now() + make_interval(secs => $3), $3, now())
             ON CONFLICT (client) DO UPDATE
                SET state = 'open', reason = EXCLUDED.reason, opened_at = now(),
                    next_probe_at = EXCLUDED.next_probe_at, probe_interval = EXCLUDED.probe_interval,
                    changed_at = now()
                WHERE abdm_circuit.state = 'closed'",
        )
        .bind(client)
        .bind(reason)
        .bind(first_probe_secs)
        .execute(&self.pool)
        .await
        .ctx("opening the ABDM circuit breaker")?;
        Ok(opened.rows_affected() == 1)
    }

    /// Takes the next probe of an open breaker if it is due; returns whether this replica
    /// probes now. The interval after this probe doubles up to `max_interval_secs`.
    pub async fn take_probe(
        &self,
        client: &str,
        max_interval_secs: f64,
    ) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "UPDATE abdm_circuit
             SET probe_interval = LEAST(probe_interval * 2, $2),
                 next_probe_at = now() + make_interval(secs => LEAST(probe_interval * 2, $2))
             WHERE client = $1 AND state = 'open' AND next_probe_at <= now()",
        )
        .bind(client)
        .bind(max_interval_secs)
        .execute(&self.pool)
        .await
        .ctx("taking an ABDM probe")?;
        Ok(taken.rows_affected() == 1)
    }

    /// Records a failed probe's reason (the breaker stays open).
    pub async fn probe_failed(&self, client: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE abdm_circuit SET reason = $2 WHERE client = $1 AND state = 'open'")
            .bind(client)
            .bind(reason)
            .execute(&self.pool)
            .await
            .ctx("recording a failed ABDM probe")?;
        Ok(())
    }

    /// Closes the breaker; returns whether this call closed it.
    pub async fn close_circuit(&self, client: &str) -> Result<bool, StoreError> {
        let closed = sqlx::query(
            "UPDATE abdm_circuit SET state = 'closed', changed_at = now(), probe_interval = 1
             WHERE client = $1 AND state = 'open'",
        )
        .bind(client)
        .execute(&self.pool)
        .await
        .ctx("closing the ABDM circuit breaker")?;
        Ok(closed.rows_affected() == 1)
    }
}
