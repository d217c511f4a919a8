-- Authorization data (SPEC §6): users, teams, dataset ownership and sharing,
-- admin policies. Owned by api/src/authz. Plain SQL types so the schema also
-- runs on PostgreSQL.

-- A Hutch user and their role: admin (everything), member (read/write what
-- they or their teams own or is shared with their teams, create datasets),
-- viewer (read only).
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer'))
);

CREATE TABLE teams (
    name TEXT PRIMARY KEY NOT NULL
);

CREATE TABLE team_members (
    team TEXT NOT NULL REFERENCES teams (name) ON DELETE CASCADE,
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    PRIMARY KEY (team, user_name)
);

-- Exactly one owner per dataset: a user or a team.
CREATE TABLE dataset_owners (
    dataset_id TEXT PRIMARY KEY NOT NULL,
    owner_user TEXT,
    owner_team TEXT,
    CHECK ((owner_user IS NULL AND owner_team IS NOT NULL)
        OR (owner_user IS NOT NULL AND owner_team IS NULL))
);

-- A dataset shared with a team, read or read+write.
CREATE TABLE dataset_shares (
    dataset_id TEXT NOT NULL,
    team TEXT NOT NULL,
    access TEXT NOT NULL CHECK (access IN ('read', 'write')),
    PRIMARY KEY (dataset_id, team)
);

-- Admin policies. A call matches a policy when every non-NULL selector
-- matches. A matching 'deny' policy blocks the call unless a matching
-- 'allow' policy (an exception) exists. Time selectors are UTC:
-- not_before_ms/not_after_ms (absolute, ms since the epoch, inclusive/
-- exclusive), weekdays (bit 0 = Monday .. bit 6 = Sunday), hour_start/
-- hour_end ([start, end) in hours; start > end wraps past midnight).
CREATE TABLE policies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    effect TEXT NOT NULL CHECK (effect IN ('deny', 'allow')),
    plugin_pattern TEXT NOT NULL DEFAULT '*',
    user_name TEXT,
    team TEXT,
    operation_class TEXT CHECK (operation_class IN ('read', 'write', 'delete', 'create')),
    not_before_ms BIGINT,
    not_after_ms BIGINT,
    weekdays INTEGER CHECK (weekdays BETWEEN 0 AND 127),
    hour_start INTEGER CHECK (hour_start BETWEEN 0 AND 23),
    hour_end INTEGER CHECK (hour_end BETWEEN 0 AND 24),
    reason TEXT NOT NULL DEFAULT ''
);
