//! Key and application management: the admin API's rules, free of gRPC.
//!
//! [`Manager`] is told who calls (a [`Caller`], or for a read the [`AdminGrant`] alone)
//! and checks here, once, that a token confined to one account touches nothing of
//! another's ([`confinement`]; an account's listings are read through an [`AccountView`]). Each write builds its audit event. One file per resource:
//! - [`applications`]: applications and their runtime keys.
//! - [`keys`]: API keys: create, read, list, update, revoke, roll, delete.
//! - [`import`]: keys made by another system, imported by their hashes.
//! - [`owners`]: an owner's shared limits and credits.
//! - [`sessions`]: dashboard sessions.
//! - [`admin_tokens`]: named admin tokens.
//! - [`accounts`]: an account's audit trail, and erasing an account.
//! - [`usage`]: decisions by outcome over time, and an account's top keys.

pub mod accounts;
pub mod admin_tokens;
pub mod applications;
pub mod confinement;
pub mod import;
pub mod keys;
pub mod owners;
pub mod sessions;
pub mod usage;

pub use admin_tokens::MAX_ADMIN_TOKEN_LIFETIME;
pub use applications::{Rotation, MAX_RUNTIME_KEY_GRACE};
pub use confinement::AccountView;
pub use import::{ImportEntry, ImportResult, KeyToImport, MAX_IMPORT_BATCH};
pub use keys::{NewApiKey, Roll, MAX_KEY_APPLICATIONS, MAX_REASON_LEN, MAX_ROLL_OVERLAP};

use crate::audit::{Actor, AuditAction, AuditEvent};
use crate::authn::digest::CredentialDigester;
use crate::authn::verifier::{Verifier, VerifierError};
use crate::clock::Clock;
use crate::domain::{
    is_admin_token_signed, AccountId, AdminGrant, ApplicationId, InvalidField, KeyLimit, KeyRecord, Timestamp,
};
use crate::feed::{FeedSettled, Subscribers};
use crate::store::changes::ChangeFeed;
use crate::store::invalidation::{Replicas, Settled};
use crate::store::{AdminStore, StoreError};
use crate::usage::UsageRecorder;
use std::sync::Arc;
use std::time::Duration;

/// Limits and defaults of sessions and runtime keys.
#[derive(Debug, Clone, Copy)]
pub struct ManageSettings {
    pub default_session_ttl: Duration,
    pub max_session_ttl: Duration,
    pub default_runtime_grace: Duration,
    pub max_runtime_grace: Duration,
    /// With other replicas (Postgres): the longest a change waits for every live replica to
    /// acknowledge it before those that have not are fenced (`--change-ack-timeout-ms`).
    pub change_ack_timeout: Duration,
    /// Revisions the change feed keeps (`--change-retention`): a subscriber further
    /// behind resumes from a snapshot.
    pub change_retention: u64,
}

impl ManageSettings {
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
    pub const MAX_SESSION_TTL: Duration = Duration::from_secs(30 * 86_400);
    pub const DEFAULT_RUNTIME_GRACE: Duration = Duration::from_secs(3600);
    pub const CHANGE_ACK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const CHANGE_RETENTION: u64 = 100_000;
}

