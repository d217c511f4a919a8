-- Audit store: hash-chained events (see docs/audit.md).
-- Plain SQL types only, so the same schema runs on PostgreSQL later.

CREATE TABLE audit_events (
    id                   BIGINT  NOT NULL PRIMARY KEY,
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
    prev_hash            TEXT    NOT NULL,
    hash                 TEXT    NOT NULL
);

CREATE INDEX audit_events_ts ON audit_events (ts_us);
CREATE INDEX audit_events_task ON audit_events (task_id);
CREATE INDEX audit_events_resource ON audit_events (resource);
CREATE INDEX audit_events_plugin ON audit_events (actor_plugin_id);
CREATE INDEX audit_events_user ON audit_events (actor_user);

-- The chain head, updated in the same transaction as every batch: lets
-- verify notice a truncated tail.
CREATE TABLE audit_head (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_id   BIGINT  NOT NULL,
    last_hash TEXT    NOT NULL
);

-- Where the chain starts after retention purged older events: the id and
-- hash of the last purged event.
CREATE TABLE audit_anchor (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_purged_id   BIGINT NOT NULL,
    last_purged_hash TEXT   NOT NULL
);
