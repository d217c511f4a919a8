-- Built-in store: datasets, objects with per-object versions, and every
-- version's content (a content-addressed blob) and metadata, kept until
-- retention removes it. Plain SQL types only (PostgreSQL-ready).

CREATE TABLE datasets (
    id         TEXT   NOT NULL PRIMARY KEY,
    name       TEXT   NOT NULL,
    owner      TEXT,
    metadata   TEXT   NOT NULL,
    created_us BIGINT NOT NULL
);

-- The head of each object: its current version (a tombstone when deleted).
CREATE TABLE objects (
    dataset_id TEXT   NOT NULL REFERENCES datasets (id),
    key        TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, key)
);

-- Every version of every object. blob is NULL for a tombstone (deleted = 1).
CREATE TABLE object_versions (
    dataset_id TEXT    NOT NULL REFERENCES datasets (id),
    key        TEXT    NOT NULL,
    version    BIGINT  NOT NULL,
    deleted    INTEGER NOT NULL,
    blob       TEXT,
    size       BIGINT  NOT NULL,
    metadata   TEXT    NOT NULL,
    created_us BIGINT  NOT NULL,
    PRIMARY KEY (dataset_id, key, version)
);

CREATE INDEX object_versions_blob ON object_versions (blob);
CREATE INDEX object_versions_created ON object_versions (created_us);
