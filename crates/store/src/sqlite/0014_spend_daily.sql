-- tollgate store, SQLite, migration 14: the priced spend of each project, environment
-- and key per UTC day, kept by the usage writer in the same transaction as the usage
-- rows. Budgets read a day's and a month's spend from here (at most 31 rows per key)
-- instead of summing the month's usage rows on every re-sync, which grew with the
-- month and stalled the writer behind it. Filled from the usage rows already written.
CREATE TABLE usage_spend_daily (
    project TEXT NOT NULL,
    env TEXT NOT NULL,
    key_id TEXT NOT NULL,
    day_start_ms INTEGER NOT NULL,
    cost_usd_nanos INTEGER NOT NULL,
    PRIMARY KEY (project, env, key_id, day_start_ms)
);
CREATE INDEX usage_spend_daily_day ON usage_spend_daily (day_start_ms);
INSERT INTO usage_spend_daily (project, env, key_id, day_start_ms, cost_usd_nanos)
SELECT COALESCE(project, ''), COALESCE(env, ''), COALESCE(key_id, ''),
       (created_at_ms / 86400000) * 86400000, SUM(cost_usd_nanos)
FROM usage
WHERE cost_usd_nanos > 0
GROUP BY COALESCE(project, ''), COALESCE(env, ''), COALESCE(key_id, ''),
         (created_at_ms / 86400000) * 86400000;
