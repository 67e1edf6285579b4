//! Who is calling: from a presented credential to a verified [`Principal`], end to end —
//! kinds and parsing, keyed digests and argon2, single flight, what is remembered about
//! wrong credentials, and the budgets that bound what guessing may cost.
//!
//! The order of the checks is the cost order, so a holder is never made to wait behind
//! work done for somebody else:
//! 1. parse (kind, shape, checksum): no I/O;
//! 2. the record, from memory or the store (an id not in memory costs the client a unit of
//!    its budget; an id known absent is remembered apart from real records);
//! 3. the keyed digest against the one stored beside the hash: the holder is recognised
//!    and any other credential is known wrong, both at the cost of one HMAC;
//! 4. only for a key nobody has verified yet: argon2, within the budgets, shared by
//!    concurrent callers presenting the same credential.
//!
//! What stays observable: whether a key id exists (ids are not secret: they are in every
//! credential, in `x-keygate-key-id` and in the audit trail), and whether a key was ever
//! verified (a wrong secret for it costs an HMAC, not argon2). A key's state — revoked,
//! expired, restricted — is decided only after its secret is verified, and never shows.

pub mod budget;
pub mod digest;
mod flight;
pub mod verifier;

use crate::code::Code;
use crate::domain::imported;
use crate::domain::{ClientNetwork, Credential, CredentialKind, Deny, KeyId, KeyKind, KeyRecord, Principal, Timestamp};
use crate::policy::Accepts;
use crate::store::cached::CachedStore;
use crate::store::{InMemory, KeyUse, Records, StoreError};
pub use budget::Throttled;
use budget::{FailureBudgets, Reservation};
use digest::{CredentialDigester, Recognition};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use verifier::{Verifier, VerifierError};

/// What came of a presented credential.
#[derive(Debug)]
pub enum Authentication {
    Verified(Principal),
    /// Missing, malformed, unknown, of the wrong kind, or wrong: the code says which.
    Refused(Deny),
    /// Not judged: a budget for guessing is spent, or argon2's queue is full.
    Throttled(Throttled),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
}

#[derive(Debug, Clone, Copy)]
pub struct AuthnSettings {
    /// How long a credential argon2 rejected is remembered (repeating it costs a lookup).
    pub rejected_ttl: Duration,
    /// Capacity of the memories of verified and rejected credentials.
    pub capacity: u64,
}

impl Default for AuthnSettings {
    fn default() -> Self {
        Self { rejected_ttl: Duration::from_secs(60), capacity: 100_000 }
    }
}

