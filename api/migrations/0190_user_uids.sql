-- Local Unix accounts mapped to Hutch users (SPEC §3: control-socket callers
-- are identified by their SO_PEERCRED uid). Owned by hutch-daemon's control
-- side (daemon/src/accounts.rs). A user without a row here is matched by
-- the uid's login name instead.
CREATE TABLE user_uids (
    user_name TEXT PRIMARY KEY NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    uid INTEGER NOT NULL UNIQUE
);
