//! The audit trail: who changed what, when, under which request id.
//!
//! Every admin write hands the store an [`AuditEvent`] together with the change, and the
//! store writes both in one transaction: a change never lands without its record, and a
//! write that fails or is refused leaves no record. Events name ids, never secrets.

use crate::domain::{AccountId, InvalidField, Timestamp};
use std::sync::atomic::{AtomicU32, Ordering};

/// The filter groups of `ListAuditEvents`' `search_params.categories`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditCategory {
    ApiKey,
    Application,
    Session,
    /// A user signed in to the dashboard: the back end created a session for them.
    Login,
}

impl AuditCategory {
    pub const ALL: [AuditCategory; 4] =
        [AuditCategory::ApiKey, AuditCategory::Application, AuditCategory::Session, AuditCategory::Login];

    /// As spelled in `search_params` (the error page's example is `["Login"]`).
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditCategory::ApiKey => "ApiKey",
            AuditCategory::Application => "Application",
            AuditCategory::Session => "Session",
            AuditCategory::Login => "Login",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|c| c.as_str()).collect();
            InvalidField::new(
                "search_params",
                format!("unknown category {raw:?}; the categories are {}", known.join(", ")),
            )
        })
    }
}

/// What an admin did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    ApplicationCreate,
    ApplicationRotateKey,
    ApplicationUpdate,
    ApplicationDelete,
    ApiKeyCreate,
    ApiKeyUpdate,
    ApiKeyRevoke,
    ApiKeyRoll,
    ApiKeyImport,
    ApiKeyDelete,
    OwnerUpdate,
    OwnerDelete,
    SessionCreate,
    SessionRevoke,
    SessionDelete,
    AccountDelete,
}

impl AuditAction {
    pub const ALL: [AuditAction; 16] = [
        AuditAction::ApplicationCreate,
        AuditAction::ApplicationRotateKey,
        AuditAction::ApplicationUpdate,
        AuditAction::ApplicationDelete,
        AuditAction::ApiKeyCreate,
        AuditAction::ApiKeyUpdate,
        AuditAction::ApiKeyRevoke,
        AuditAction::ApiKeyRoll,
        AuditAction::ApiKeyImport,
        AuditAction::ApiKeyDelete,
        AuditAction::OwnerUpdate,
        AuditAction::OwnerDelete,
        AuditAction::SessionCreate,
        AuditAction::SessionRevoke,
        AuditAction::SessionDelete,
        AuditAction::AccountDelete,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuditAction::ApplicationCreate => "application.create",
            AuditAction::ApplicationRotateKey => "application.rotate_key",
            AuditAction::ApplicationUpdate => "application.update",
            AuditAction::ApplicationDelete => "application.delete",
            AuditAction::ApiKeyCreate => "api_key.create",
            AuditAction::ApiKeyUpdate => "api_key.update",
            AuditAction::ApiKeyRevoke => "api_key.revoke",
            AuditAction::ApiKeyRoll => "api_key.roll",
            AuditAction::ApiKeyImport => "api_key.import",
            AuditAction::ApiKeyDelete => "api_key.delete",
            AuditAction::OwnerUpdate => "owner.update",
            AuditAction::OwnerDelete => "owner.delete",
            AuditAction::SessionCreate => "session.create",
            AuditAction::SessionRevoke => "session.revoke",
            AuditAction::SessionDelete => "session.delete",
            AuditAction::AccountDelete => "account.delete",
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == raw)
    }

    pub const fn category(self) -> AuditCategory {
        match self {
            AuditAction::ApplicationCreate
            | AuditAction::ApplicationRotateKey
            | AuditAction::ApplicationUpdate
            | AuditAction::ApplicationDelete
            // Deleting an account deletes its applications first of all.
            | AuditAction::AccountDelete => AuditCategory::Application,
            AuditAction::ApiKeyCreate
            | AuditAction::ApiKeyUpdate
            | AuditAction::ApiKeyRevoke
            | AuditAction::ApiKeyRoll
            | AuditAction::ApiKeyImport
            | AuditAction::ApiKeyDelete
            // An owner's terms are its keys' terms.
            | AuditAction::OwnerUpdate
            | AuditAction::OwnerDelete => AuditCategory::ApiKey,
            AuditAction::SessionCreate => AuditCategory::Login,
            AuditAction::SessionRevoke | AuditAction::SessionDelete => AuditCategory::Session,
        }
    }
}

/// Who is acting and under which request: taken from the admin call's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The admin credential used, as `admin:` and the first 8 hex digits of its SHA-256
    /// (enough to tell tokens apart, nothing to guess a 256-bit token from).
    pub credential: String,
    /// Whom the caller acts for, as it says in `x-keygate-actor` (e.g. the dashboard user).
    pub on_behalf_of: Option<String>,
    pub request_id: String,
}

