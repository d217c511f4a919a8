-- Fewer index pages per write (see docs/api.md, "Performance"): every put
-- used to touch five b-tree pages at random positions (the `objects` row and
-- its key, the version's primary key, and its hash in `object_versions_blob`),
-- and each touched page is written to the WAL whole.
--
-- 1. No `objects` head table: an object's current version is its newest
--    `object_versions` row, which the primary key (dataset_id, key, version)
--    already finds with one seek (`ORDER BY version DESC LIMIT 1`). Every
--    head was its object's newest version (only the store wrote both, in one
--    transaction; retention never removes the newest), so nothing is lost.
-- 2. `object_versions_blob` indexes only the versions whose content is a
--    file in the blob directory: garbage collection asks only about those.
--    Inline versions (`content IS NOT NULL`) and tombstones (`blob IS NULL`)
--    need no entry. (PostgreSQL supports partial indexes too.)
DROP TABLE objects;
DROP INDEX object_versions_blob;
CREATE INDEX object_versions_blob ON object_versions (blob)
    WHERE content IS NULL AND blob IS NOT NULL;
