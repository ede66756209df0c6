-- tollgate store, SQLite, migration 6: what each call cost, in nano-USD (10^-9 USD,
-- exact integers), priced from the model catalog when the record is written. NULL: the
-- model is not in the catalog (or the record predates this migration) — unknown, not 0.
ALTER TABLE usage ADD COLUMN cost_usd_nanos INTEGER CHECK (cost_usd_nanos IS NULL OR cost_usd_nanos >= 0);
