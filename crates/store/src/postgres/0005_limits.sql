-- tollgate store, PostgreSQL, migration 5: rate-limit rules (requests and tokens per
-- minute) and output caps. A rule names a project and optionally an environment, a key and a model;
-- '' stands for "any" so the primary key identifies a rule (NULLs are never equal).
CREATE TABLE rate_limits (
    project       TEXT NOT NULL REFERENCES projects(name),
    env           TEXT NOT NULL DEFAULT '',
    key_id        TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL DEFAULT '',
    rpm           BIGINT CHECK (rpm IS NULL OR rpm > 0),
    tpm           BIGINT CHECK (tpm IS NULL OR tpm > 0),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (project, env, key_id, model),
    CHECK (rpm IS NOT NULL OR tpm IS NOT NULL)
);

-- Output caps per project ('' key_id) or per key: the largest output a request may ask
-- for (clamped or refused), a default when it asks for none, a temperature range.
CREATE TABLE output_caps (
    project               TEXT NOT NULL REFERENCES projects(name),
    key_id                TEXT NOT NULL DEFAULT '',
    max_output_tokens     BIGINT CHECK (max_output_tokens IS NULL OR max_output_tokens > 0),
    over_cap              TEXT NOT NULL DEFAULT 'clamp' CHECK (over_cap IN ('clamp', 'refuse')),
    default_output_tokens BIGINT CHECK (default_output_tokens IS NULL OR default_output_tokens > 0),
    temperature_min       DOUBLE PRECISION,
    temperature_max       DOUBLE PRECISION,
    created_at_ms         BIGINT NOT NULL,
    updated_at_ms         BIGINT NOT NULL,
    PRIMARY KEY (project, key_id)
);

-- Bumped with every rule or cap change; servers poll it and reload both.
INSERT INTO meta (name, value) VALUES ('limits_version', 0);
