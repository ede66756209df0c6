-- tollgate store, SQLite, migration 11: what the response cache did for each call —
-- 'hit' (answered from the cache: no upstream call, no tokens, no cost), 'miss' (looked
-- up, the upstream answered), 'refresh' (x-tollgate-cache: refresh replaced the entry),
-- 'stale' (the upstream failed and an older cached answer was served). NULL: the cache
-- was not used (or the record predates this migration).
ALTER TABLE usage ADD COLUMN cache TEXT
    CHECK (cache IS NULL OR cache IN ('hit', 'miss', 'refresh', 'stale'));
