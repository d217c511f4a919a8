-- Plugin registry (owned by daemon/src/registry.rs). Plain SQL types.

-- One uid (= gid) per plugin id, allocated at its first install and never
-- deleted, so a uid is never given to another plugin (files a removed
-- plugin left in its data dir stay attributable).
CREATE TABLE plugin_uids (
    uid INTEGER PRIMARY KEY NOT NULL,
    plugin_id TEXT NOT NULL UNIQUE,
    allocated_ms BIGINT NOT NULL
);

-- Installed plugins: the active version, admin grants and limits.
CREATE TABLE plugins (
    id TEXT PRIMARY KEY NOT NULL REFERENCES plugin_uids (plugin_id),
    version TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    granted_scopes TEXT NOT NULL DEFAULT '[]',
    limit_overrides TEXT NOT NULL DEFAULT '{}',
    installed_by TEXT NOT NULL,
    installed_ms BIGINT NOT NULL
);

-- Every installed version of a plugin: its manifest and installed copy.
CREATE TABLE plugin_versions (
    plugin_id TEXT NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    path TEXT NOT NULL,
    installed_by TEXT NOT NULL,
    installed_ms BIGINT NOT NULL,
    PRIMARY KEY (plugin_id, version)
);

-- Daemon-wide settings that survive restarts (the kill switch).
CREATE TABLE daemon_settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
