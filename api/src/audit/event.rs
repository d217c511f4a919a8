//! The audit event and its canonical, hashed encoding.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event of a chain: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// [`GENESIS_HASH`] as stored: 32 zero bytes.
pub(crate) const GENESIS_BYTES: [u8; 32] = [0; 32];

/// A stored hash (32 bytes; anything else after tampering) as the lowercase
/// hex text the API shows and the encoding hashes.
pub(crate) fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Operation names the store and revert record (the proxy adds its own).
pub mod ops {
    /// A dataset was created.
    pub const DATASET_CREATE: &str = "data.dataset.create";
    /// An object's content (and metadata) was written.
    pub const OBJECT_PUT: &str = "data.object.put";
    /// An object was deleted (a tombstone version was written).
    pub const OBJECT_DELETE: &str = "data.object.delete";
    /// An object's metadata was replaced.
    pub const OBJECT_SET_METADATA: &str = "data.object.metadata.set";
    /// An object was restored to an older version by a revert.
    pub const OBJECT_REVERT: &str = "data.object.revert";
    /// Retention removed old object versions.
    pub const STORE_RETENTION: &str = "store.retention";
    /// Retention removed old audit events.
    pub const AUDIT_RETENTION: &str = "audit.retention";
}

/// Monotonically increasing event id (1, 2, 3, ... without gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A plugin instance (plugin id, version and instance set; user is the acting user).
    Plugin,
    /// A user through hutchctl.
    User,
    /// An admin through hutchctl.
    Admin,
    /// The daemon itself (lifecycle, housekeeping).
    Daemon,
}

impl ActorKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Plugin => "plugin",
            ActorKind::User => "user",
            ActorKind::Admin => "admin",
            ActorKind::Daemon => "daemon",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ActorKind> {
        Some(match s {
            "plugin" => ActorKind::Plugin,
            "user" => ActorKind::User,
            "admin" => ActorKind::Admin,
            "daemon" => ActorKind::Daemon,
            _ => return None,
        })
    }
}

/// The actor of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// What kind of actor.
    pub kind: ActorKind,
    /// Plugin id (plugin actors).
    pub plugin_id: Option<String>,
    /// Plugin version (plugin actors).
    pub plugin_version: Option<String>,
    /// Plugin instance id (plugin actors).
    pub instance: Option<String>,
    /// The user: the acting user for plugins, the caller for users and admins.
    pub user: Option<String>,
}

impl Actor {
    /// The daemon itself.
    pub fn daemon() -> Actor {
        Actor {
            kind: ActorKind::Daemon,
            plugin_id: None,
            plugin_version: None,
            instance: None,
            user: None,
        }
    }

    /// An admin (e.g. running `hutchctl audit revert`).
    pub fn admin(user: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::Admin,
            user: Some(user.into()),
            ..Actor::daemon()
        }
    }

    /// A user acting through hutchctl.
    pub fn user(user: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::User,
            user: Some(user.into()),
            ..Actor::daemon()
        }
    }

    /// A plugin instance acting for `user`.
    pub fn plugin(
        plugin_id: impl Into<String>,
        plugin_version: impl Into<String>,
        instance: impl Into<String>,
        user: Option<String>,
    ) -> Actor {
        Actor {
            kind: ActorKind::Plugin,
            plugin_id: Some(plugin_id.into()),
            plugin_version: Some(plugin_version.into()),
            instance: Some(instance.into()),
            user,
        }
    }
}

/// The authorization decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The call was allowed.
    Allowed,
    /// The call was denied (see the event's reason).
    Denied,
}

impl Decision {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "allowed" => Some(Decision::Allowed),
            "denied" => Some(Decision::Denied),
            _ => None,
        }
    }
}

/// What happened: `ok`, or the error. Stored as `ok` or `error: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The operation took effect.
    Ok,
    /// The operation failed (or was denied) with this message.
    Error(String),
}

impl Outcome {
    /// The stored text.
    pub fn to_stored(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Error(m) => format!("error: {m}"),
        }
    }

    /// Parses stored text (anything other than `ok` is an error).
    pub fn from_stored(s: &str) -> Outcome {
        if s == "ok" {
            Outcome::Ok
        } else {
            Outcome::Error(s.strip_prefix("error: ").unwrap_or(s).to_owned())
        }
    }

    /// Whether the outcome is `ok`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One audit event as its producer fills it in. The store adds the id,
