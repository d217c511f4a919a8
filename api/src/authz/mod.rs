//! Authorization of plugin calls, exactly as SPEC §6.
//!
//! A call is allowed only if **all** hold, checked in this order by
//! [`Snapshot::authorize`] (the first failing check is the denial reason):
//!
//! 1. the operation's scope is granted to the plugin install;
//! 2. the acting user (task submitter, or the installing admin outside a
//!    task) exists and may do the operation's class on the dataset: role
//!    `admin` may do everything; `member` may read datasets they own, their
//!    team owns or that are shared with one of their teams, write/delete
//!    those they own, their team owns or that are shared for write, and
//!    create datasets; `viewer` may only read the same datasets;
//! 3. no admin [`Policy`] blocks it (see [`policy::blocking_policy`]).
//!
//! Rate, concurrency, size and duration limits are checked by the server
//! ([`crate::limits`]) before these. Anything not explicitly allowed is
//! denied: an unknown user, a dataset without an owner row (only admins),
//! a scope name nobody knows.
//!
//! The tables live in the shared database (migration `0003_authz.sql`);
//! [`Authz`] keeps an in-memory [`Snapshot`] so a decision costs no query,
//! and every mutation through [`Authz`] reloads it. Code that edits the
//! tables directly must call [`Authz::reload`].

pub mod policy;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

pub use policy::{Effect, Policy};

/// Errors reading or changing the authorization tables.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// A query failed.
    #[error("{op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value is not one Hutch knows.
    #[error("{table}: bad value {value:?}")]
    BadValue {
        /// The table holding it.
        table: &'static str,
        /// The value.
        value: String,
    },
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> AuthzError {
    move |source| AuthzError::Db { op, source }
}

/// A scope an admin grants to a plugin install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// `data:read`
    #[serde(rename = "data:read")]
    DataRead,
    /// `data:write`
    #[serde(rename = "data:write")]
    DataWrite,
    /// `data:delete`
    #[serde(rename = "data:delete")]
    DataDelete,
    /// `datasets:create`
    #[serde(rename = "datasets:create")]
    DatasetsCreate,
    /// `tasks:spawn`
    #[serde(rename = "tasks:spawn")]
    TasksSpawn,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::DataRead,
        Scope::DataWrite,
        Scope::DataDelete,
        Scope::DatasetsCreate,
        Scope::TasksSpawn,
    ];

    /// The SPEC name, e.g. `data:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::DataRead => "data:read",
            Scope::DataWrite => "data:write",
            Scope::DataDelete => "data:delete",
            Scope::DatasetsCreate => "datasets:create",
            Scope::TasksSpawn => "tasks:spawn",
        }
    }

    /// Parses a SPEC name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of an operation, as policies and roles see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpClass {
    /// Reading datasets, objects, metadata, versions.
    Read,
    /// Writing content or metadata.
    Write,
    /// Deleting objects.
    Delete,
    /// Creating datasets.
    Create,
}

impl OpClass {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
            OpClass::Delete => "delete",
            OpClass::Create => "create",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<OpClass> {
        match s {
            "read" => Some(OpClass::Read),
            "write" => Some(OpClass::Write),
            "delete" => Some(OpClass::Delete),
            "create" => Some(OpClass::Create),
            _ => None,
        }
    }
}

