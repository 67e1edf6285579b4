//! A store in process memory, for the decision's side ([`Records`] + [`KeyUse`]): for
//! benchmarks and embedding, where the cost or the absence of a database is the point.
//! Records are put in with [`MemoryStore::insert_key`] and friends (there is no admin
//! side). It answers as the SQL store does: every read returns a fresh copy, a key's
//! credits are its successor's while a roll overlaps and its owner's shared terms come
//! with it, and credits are spent under the refill rule they were set with, so what sits
//! above it (the cache) behaves as it does over SQL. Nothing survives the process.

use super::{Application, ImportedKey, KeyRecord, KeyUse, Owner, Records, SessionRecord, Spend, StoreError};
use crate::domain::{
    AccountId, ApplicationId, CreditBalance, CreditHolder, KeyId, OwnerId, Refill, SecretHash, SessionId, Timestamp,
    VerifiedDigest,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    applications: BTreeMap<ApplicationId, Application>,
    keys: BTreeMap<KeyId, KeyRecord>,
    /// The form an imported key was brought in, by key.
    imported: HashMap<KeyId, String>,
    sessions: BTreeMap<SessionId, SessionRecord>,
    owners: BTreeMap<(AccountId, OwnerId), Owner>,
    /// Balances by holder, with the refill rule each is counted under.
    credits: HashMap<CreditHolder, (CreditBalance, Option<Refill>)>,
}

impl State {
    /// The key as a read returns it: its (or its successor's) balance, its owner's terms.
    fn read_key(&self, key: &KeyRecord) -> KeyRecord {
        let mut read = key.clone();
        let holder = CreditHolder::Key(key.rolled_to.unwrap_or(key.id));
        read.credits = self.credits.get(&holder).map(|(balance, _)| *balance);
        read.owner = key.owner_id.as_ref().and_then(|owner| self.owner(&key.account_id, owner)).map(Arc::new);
        read
    }

    fn owner(&self, account: &AccountId, id: &OwnerId) -> Option<Owner> {
        let mut owner = self.owners.get(&(account.clone(), id.clone()))?.clone();
        let holder = CreditHolder::Owner(account.clone(), id.clone());
        owner.credits = self.credits.get(&holder).map(|(balance, _)| *balance);
        Some(owner)
    }
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a key in (replacing one with its id); its credits, if any, are counted under
    /// its terms' refill rule.
    pub fn insert_key(&self, key: &KeyRecord) {
        let mut state = self.state();
        if let Some(balance) = key.credits {
            state.credits.insert(CreditHolder::Key(key.id), (balance, key.terms.refill));
        }
        state.keys.insert(key.id, key.clone());
    }

    /// Puts a key brought from another system in: found by its lookup or its import form.
    pub fn insert_imported(&self, key: &ImportedKey) {
        self.insert_key(&key.record);
        self.state().imported.insert(key.record.id, key.import_ref.clone());
    }

    pub fn insert_application(&self, app: &Application) {
        self.state().applications.insert(app.id.clone(), app.clone());
    }

    pub fn insert_session(&self, session: &SessionRecord) {
        self.state().sessions.insert(session.id, session.clone());
    }

    /// Puts an owner's shared terms in; its credits, if any, are counted under its refill.
    pub fn insert_owner(&self, owner: &Owner) {
        let mut state = self.state();
        let holder = CreditHolder::Owner(owner.account_id.clone(), owner.id.clone());
        match owner.credits {
            Some(balance) => state.credits.insert(holder, (balance, owner.refill)),
            None => state.credits.remove(&holder),
        };
        state.owners.insert((owner.account_id.clone(), owner.id.clone()), owner.clone());
    }
}

#[async_trait::async_trait]
impl Records for MemoryStore {
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let state = self.state();
        Ok(state.keys.get(&id).map(|key| Arc::new(state.read_key(key))))
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        Ok(self.state().applications.get(id).cloned().map(Arc::new))
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.state().sessions.get(&id).cloned().map(Arc::new))
    }

    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let Some(keyed) = lookups.first() else { return Ok(Vec::new()) };
        let state = self.state();
        let found = state.keys.values().filter_map(|key| {
            let by_lookup = key.lookup.as_ref().is_some_and(|l| lookups.iter().any(|x| x == &**l));
            let by_form = state.imported.get(&key.id).is_some_and(|form| lookups[1..].contains(form));
            let is_keyed = key.lookup.as_ref().is_some_and(|l| &**l == keyed);
            (by_lookup || by_form).then_some((!is_keyed, key))
        });
        // Each account's matches in turn (the keyed one first, then the earliest import),
        // and every account's first turn before any account's second.
        let mut by_account: BTreeMap<&AccountId, Vec<(bool, &KeyRecord)>> = BTreeMap::new();
        for (not_keyed, key) in found {
            by_account.entry(&key.account_id).or_default().push((not_keyed, key));
        }
        let mut ranked = Vec::new();
        for matches in by_account.values_mut() {
            matches.sort_by_key(|(not_keyed, key)| (*not_keyed, key.created_at, key.id));
            let turns = matches.iter().enumerate();
            ranked.extend(turns.map(|(turn, (not_keyed, key))| ((*not_keyed, turn, key.created_at, key.id), *key)));
        }
        ranked.sort_by_key(|(rank, _)| *rank);
        let limit = crate::domain::imported::MAX_CANDIDATES;
        Ok(ranked.into_iter().take(limit).map(|(_, key)| Arc::new(state.read_key(key))).collect())
    }
}

#[async_trait::async_trait]
impl KeyUse for MemoryStore {
    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        let mut state = self.state();
        let Some((balance, rule)) = state.credits.get_mut(holder) else { return Ok(Spend::Unmetered) };
        if rule.as_ref() != refill {
            return Ok(Spend::RuleChanged);
        }
        let after = refill.map_or(*balance, |refill| refill.refilled(*balance, now));
        if after.remaining < cost {
            return Ok(Spend::Exhausted(*balance));
        }
        *balance = CreditBalance { remaining: after.remaining - cost, period: after.period };
        Ok(Spend::Spent(*balance))
    }

    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        let mut state = self.state();
        for (id, at) in uses {
            if let Some(key) = state.keys.get_mut(id) {
                key.last_used_at = key.last_used_at.max(Some(*at));
            }
        }
        Ok(())
    }

    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        if let Some(key) = self.state().keys.get_mut(&id).filter(|k| k.secret_hash == *hash) {
            key.verified_digest = Some(*digest);
        }
        Ok(())
    }

    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        if let Some(key) = state.keys.get_mut(&id).filter(|k| k.secret_hash == *old) {
            key.secret_hash = new.clone();
            key.lookup = Some(crate::domain::Lookup::new(lookup.to_owned()));
            key.verified_digest = Some(*digest);
        }
        Ok(())
    }
}
