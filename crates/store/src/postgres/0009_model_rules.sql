-- tollgate store, PostgreSQL, migration 9: per-project model aliases and per-environment
-- model access lists. Both change with limits_version (servers poll it and reload).

-- A project's alias: a request naming `alias` is sent to `model` (replaces a
-- configured alias of the same name for that project).
CREATE TABLE model_aliases (
    project       TEXT NOT NULL REFERENCES projects(name),
    alias         TEXT NOT NULL,
    model         TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (project, alias)
);

-- A project's allow- or deny-list of models, for one environment or ('' env) for all.
-- `models` is a JSON array of model ids (an id ending in '*' matches by prefix).
CREATE TABLE model_access (
    project       TEXT NOT NULL REFERENCES projects(name),
    env           TEXT NOT NULL DEFAULT '',
    kind          TEXT NOT NULL CHECK (kind IN ('allow', 'deny')),
    models        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (project, env, kind)
);
