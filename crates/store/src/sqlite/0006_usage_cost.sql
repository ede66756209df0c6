-- tollgate store, SQLite, migration 6: what each call cost, in nano-USD (10^-9 USD,
-- exact integers), priced from the model catalog when the record is written. NULL: the
-- model is not in the catalog (or the record predates this migration) — unknown, not 0.
ALTER TABLE usage ADD COLUMN cost_nano_usd INTEGER CHECK (cost_nano_usd IS NULL OR cost_nano_usd >= 0);
