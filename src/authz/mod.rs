//! Authorize: from a request to a [`Verdict`], in the order of the README's decision table.
//!
//! This module gathers the facts (route, credential, key record, application) through the
//! [`Store`] trait and the [`Verifier`]; [`decision::evaluate`] decides on them.

pub mod decision;
pub mod verifier;

use crate::clock::Clock;
use crate::code::Code;
use crate::domain::{ApiKeyCredential, ApplicationId, Scope};
use crate::policy::Policy;
use crate::store::{KeyRecord, Store, StoreError};
use decision::{evaluate, ApplicationFact, Deny};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use verifier::{Verifier, VerifierError};

/// A request to decide, borrowed from the wire message.
#[derive(Debug)]
pub struct AuthorizeQuery<'a> {
    pub credential: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub application_id: Option<&'a str>,
    pub required_scopes: Vec<Scope>,
}

#[derive(Debug)]
pub struct Verdict {
    /// `None` when allowed.
    pub deny: Option<Deny>,
    /// The key whose secret was verified, if any (even when denied: the caller proved
    /// possession, so saying whose key it is tells them nothing new).
    pub principal: Option<Arc<KeyRecord>>,
    pub route: Option<Arc<str>>,
    pub application_id: Option<String>,
}

impl Verdict {
    fn deny(mut self, deny: Deny) -> Self {
        self.deny = Some(deny);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("the key store is unavailable")]
    Unavailable(#[source] StoreError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
}

impl From<StoreError> for AuthzError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => AuthzError::Unavailable(e),
            other => AuthzError::Store(other),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct VerifiedCacheSettings {
    pub capacity: u64,
    pub ttl: Duration,
}

/// Why a presented secret was not accepted; shared by callers that waited on one check.
#[derive(Debug, thiserror::Error)]
enum NotVerified {
    #[error("wrong secret")]
    Mismatch,
    #[error(transparent)]
    Failed(#[from] VerifierError),
}

pub struct Authorizer {
    policy: Arc<Policy>,
    store: Arc<dyn Store>,
    verifier: Arc<Verifier>,
    /// SHA-256 digests of credentials whose secret argon2 has accepted. Keyed by a digest
    /// of the whole credential, never the credential itself. A key's hash never changes,
    /// so an entry stays true; revocation and expiry are read from the key record.
    verified: moka::future::Cache<[u8; 32], ()>,
    clock: Arc<dyn Clock>,
}

impl Authorizer {
    pub fn new(
        policy: Arc<Policy>,
        store: Arc<dyn Store>,
        verifier: Arc<Verifier>,
        clock: Arc<dyn Clock>,
        settings: VerifiedCacheSettings,
    ) -> Self {
        Self {
            policy,
            store,
            verifier,
            verified: moka::future::Cache::builder().max_capacity(settings.capacity).time_to_live(settings.ttl).build(),
            clock,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub async fn authorize(&self, query: &AuthorizeQuery<'_>) -> Result<Verdict, AuthzError> {
        // 1. The route.
        let Some(matched) = self.policy.match_route(query.method, query.path) else {
            return Ok(Verdict {
                deny: Some(Deny::new(Code::NotFound, "no route matches the request")),
                principal: None,
                route: None,
                application_id: query.application_id.map(str::to_owned),
            });
        };
        let application_id = query.application_id.or(matched.application_id);
        let verdict = Verdict {
            deny: None,
            principal: None,
            route: Some(matched.route.template.clone()),
            application_id: application_id.map(str::to_owned),
        };

        // 2-3. A well-formed credential, decided without touching the store.
        if query.credential.is_empty() {
            return Ok(verdict.deny(Deny::new(Code::ApiKeyInvalid, "no API key was presented")));
        }
        let credential = match ApiKeyCredential::parse(query.credential) {
            Ok(credential) => credential,
            Err(malformed) => return Ok(verdict.deny(Deny::new(Code::ApiKeyInvalid, malformed.to_string()))),
        };

        // 4. A known key and its secret; until then the caller learns nothing of its state.
        let key = self.store.key(credential.key_id()).await?;
        if !self.verify(&credential, key.as_deref()).await? {
            return Ok(verdict.deny(Deny::new(Code::ApiKeyInvalid, "unknown API key or wrong secret")));
        }
        let key = key.expect("a verified credential has a key record");

        // 5-7. State, application, scopes.
        let application = match application_id {
            None => None,
            Some(raw) => match ApplicationId::parse(raw) {
                Ok(id) => self.store.application(&id).await?,
                Err(_) => None,
            },
        };
        let fact = match (&application_id, &application) {
            (None, _) => ApplicationFact::NotRequested,
            (Some(_), None) => ApplicationFact::Unknown,
            (Some(_), Some(app)) => ApplicationFact::Known(app),
        };
        let required = matched.route.scopes.iter().chain(&query.required_scopes);
        let outcome = evaluate(&key, fact, required, self.clock.now());
        Ok(Verdict { deny: outcome.err(), principal: Some(key), ..verdict })
    }

    /// Is this the key's secret? A cache hit costs a SHA-256; a miss costs one argon2
    /// verification, shared by every concurrent caller presenting the same credential.
    async fn verify(&self, credential: &ApiKeyCredential<'_>, key: Option<&KeyRecord>) -> Result<bool, AuthzError> {
        let Some(key) = key else {
            self.verifier.verify(credential.secret(), None).await?;
            return Ok(false);
        };
        let digest: [u8; 32] = Sha256::digest(credential.as_str().as_bytes()).into();
        if self.verified.get(&digest).await.is_some() {
            return Ok(true);
        }
        let checked = self
            .verified
            .try_get_with(digest, async {
                match self.verifier.verify(credential.secret(), Some(&key.secret_hash)).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(NotVerified::Mismatch),
                    Err(e) => Err(NotVerified::Failed(e)),
                }
            })
            .await;
        match checked {
            Ok(()) => Ok(true),
            Err(e) => match Arc::try_unwrap(e) {
                Ok(NotVerified::Mismatch) => Ok(false),
                Ok(NotVerified::Failed(e)) => Err(e.into()),
                // Shared with other waiters: a mismatch for them is a mismatch for us.
                Err(shared) => match *shared {
                    NotVerified::Mismatch => Ok(false),
                    NotVerified::Failed(_) => {
                        Err(AuthzError::Verifier(VerifierError::Hash("a shared verification failed".into())))
                    }
                },
            },
        }
    }
}