/// Why a shared verification did not accept the credential.
#[derive(Debug, thiserror::Error)]
enum NotVerified {
    #[error("wrong secret")]
    Mismatch,
    #[error("throttled")]
    Throttled(Throttled),
    #[error(transparent)]
    Failed(#[from] VerifierError),
}

pub struct Authenticator {
    store: Arc<CachedStore>,
    verifier: Arc<Verifier>,
    digester: CredentialDigester,
    budgets: Arc<FailureBudgets>,
    /// Verifications in flight, by keyed digest of the whole credential: concurrent
    /// callers presenting one credential share one argon2 run.
    verifying: flight::SingleFlight<[u8; 32], Result<(), Arc<NotVerified>>>,
    /// Credentials argon2 accepted on this replica, by keyed digest: the fallback for a
    /// record whose stored digest was made under another digest key, or is not loaded yet.
    verified_here: quick_cache::sync::Cache<[u8; 32], ()>,
    /// Credentials argon2 rejected, with when: a repeated wrong secret costs a lookup
    /// for [`AuthnSettings::rejected_ttl`] on the server's clock.
    rejected: Arc<quick_cache::sync::Cache<[u8; 32], Timestamp>>,
    rejected_ttl: Duration,
    /// Imported keys a credential was accepted for, by its keyed digest: a known imported
    /// credential costs no store query.
    imported_keys: quick_cache::sync::Cache<[u8; 32], KeyId>,
    /// Imported keys whose stored hash can never verify, logged once each.
    unusable: quick_cache::sync::Cache<KeyId, ()>,
    /// Imported keys queued for re-hashing, and the queue (its worker starts with the
    /// first adoption, inside the runtime).
    adopting: Arc<std::sync::Mutex<std::collections::HashSet<KeyId>>>,
    adoptions: std::sync::OnceLock<tokio::sync::mpsc::Sender<Adoption>>,
}

/// Imported keys with a hash that can never verify, remembered (to log each once) at most.
const UNUSABLE_REMEMBERED: usize = 10_000;

/// Imported keys waiting to be re-hashed at most: past it, a later use queues a key again.
const ADOPTIONS_QUEUED: usize = 10_000;

/// How long an adoption waits for the verifier to be idle before it takes its account's turn.
const ADOPTION_PATIENCE: Duration = Duration::from_secs(1);

/// An imported key verified with its foreign hash, to be made keygate's own.
struct Adoption {
    id: KeyId,
    account: crate::domain::AccountId,
    old: crate::domain::SecretHash,
    /// The whole credential, for the new hash; dropped when the adoption is done.
    secret: String,
    lookup: String,
    verified: crate::domain::VerifiedDigest,
    rehash: bool,
}

/// Re-hashes imported keys one at a time, preferably in the verifier's idle time: while
/// verifications wait it waits, up to [`ADOPTION_PATIENCE`], so a burst of first uses does
/// not queue argon2 work in front of callers; past that it takes its turn in the key's
/// account's share, so steady guessing at one account cannot hold every account's
/// adoptions back.
struct Adopter {
    store: Arc<CachedStore>,
    verifier: Arc<Verifier>,
    adopting: Arc<std::sync::Mutex<std::collections::HashSet<KeyId>>>,
}

impl Adopter {
    async fn run(self, mut waiting: tokio::sync::mpsc::Receiver<Adoption>) {
        while let Some(adoption) = waiting.recv().await {
            let patience = tokio::time::Instant::now() + ADOPTION_PATIENCE;
            while self.verifier.queued() > 0 && tokio::time::Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let Adoption { id, account, old, secret, lookup, verified, rehash } = adoption;
            // In the key's account's share: an account's adoptions wait behind its own work.
            let new = if rehash { self.verifier.rehash(&account, secret.as_bytes()).await } else { Ok(old.clone()) };
            drop(secret);
            let adopted = match new {
                Ok(new) => {
                    self.store.adopt_imported(id, &old, &new, &lookup, &verified).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            self.adopting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            if let Err(error) = adopted {
                tracing::warn!(key_id = %id, %error, "could not re-hash an imported key; its own hash stays the check");
            }
        }
    }
}

impl Authenticator {
    pub fn new(
        store: Arc<CachedStore>,
        verifier: Arc<Verifier>,
        digester: CredentialDigester,
        budgets: Arc<FailureBudgets>,
        settings: AuthnSettings,
    ) -> Self {
        let capacity = settings.capacity.max(1);
        Self {
            store,
            verifier,
            digester,
            budgets,
            verifying: flight::SingleFlight::default(),
            verified_here: quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)),
            rejected: Arc::new(quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX))),
            rejected_ttl: settings.rejected_ttl,
            imported_keys: quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)),
            unusable: quick_cache::sync::Cache::new(UNUSABLE_REMEMBERED),
            adopting: Arc::default(),
            adoptions: std::sync::OnceLock::new(),
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    pub fn budgets(&self) -> &Arc<FailureBudgets> {
        &self.budgets
    }

    /// Proves who presented `raw`, for a route that `accepts` some kinds of credential.
    pub async fn authenticate(
        &self,
        raw: &str,
        accepts: Accepts,
        client: Option<ClientNetwork>,
    ) -> Result<Authentication, AuthnError> {
        // What a missing or unusable credential is called depends on what the route wants.
        let missing = if accepts.any_key() { Code::ApiKeyInvalid } else { Code::Unauth };
        if raw.is_empty() {
            return Ok(refused(missing, "no credential was presented"));
        }
        let Some(kind) = CredentialKind::of(raw) else {
            // Not keygate's format: perhaps a key imported from another system.
            if accepts.allows(CredentialKind::ApiKey) && imported::plausible(raw) {
                return Box::pin(self.imported_key(raw, client)).await;
            }
            return Ok(refused(missing, "the credential is not in a format keygate issues"));
        };
        if !accepts.allows(kind) {
            return Ok(Authentication::Refused(match kind {
                // A key where only a session will do: said without any work.
                CredentialKind::ApiKey | CredentialKind::RuntimeKey if !accepts.any_key() => {
                    Deny::of(Code::SessionRequired)
                }
                CredentialKind::ApiKey | CredentialKind::RuntimeKey => {
                    Deny::new(Code::ApiKeyInvalid, format!("a {} is not accepted on this route", kind.as_str()))
                }
                CredentialKind::Session => {
                    Deny::new(Code::ApiKeyInvalid, "this route needs an API key, not a dashboard session")
                }
            }));
        }
        let credential = match Credential::parse(raw) {
            Ok(credential) => credential,
            Err(malformed) => {
                let code = if kind == CredentialKind::Session { Code::Unauth } else { Code::ApiKeyInvalid };
                return Ok(refused(code, malformed.to_string()));
            }
        };
        match kind {
            CredentialKind::Session => self.session(&credential, client).await,
            CredentialKind::ApiKey | CredentialKind::RuntimeKey => self.key(&credential, kind, client).await,
        }
    }

    async fn session(
        &self,
        credential: &Credential<'_>,
        client: Option<ClientNetwork>,
    ) -> Result<Authentication, AuthnError> {
        let id = credential.session_id();
        let memory = self.store.session_in_memory(id);
        let looked_up = matches!(memory, InMemory::Unknown);
        let session = match memory {
            InMemory::Fresh(session) => Some(session),
            InMemory::Absent => None,
            InMemory::Stale => self.store.session(id).await?,
            InMemory::Unknown => match self.budgeted_lookup(client, || self.store.session(id)).await? {
                Ok(session) => session,
                Err(throttled) => return Ok(Authentication::Throttled(throttled)),
            },
        };
        // A lookup that found nothing kept its unit: that unit is this failure's charge.
        let charged = looked_up && session.is_none();
        // A session's secret is 262 random bits: its SHA-256 is what is stored.
        let digest: [u8; 32] = Sha256::digest(credential.secret().as_bytes()).into();
        match session {
            Some(session) if bool::from(session.secret_digest.ct_eq(&digest)) => {
                Ok(Authentication::Verified(Principal::Session(session)))
            }
            _ => {
                if !charged {
                    self.budgets.note_client_failure(client);
                }
                Ok(refused(Code::Unauth, "unknown dashboard session"))
            }
        }
    }

    async fn key(
        &self,
        credential: &Credential<'_>,
        kind: CredentialKind,
        client: Option<ClientNetwork>,
    ) -> Result<Authentication, AuthnError> {
        let invalid = || refused(Code::ApiKeyInvalid, "unknown API key or wrong secret");
        let id = credential.key_id();
        let memory = self.store.key_in_memory(id);
        let looked_up = matches!(memory, InMemory::Unknown);
        let record = match memory {
            InMemory::Fresh(record) => Some(record),
            InMemory::Absent => None,
            // A record this replica holds and must only reload (its freshness ran out, the
            // cache was distrusted) is no guess: the reload costs the client nothing, so a
            // neighbour who spent the address's budget cannot keep its holder out.
            InMemory::Stale => self.store.key(id).await?,
            InMemory::Unknown => match self.budgeted_lookup(client, || self.store.key(id)).await? {
                Ok(record) => record,
                Err(throttled) => return Ok(Authentication::Throttled(throttled)),
            },
        };
        // A lookup that found nothing kept its unit: that unit is this failure's charge (one
        // unit per unknown id, not one for the lookup and another for the answer).
        let charged = looked_up && record.is_none();
        let expected = if kind == CredentialKind::RuntimeKey { KeyKind::Runtime } else { KeyKind::ApiKey };
        // A record of the other kind is as unknown as no record at all; so is an imported
        // key, whose credential is not keygate's (its id alone, known from headers, must not
        // let a forged `kg_` credential reach its foreign hash).
        let Some(record) = record.filter(|k| k.kind == expected && k.lookup.is_none()) else {
            if !charged {
                self.budgets.note_client_failure(client);
            }
            return Ok(invalid());
        };
        // The credential names its key: its digest alone says which key it was judged for.
        let digest = self.digester.digest(credential.as_str());
        let record = match self.recognise(record, &digest, || digest, client) {
            Ok(judged) => return Ok(judged),
            Err(unjudged) => unjudged,
        };
        // The rest runs argon2: boxed, so the paths above keep a small future.
        Box::pin(self.verify(credential.secret(), record, digest, digest, client)).await
    }

    /// Judges a credential for `record` without any hashing: the holder is recognised by
    /// the stored keyed digest, or by what this replica remembers argon2 accepting or
    /// rejecting. Gives the record back when only a verification can tell.
    fn recognise(
        &self,
        record: Arc<KeyRecord>,
        digest: &[u8; 32],
        memo: impl Fn() -> [u8; 32],
        client: Option<ClientNetwork>,
    ) -> Result<Authentication, Arc<KeyRecord>> {
        let wrong = || {
            self.budgets.note_client_failure(client);
            refused(Code::ApiKeyInvalid, "unknown API key or wrong secret")
        };
        match self.digester.judge(record.verified_digest.as_ref(), digest) {
            Recognition::Holder => Ok(Authentication::Verified(Principal::Key(record))),
            Recognition::Wrong => Ok(wrong()),
            Recognition::Unknown => {
                // Made only here: a recognised holder (the hot path) pays no second HMAC.
                let memo = memo();
                if self.verified_here.get(&memo).is_some() {
                    Ok(Authentication::Verified(Principal::Key(record)))
                } else if self.rejected_lately(&memo) {
                    Ok(wrong())
                } else {
                    Err(record)
                }
            }
        }
    }

    /// A credential keygate did not issue, for a key imported from another system: found
    /// by its keyed digest (or, before its first use, by the form it was imported in), then
    /// judged against each record found — each account's best match first, earliest import
    /// first, at most [`imported::MAX_CANDIDATES`] — until one accepts it, so a record
    /// another account imported under a start cannot shadow this one. A credential that
    /// finds nothing costs one indexed query from the client's lookup budget and no hash.
    async fn imported_key(&self, raw: &str, client: Option<ClientNetwork>) -> Result<Authentication, AuthnError> {
        let digest = self.digester.digest(raw);
        let (candidates, charged) = match self.imported_candidates(raw, &digest, client).await? {
            Ok(found) => found,
            Err(throttled) => return Ok(Authentication::Throttled(throttled)),
        };
        let mut judged = false;
        for record in candidates.into_iter().filter(|k| k.kind == KeyKind::ApiKey && k.lookup.is_some()) {
            judged = true;
            match Box::pin(self.imported_record(raw, record, digest, client)).await? {
                Authentication::Refused(_) => {}
                answer => return Ok(answer),
            }
        }
        // A lookup that found nothing kept its unit: that unit is this failure's charge;
        // each record judged charged its own.
        if !judged && !charged {
            self.budgets.note_client_failure(client);
        }
        Ok(refused(Code::ApiKeyInvalid, "unknown API key or wrong secret"))
    }

    /// The records `raw` may be: the one this replica last accepted it for (only a hint of
    /// where to look), or what the store finds, from the client's lookup budget. Says too
    /// whether the lookup kept its unit (it found nothing).
    async fn imported_candidates(
        &self,
        raw: &str,
        digest: &[u8; 32],
        client: Option<ClientNetwork>,
    ) -> Result<Result<(Vec<Arc<KeyRecord>>, bool), Throttled>, StoreError> {
        if let Some(id) = self.imported_keys.get(digest) {
            let known = match self.store.key_in_memory(id) {
                InMemory::Fresh(record) => Some(record),
                InMemory::Absent => None,
                InMemory::Stale | InMemory::Unknown => self.store.key(id).await?,
            };
            if let Some(record) = known.filter(|record| record.lookup.is_some()) {
                return Ok(Ok((vec![record], false)));
            }
        }
        let lookups = imported::lookups(raw, digest);
        let reservation = match self.budgets.admit_lookup(client) {
            Ok(reservation) => reservation,
            Err(throttled) => return Ok(Err(throttled)),
        };
        let found = self.store.keys_by_lookup(&lookups).await?;
        // Found by a digest of the credential: no guess. Found by its start (which may be
        // displayed anywhere) or not at all: the unit stays spent.
        let by_digest = |k: &Arc<KeyRecord>| {
            k.lookup.as_deref().is_some_and(|l| !l.starts_with("start:") && lookups.iter().any(|x| x == l))
        };
        if found.iter().any(by_digest) {
            reservation.succeeded();
        } else if !found.is_empty() {
            reservation.found_by_guessable();
        } else {
            reservation.failed();
        }
        let charged = found.is_empty();
        Ok(Ok((found, charged)))
    }

    /// Judges `raw` for one imported record: by the stored keyed digest or what this
    /// replica remembers, by a SHA-256 import's digest, or by the record's slow hash. What
    /// a replica remembers of an imported credential is remembered for the key it was
    /// judged against (another key's lookup could find it later, after a delete), never for
    /// the credential alone. An accepted key is adopted.
    async fn imported_record(
        &self,
        raw: &str,
        record: Arc<KeyRecord>,
        digest: [u8; 32],
        client: Option<ClientNetwork>,
    ) -> Result<Authentication, AuthnError> {
        let memo_of = |id: crate::domain::KeyId| self.digester.digest(&format!("{id}\n{raw}"));
        let id = record.id;
        let record = match self.recognise(record, &digest, || memo_of(id), client) {
            Ok(judged) => {
                // Recognised by its digest, but perhaps not re-hashed yet (the verifier was busy).
                if let Authentication::Verified(Principal::Key(key)) = &judged {
                    self.accepted(key, raw, digest);
                }
                return Ok(judged);
            }
            Err(unjudged) => unjudged,
        };
        // A SHA-256 import is checked here and now: no slow hash to queue for.
        if let Some(matches) = imported::verify_sha256(raw, &record.secret_hash) {
            if !matches {
                self.budgets.note_client_failure(client);
                return Ok(refused(Code::ApiKeyInvalid, "unknown API key or wrong secret"));
            }
            self.verified_here.insert(memo_of(id), ());
            self.accepted(&record, raw, digest);
            return Ok(Authentication::Verified(Principal::Key(record)));
        }
        if let Some(refusal) = self.unjudgeable(raw, &record, client) {
            return Ok(refusal);
        }
        let verified = self.verify(raw, record.clone(), digest, memo_of(id), client).await?;
        if let Authentication::Verified(_) = verified {
            self.accepted(&record, raw, digest);
        }
        Ok(verified)
    }

    /// Denies, as a wrong secret and without running it, what a record's hash cannot judge:
    /// a credential longer than bcrypt reads (every variant sharing its first 72 bytes
    /// would pass, and the re-hash would bind the key to whichever came first), or a stored
    /// hash that can never verify (written before hashes were checked at import, or by
    /// hand): logged once per key, never an internal error.
    fn unjudgeable(&self, raw: &str, record: &KeyRecord, client: Option<ClientNetwork>) -> Option<Authentication> {
        let phc = record.secret_hash.expose_phc();
        match imported::check_stored(phc) {
            Err(problem) => {
                if self.unusable.get(&record.id).is_none() {
                    self.unusable.insert(record.id, ());
                    tracing::warn!(key_id = %record.id, problem = %problem.problem,
                        "an imported key's stored hash can never verify: it is denied until deleted");
                }
            }
            Ok(()) if !imported::beyond_bcrypt(raw, phc) => return None,
            Ok(()) => {}
        }
        self.budgets.note_client_failure(client);
        Some(refused(Code::ApiKeyInvalid, "unknown API key or wrong secret"))
    }

    /// An imported credential accepted for `record`: remembered as where to look next
    /// time, and the key adopted.
    fn accepted(&self, record: &KeyRecord, raw: &str, digest: [u8; 32]) {
        self.imported_keys.insert(digest, record.id);
        self.adopt(record, raw, imported::keyed_lookup(&digest), digest);
    }

    /// After an imported key is verified, off the request path: its hash becomes keygate's
    /// argon2id of the whole credential, and its lookup the credential's keyed digest (the
    /// form it was imported in still finds it, and is judged by the stored keyed digest). The re-hash uses only idle
    /// verifier capacity: when verifications are waiting it is left to a later use (the
    /// key's own hash and stored digest keep working meanwhile), so a burst of first uses
    /// never queues argon2 work in front of callers. One adoption per key at a time.
    fn adopt(&self, record: &KeyRecord, raw: &str, lookup: String, digest: [u8; 32]) {
        let rehash = !self.verifier.is_current(&record.secret_hash);
        if record.lookup.as_deref() == Some(lookup.as_str()) && !rehash {
            return;
        }
        let id = record.id;
        if !self.adopting.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return;
        }
        let adoption = Adoption {
            id,
            account: record.account_id.clone(),
            old: record.secret_hash.clone(),
            secret: raw.to_owned(),
            lookup,
            verified: self.digester.verified(digest),
            rehash,
        };
        let queue = self.adoptions.get_or_init(|| {
            let (queue, waiting) = tokio::sync::mpsc::channel(ADOPTIONS_QUEUED);
            let adopter =
                Adopter { store: self.store.clone(), verifier: self.verifier.clone(), adopting: self.adopting.clone() };
            tokio::spawn(adopter.run(waiting));
            queue
        });
        // Full: a later use of the key queues it again.
        if queue.try_send(adoption).is_err() {
            self.adopting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }

    /// argon2, for a key no replica has verified: once per credential however many
    /// callers present it at the same time (the first one's budget pays), within the
    /// budgets.
    async fn verify(
        &self,
        secret: &str,
        record: Arc<KeyRecord>,
        digest: [u8; 32],
        memo: [u8; 32],
        client: Option<ClientNetwork>,
    ) -> Result<Authentication, AuthnError> {
        let checked = self
            .verifying
            .run(memo, async {
                let once = async {
                    let weight = self.verifier.weight(&record.secret_hash);
                    let reservation = self
                        .budgets
                        .admit_verification(record.id, &record.account_id, client, weight)
                        .map_err(NotVerified::Throttled)?;
                    // The wait for a slot is the caller's own, in the queue of the key's account:
                    // a caller that gives up while waiting leaves the queue and costs nothing (its
                    // reservation goes back with it).
                    let slot = match self.verifier.admit(&record.account_id, &record.secret_hash).await {
                        Ok(slot) => slot,
                        Err(VerifierError::Busy) => {
                            let retry_after = Duration::from_secs(1);
                            let spent = budget::Spent::AccountQueue;
                            return Err(NotVerified::Throttled(Throttled { retry_after, limit: 0, spent }));
                        }
                        Err(e) => return Err(NotVerified::Failed(e)),
                    };
                    // Detached once it has its slot: a caller that gives up (its deadline, a
                    // disconnect) does not stop argon2, so what the attempt costs is settled when
                    // argon2 is done, not handed back when the caller leaves.
                    let (verifier, rejected) = (self.verifier.clone(), self.rejected.clone());
                    let budgets = self.budgets.clone();
                    let (secret, hash) = (secret.to_owned(), record.secret_hash.clone());
                    let verified = tokio::spawn(async move {
                        let verified = verifier.verify_in(slot, &secret, &hash).await;
                        match verified {
                            Ok(true) => reservation.succeeded(),
                            Ok(false) => {
                                reservation.failed();
                                // When argon2 said so: the memory's time starts after the run.
                                rejected.insert(memo, budgets.now());
                            }
                            Err(_) => drop(reservation),
                        }
                        verified
                    })
                    .await
                    .map_err(|e| NotVerified::Failed(VerifierError::Task(e)))?;
                    match verified {
                        Ok(true) => {
                            // Before the run ends: a caller arriving after it finds it here.
                            self.verified_here.insert(memo, ());
                            Ok(())
                        }
                        Ok(false) => Err(NotVerified::Mismatch),
                        Err(e) => Err(NotVerified::Failed(e)),
                    }
                };
                let done: Result<(), NotVerified> = once.await;
                done.map_err(Arc::new)
            })
            .await;
        match checked {
            Ok(()) => {
                self.remember(&record, digest);
                Ok(Authentication::Verified(Principal::Key(record)))
            }
            Err(e) => match &*e {
                NotVerified::Mismatch => Ok(refused(Code::ApiKeyInvalid, "unknown API key or wrong secret")),
                NotVerified::Throttled(throttled) => {
                    tracing::debug!(key_id = %record.id, ?client, "verification budget spent; throttled");
                    Ok(Authentication::Throttled(*throttled))
                }
                NotVerified::Failed(_) => Err(VerifierError::Hash(format!("verification failed: {e}")).into()),
            },
        }
    }

    /// Whether argon2 rejected this credential within the last `rejected_ttl`.
    fn rejected_lately(&self, memo: &[u8; 32]) -> bool {
        self.rejected.get(memo).is_some_and(|at| self.budgets.now() < at.saturating_add(self.rejected_ttl))
    }

    /// Stores the verified credential's digest beside the key's hash, off the request
    /// path, so every replica recognises the holder from now on (restarts included).
    fn remember(&self, record: &KeyRecord, digest: [u8; 32]) {
        let verified = self.digester.verified(digest);
        if record.verified_digest == Some(verified) {
            return;
        }
        let (store, id, hash) = (self.store.clone(), record.id, record.secret_hash.clone());
        tokio::spawn(async move {
            if let Err(e) = store.remember_verified(id, &hash, &verified).await {
                tracing::warn!(key_id = %id, error = %e, "could not store the verified digest; argon2 stays the fallback");
            }
        });
    }
}

impl Authenticator {
    /// A store lookup of an id not in memory, paid from the client's budgets and the
    /// replica's bucket of unknown-id lookups: a lookup that finds nothing keeps its units
    /// (they are the whole charge for that unknown id: the caller charges nothing more),
    /// one that finds a record proved nothing about guessing and gives them back.
    async fn budgeted_lookup<T, Fut>(
        &self,
        client: Option<ClientNetwork>,
        lookup: impl FnOnce() -> Fut,
    ) -> Result<Result<Option<T>, Throttled>, StoreError>
    where
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        let reservation: Reservation = match self.budgets.admit_lookup(client) {
            Ok(reservation) => reservation,
            Err(throttled) => return Ok(Err(throttled)),
        };
        let found = lookup().await?;
        if found.is_some() {
            reservation.succeeded();
        } else {
            reservation.failed();
        }
        Ok(Ok(found))
    }
}

fn refused(code: Code, message: impl Into<std::borrow::Cow<'static, str>>) -> Authentication {
    Authentication::Refused(Deny::new(code, message))
}
