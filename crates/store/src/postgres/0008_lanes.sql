-- tollgate store, PostgreSQL, migration 8: priority lanes and the upstream's remaining capacity.
-- A key's default lane applies to its requests that send no x-tollgate-priority header.
ALTER TABLE keys ADD COLUMN lane TEXT NOT NULL DEFAULT 'interactive'
    CHECK (lane IN ('interactive', 'batch'));
-- Each usage record's lane (NULL: refused before the lane was known, or written before
-- this migration) and the upstream's x-ratelimit-remaining-{requests,tokens} seen on
-- its answer (NULL: the upstream sent none).
ALTER TABLE usage ADD COLUMN lane TEXT CHECK (lane IS NULL OR lane IN ('interactive', 'batch'));
ALTER TABLE usage ADD COLUMN upstream_remaining_requests BIGINT
    CHECK (upstream_remaining_requests IS NULL OR upstream_remaining_requests >= 0);
ALTER TABLE usage ADD COLUMN upstream_remaining_tokens BIGINT
    CHECK (upstream_remaining_tokens IS NULL OR upstream_remaining_tokens >= 0);