impl Actor {
    pub const MAX_ON_BEHALF_OF: usize = 128;

    /// For tools and tests that act with no admin call behind them.
    pub fn system(request_id: &str) -> Self {
        Self { credential: "system".into(), on_behalf_of: None, request_id: request_id.into() }
    }

    /// Validates `x-keygate-actor`: printable, 1..=128 characters.
    pub fn parse_on_behalf_of(raw: &str) -> Result<String, InvalidField> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.chars().count() > Self::MAX_ON_BEHALF_OF {
            return Err(InvalidField::new(
                "x-keygate-actor",
                format!("must be 1 to {} characters", Self::MAX_ON_BEHALF_OF),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(InvalidField::new("x-keygate-actor", "must not contain control characters"));
        }
        Ok(trimmed.to_owned())
    }
}

/// One record of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// `evt_`, the time in hex and a process counter and random bits: ids sort by time,
    /// and, within one process, in the order the events were made.
    pub id: String,
    pub account_id: AccountId,
    pub action: AuditAction,
    pub actor: Actor,
    /// The id of what was acted on (a key, an application, a session).
    pub target: String,
    pub occurred_at: Timestamp,
    /// A JSON object with what changed. Never a secret or a hash.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(
        account_id: AccountId,
        action: AuditAction,
        actor: &Actor,
        target: impl Into<String>,
        occurred_at: Timestamp,
        detail: serde_json::Value,
    ) -> Result<Self, getrandom::Error> {
        Ok(Self {
            id: new_event_id(occurred_at)?,
            account_id,
            action,
            actor: actor.clone(),
            target: target.into(),
            occurred_at,
            detail,
        })
    }

    /// An event made by a tool rather than an admin call (benchmarks, tests, imports).
    pub fn system(
        account_id: AccountId,
        action: AuditAction,
        target: impl Into<String>,
        occurred_at: Timestamp,
    ) -> Result<Self, getrandom::Error> {
        Self::new(account_id, action, &Actor::system("-"), target, occurred_at, serde_json::json!({}))
    }

    pub fn category(&self) -> AuditCategory {
        self.action.category()
    }

    /// An event of the same call for another object it acted on (a deletion's cascade, an
    /// import's keys): a new id, the same actor, time and detail.
    pub fn for_object(&self, action: AuditAction, target: impl Into<String>) -> Result<Self, getrandom::Error> {
        Ok(Self { id: new_event_id(self.occurred_at)?, action, target: target.into(), ..self.clone() })
    }
}

const EVENT_ID_PREFIX: &str = "evt_";
const EVENT_ID_BODY: usize = 12 + 8 + 8;

fn new_event_id(at: Timestamp) -> Result<String, getrandom::Error> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut random = [0u8; 4];
    getrandom::getrandom(&mut random)?;
    let millis = at.as_millis().clamp(0, 0xffff_ffff_ffff);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{EVENT_ID_PREFIX}{millis:012x}{n:08x}{:08x}", u32::from_le_bytes(random)))
}

/// Is this something an event id can be (for page tokens)?
pub fn is_event_id(raw: &str) -> bool {
    raw.strip_prefix(EVENT_ID_PREFIX)
        .is_some_and(|body| body.len() == EVENT_ID_BODY && body.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What `ListAuditEvents` asks for.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Case-insensitive substring of the action, target, actor, on-behalf-of or request id.
    pub search: Option<String>,
    /// Empty means every category.
    pub categories: Vec<AuditCategory>,
}

impl AuditQuery {
    /// The filter as the SQL store applies it, for stores without SQL.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        let in_category = self.categories.is_empty() || self.categories.contains(&event.category());
        let found = self.search.as_deref().is_none_or(|term| {
            let term = term.to_lowercase();
            [
                event.action.as_str(),
                &event.target,
                &event.actor.credential,
                event.actor.on_behalf_of.as_deref().unwrap_or(""),
                &event.actor.request_id,
            ]
            .iter()
            .any(|field| field.to_lowercase().contains(&term))
        });
        in_category && found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_sort_by_time_then_by_creation() {
        let a = new_event_id(Timestamp::from_millis(1_000)).unwrap();
        let b = new_event_id(Timestamp::from_millis(1_000)).unwrap();
        let c = new_event_id(Timestamp::from_millis(999)).unwrap();
        assert!(a < b && c < a, "{a} {b} {c}");
        assert!(is_event_id(&a));
        assert!(!is_event_id("evt_xyz") && !is_event_id("key_0123456789abcdef"));
    }

    #[test]
    fn categories_parse_exactly_and_name_the_known_ones() {
        assert_eq!(AuditCategory::parse("Login").unwrap(), AuditCategory::Login);
        let err = AuditCategory::parse("login").unwrap_err();
        assert!(err.problem.contains("ApiKey, Application, Session, Login"), "{err}");
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::from_stored(action.as_str()), Some(action));
        }
    }
}
