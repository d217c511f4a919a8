-- The repeated actor and operation texts of audit events in a dictionary
-- (see docs/audit.md, "Session 6"): an event row holds one integer per
-- plugin id, plugin version, instance, user, task and operation instead of
-- six texts, so the writer binds four texts per event instead of ten and a
-- row is a third smaller. Reads go through the view audit_events_full,
-- which has the columns audit_events had before. The hash chain is
-- unchanged (it covers the texts), so chains written before verify after;
-- an edited or deleted dictionary row shows as an edit of every event
-- using it. Dictionary rows are never deleted or changed.
-- Plain SQL (views, scalar subqueries): the same schema runs on PostgreSQL.

CREATE TABLE audit_texts (
    id   INTEGER NOT NULL PRIMARY KEY,
    text TEXT    NOT NULL UNIQUE
);

INSERT INTO audit_texts (text)
    SELECT v FROM (
        SELECT actor_plugin_id AS v FROM audit_events
        UNION SELECT actor_plugin_version FROM audit_events
        UNION SELECT actor_instance FROM audit_events
        UNION SELECT actor_user FROM audit_events
        UNION SELECT task_id FROM audit_events
        UNION SELECT operation FROM audit_events
    ) WHERE v IS NOT NULL ORDER BY v;

CREATE TABLE audit_events_new (
    id                   INTEGER NOT NULL PRIMARY KEY,
    ts_us                BIGINT  NOT NULL,
    actor_kind           TEXT    NOT NULL,
    plugin_ref           BIGINT,
    version_ref          BIGINT,
    instance_ref         BIGINT,
    user_ref             BIGINT,
    task_ref             BIGINT,
    operation_ref        BIGINT  NOT NULL,
    resource             TEXT    NOT NULL,
    decision             TEXT    NOT NULL,
    reason               TEXT,
    outcome              TEXT    NOT NULL,
    before_version       BIGINT,
    after_version        BIGINT,
    details              TEXT    NOT NULL,
    prev_hash            BLOB    NOT NULL,
    hash                 BLOB    NOT NULL
);

INSERT INTO audit_events_new
    SELECT id, ts_us, actor_kind,
           (SELECT t.id FROM audit_texts t WHERE t.text = actor_plugin_id),
           (SELECT t.id FROM audit_texts t WHERE t.text = actor_plugin_version),
           (SELECT t.id FROM audit_texts t WHERE t.text = actor_instance),
           (SELECT t.id FROM audit_texts t WHERE t.text = actor_user),
           (SELECT t.id FROM audit_texts t WHERE t.text = task_id),
           (SELECT t.id FROM audit_texts t WHERE t.text = operation),
           resource, decision, reason, outcome, before_version, after_version, details,
           prev_hash, hash
    FROM audit_events ORDER BY id;

DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_events_ts ON audit_events (ts_us);
CREATE INDEX audit_events_resource ON audit_events (resource);

-- The events with their texts (a missing dictionary row reads as NULL, or
-- as '' for the operation, and fails the event's hash).
CREATE VIEW audit_events_full AS
    SELECT id, ts_us, actor_kind,
           (SELECT t.text FROM audit_texts t WHERE t.id = plugin_ref) AS actor_plugin_id,
           (SELECT t.text FROM audit_texts t WHERE t.id = version_ref) AS actor_plugin_version,
           (SELECT t.text FROM audit_texts t WHERE t.id = instance_ref) AS actor_instance,
           (SELECT t.text FROM audit_texts t WHERE t.id = user_ref) AS actor_user,
           (SELECT t.text FROM audit_texts t WHERE t.id = task_ref) AS task_id,
           COALESCE((SELECT t.text FROM audit_texts t WHERE t.id = operation_ref), '') AS operation,
           resource, decision, reason, outcome, before_version, after_version, details,
           prev_hash, hash,
           plugin_ref, user_ref, task_ref, operation_ref
    FROM audit_events;
