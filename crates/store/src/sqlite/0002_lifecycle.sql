-- tollgate store, SQLite, migration 2: key lifecycle (expiry, suspension, rotation),
-- per-project maximum key age, and the append-only audit log.
ALTER TABLE keys ADD COLUMN expires_at_ms INTEGER NOT NULL DEFAULT 0;
-- Keys made before expiry existed get the default lifetime: created + 90 days.
UPDATE keys SET expires_at_ms = created_at_ms + 7776000000;
ALTER TABLE keys ADD COLUMN suspended_at_ms INTEGER;
ALTER TABLE keys ADD COLUMN suspend_reason TEXT;
ALTER TABLE keys ADD COLUMN rotated_to TEXT;
ALTER TABLE keys ADD COLUMN retire_at_ms INTEGER;

ALTER TABLE projects ADD COLUMN max_key_age_ms INTEGER;

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms);

-- Append-only: the database itself refuses to change or remove an entry.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
