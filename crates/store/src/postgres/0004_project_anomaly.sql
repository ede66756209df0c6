-- tollgate store, PostgreSQL, migration 4: a project's own anomaly auto-suspend choice.
-- NULL: follow the gateway's `anomaly.auto_suspend`; false / true: off / on for this
-- project.
ALTER TABLE projects ADD COLUMN anomaly_auto_suspend BOOLEAN;
