//! The records keygate keeps: plain data, as stored. What a cache or a verifier remembers
//! about a record lives with them, not here.

use super::{
    AccountId, ApplicationId, CredentialKind, CreditBalance, KeyId, KeyLimit, KeyTerms, Name, OwnerId, Refill, Scopes,
    SecretHash, SessionId, Timestamp, UserId,
};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: ApplicationId,
    pub account_id: AccountId,
    pub name: Name,
    pub created_at: Timestamp,
}

/// What a key record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A management API key, made by `CreateApiKey`.
    ApiKey,
    /// An application's runtime key, made by `RotateApplicationKey`; restricted to that one
    /// application and accepted only on routes whose policy names `runtime_key`.
    Runtime,
}

impl KeyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::ApiKey => "api_key",
            KeyKind::Runtime => "runtime",
        }
    }
}

/// A stored API key: everything but the secret, which is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub account_id: AccountId,
    pub kind: KeyKind,
    pub name: Name,
    pub scopes: Scopes,
    /// Empty means every application of the account.
    pub application_ids: Vec<ApplicationId>,
    pub secret_hash: SecretHash,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// A rotated runtime key keeps working until then and counts as revoked after.
    pub retire_at: Option<Timestamp>,
    pub revoked_reason: Option<String>,
    /// Bumped by every change; lets caches and replicas tell old from new.
    pub version: i64,
    /// The keyed digest of the credential that argon2 last accepted for this key (see
    /// [`VerifiedDigest`]), so that any replica recognises its holder without argon2.
    pub verified_digest: Option<VerifiedDigest>,
    /// When the key was last used, as stored (batched, about once a minute).
    pub last_used_at: Option<Timestamp>,
    /// Switched off by an operator, reversibly (revoking is final).
    pub disabled: bool,
    /// Its own limits, allowlist, metadata and refill.
    pub terms: KeyTerms,
    /// `None`: its calls are not counted in credits. As read: the store holds the truth,
    /// spent atomically by every call.
    pub credits: Option<CreditBalance>,
    /// Whom the key belongs to, in the customer's own terms.
    pub owner_id: Option<OwnerId>,
    /// That owner's shared limits and credits, as read with the key (a change to the owner
    /// is a change to each of its keys: version and notification).
    pub owner: Option<Arc<Owner>>,
    /// The key this one replaced by a roll (`RerollApiKey`).
    pub rolled_from: Option<KeyId>,
    /// The key that replaced this one by a roll. Until this key retires, its calls spend
    /// the successor's credits (they moved there): two keys, one balance.
    pub rolled_to: Option<KeyId>,
    /// For a key imported from another system: how its credential, which has no keygate
    /// id, finds this record (see [`super::imported`]). `None` for keys keygate issued.
    pub lookup: Option<Lookup>,
}

/// How an imported key's credential finds its record: the first characters of the
/// credential or a digest of it. Part of a secret, so never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Lookup(String);

impl Lookup {
    pub fn new(lookup: String) -> Self {
        Self(lookup)
    }
}

impl std::ops::Deref for Lookup {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lookup(<redacted>)")
    }
}

/// An owner's shared terms: every key naming the owner counts against its limits and, when
/// the key has no credits of its own, spends its credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub account_id: AccountId,
    pub id: OwnerId,
    pub limits: Vec<KeyLimit>,
    pub refill: Option<Refill>,
    /// As read, like a key's.
    pub credits: Option<CreditBalance>,
    pub updated_at: Timestamp,
}

/// Whose balance a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CreditHolder {
    Key(KeyId),
    Owner(AccountId, OwnerId),
}

impl CreditHolder {
    /// As `key_credits.key_id` holds it: a key id, or `owner/<account>/<owner>` (neither id
    /// may contain `/`, so the two never collide).
    pub fn stored(&self) -> String {
        match self {
            CreditHolder::Key(id) => id.to_string(),
            CreditHolder::Owner(account, owner) => format!("owner/{account}/{owner}"),
        }
    }
}

/// An HMAC-SHA-256, under a server-side key that is not in the database, of a credential
/// argon2 has accepted, with the first bytes of that key's own digest to say which key
/// made it. A key has exactly one secret, so a credential whose digest differs from a
/// usable one is wrong without any argon2 work; one whose digest matches is the holder.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifiedDigest {
    /// Which digest key made it: a replica with another key cannot use it.
    pub key_fingerprint: [u8; 8],
    pub digest: [u8; 32],
}

