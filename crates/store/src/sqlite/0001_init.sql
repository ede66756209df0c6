-- tollgate store, SQLite, migration 1: projects, keys, usage, and the keys change counter.
CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,
    project         TEXT NOT NULL REFERENCES projects(name),
    env             TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    name            TEXT,
    prefix          TEXT NOT NULL,
    digest_hex      TEXT NOT NULL UNIQUE,
    created_at_ms   INTEGER NOT NULL,
    last_used_at_ms INTEGER,
    revoked_at_ms   INTEGER,
    revoke_reason   TEXT
);

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (name, value) VALUES ('keys_version', 0);

CREATE TABLE usage (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
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
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    total_tokens        INTEGER NOT NULL DEFAULT 0,
    cached_tokens       INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens    INTEGER NOT NULL DEFAULT 0,
    streamed            INTEGER NOT NULL DEFAULT 0,
    client_disconnected INTEGER NOT NULL DEFAULT 0,
    attempts            INTEGER NOT NULL DEFAULT 0,
    ttfb_ms             INTEGER,
    latency_ms          INTEGER NOT NULL DEFAULT 0,
    created_at_ms       INTEGER NOT NULL
);
CREATE INDEX usage_created ON usage (created_at_ms);
CREATE INDEX usage_key ON usage (key_id, created_at_ms);
