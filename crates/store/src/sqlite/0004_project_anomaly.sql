-- tollgate store, SQLite, migration 4: a project's own anomaly auto-suspend choice.
-- NULL: follow the gateway's `anomaly.auto_suspend`; 0 / 1: off / on for this project.
ALTER TABLE projects ADD COLUMN anomaly_auto_suspend INTEGER;
