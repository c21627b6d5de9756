//! The global rate budget: a token bucket per ABDM client in Postgres, shared by every worker
//! replica. Workers lease small blocks of tokens and spend them locally.

use super::{QueryContext, Store, StoreError};

impl Store {
    /// Takes `n` tokens from `client`'s bucket (refilled at `rate`/s up to `capacity`) if it
    /// holds that many; returns whether it did.
    pub async fn take_tokens(
        &self,
        client: &str,
        n: f64,
        rate: f64,
        capacity: f64,
    ) -> Result<bool, StoreError> {
        sqlx::query(
            "INSERT INTO rate_budget (client, tokens, updated_at) VALUES ($1, $2, clock_timestamp())
             ON CONFLICT (client) DO NOTHING",
        )
        .bind(client)
        .bind(capacity)
        .execute(&self.pool)
        .await
        .ctx("creating the rate budget")?;
        let taken = sqlx::query(
            "UPDATE rate_budget
             SET tokens = LEAST($4, tokens + $3 * EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8) - $2,
                 updated_at = clock_timestamp()
             WHERE client = $1
               AND LEAST($4, tokens + $3 * EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8) >= $2",
        )
        .bind(client)
        .bind(n)
        .bind(rate)
        .bind(capacity)
        .execute(&self.pool)
        .await
        .ctx("taking rate tokens")?;
        Ok(taken.rows_affected() == 1)
    }
}
