-- tollgate store, PostgreSQL, migration 3: projects' environments and provider
-- credentials. Credentials are secret REFERENCES (`env:NAME`, `file:PATH`, `exec:CMD`),
-- never values.
ALTER TABLE projects ADD COLUMN upstream_api_key TEXT;

CREATE TABLE project_envs (
    project          TEXT NOT NULL REFERENCES projects(name),
    env              TEXT NOT NULL,
    upstream_api_key TEXT,
    created_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (project, env)
);