/// Every Data operation a plugin can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `Data.CreateDataset`
    DatasetCreate,
    /// `Data.ListDatasets`
    DatasetList,
    /// `Data.GetDataset`
    DatasetGet,
    /// `Data.PutObject`
    ObjectPut,
    /// `Data.GetObject`
    ObjectGet,
    /// `Data.ListObjects`
    ObjectList,
    /// `Data.DeleteObject`
    ObjectDelete,
    /// `Data.GetMetadata`
    MetadataGet,
    /// `Data.SetMetadata`
    MetadataSet,
    /// `Data.ListVersions`
    VersionList,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 10] = [
        Operation::DatasetCreate,
        Operation::DatasetList,
        Operation::DatasetGet,
        Operation::ObjectPut,
        Operation::ObjectGet,
        Operation::ObjectList,
        Operation::ObjectDelete,
        Operation::MetadataGet,
        Operation::MetadataSet,
        Operation::VersionList,
    ];

    /// The audit operation name, e.g. `data.object.put`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::DatasetCreate => "data.dataset.create",
            Operation::DatasetList => "data.dataset.list",
            Operation::DatasetGet => "data.dataset.get",
            Operation::ObjectPut => "data.object.put",
            Operation::ObjectGet => "data.object.get",
            Operation::ObjectList => "data.object.list",
            Operation::ObjectDelete => "data.object.delete",
            Operation::MetadataGet => "data.object.metadata.get",
            Operation::MetadataSet => "data.object.metadata.set",
            Operation::VersionList => "data.object.versions",
        }
    }

    /// The scope it needs.
    pub fn scope(self) -> Scope {
        match self.class() {
            OpClass::Read => Scope::DataRead,
            OpClass::Write => Scope::DataWrite,
            OpClass::Delete => Scope::DataDelete,
            OpClass::Create => Scope::DatasetsCreate,
        }
    }

    /// Its class.
    pub fn class(self) -> OpClass {
        match self {
            Operation::DatasetCreate => OpClass::Create,
            Operation::ObjectPut | Operation::MetadataSet => OpClass::Write,
            Operation::ObjectDelete => OpClass::Delete,
            Operation::DatasetList
            | Operation::DatasetGet
            | Operation::ObjectGet
            | Operation::ObjectList
            | Operation::MetadataGet
            | Operation::VersionList => OpClass::Read,
        }
    }

    /// Whether it changes data (its response waits for the audit commit).
    pub fn mutates(self) -> bool {
        self.class() != OpClass::Read
    }
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything on every dataset.
    Admin,
    /// Read/write what they or their teams own or is shared with them.
    Member,
    /// Read only.
    Viewer,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// Who owns a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// A user.
    User(String),
    /// A team.
    Team(String),
}

/// How a dataset is shared with a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write (and delete).
    Write,
}

/// The set of scopes granted to a plugin install.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses SPEC scope names; unknown names are returned as the error.
    ///
    /// # Errors
    /// The first name that is not a scope.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<ScopeSet, String> {
        names
            .iter()
            .map(|n| Scope::parse(n.as_ref()).ok_or_else(|| n.as_ref().to_owned()))
            .collect::<Result<_, _>>()
            .map(ScopeSet)
    }

    /// Whether `s` is granted.
    pub fn contains(&self, s: Scope) -> bool {
        self.0.contains(&s)
    }

    /// The granted names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().collect())
    }
}

/// One call to decide.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The calling plugin's id (from its socket, never from the payload).
    pub plugin_id: &'a str,
    /// The acting user.
    pub user: &'a str,
    /// The operation.
    pub op: Operation,
    /// The dataset it touches (None for create and list).
    pub dataset: Option<&'a str>,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

/// An in-memory copy of the authorization tables.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    users: HashMap<String, Role>,
    teams_of: HashMap<String, Vec<String>>,
    owners: HashMap<String, Owner>,
    shares: HashMap<String, Vec<(String, Access)>>,
    policies: Vec<Policy>,
}

impl Snapshot {
    /// Decides `r` for an install granted `granted`.
    ///
    /// # Errors
    /// The denial reason (for `PERMISSION_DENIED` and the audit event).
    pub fn authorize(&self, granted: &ScopeSet, r: &AuthzRequest<'_>) -> Result<(), String> {
        let scope = r.op.scope();
        if !granted.contains(scope) {
            return Err(format!("scope {scope} is not granted to this plugin"));
        }
        self.user_may(r.user, r.op.class(), r.dataset)?;
        let teams = self.teams_of.get(r.user).map(Vec::as_slice).unwrap_or(&[]);
        let subject = policy::PolicySubject {
            plugin_id: r.plugin_id,
            user: r.user,
            teams,
            class: r.op.class(),
            now_ms: r.now_ms,
        };
        match policy::blocking_policy(&self.policies, &subject) {
            Some(p) => Err(p.denial()),
            None => Ok(()),
        }
    }

