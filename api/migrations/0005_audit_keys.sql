-- Audit events by plugin, user and task through key ranges instead of three
-- per-event indexes (see docs/audit.md, "Queries by plugin, user and task").
-- The writer adds one row per batch and distinct value: the first and last
-- id of the batch's events with that value (other events may lie between;
-- the query filters them). Under load a batch holds thousands of events and
-- a handful of values, so the writer inserts a few rows instead of three
-- index entries per event, which cost a quarter of its time.
-- field: 'plugin' (actor_plugin_id), 'user' (actor_user), 'task' (task_id).
-- Plain SQL: the same table runs on PostgreSQL.
CREATE TABLE audit_keys (
    field    TEXT   NOT NULL,
    value    TEXT   NOT NULL,
    first_id BIGINT NOT NULL,
    last_id  BIGINT NOT NULL,
    PRIMARY KEY (field, value, first_id)
);

-- Events written before this migration: one exact range per event.
INSERT INTO audit_keys (field, value, first_id, last_id)
    SELECT 'plugin', actor_plugin_id, id, id FROM audit_events WHERE actor_plugin_id IS NOT NULL;
INSERT INTO audit_keys (field, value, first_id, last_id)
    SELECT 'user', actor_user, id, id FROM audit_events WHERE actor_user IS NOT NULL;
INSERT INTO audit_keys (field, value, first_id, last_id)
    SELECT 'task', task_id, id, id FROM audit_events WHERE task_id IS NOT NULL;

DROP INDEX audit_events_task;
DROP INDEX audit_events_plugin;
DROP INDEX audit_events_user;