impl Default for ManageSettings {
    fn default() -> Self {
        Self {
            default_session_ttl: Self::DEFAULT_SESSION_TTL,
            max_session_ttl: Self::MAX_SESSION_TTL,
            default_runtime_grace: Self::DEFAULT_RUNTIME_GRACE,
            max_runtime_grace: MAX_RUNTIME_KEY_GRACE,
            change_ack_timeout: Self::CHANGE_ACK_TIMEOUT,
            change_retention: Self::CHANGE_RETENTION,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The request does not have the expected shape (VALIDATION_ERROR).
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Well-formed but not valid for the resource (bad_request).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The caller's token does not reach this: another account, or a key only an admin
    /// changes (insufficient_scope).
    #[error("{0}")]
    OutOfScope(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
    /// The OS random source failed while making an id or a secret.
    #[error("the OS random source failed")]
    Randomness(#[from] getrandom::Error),
}

/// Who makes a change: what the admin gate granted the call (for confinement), and how the
/// audit trail names the caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub grant: AdminGrant,
    pub actor: Actor,
}

/// Is `template` a route of the policy in force, as the policy writes it? What a key's or
/// an owner's limit may name (the authorizer answers; a reload changes the answer).
pub type RouteTemplates = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The admin API's rules over the store; its methods live in the file of their resource.
pub struct Manager {
    store: Arc<dyn AdminStore>,
    verifier: Arc<Verifier>,
    clock: Arc<dyn Clock>,
    usage: Arc<UsageRecorder>,
    settings: ManageSettings,
    /// Signs the admin tokens it makes (see [`Manager::made_admin_token`]).
    digester: CredentialDigester,
    /// Other replicas that must apply a change before it is answered (Postgres only).
    replicas: Option<Arc<Replicas>>,
    /// The routes limits may name; `None`: any (no policy to ask).
    routes: Option<RouteTemplates>,
    /// Usage analytics, read by `usage` (none: usage is not counted).
    usage_counts: Option<Arc<crate::analytics::UsageCounts>>,
    /// This replica's change-feed subscribers, which must acknowledge a change (or be
    /// fenced) before it is answered, and the feed that numbers changes.
    feed: Option<(Arc<Subscribers>, Arc<dyn ChangeFeed>)>,
}

/// Who confirmed a change before it was answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settlement {
    /// Other replicas (Postgres; `None` alone on SQLite).
    pub replicas: Option<Settled>,
    /// This replica's change-feed subscribers (`None`: no feed served).
    pub subscribers: Option<FeedSettled>,
}

impl Manager {
    pub fn new(
        store: Arc<dyn AdminStore>,
        verifier: Arc<Verifier>,
        clock: Arc<dyn Clock>,
        usage: Arc<UsageRecorder>,
        settings: ManageSettings,
        digester: CredentialDigester,
    ) -> Self {
        Self {
            store,
            verifier,
            clock,
            usage,
            settings,
            digester,
            replicas: None,
            routes: None,
            usage_counts: None,
            feed: None,
        }
    }

    /// Limits that name a route must name one of these.
    pub fn with_routes(mut self, routes: RouteTemplates) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Usage is read from these counts' store (after this replica's are written).
    pub fn with_usage_counts(mut self, counts: Arc<crate::analytics::UsageCounts>) -> Self {
        self.usage_counts = Some(counts);
        self
    }

    /// Changes are answered only once every live replica has applied them (or was fenced).
    pub fn with_replicas(mut self, replicas: Arc<Replicas>) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// Changes are answered only once this replica's change-feed subscribers have
    /// acknowledged them (or were fenced).
    pub fn with_feed(mut self, subscribers: Arc<Subscribers>, feed: Arc<dyn ChangeFeed>) -> Self {
        self.feed = Some((subscribers, feed));
        self
    }

    /// Call after a change of `account` (`None`: any) that narrows what a credential may
    /// do has committed: returns once every live replica has applied it or has stopped
    /// trusting its cache (none to wait for on one process alone on SQLite, whose own
    /// cache the write invalidated), and every subscriber of the change feed that sees
    /// `account` has acknowledged its revision or was fenced. Both waits run at once.
    pub async fn settle(&self, account: Option<&AccountId>) -> Settlement {
        let replicas = async {
            match &self.replicas {
                Some(replicas) => Some(replicas.settle().await),
                None => None,
            }
        };
        let subscribers = async {
            let (subscribers, feed) = self.feed.as_ref()?;
            if subscribers.is_empty() {
                return Some(FeedSettled::default());
            }
            // The change committed: the newest revision is its own or a later one. If
            // it cannot be read, no subscriber can be shown to have it: all are fenced.
            match feed.feed_window().await {
                Ok(window) => Some(subscribers.settle(window.latest, account).await),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the change feed's newest revision: fencing its subscribers");
                    Some(subscribers.fence_unread(account))
                }
            }
        };
        let (replicas, subscribers) = tokio::join!(replicas, subscribers);
        Settlement { replicas, subscribers }
    }

    /// Did this deployment make `token` (its tag under the digest key)? Admin tokens
    /// that did not are refused without a store read.
    pub fn made_admin_token(&self, token: &str) -> bool {
        is_admin_token_signed(token, |random| self.digester.digest(random))
    }

    /// A key's last use as this replica knows it: stored, or seen since (batched writes).
    pub fn last_used_at(&self, key: &KeyRecord) -> Option<Timestamp> {
        self.usage.last_known(key)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The record of an action, stamped now; `detail` must hold no secret.
    fn event(
        &self,
        account: &AccountId,
        action: AuditAction,
        actor: &Actor,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<AuditEvent, ManageError> {
        Ok(AuditEvent::new(account.clone(), action, actor, target, self.clock.now(), detail)?)
    }

    fn check_expiry(&self, expires_at: Option<Timestamp>, now: Timestamp) -> Result<(), ManageError> {
        match expires_at {
            Some(at) if at <= now => Err(ManageError::BadRequest("expires_at must be in the future".into())),
            _ => Ok(()),
        }
    }

    /// A limit that names a route names one the policy in force has, as it writes it
    /// (`GET /api/v1/panel/applications/{application_id}`): any other would limit nothing.
    fn check_limit_routes(&self, limits: &[KeyLimit]) -> Result<(), ManageError> {
        let Some(known) = &self.routes else { return Ok(()) };
        match limits.iter().filter_map(|l| l.route.as_deref()).find(|route| !known(route)) {
            None => Ok(()),
            Some(route) => Err(InvalidField::new(
                "limits.route",
                format!(
                    "{route:?} is not a route of the policy: name a route template exactly as the policy writes \
                     it, such as \"GET /api/v1/panel/applications/{{application_id}}\""
                ),
            )
            .into()),
        }
    }

    /// Every application a key is restricted to must belong to the key's account.
    async fn check_applications(&self, account: &AccountId, ids: &[ApplicationId]) -> Result<(), ManageError> {
        if ids.len() > MAX_KEY_APPLICATIONS {
            return Err(
                InvalidField::new("application_ids", format!("at most {MAX_KEY_APPLICATIONS} applications")).into()
            );
        }
        for id in ids {
            match self.store.application(id).await? {
                Some(app) if app.account_id == *account => {}
                _ => {
                    return Err(ManageError::NotFound(format!("application {id} was not found for account {account}")))
                }
            }
        }
        Ok(())
    }
}
