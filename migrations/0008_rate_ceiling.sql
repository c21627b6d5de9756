-- AIMD remembers the rate at which ABDM last throttled: for a while after it, recovery stops
-- just below that rate instead of probing past ABDM's limit again and again.
ALTER TABLE rate_budget ADD COLUMN ceiling double precision;