impl VerifiedDigest {
    /// As stored: hex of the fingerprint and the digest, 80 characters.
    pub fn to_hex(&self) -> String {
        let mut bytes = [0u8; 40];
        bytes[..8].copy_from_slice(&self.key_fingerprint);
        bytes[8..].copy_from_slice(&self.digest);
        super::hex(&bytes)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes: [u8; 40] = super::from_hex(text)?;
        let mut key_fingerprint = [0u8; 8];
        key_fingerprint.copy_from_slice(&bytes[..8]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[8..]);
        Some(Self { key_fingerprint, digest })
    }
}

/// Never printed: a digest of a credential says nothing, but logs have no use for it.
impl std::fmt::Debug for VerifiedDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifiedDigest(<redacted>)")
    }
}

/// What a new key is made of; the rest of a [`KeyRecord`] starts empty.
#[derive(Debug, Clone)]
pub struct NewKeyRecord {
    pub id: KeyId,
    pub account_id: AccountId,
    pub kind: KeyKind,
    pub name: Name,
    pub scopes: Scopes,
    pub application_ids: Vec<ApplicationId>,
    pub secret_hash: SecretHash,
    pub expires_at: Option<Timestamp>,
}

impl KeyRecord {
    /// A key as issued at `now`: version 1, never revoked, verified or used. The one way
    /// new records are built (the admin API, tests, benchmarks).
    pub fn issued(new: NewKeyRecord, now: Timestamp) -> Self {
        let NewKeyRecord { id, account_id, kind, name, scopes, application_ids, secret_hash, expires_at } = new;
        Self {
            id,
            account_id,
            kind,
            name,
            scopes,
            application_ids,
            secret_hash,
            created_at: now,
            updated_at: now,
            expires_at,
            revoked_at: None,
            retire_at: None,
            revoked_reason: None,
            version: 1,
            verified_digest: None,
            last_used_at: None,
            disabled: false,
            terms: KeyTerms::default(),
            credits: None,
            owner_id: None,
            owner: None,
            rolled_from: None,
            rolled_to: None,
            lookup: None,
        }
    }

    /// Whose credits a call with this key spends, under which refill rule: the key's own
    /// (its successor's, while a roll overlaps), else its owner's; `None` if neither has any.
    pub fn credit_holder(&self) -> Option<(CreditHolder, Option<&Refill>)> {
        if self.credits.is_some() {
            let holder = self.rolled_to.unwrap_or(self.id);
            return Some((CreditHolder::Key(holder), self.terms.refill.as_ref()));
        }
        let owner = self.owner.as_deref().filter(|o| o.credits.is_some())?;
        Some((CreditHolder::Owner(owner.account_id.clone(), owner.id.clone()), owner.refill.as_ref()))
    }

    /// Retired because a roll replaced it (rather than revoked by an operator).
    pub fn is_rolled_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.rolled_to.is_some() && self.retire_at.is_some_and(|at| at <= now)
    }

    /// An explicit revoke counts at once, whatever any replica's clock says; a scheduled
    /// retirement counts from its time.
    pub fn is_revoked_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_some() || self.retire_at.is_some_and(|at| at <= now)
    }

    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    pub fn allows_application(&self, id: &ApplicationId) -> bool {
        self.application_ids.is_empty() || self.application_ids.contains(id)
    }
}

/// A dashboard session. Its token's secret is kept only as a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub account_id: AccountId,
    pub user_id: UserId,
    pub secret_digest: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub version: i64,
}

impl SessionRecord {
    /// Usable at `now`: neither revoked nor expired.
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Who presented a verified credential.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An API key or an application runtime key.
    Key(Arc<KeyRecord>),
    Session(Arc<SessionRecord>),
}

impl Principal {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Principal::Key(key) if key.kind == KeyKind::Runtime => CredentialKind::RuntimeKey,
            Principal::Key(_) => CredentialKind::ApiKey,
            Principal::Session(_) => CredentialKind::Session,
        }
    }

    pub fn account_id(&self) -> &AccountId {
        match self {
            Principal::Key(key) => &key.account_id,
            Principal::Session(session) => &session.account_id,
        }
    }

    pub fn allows_application(&self, id: &ApplicationId) -> bool {
        match self {
            Principal::Key(key) => key.allows_application(id),
            Principal::Session(_) => true,
        }
    }
}
