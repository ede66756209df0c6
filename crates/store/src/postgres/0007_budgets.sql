-- tollgate store, PostgreSQL, migration 7: spend budgets in nano-USD per calendar day
-- and month (UTC), for a whole project, one of its environments or one of its keys
-- ('' stands for "any", so the primary key identifies a budget; never both an env and
-- a key). The *_notified_ms columns hold the start of the last period whose soft
-- threshold was announced: a conditional update claims the announcement, so it is
-- made once per period across replicas and restarts.
CREATE TABLE budgets (
    project            TEXT NOT NULL REFERENCES projects(name),
    env                TEXT NOT NULL DEFAULT '',
    key_id             TEXT NOT NULL DEFAULT '',
    daily_usd_nanos    BIGINT CHECK (daily_usd_nanos IS NULL OR daily_usd_nanos > 0),
    monthly_usd_nanos  BIGINT CHECK (monthly_usd_nanos IS NULL OR monthly_usd_nanos > 0),
    soft_percent       BIGINT NOT NULL DEFAULT 80 CHECK (soft_percent BETWEEN 1 AND 100),
    day_notified_ms    BIGINT,
    month_notified_ms  BIGINT,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (project, env, key_id),
    CHECK (daily_usd_nanos IS NOT NULL OR monthly_usd_nanos IS NOT NULL),
    CHECK (env = '' OR key_id = '')
);
