-- Tasks (owned by daemon/src/tasks.rs): an action of a plugin run for a user.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    plugin_id TEXT NOT NULL,
    plugin_version TEXT,
    instance TEXT,
    action TEXT NOT NULL,
    args_json TEXT NOT NULL,
    inputs TEXT NOT NULL DEFAULT '[]',
    user_name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    progress REAL NOT NULL DEFAULT 0,
    progress_message TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '[]',
    result_json TEXT,
    error TEXT,
    logs TEXT NOT NULL DEFAULT '[]',
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT
);
CREATE INDEX tasks_by_state ON tasks (state);
CREATE INDEX tasks_by_user ON tasks (user_name, created_ms);
CREATE INDEX tasks_by_plugin ON tasks (plugin_id, created_ms);
