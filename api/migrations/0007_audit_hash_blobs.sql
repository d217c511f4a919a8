-- Audit hashes as 32-byte BLOBs instead of 64-character hex text (see
-- docs/audit.md, "Hash chain"): a quarter less per event row, so less
-- B-tree and WAL work per insert. The hashed encoding is unchanged (it
-- covers prev_hash as its hex text), so chains written before verify after.
-- A value that is not hex (only after tampering) keeps its bytes, so verify
-- still reports it. PostgreSQL: BYTEA.

CREATE TABLE audit_events_new (
    id                   INTEGER NOT NULL PRIMARY KEY,
    ts_us                BIGINT  NOT NULL,
    actor_kind           TEXT    NOT NULL,
    actor_plugin_id      TEXT,
    actor_plugin_version TEXT,
    actor_instance       TEXT,
    actor_user           TEXT,
    task_id              TEXT,
    operation            TEXT    NOT NULL,
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
    SELECT id, ts_us, actor_kind, actor_plugin_id, actor_plugin_version, actor_instance,
           actor_user, task_id, operation, resource, decision, reason, outcome,
           before_version, after_version, details,
           COALESCE(unhex(prev_hash), CAST(prev_hash AS BLOB)),
           COALESCE(unhex(hash), CAST(hash AS BLOB))
    FROM audit_events ORDER BY id;

DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_events_ts ON audit_events (ts_us);
CREATE INDEX audit_events_resource ON audit_events (resource);

CREATE TABLE audit_head_new (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_id   BIGINT  NOT NULL,
    last_hash BLOB    NOT NULL
);
INSERT INTO audit_head_new
    SELECT singleton, last_id, COALESCE(unhex(last_hash), CAST(last_hash AS BLOB)) FROM audit_head;
DROP TABLE audit_head;
ALTER TABLE audit_head_new RENAME TO audit_head;

CREATE TABLE audit_anchor_new (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_purged_id   BIGINT NOT NULL,
    last_purged_hash BLOB   NOT NULL
);
INSERT INTO audit_anchor_new
    SELECT singleton, last_purged_id,
           COALESCE(unhex(last_purged_hash), CAST(last_purged_hash AS BLOB))
    FROM audit_anchor;
DROP TABLE audit_anchor;
ALTER TABLE audit_anchor_new RENAME TO audit_anchor;
