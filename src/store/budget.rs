//! The global rate budget: a token bucket per ABDM client in Postgres, shared by every worker
//! replica, and the shared AIMD state. Workers lease small blocks of tokens and spend them
//! locally; a throttling answer lowers `rate` for every replica at once.

use std::time::Duration;

use sqlx::Row;

use super::{QueryContext, Store, StoreError};

/// What a token request found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Take {
    /// Whole tokens taken (0 to the number asked for).
    pub taken: f64,
    /// The shared effective rate now (calls/s, all replicas together).
    pub rate: f64,
    /// When none was taken: how long until `min` tokens (or the end of a Retry-After pause).
    pub wait: Duration,
    /// Tokens the bucket held before this request (refill included): how far it was from
    /// full, which bounds how long leased tokens may wait to be spent (`ratelimit::Leased`).
    pub avail: f64,
}

/// How the shared rate reacts (the `[worker]` `aimd_*` settings; `config/default.toml` says
/// why each value). `Default` is the same tuning, for limiters built without settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    /// The rate is multiplied by this on a throttling answer (at most once a second).
    pub decrease_factor: f64,
    /// Lowest rate, as a fraction of the configured one.
    pub min_fraction: f64,
    /// Each increase adds this fraction of the configured rate.
    pub increase_fraction: f64,
    /// Increases come at most this often.
    pub increase_every: Duration,
    /// ... and only when no throttling answer came for this long.
    pub quiet: Duration,
    /// How close to the last throttled rate recovery may climb while it is remembered.
    pub ceiling_margin: f64,
    /// For this long after a throttling answer, recovery stops at `ceiling_margin` of the
    /// rate that was throttled (ABDM's limit lies below it); afterwards it probes again.
    pub ceiling_memory: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Self {
            decrease_factor: 0.5,
            min_fraction: 0.05,
            increase_fraction: 0.05,
            increase_every: Duration::from_secs(2),
            quiet: Duration::from_secs(4),
            ceiling_margin: 0.9,
            ceiling_memory: Duration::from_secs(20),
        }
    }
}

