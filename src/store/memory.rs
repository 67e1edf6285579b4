//! A store in process memory: for benchmarks and embedding, where the cost or the
//! absence of a database is the point. Every read returns a fresh copy, as a database
//! would, so what sits above it (the cache) behaves as it does over SQL. Nothing survives
//! the process.

use super::Spend;
use super::{
    Application, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyKind, KeyRecord, Owner,
    OwnerChanges, Page, PageRequest, RollOutcome, SessionRecord, Store, StoreError, UpdateOutcome,
};
use crate::audit::{AuditEvent, AuditQuery};
use crate::domain::{
    AccountId, AdminTokenName, AdminTokenRecord, ApplicationId, CreditHolder, KeyId, Name, OwnerId, Refill, SecretHash,
    SessionId, Timestamp, UserId, VerifiedDigest,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    applications: BTreeMap<ApplicationId, Application>,
    keys: BTreeMap<KeyId, KeyRecord>,
    sessions: BTreeMap<SessionId, SessionRecord>,
    audit: BTreeMap<String, AuditEvent>,
    admin_tokens: BTreeMap<AdminTokenName, AdminTokenRecord>,
}

impl State {
    fn record(&mut self, event: &AuditEvent) {
        self.audit.insert(event.id.clone(), event.clone());
    }
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn page<T: Clone>(items: impl Iterator<Item = (String, T)>, page: &PageRequest) -> Page<T> {
    let after = page.after.as_deref().unwrap_or("");
    let mut items: Vec<(String, T)> =
        items.filter(|(id, _)| id.as_str() > after).take(page.limit as usize + 1).collect();
    let next_after = if items.len() > page.limit as usize {
        items.truncate(page.limit as usize);
        items.last().map(|(id, _)| id.clone())
    } else {
        None
    };
    Page { items: items.into_iter().map(|(_, item)| item).collect(), next_after }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut state = self.state();
        state.applications.insert(app.id.clone(), app.clone());
        state.record(audit);
        Ok(())
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        Ok(self.state().applications.get(id).cloned().map(Arc::new))
    }

