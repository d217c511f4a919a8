//! Users, their Unix uids and teams, as the control socket manages them.
//!
//! A thin daemon-side wrapper over hutch-api's authorization tables: roles
//! and team membership are written through [`Authz`] where it has a method
//! (so its snapshot stays current); listing, removal and the uid mapping
//! (table `user_uids`, migration `0190_user_uids.sql`) are plain queries
//! here, followed by [`Authz::reload`].

use std::collections::BTreeMap;

use hutch_api::authz::{Authz, Role};
use serde::Serialize;
use sqlx::{Row, SqlitePool};

/// Errors of account operations.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A query failed.
    #[error("{op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Writing through hutch-api's Authz failed.
    #[error("{0}")]
    Authz(#[from] hutch_api::authz::AuthzError),
    /// No such user or team.
    #[error("{0}")]
    NotFound(String),
    /// The uid is mapped to another user.
    #[error("uid {uid} is already mapped to user '{user}'")]
    UidTaken {
        /// The uid.
        uid: u32,
        /// Its current user.
        user: String,
    },
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> AccountError {
    move |source| AccountError::Db { op, source }
}

/// A user with their uid mapping and teams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    /// The Hutch user name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The mapped Unix uid, if any.
    pub uid: Option<u32>,
    /// Their teams, sorted.
    pub teams: Vec<String>,
}

/// The account tables on the shared database.
#[derive(Debug, Clone)]
pub struct Accounts {
    pool: SqlitePool,
    authz: Authz,
}

impl Accounts {
    /// Accounts on `pool` (migrated), writing through `authz`.
    pub fn new(pool: SqlitePool, authz: Authz) -> Accounts {
        Accounts { pool, authz }
    }

