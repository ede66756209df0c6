-- tollgate store, PostgreSQL, migration 2: key lifecycle (expiry, suspension,
-- rotation), per-project maximum key age, and the append-only audit log.
ALTER TABLE keys ADD COLUMN expires_at_ms BIGINT;
-- Keys made before expiry existed get the default lifetime: created + 90 days.
UPDATE keys SET expires_at_ms = created_at_ms + 7776000000;
ALTER TABLE keys ALTER COLUMN expires_at_ms SET NOT NULL;
ALTER TABLE keys ADD COLUMN suspended_at_ms BIGINT;
ALTER TABLE keys ADD COLUMN suspend_reason TEXT;
ALTER TABLE keys ADD COLUMN rotated_to TEXT;
ALTER TABLE keys ADD COLUMN retire_at_ms BIGINT;

ALTER TABLE projects ADD COLUMN max_key_age_ms BIGINT;

CREATE TABLE audit (
    id     BIGSERIAL PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms);

-- Append-only: the database itself refuses to change or remove an entry.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
