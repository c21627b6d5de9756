-- AIMD remembers the last rate that held (ran a quiet period without throttling). A throttling
-- answer after an increase goes back to it instead of halving, so a configured rate above
-- ABDM's limit settles just below the limit instead of sawing between it and half of it.
ALTER TABLE rate_budget ADD COLUMN good_rate double precision;