    /// The user mapped to `uid`, else the user named `login` (the uid's login
    /// name), with their role.
    ///
    /// # Errors
    /// [`AccountError::Db`].
    pub async fn resolve(
        &self,
        uid: u32,
        login: Option<&str>,
    ) -> Result<Option<(String, Role)>, AccountError> {
        let by_uid: Option<String> =
            sqlx::query_scalar("SELECT user_name FROM user_uids WHERE uid = ?")
                .bind(i64::from(uid))
                .fetch_optional(&self.pool)
                .await
                .map_err(db("resolve uid"))?;
        let snap = self.authz.snapshot();
        if let Some(name) = by_uid {
            return Ok(snap.role(&name).map(|r| (name, r)));
        }
        let Some(login) = login else { return Ok(None) };
        // A login name only counts when no other uid claimed that user.
        let claimed: Option<i64> =
            sqlx::query_scalar("SELECT uid FROM user_uids WHERE user_name = ?")
                .bind(login)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("resolve login"))?;
        if claimed.is_some() {
            return Ok(None);
        }
        Ok(snap.role(login).map(|r| (login.to_owned(), r)))
    }

    /// Every user, sorted by name.
    ///
    /// # Errors
    /// [`AccountError::Db`].
    pub async fn list(&self) -> Result<Vec<UserRow>, AccountError> {
        let rows = sqlx::query(
            "SELECT u.name AS name, u.role AS role, m.uid AS uid FROM users u
             LEFT JOIN user_uids m ON m.user_name = u.name ORDER BY u.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list users"))?;
        let teams = self.teams().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get("name").map_err(db("list users"))?;
            let role: String = r.try_get("role").map_err(db("list users"))?;
            let uid: Option<i64> = r.try_get("uid").map_err(db("list users"))?;
            let user_teams = teams
                .iter()
                .filter(|(_, m)| m.contains(&name))
                .map(|(t, _)| t.clone())
                .collect();
            out.push(UserRow {
                role: Role::parse(&role).unwrap_or(Role::Viewer),
                uid: uid.and_then(|u| u32::try_from(u).ok()),
                teams: user_teams,
                name,
            });
        }
        Ok(out)
    }

    /// One user.
    ///
    /// # Errors
    /// [`AccountError::NotFound`], [`AccountError::Db`].
    pub async fn get(&self, name: &str) -> Result<UserRow, AccountError> {
        self.list()
            .await?
            .into_iter()
            .find(|u| u.name == name)
            .ok_or_else(|| AccountError::NotFound(format!("user '{name}' does not exist")))
    }

    /// Creates or updates a user; `uid: Some` (re)maps their Unix uid.
    ///
    /// # Errors
    /// [`AccountError::UidTaken`], [`AccountError::Db`].
    pub async fn set(
        &self,
        name: &str,
        role: Role,
        uid: Option<u32>,
    ) -> Result<UserRow, AccountError> {
        if let Some(uid) = uid {
            let holder: Option<String> =
                sqlx::query_scalar("SELECT user_name FROM user_uids WHERE uid = ?")
                    .bind(i64::from(uid))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("check uid"))?;
            if let Some(user) = holder.filter(|u| u != name) {
                return Err(AccountError::UidTaken { uid, user });
            }
        }
        self.authz.set_user(name, role).await?;
        if let Some(uid) = uid {
            sqlx::query(
                "INSERT INTO user_uids (user_name, uid) VALUES (?, ?)
                 ON CONFLICT (user_name) DO UPDATE SET uid = excluded.uid",
            )
            .bind(name)
            .bind(i64::from(uid))
            .execute(&self.pool)
            .await
            .map_err(db("map uid"))?;
        }
        self.get(name).await
    }

    /// Removes a user (their team memberships and uid mapping go too; the
    /// audit trail and dataset ownership records stay).
    ///
    /// # Errors
    /// [`AccountError::NotFound`], [`AccountError::Db`].
    pub async fn remove(&self, name: &str) -> Result<(), AccountError> {
        let done = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("remove user"))?;
        self.authz.reload().await?;
        if done.rows_affected() == 0 {
            return Err(AccountError::NotFound(format!(
                "user '{name}' does not exist"
            )));
        }
        Ok(())
    }

    /// Every team with its members, sorted.
    ///
    /// # Errors
    /// [`AccountError::Db`].
    pub async fn teams(&self) -> Result<BTreeMap<String, Vec<String>>, AccountError> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in sqlx::query("SELECT name FROM teams")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list teams"))?
        {
            out.insert(r.try_get("name").map_err(db("list teams"))?, Vec::new());
        }
        for r in sqlx::query("SELECT team, user_name FROM team_members ORDER BY user_name")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list team members"))?
        {
            let team: String = r.try_get("team").map_err(db("list team members"))?;
            let user: String = r.try_get("user_name").map_err(db("list team members"))?;
            out.entry(team).or_default().push(user);
        }
        Ok(out)
    }

    /// Adds `user` to `team` (creating the team).
    ///
    /// # Errors
    /// [`AccountError::NotFound`] for an unknown user, [`AccountError::Db`].
    pub async fn add_member(&self, team: &str, user: &str) -> Result<Vec<String>, AccountError> {
        if self.authz.snapshot().role(user).is_none() {
            return Err(AccountError::NotFound(format!(
                "user '{user}' does not exist"
            )));
        }
        self.authz.add_team_member(team, user).await?;
        Ok(self.teams().await?.remove(team).unwrap_or_default())
    }

    /// Removes `user` from `team` (an empty team stays).
    ///
    /// # Errors
    /// [`AccountError::NotFound`] if they were not a member.
    pub async fn remove_member(&self, team: &str, user: &str) -> Result<Vec<String>, AccountError> {
        let done = sqlx::query("DELETE FROM team_members WHERE team = ? AND user_name = ?")
            .bind(team)
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(db("remove team member"))?;
        self.authz.reload().await?;
        if done.rows_affected() == 0 {
            return Err(AccountError::NotFound(format!(
                "user '{user}' is not a member of team '{team}'"
            )));
        }
        Ok(self.teams().await?.remove(team).unwrap_or_default())
    }
}