    async fn list_applications(
        &self,
        account: &AccountId,
        request: &PageRequest,
    ) -> Result<Page<Application>, StoreError> {
        let state = self.state();
        let mine =
            state.applications.values().filter(|a| a.account_id == *account).map(|a| (a.id.to_string(), a.clone()));
        Ok(page(mine, request))
    }

    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut state = self.state();
        state.keys.insert(key.id, key.clone());
        state.record(audit);
        Ok(())
    }

    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.state().keys.get(&id).cloned().map(Arc::new))
    }

    async fn list_keys(
        &self,
        account: &AccountId,
        filter: &KeyFilter,
        request: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError> {
        let search = filter.search.as_deref().map(str::to_lowercase);
        let state = self.state();
        let matching = state
            .keys
            .values()
            .filter(|k| k.account_id == *account && k.kind == KeyKind::ApiKey)
            .filter(|k| filter.owner_id.is_none() || k.owner_id == filter.owner_id)
            .filter(|k| {
                search.as_deref().is_none_or(|s| {
                    k.name.as_str().to_lowercase().contains(s) || k.id.to_string().to_lowercase().contains(s)
                })
            })
            .map(|k| (k.id.to_string(), k.clone()));
        Ok(page(matching, request))
    }

    async fn update_key(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        let mut state = self.state();
        let state = &mut *state;
        let Some(key) = state.keys.get_mut(&id) else { return Ok(UpdateOutcome::NotFound) };
        if key.revoked_at.is_some() {
            return Ok(UpdateOutcome::Revoked);
        }
        if let Some(name) = &changes.name {
            key.name = name.clone();
        }
        if let Some(scopes) = &changes.scopes {
            key.scopes = scopes.clone();
        }
        if let Some(apps) = &changes.application_ids {
            key.application_ids = apps.clone();
        }
        if let Some(expires_at) = changes.expires_at {
            key.expires_at = expires_at;
        }
        if let Some(disabled) = changes.disabled {
            key.disabled = disabled;
        }
        key.terms = changes.terms_after(&key.terms);
        if let Some(credits) = changes.credits {
            key.credits = credits.map(|c| c.balance(now));
        }
        key.updated_at = now;
        key.version += 1;
        let updated = key.clone();
        state.record(audit);
        Ok(UpdateOutcome::Updated(Box::new(updated)))
    }

    async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut state = self.state();
        let state = &mut *state;
        let Some(key) = state.keys.get_mut(&id) else { return Ok(None) };
        if key.revoked_at.is_none() {
            key.revoked_at = Some(now);
            key.revoked_reason = Some(reason.to_owned());
            key.updated_at = now;
            key.version += 1;
        }
        let revoked = key.clone();
        state.record(audit);
        Ok(Some(revoked))
    }

    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Vec<KeyId>, StoreError> {
        let mut state = self.state();
        // As the SQL store: the new key carries the current one's terms and switch.
        let mut new = new.clone();
        if let Some(current) = state.keys.values().find(|k| {
            k.kind == KeyKind::Runtime
                && k.application_ids == new.application_ids
                && k.revoked_at.is_none()
                && k.retire_at.is_none()
        }) {
            new.terms = current.terms.clone();
            new.disabled = current.disabled;
        }
        // The current key, then every older one whose grace outlasts it.
        let mut retired = Vec::new();
        for current in [true, false] {
            for k in state.keys.values_mut() {
                let in_scope =
                    k.kind == KeyKind::Runtime && k.application_ids == new.application_ids && k.revoked_at.is_none();
                let matches =
                    if current { k.retire_at.is_none() } else { k.retire_at.is_some_and(|at| at > retire_at) };
                if in_scope && matches {
                    k.retire_at = Some(retire_at);
                    k.version += 1;
                    retired.push(k.id);
                }
            }
        }
        state.keys.insert(new.id, new);
        state.record(audit);
        Ok(retired)
    }

    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        if let Some(key) = self.state().keys.get_mut(&id).filter(|k| k.secret_hash == *hash) {
            key.verified_digest = Some(*digest);
        }
        Ok(())
    }

    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        // Owners' shared credits are the SQL store's alone.
        let CreditHolder::Key(id) = *holder else { return Ok(Spend::Unmetered) };
        let mut state = self.state();
        let Some(balance) = state.keys.get_mut(&id).and_then(|k| k.credits.as_mut()) else {
            return Ok(Spend::Unmetered);
        };
        let mut after = *balance;
        if let Some(refill) = refill {
            after = refill.refilled(after, now);
        }
        if after.remaining < cost {
            return Ok(Spend::Exhausted(*balance));
        }
        after.remaining -= cost;
        *balance = after;
        Ok(Spend::Spent(after))
    }

    async fn rename_application(
        &self,
        id: &ApplicationId,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<Option<Application>, StoreError> {
        let mut state = self.state();
        let Some(app) = state.applications.get_mut(id) else { return Ok(None) };
        app.name = name.clone();
        let app = app.clone();
        state.record(audit);
        Ok(Some(app))
    }

    async fn list_sessions(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        request: &PageRequest,
    ) -> Result<Page<SessionRecord>, StoreError> {
        let state = self.state();
        let mine = state
            .sessions
            .values()
            .filter(|s| s.account_id == *account && user.is_none_or(|u| s.user_id == *u))
            .map(|s| (s.id.to_string(), s.clone()));
        Ok(page(mine, request))
    }

    async fn roll_key(
        &self,
        _new: &KeyRecord,
        _old: KeyId,
        _retire_at: Timestamp,
        _audit: &AuditEvent,
    ) -> Result<RollOutcome, StoreError> {
        Err(StoreError::Unsupported("rolling keys"))
    }

    async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError> {
        let Deletion::Key(id) = target else {
            return Err(StoreError::Unsupported("deleting applications or accounts"));
        };
        let mut state = self.state();
        let mut deleted = Deleted::default();
        if state.keys.remove(id).is_some() {
            deleted.keys.push(*id);
            state.record(audit);
        }
        Ok(deleted)
    }

    async fn import_keys(
        &self,
        _import_id: &str,
        _keys: &[ImportedKey],
        _audit: &AuditEvent,
    ) -> Result<Vec<Imported>, StoreError> {
        Err(StoreError::Unsupported("importing keys"))
    }

    async fn keys_by_lookup(&self, _lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        Ok(Vec::new())
    }

    async fn adopt_imported(
        &self,
        _id: KeyId,
        _old: &SecretHash,
        _new: &SecretHash,
        _lookup: &str,
        _digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn set_owner(
        &self,
        _account: &AccountId,
        _id: &OwnerId,
        _changes: &OwnerChanges,
        _now: Timestamp,
        _audit: &AuditEvent,
    ) -> Result<(Owner, Vec<KeyId>), StoreError> {
        Err(StoreError::Unsupported("owners"))
    }

    async fn owner(&self, _account: &AccountId, _id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        Ok(None)
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

    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut state = self.state();
        state.sessions.insert(session.id, session.clone());
        state.record(audit);
        Ok(())
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.state().sessions.get(&id).cloned().map(Arc::new))
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut state = self.state();
        let state = &mut *state;
        let Some(session) = state.sessions.get_mut(&id) else { return Ok(None) };
        if session.revoked_at.is_none() {
            session.revoked_at = Some(now);
            session.version += 1;
        }
        let revoked = session.clone();
        state.record(audit);
        Ok(Some(revoked))
    }

    async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        request: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        let state = self.state();
        let before = request.after.as_deref();
        let mut items: Vec<AuditEvent> = state
            .audit
            .values()
            .rev()
            .filter(|e| before.is_none_or(|b| e.id.as_str() < b))
            .filter(|e| e.account_id == *account && query.matches(e))
            .take(request.limit as usize + 1)
            .cloned()
            .collect();
        let next_after = if items.len() > request.limit as usize {
            items.truncate(request.limit as usize);
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_after })
    }

    async fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<bool, StoreError> {
        let mut state = self.state();
        let taken = state.admin_tokens.contains_key(&token.name)
            || state.admin_tokens.values().any(|held| held.digest == token.digest);
        if !taken {
            state.admin_tokens.insert(token.name.clone(), token.clone());
        }
        Ok(!taken)
    }

    async fn admin_token(&self, digest: &[u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError> {
        Ok(self.state().admin_tokens.values().find(|t| &t.digest == digest).cloned())
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        Ok(self.state().admin_tokens.values().cloned().collect())
    }

    async fn revoke_admin_token(
        &self,
        name: &AdminTokenName,
        now: Timestamp,
        by: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        let mut state = self.state();
        let Some(token) = state.admin_tokens.get_mut(name) else { return Ok(None) };
        if token.revoked_at.is_none() {
            token.revoked_at = Some(now);
            token.revoked_by = Some(by.to_owned());
        }
        Ok(Some(token.clone()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