    /// Whether `user` may do `class` on `dataset` by role, ownership and
    /// sharing (policies aside).
    ///
    /// # Errors
    /// The reason it may not.
    pub fn user_may(
        &self,
        user: &str,
        class: OpClass,
        dataset: Option<&str>,
    ) -> Result<(), String> {
        let Some(role) = self.users.get(user).copied() else {
            return Err(format!("unknown user '{user}'"));
        };
        if role == Role::Admin {
            return Ok(());
        }
        if role == Role::Viewer && class != OpClass::Read {
            return Err(format!(
                "user '{user}' has role viewer, which may not {}",
                class.as_str()
            ));
        }
        let Some(ds) = dataset else {
            // Create needs member (checked above); list is filtered per dataset.
            return Ok(());
        };
        let access = self.access(user, ds);
        let ok = match class {
            OpClass::Read => access.is_some(),
            _ => access == Some(Access::Write),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "user '{user}' may not {} dataset '{ds}'",
                class.as_str()
            ))
        }
    }

    /// The access `user` has to `dataset` through ownership or sharing
    /// (ignores the role; admins see everything anyway).
    fn access(&self, user: &str, dataset: &str) -> Option<Access> {
        let teams = self.teams_of.get(user).map(Vec::as_slice).unwrap_or(&[]);
        match self.owners.get(dataset)? {
            Owner::User(u) if u == user => return Some(Access::Write),
            Owner::Team(t) if teams.contains(t) => return Some(Access::Write),
            _ => {}
        }
        let mut best = None;
        for (team, a) in self.shares.get(dataset).map(Vec::as_slice).unwrap_or(&[]) {
            if teams.contains(team) {
                if *a == Access::Write {
                    return Some(Access::Write);
                }
                best = Some(Access::Read);
            }
        }
        best
    }

    /// Whether `user` may read `dataset` (for filtering lists).
    pub fn may_read(&self, user: &str, dataset: &str) -> bool {
        self.user_may(user, OpClass::Read, Some(dataset)).is_ok()
    }

    /// The recorded owner of `dataset`.
    pub fn owner(&self, dataset: &str) -> Option<&Owner> {
        self.owners.get(dataset)
    }

    /// A user's role.
    pub fn role(&self, user: &str) -> Option<Role> {
        self.users.get(user).copied()
    }
}

/// The authorization tables with a cached [`Snapshot`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authz {
    pool: SqlitePool,
    snap: Arc<RwLock<Arc<Snapshot>>>,
}