impl Store {
    /// Creates `client`'s bucket (full) when missing.
    pub async fn ensure_budget(&self, client: &str, capacity: f64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rate_budget (client, tokens, updated_at) VALUES ($1, $2, clock_timestamp())
             ON CONFLICT (client) DO NOTHING",
        )
        .bind(client)
        .bind(capacity)
        .execute(&self.pool)
        .await
        .ctx("creating the rate budget")?;
        Ok(())
    }

    /// Takes between `min` and `max` whole tokens from `client`'s bucket (as many as it holds,
    /// up to `max`) unless a Retry-After pause is running. The bucket refills at the shared
    /// effective rate (at most `configured`) up to `capacity`. One statement, one round trip.
    ///
    /// Why a range and not exactly one block: a replica that waited for a whole block came
    /// back a little after the bucket held it, and with a bucket the size of a block the
    /// refill in between was lost (measured: 2-4 replicas at ABDM's limit ran 12-15 % over
    /// rows ÷ rate). Asking again at `min` and taking what is there leaves the rest of the
    /// bucket as slack for a late wake-up; `min` well above one keeps the round trips few.
    ///
    /// Above `min` it takes no more than `capacity − avail + 1`: the tokens beyond the first
    /// are good only for `(capacity − avail) / rate` (`ratelimit::Leased`), which is the time a
    /// replica calling at the rate needs to spend that many. Taking a whole block from a fuller
    /// bucket let most of it expire (measured: a 100/s fleet beside 5/s of side work fell from
    /// 97 to 92.5 calls/s).
    pub async fn take_tokens(
        &self,
        client: &str,
        (min, max): (f64, f64),
        (ceiling, own): (Option<f64>, f64),
        capacity: f64,
    ) -> Result<Take, StoreError> {
        // `ceiling`: the fleet's configured rate (a worker), recorded as `fleet_rate`; `None`
        // for side work, which refills at the recorded fleet rate (its own `own` only before
        // any worker ran) and never changes it.
        let row = sqlx::query(
            "WITH base AS (
                SELECT client, tokens, updated_at, paused_until, rate AS r0,
                       COALESCE($3::float8, fleet_rate, rate, $6) AS cfg
                FROM rate_budget WHERE client = $1 FOR UPDATE),
             cur AS (
                SELECT client,
                       LEAST(COALESCE(r0, cfg), cfg) AS rate,
                       LEAST($4, tokens + LEAST(COALESCE(r0, cfg), cfg)
                             * GREATEST(EXTRACT(EPOCH FROM (clock_timestamp() - updated_at))::float8, 0)) AS avail,
                       GREATEST(COALESCE(EXTRACT(EPOCH FROM (paused_until - clock_timestamp()))::float8, 0), 0) AS paused
                FROM base),
             want AS (
                SELECT client, rate, avail, paused,
                       CASE WHEN paused = 0 AND floor(avail) >= $5
                            THEN LEAST($2, floor(avail), GREATEST($5, floor($4 - avail) + 1)) ELSE 0 END AS n
                FROM cur),
             upd AS (
                UPDATE rate_budget b SET tokens = want.avail - want.n, updated_at = clock_timestamp(),
                       rate = want.rate, fleet_rate = COALESCE($3::float8, b.fleet_rate)
                FROM want WHERE b.client = want.client AND want.n >= 1
                RETURNING 1)
             SELECT want.rate, want.avail, want.paused,
                    CASE WHEN EXISTS (SELECT 1 FROM upd) THEN want.n ELSE 0 END FROM want",
        )
        .bind(client)
        .bind(max.max(1.0))
        .bind(ceiling)
        .bind(capacity)
        .bind(min.clamp(1.0, max.max(1.0)))
        .bind(own)
        .fetch_optional(&self.pool)
        .await
        .ctx("taking rate tokens")?;
        let Some(r) = row else {
            self.ensure_budget(client, capacity).await?;
            return Ok(Take {
                taken: 0.0,
                rate: ceiling.unwrap_or(own),
                wait: Duration::ZERO,
                avail: capacity,
            });
        };
        let (rate, avail, paused, taken): (f64, f64, f64, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let wait = if taken >= 1.0 {
            Duration::ZERO
        } else if paused > 0.0 {
            Duration::from_secs_f64(paused)
        } else {
            Duration::from_secs_f64(((min.max(1.0) - avail).max(0.0) / rate.max(1e-3)).min(10.0))
        };
        Ok(Take {
            taken,
            rate,
            wait,
            avail,
        })
    }

    /// A throttling answer to a call sent `gate` ago: lowers the shared rate unless it was
    /// lowered since (answers to calls sent at the old rate count once; a call sent after the
    /// decrease and still throttled lowers it again at once), empties the bucket, and starts a
    /// shared pause of `retry_after`. Lowering goes back to the last rate that held
    /// (`good_rate`, set by each recovery step) when that is below the throttled rate: ABDM's
    /// limit lies between the two, and halving would waste half of it until recovery climbs
    /// back. Without such a rate (or when the rate that held is throttled itself) it multiplies
    /// by the AIMD factor and forgets the good rate, unless the rate sits near a known limit:
    /// the last decrease is older than `quiet` (the rate ran that long before ABDM's burst ran
    /// out, so the excess is small) and the throttling before it younger than `ceiling_memory`.
    /// Then it steps down by `ceiling_margin` instead: halving there cost an over-configured
    /// run 12 s at half the limit (+7 % wall time). A storm (ABDM's limit falls) throttles
    /// again within a second or two of each decrease, so it still halves. Returns the rate now
    /// and whether this call lowered it.
    pub async fn throttled(
        &self,
        client: &str,
        configured: Option<f64>,
        aimd: &Aimd,
        retry_after: Option<Duration>,
        gate: Duration,
    ) -> Result<(f64, bool), StoreError> {
        let row = sqlx::query(
            "WITH cur AS (
                SELECT client, COALESCE(rate, $2::float8, fleet_rate) AS rate,
                       COALESCE($2::float8, fleet_rate, rate) AS cfg,
                       (last_decrease_at IS NULL OR last_decrease_at < clock_timestamp() - make_interval(secs => $6)) AS may,
                       COALESCE(last_decrease_at < clock_timestamp() - make_interval(secs => $8)
                                AND last_throttle_at > clock_timestamp() - make_interval(secs => $9), false) AS near
                FROM rate_budget WHERE client = $1 FOR UPDATE)
             UPDATE rate_budget b SET
                rate = CASE WHEN NOT cur.may THEN cur.rate
                            WHEN b.good_rate < cur.rate THEN GREATEST(b.good_rate, cur.rate * $3)
                            WHEN cur.near THEN GREATEST(cur.cfg * $4, cur.rate * $7)
                            ELSE GREATEST(cur.cfg * $4, cur.rate * $3) END,
                good_rate = CASE WHEN cur.may AND NOT (b.good_rate < cur.rate) THEN NULL ELSE b.good_rate END,
                tokens = CASE WHEN cur.may THEN 0 ELSE b.tokens END,
                updated_at = CASE WHEN cur.may THEN clock_timestamp() ELSE b.updated_at END,
                last_decrease_at = CASE WHEN cur.may THEN clock_timestamp() ELSE b.last_decrease_at END,
                ceiling = CASE WHEN cur.may THEN cur.rate ELSE b.ceiling END,
                last_throttle_at = clock_timestamp(),
                paused_until = CASE WHEN $5 > 0
                    THEN GREATEST(COALESCE(b.paused_until, clock_timestamp()), clock_timestamp() + make_interval(secs => $5))
                    ELSE b.paused_until END
             FROM cur WHERE b.client = cur.client
             RETURNING b.rate, cur.may",
        )
        .bind(client)
        .bind(configured)
        .bind(aimd.decrease_factor)
        .bind(aimd.min_fraction)
        .bind(retry_after.map_or(0.0, |d| d.as_secs_f64().min(300.0)))
        .bind(gate.as_secs_f64())
        .bind(aimd.ceiling_margin)
        .bind(aimd.quiet.as_secs_f64())
        .bind(aimd.ceiling_memory.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .ctx("lowering the shared rate")?;
        Ok(row.map_or((configured.unwrap_or(0.0), false), |r| (r.get(0), r.get(1))))
    }

    /// Additive recovery of the shared rate: one step when no throttling answer came for
    /// `quiet` and the last change is `increase_every` old (the rate it leaves held: it is
    /// remembered as `good_rate`), never above `ceiling_margin` of
    /// the last throttled rate while that is remembered (a step the ceiling holds back is no
    /// step). Any replica may call it; the
    /// conditions make one step per interval in all. Returns the rate when it rose.
    pub async fn recover_rate(
        &self,
        client: &str,
        configured: f64,
        aimd: &Aimd,
    ) -> Result<Option<f64>, StoreError> {
        let row = sqlx::query(
            "WITH cur AS (
                SELECT client, COALESCE(rate, $2) AS rate,
                       LEAST($2, COALESCE(rate, $2) + $2 * $3,
                             CASE WHEN ceiling IS NOT NULL
                                       AND last_throttle_at > clock_timestamp() - make_interval(secs => $6)
                                  THEN ceiling * $7 ELSE $2 END) AS target
                FROM rate_budget
                WHERE client = $1
                  AND (last_throttle_at IS NULL OR last_throttle_at < clock_timestamp() - make_interval(secs => $4))
                  AND GREATEST(COALESCE(last_increase_at, '-infinity'), COALESCE(last_decrease_at, '-infinity'))
                      < clock_timestamp() - make_interval(secs => $5)
                FOR UPDATE)
             UPDATE rate_budget b SET rate = cur.target, good_rate = cur.rate, last_increase_at = clock_timestamp()
             FROM cur WHERE b.client = cur.client AND cur.target > cur.rate
             RETURNING b.rate",
        )
        .bind(client)
        .bind(configured)
        .bind(aimd.increase_fraction)
        .bind(aimd.quiet.as_secs_f64())
        .bind(aimd.increase_every.as_secs_f64())
        .bind(aimd.ceiling_memory.as_secs_f64())
        .bind(aimd.ceiling_margin)
        .fetch_optional(&self.pool)
        .await
        .ctx("raising the shared rate")?;
        Ok(row.map(|r| r.get::<f64, _>(0)))
    }
}
