-- Audit events by resource through key ranges instead of a per-event index
-- (see docs/audit.md, "Queries by resource"): the index on resource put one
-- entry at a random position of its b-tree into every event's transaction,
-- so every put dirtied (and wrote to the WAL) one more 4 KiB page. Instead
-- the writer adds `audit_keys` rows of the field 'root', the resource's
-- first two '/'-separated segments ("dataset/<id>" for a dataset and all
-- its objects, "task/<id>", ...): one row per batch and distinct root, like
-- the plugin, user and task ranges of 0005. A query by resource walks its
-- root's ranges and compares the resource of the events in them.
-- Plain SQL: the same statements run on PostgreSQL (with strpos/substring
-- for instr/substr).

-- Events written before this migration: one exact range per event. The
-- expression is the writer's `resource_root` (the text before the second
-- '/', or the whole resource if it has fewer than two).
INSERT INTO audit_keys (field, value, first_id, last_id)
    SELECT 'root',
           CASE
               WHEN instr(resource, '/') = 0 THEN resource
               WHEN instr(substr(resource, instr(resource, '/') + 1), '/') = 0 THEN resource
               ELSE substr(resource, 1,
                           instr(resource, '/') + instr(substr(resource, instr(resource, '/') + 1), '/') - 1)
           END,
           id, id
    FROM audit_events;

DROP INDEX audit_events_resource;