impl Authz {
    /// Loads the tables from `pool` (migrated by `Db::open`).
    ///
    /// # Errors
    /// [`AuthzError`] when a query fails or a row holds an unknown value.
    pub async fn load(pool: SqlitePool) -> Result<Authz, AuthzError> {
        let snap = read_snapshot(&pool).await?;
        Ok(Authz {
            pool,
            snap: Arc::new(RwLock::new(Arc::new(snap))),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the tables (after editing them outside this type).
    ///
    /// # Errors
    /// As [`Authz::load`].
    pub async fn reload(&self) -> Result<(), AuthzError> {
        let snap = Arc::new(read_snapshot(&self.pool).await?);
        match self.snap.write() {
            Ok(mut g) => *g = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
        Ok(())
    }

    async fn exec(
        &self,
        op: &'static str,
        q: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<(), AuthzError> {
        q.execute(&self.pool).await.map_err(db(op))?;
        self.reload().await
    }

    /// Adds or updates a user.
    ///
    /// # Errors
    /// [`AuthzError::Db`].
    pub async fn set_user(&self, name: &str, role: Role) -> Result<(), AuthzError> {
        let q = sqlx::query(
            "INSERT INTO users (name, role) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET role = excluded.role",
        )
        .bind(name.to_owned())
        .bind(role.as_str());
        self.exec("set user", q).await
    }

    /// Adds `user` to `team` (creating the team).
    ///
    /// # Errors
    /// [`AuthzError::Db`] (e.g. the user does not exist).
    pub async fn add_team_member(&self, team: &str, user: &str) -> Result<(), AuthzError> {
        sqlx::query("INSERT INTO teams (name) VALUES (?) ON CONFLICT DO NOTHING")
            .bind(team.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("create team"))?;
        let q = sqlx::query(
            "INSERT INTO team_members (team, user_name) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(team.to_owned())
        .bind(user.to_owned());
        self.exec("add team member", q).await
    }

    /// Records the owner of a dataset.
    ///
    /// # Errors
    /// [`AuthzError::Db`].
    pub async fn set_dataset_owner(&self, dataset: &str, owner: &Owner) -> Result<(), AuthzError> {
        let (u, t) = match owner {
            Owner::User(u) => (Some(u.clone()), None),
            Owner::Team(t) => (None, Some(t.clone())),
        };
        let q = sqlx::query(
            "INSERT INTO dataset_owners (dataset_id, owner_user, owner_team) VALUES (?, ?, ?)
             ON CONFLICT (dataset_id) DO UPDATE SET owner_user = excluded.owner_user, owner_team = excluded.owner_team",
        )
        .bind(dataset.to_owned())
        .bind(u)
        .bind(t);
        self.exec("set dataset owner", q).await
    }

    /// Shares a dataset with a team.
    ///
    /// # Errors
    /// [`AuthzError::Db`].
    pub async fn share_dataset(
        &self,
        dataset: &str,
        team: &str,
        access: Access,
    ) -> Result<(), AuthzError> {
        let a = match access {
            Access::Read => "read",
            Access::Write => "write",
        };
        let q = sqlx::query(
            "INSERT INTO dataset_shares (dataset_id, team, access) VALUES (?, ?, ?)
             ON CONFLICT (dataset_id, team) DO UPDATE SET access = excluded.access",
        )
        .bind(dataset.to_owned())
        .bind(team.to_owned())
        .bind(a);
        self.exec("share dataset", q).await
    }

    /// Adds a policy; returns its id.
    ///
    /// # Errors
    /// [`AuthzError::Db`] (e.g. a duplicate name).
    pub async fn add_policy(&self, p: &Policy) -> Result<i64, AuthzError> {
        let row = sqlx::query(
            "INSERT INTO policies (name, effect, plugin_pattern, user_name, team, operation_class,
               not_before_ms, not_after_ms, weekdays, hour_start, hour_end, reason)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(p.name.clone())
        .bind(p.effect.as_str())
        .bind(p.plugin_pattern.clone())
        .bind(p.user.clone())
        .bind(p.team.clone())
        .bind(p.operation_class.map(OpClass::as_str))
        .bind(p.not_before_ms)
        .bind(p.not_after_ms)
        .bind(p.weekdays.map(i64::from))
        .bind(p.hour_start.map(i64::from))
        .bind(p.hour_end.map(i64::from))
        .bind(p.reason.clone())
        .fetch_one(&self.pool)
        .await
        .map_err(db("add policy"))?;
        let id: i64 = row.try_get("id").map_err(db("add policy"))?;
        self.reload().await?;
        Ok(id)
    }

    /// Removes a policy.
    ///
    /// # Errors
    /// [`AuthzError::Db`].
    pub async fn remove_policy(&self, id: i64) -> Result<(), AuthzError> {
        let q = sqlx::query("DELETE FROM policies WHERE id = ?").bind(id);
        self.exec("remove policy", q).await
    }
}

fn small(v: Option<i64>, table: &'static str) -> Result<Option<u8>, AuthzError> {
    v.map(|x| {
        u8::try_from(x).map_err(|_| AuthzError::BadValue {
            table,
            value: x.to_string(),
        })
    })
    .transpose()
}

async fn read_snapshot(pool: &SqlitePool) -> Result<Snapshot, AuthzError> {
    let mut s = Snapshot::default();
    for r in sqlx::query("SELECT name, role FROM users")
        .fetch_all(pool)
        .await
        .map_err(db("read users"))?
    {
        let name: String = r.try_get("name").map_err(db("read users"))?;
        let role: String = r.try_get("role").map_err(db("read users"))?;
        let role = Role::parse(&role).ok_or(AuthzError::BadValue {
            table: "users",
            value: role,
        })?;
        s.users.insert(name, role);
    }
    for r in sqlx::query("SELECT team, user_name FROM team_members")
        .fetch_all(pool)
        .await
        .map_err(db("read team members"))?
    {
        let team: String = r.try_get("team").map_err(db("read team members"))?;
        let user: String = r.try_get("user_name").map_err(db("read team members"))?;
        s.teams_of.entry(user).or_default().push(team);
    }
    for r in sqlx::query("SELECT dataset_id, owner_user, owner_team FROM dataset_owners")
        .fetch_all(pool)
        .await
        .map_err(db("read dataset owners"))?
    {
        let ds: String = r.try_get("dataset_id").map_err(db("read dataset owners"))?;
        let u: Option<String> = r.try_get("owner_user").map_err(db("read dataset owners"))?;
        let t: Option<String> = r.try_get("owner_team").map_err(db("read dataset owners"))?;
        let owner = match (u, t) {
            (Some(u), _) => Owner::User(u),
            (None, Some(t)) => Owner::Team(t),
            (None, None) => continue,
        };
        s.owners.insert(ds, owner);
    }
    for r in sqlx::query("SELECT dataset_id, team, access FROM dataset_shares")
        .fetch_all(pool)
        .await
        .map_err(db("read dataset shares"))?
    {
        let ds: String = r.try_get("dataset_id").map_err(db("read dataset shares"))?;
        let team: String = r.try_get("team").map_err(db("read dataset shares"))?;
        let access: String = r.try_get("access").map_err(db("read dataset shares"))?;
        let access = match access.as_str() {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => {
                return Err(AuthzError::BadValue {
                    table: "dataset_shares",
                    value: access,
                });
            }
        };
        s.shares.entry(ds).or_default().push((team, access));
    }
    for r in sqlx::query(
        "SELECT id, name, effect, plugin_pattern, user_name, team, operation_class, not_before_ms,
                not_after_ms, weekdays, hour_start, hour_end, reason FROM policies ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("read policies"))?
    {
        let get = |c: &'static str| -> Result<Option<String>, AuthzError> {
            r.try_get(c).map_err(db("read policies"))
        };
        let geti = |c: &'static str| -> Result<Option<i64>, AuthzError> {
            r.try_get(c).map_err(db("read policies"))
        };
        let effect = get("effect")?.unwrap_or_default();
        let class = get("operation_class")?;
        s.policies.push(Policy {
            id: geti("id")?.unwrap_or(0),
            name: get("name")?.unwrap_or_default(),
            effect: Effect::parse(&effect).ok_or(AuthzError::BadValue {
                table: "policies",
                value: effect,
            })?,
            plugin_pattern: get("plugin_pattern")?.unwrap_or_else(|| "*".into()),
            user: get("user_name")?,
            team: get("team")?,
            operation_class: match class {
                None => None,
                Some(c) => Some(OpClass::parse(&c).ok_or(AuthzError::BadValue {
                    table: "policies",
                    value: c,
                })?),
            },
            not_before_ms: geti("not_before_ms")?,
            not_after_ms: geti("not_after_ms")?,
            weekdays: small(geti("weekdays")?, "policies")?,
            hour_start: small(geti("hour_start")?, "policies")?,
            hour_end: small(geti("hour_end")?, "policies")?,
            reason: get("reason")?.unwrap_or_default(),
        });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        s.users.insert("root".into(), Role::Admin);
        s.users.insert("alice".into(), Role::Member);
        s.users.insert("bob".into(), Role::Member);
        s.users.insert("vic".into(), Role::Viewer);
        s.teams_of.insert("bob".into(), vec!["lab".into()]);
        s.teams_of.insert("vic".into(), vec!["lab".into()]);
        s.owners.insert("a".into(), Owner::User("alice".into()));
        s.owners.insert("t".into(), Owner::Team("lab".into()));
        s.shares
            .insert("a".into(), vec![("lab".into(), Access::Read)]);
        s
    }

    #[test]
    fn roles_ownership_sharing() {
        let s = snap();
        assert!(s.user_may("alice", OpClass::Write, Some("a")).is_ok());
        assert!(s.user_may("bob", OpClass::Read, Some("a")).is_ok());
        assert!(s.user_may("bob", OpClass::Write, Some("a")).is_err());
        assert!(s.user_may("bob", OpClass::Delete, Some("t")).is_ok());
        assert!(s.user_may("alice", OpClass::Read, Some("t")).is_err());
        assert!(s.user_may("vic", OpClass::Read, Some("t")).is_ok());
        assert!(s.user_may("vic", OpClass::Write, Some("t")).is_err());
        assert!(s.user_may("vic", OpClass::Create, None).is_err());
        assert!(
            s.user_may("root", OpClass::Delete, Some("nobody-owns"))
                .is_ok()
        );
        assert!(
            s.user_may("alice", OpClass::Read, Some("nobody-owns"))
                .is_err()
        );
        assert!(s.user_may("mallory", OpClass::Read, None).is_err());
    }

    #[test]
    fn scope_checked_first() {
        let s = snap();
        let granted: ScopeSet = [Scope::DataRead].into_iter().collect();
        let r = AuthzRequest {
            plugin_id: "org.example.p",
            user: "alice",
            op: Operation::ObjectPut,
            dataset: Some("a"),
            now_ms: 0,
        };
        let e = s.authorize(&granted, &r).err().unwrap_or_default();
        assert!(e.contains("data:write"), "{e}");
        let r = AuthzRequest {
            op: Operation::ObjectGet,
            ..r
        };
        assert!(s.authorize(&granted, &r).is_ok());
    }

    #[test]
    fn every_operation_maps_to_its_scope() {
        for op in Operation::ALL {
            assert_eq!(op.mutates(), op.class() != OpClass::Read);
            let name_scope = match op.scope() {
                Scope::DataRead => op.class() == OpClass::Read,
                Scope::DataWrite => op.class() == OpClass::Write,
                Scope::DataDelete => op == Operation::ObjectDelete,
                Scope::DatasetsCreate => op == Operation::DatasetCreate,
                Scope::TasksSpawn => false,
            };
            assert!(name_scope, "{op:?}");
        }
    }
}
