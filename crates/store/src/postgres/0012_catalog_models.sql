-- tollgate store, PostgreSQL, migration 12: model catalog entries kept in the store
-- (`tollgate models set`), over the config's [[models]] and the built-in catalog.
-- They change with limits_version (servers poll it and reload the catalog).

-- Prices are USD per 1M tokens held as integer milli-USD per 1M tokens (0.075 -> 75);
-- NULL cached price: billed at the input price; NULL output price: no output tokens.
-- `capabilities` is a JSON array of names.
CREATE TABLE catalog_models (
    id                             TEXT PRIMARY KEY,
    family                         TEXT,
    context_window                 BIGINT,
    max_output_tokens              BIGINT,
    input_per_1m_milli_usd         BIGINT NOT NULL,
    cached_input_per_1m_milli_usd  BIGINT,
    output_per_1m_milli_usd        BIGINT,
    latency                        TEXT,
    capabilities                   TEXT NOT NULL,
    best_use                       TEXT,
    prices_checked                 TEXT,
    created_at_ms                  BIGINT NOT NULL,
    updated_at_ms                  BIGINT NOT NULL
);
