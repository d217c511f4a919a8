-- Small objects inline (see docs/audit.md, "Built-in store"): the content of
-- a version up to the store's inline limit (64 KiB by default) lives in its
-- row instead of a blob file, so a small put costs no file creation, fsync or
-- directory fsync: it is durable with the COMMIT that also holds its audit
-- event. NULL for tombstones and for content kept in the blob directory;
-- `blob` still holds the sha256 either way. (PostgreSQL: BYTEA.)
ALTER TABLE object_versions ADD COLUMN content BLOB;
