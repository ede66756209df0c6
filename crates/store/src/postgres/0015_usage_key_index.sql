-- tollgate store, PostgreSQL, migration 15: drop the index on usage (key_id, created_at_ms).
-- No query reads through it: reports pick a period by created_at_ms (usage_created)
-- and group it whole, budgets read usage_spend_daily, and a batch written again is
-- checked by request_id. Each record went into it at its own key's place, so with many
-- keys every batch dirtied an index page per key it touched.
DROP INDEX IF EXISTS usage_key;