/// `prev_hash` and `hash` when it commits it (see [`StoredEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Who acted.
    pub actor: Actor,
    /// The task the call ran under, if any.
    pub task_id: Option<String>,
    /// E.g. `data.object.put` (see [`ops`]).
    pub operation: String,
    /// E.g. `dataset/<id>/object/<key>`.
    pub resource: String,
    /// Allowed or denied.
    pub decision: Decision,
    /// Why (denials always carry one).
    pub reason: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// For data changes: the object's version before (None: it did not exist).
    pub before_version: Option<i64>,
    /// For data changes: the object's version after.
    pub after_version: Option<i64>,
    /// Anything else, as JSON (`null` when nothing).
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new allowed, `ok` event stamped now, with no task, reason, versions or details.
    pub fn new(
        actor: Actor,
        operation: impl Into<String>,
        resource: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            ts_us: now_us(),
            actor,
            task_id: None,
            operation: operation.into(),
            resource: resource.into(),
            decision: Decision::Allowed,
            reason: None,
            outcome: Outcome::Ok,
            before_version: None,
            after_version: None,
            details: serde_json::Value::Null,
        }
    }

    /// Sets the task id.
    pub fn with_task(mut self, task_id: impl Into<String>) -> AuditEvent {
        self.task_id = Some(task_id.into());
        self
    }

    /// Marks the event denied with `reason` (outcome becomes the error).
    pub fn denied(mut self, reason: impl Into<String>) -> AuditEvent {
        let reason = reason.into();
        self.decision = Decision::Denied;
        self.outcome = Outcome::Error(reason.clone());
        self.reason = Some(reason);
        self
    }

    /// Sets the details.
    pub fn with_details(mut self, details: serde_json::Value) -> AuditEvent {
        self.details = details;
        self
    }
}

/// An event as committed: id and hash chain added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The event id.
    pub id: EventId,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The hash of the previous event (64 zeros for the first).
    pub prev_hash: String,
    /// sha256 (hex) of the canonical encoding of every field and `prev_hash`.
    pub hash: String,
}

/// The current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The hashed fields of an event as they are stored (details as its stored text).
pub(crate) struct HashInput<'a> {
    pub id: i64,
    pub ts_us: i64,
    pub actor_kind: &'a str,
    pub actor_plugin_id: Option<&'a str>,
    pub actor_plugin_version: Option<&'a str>,
    pub actor_instance: Option<&'a str>,
    pub actor_user: Option<&'a str>,
    pub task_id: Option<&'a str>,
    pub operation: &'a str,
    pub resource: &'a str,
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub outcome: &'a str,
    pub before_version: Option<i64>,
    pub after_version: Option<i64>,
    pub details: &'a str,
    pub prev_hash: &'a str,
}

/// Version tag of the canonical encoding (hashed first, so the format can evolve).
const ENCODING_TAG: &[u8] = b"hutch-audit-v1\0";

impl HashInput<'_> {
    /// sha256 over the canonical encoding (stored as 32 bytes, shown as
    /// lowercase hex; `prev_hash` is hashed as its hex text): the tag, then each
    /// field in a fixed order; integers as 8 big-endian bytes; strings as
    /// 8-byte big-endian length then bytes; optional fields prefixed by 0
    /// (absent) or 1 (present). Unambiguous, so no two events share an encoding.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(ENCODING_TAG);
        let int = |h: &mut Sha256, v: i64| h.update(v.to_be_bytes());
        let text = |h: &mut Sha256, s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        let opt_text = |h: &mut Sha256, s: Option<&str>| match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                text(h, s);
            }
        };
        let opt_int = |h: &mut Sha256, v: Option<i64>| match v {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                int(h, v);
            }
        };
        int(&mut h, self.id);
        int(&mut h, self.ts_us);
        text(&mut h, self.actor_kind);
        opt_text(&mut h, self.actor_plugin_id);
        opt_text(&mut h, self.actor_plugin_version);
        opt_text(&mut h, self.actor_instance);
        opt_text(&mut h, self.actor_user);
        opt_text(&mut h, self.task_id);
        text(&mut h, self.operation);
        text(&mut h, self.resource);
        text(&mut h, self.decision);
        opt_text(&mut h, self.reason);
        text(&mut h, self.outcome);
        opt_int(&mut h, self.before_version);
        opt_int(&mut h, self.after_version);
        text(&mut h, self.details);
        text(&mut h, self.prev_hash);
        h.finalize().into()
    }
}
