-- tollgate store, PostgreSQL, migration 13: drop the index on usage.served_by. Every call that
-- reached an upstream records who served it, so the index grew by one entry per usage
-- row, and no query reads through it (reports group whole periods, found through
-- usage_created and usage_key). One fewer B-tree to write per record.
DROP INDEX IF EXISTS usage_served_by;
