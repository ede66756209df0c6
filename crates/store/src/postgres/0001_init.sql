-- tollgate store, PostgreSQL, migration 1: projects, keys, usage, and the keys change counter.
-- Same tables and meaning as the SQLite migration; timestamps are unix milliseconds.
CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,
    project         TEXT NOT NULL REFERENCES projects(name),
    env             TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    name            TEXT,
    prefix          TEXT NOT NULL,
    digest_hex      TEXT NOT NULL UNIQUE,
    created_at_ms   BIGINT NOT NULL,
    last_used_at_ms BIGINT,
    revoked_at_ms   BIGINT,
    revoke_reason   TEXT
);

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (name, value) VALUES ('keys_version', 0);

CREATE TABLE usage (
    id                  BIGSERIAL PRIMARY KEY,
    request_id          TEXT NOT NULL UNIQUE,
    upstream_request_id TEXT,
    response_id         TEXT,
    key_id              TEXT,
    project             TEXT,
    env                 TEXT,
    endpoint            TEXT NOT NULL,
    model_requested     TEXT,
    model_served        TEXT,
    status              INTEGER NOT NULL,
    error_code          TEXT,
    input_tokens        BIGINT NOT NULL DEFAULT 0,
    output_tokens       BIGINT NOT NULL DEFAULT 0,
    total_tokens        BIGINT NOT NULL DEFAULT 0,
    cached_tokens       BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens    BIGINT NOT NULL DEFAULT 0,
    streamed            BOOLEAN NOT NULL DEFAULT FALSE,
    client_disconnected BOOLEAN NOT NULL DEFAULT FALSE,
    attempts            INTEGER NOT NULL DEFAULT 0,
    ttfb_ms             BIGINT,
    latency_ms          BIGINT NOT NULL DEFAULT 0,
    created_at_ms       BIGINT NOT NULL
);
CREATE INDEX usage_created ON usage (created_at_ms);
CREATE INDEX usage_key ON usage (key_id, created_at_ms);
