-- tollgate store, SQLite, migration 10: which fallback target served each call.
-- served_by: `<upstream>/<model>` of the target whose answer was relayed, or `offline`
-- for a configured offline answer (NULL: refused before any target, or written before
-- this migration). fallbacks: how many targets failed or were skipped (circuit open)
-- before it.
ALTER TABLE usage ADD COLUMN served_by TEXT;
ALTER TABLE usage ADD COLUMN fallbacks INTEGER NOT NULL DEFAULT 0 CHECK (fallbacks >= 0);
CREATE INDEX usage_served_by ON usage (served_by) WHERE served_by IS NOT NULL;
