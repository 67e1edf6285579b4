//! Proto ↔ domain. Every request field is validated here, at the edge, into a domain
//! type; a bad one becomes a VALIDATION_ERROR that names the field.

use super::proto as pb;
use crate::audit::AuditEvent;
use crate::authz::decision::Principal;
use crate::authz::{AuthorizeQuery, Decision, Verdict};
use crate::domain::imported::ForeignHash;
use crate::domain::{
    AccountId, AdminTokenRecord, ApplicationId, CreditBalance, InvalidField, KeyId, KeyLimit, Metadata, Name, Network,
    OwnerId, Refill, Scope, Scopes, Timestamp,
};
use crate::edge::HttpRequest;
use crate::manage::{ImportResult, KeyToImport, NewApiKey};
use crate::store::{
    Application, Credits, Deleted, Imported, KeyChanges, KeyRecord, Owner, OwnerChanges, PageRequest, SessionRecord,
};

/// The most credits a key may be given at once.
pub const MAX_CREDITS: i64 = crate::domain::CreditBalance::MAX;
/// The most a single call may cost.
pub const MAX_COST: u32 = crate::policy::MAX_ROUTE_COST;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const MAX_REQUIRED_SCOPES: usize = 32;
pub const MAX_HEADERS: usize = 256;

pub fn timestamp_from_proto(field: &'static str, ts: &prost_types::Timestamp) -> Result<Timestamp, InvalidField> {
    // Up to the year 9999; enough for an expiry and far from overflow.
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&ts.nanos) || !(0..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(InvalidField::new(field, "is not a valid timestamp between 1970 and 9999"));
    }
    Ok(Timestamp::from_millis(ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000)))
}

pub fn timestamp_to_proto(ts: Timestamp) -> prost_types::Timestamp {
    let millis = ts.as_millis();
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn application_to_proto(app: &Application) -> pb::Application {
    pb::Application {
        id: app.id.to_string(),
        account_id: app.account_id.to_string(),
        name: app.name.as_str().to_owned(),
        created_at: Some(timestamp_to_proto(app.created_at)),
    }
}

/// `last_used_at`: as the usage recorder knows it (stored uses are batched).
pub fn key_to_proto(key: &KeyRecord, now: Timestamp, last_used_at: Option<Timestamp>) -> pb::ApiKey {
    // As Authorize decides a key's state, in its order (authz::decision).
    let status = if key.is_revoked_at(now) {
        pb::ApiKeyStatus::Revoked
    } else if key.is_expired_at(now) {
        pb::ApiKeyStatus::Expired
    } else if key.disabled {
        pb::ApiKeyStatus::Disabled
    } else {
        pb::ApiKeyStatus::Active
    };
    let revoked_reason = match key.is_rolled_at(now) {
        true => "rolled".to_owned(),
        false => key.revoked_reason.clone().unwrap_or_default(),
    };
    pb::ApiKey {
        id: key.id.to_string(),
        account_id: key.account_id.to_string(),
        name: key.name.as_str().to_owned(),
        scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        application_ids: key.application_ids.iter().map(|a| a.to_string()).collect(),
        created_at: Some(timestamp_to_proto(key.created_at)),
        updated_at: Some(timestamp_to_proto(key.updated_at)),
        expires_at: key.expires_at.map(timestamp_to_proto),
        revoked_at: key.revoked_at.or(key.retire_at).map(timestamp_to_proto),
        revoked_reason,
        status: status.into(),
        kind: key.kind.as_str().to_owned(),
        last_used_at: last_used_at.map(timestamp_to_proto),
        enabled: !key.disabled,
        limits: key.terms.limits.iter().map(limit_to_proto).collect(),
        credits: key.credits.map(|balance| credits_to_proto(balance, key.terms.refill.as_ref())),
        allowed_networks: key.terms.allowed_networks.iter().map(ToString::to_string).collect(),
        metadata_json: key.terms.metadata.as_ref().map(|m| m.as_json().to_owned()).unwrap_or_default(),
        owner_id: key.owner_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        rolled_from: key.rolled_from.map(|id| id.to_string()).unwrap_or_default(),
        rolled_to: key.rolled_to.map(|id| id.to_string()).unwrap_or_default(),
        origin: origin(key).to_owned(),
    }
}

/// Where a key's secret comes from: keygate, or (until its first use re-hashes it) the
/// algorithm of the system it was imported from.
fn origin(key: &KeyRecord) -> &'static str {
    let hash = key.secret_hash.expose_phc();
    match &key.lookup {
        None => "keygate",
        Some(_) if hash.starts_with("$sha256$") => "sha256",
        Some(_) if hash.starts_with("$2") => "bcrypt",
        Some(lookup) if lookup.starts_with("start:") => "argon2",
        Some(_) => "imported",
    }
}

fn credits_to_proto(balance: CreditBalance, refill: Option<&Refill>) -> pb::Credits {
    pb::Credits {
        remaining: balance.remaining,
        refill: refill.map(|r| pb::Refill {
            amount: r.amount,
            interval: r.interval_str(),
            mode: r.mode_str().to_owned(),
        }),
    }
}

pub fn owner_to_proto(owner: &Owner) -> pb::Owner {
    pb::Owner {
        account_id: owner.account_id.to_string(),
        owner_id: owner.id.to_string(),
        limits: owner.limits.iter().map(limit_to_proto).collect(),
        credits: owner.credits.map(|balance| credits_to_proto(balance, owner.refill.as_ref())),
        updated_at: Some(timestamp_to_proto(owner.updated_at)),
    }
}

pub fn owner_changes(req: &pb::UpdateOwnerRequest) -> Result<(AccountId, OwnerId, OwnerChanges), InvalidField> {
    let changes = OwnerChanges {
        limits: req.limits.as_ref().map(|l| limits_from_proto(&l.values)).transpose()?,
        credits: credit_change(req.credits.as_ref(), req.clear_credits)?,
    };
    Ok((AccountId::parse(&req.account_id)?, OwnerId::parse(&req.owner_id)?, changes))
}

fn credit_change(credits: Option<&pb::Credits>, clear: bool) -> Result<Option<Option<Credits>>, InvalidField> {
    Ok(match (credits, clear) {
        (Some(_), true) => return Err(InvalidField::new("clear_credits", "cannot be combined with credits")),
        (Some(credits), false) => Some(Some(credits_from_proto(credits)?)),
        (None, true) => Some(None),
        (None, false) => None,
    })
}

/// Whether an update's `credits` keep the key's refill: they do unless they name one, or
/// `clear_refill` removes it.
fn refill_kept(req: &pb::UpdateApiKeyRequest) -> Result<bool, InvalidField> {
    match (&req.credits, req.clear_refill) {
        (None, true) => Err(InvalidField::new("clear_refill", "needs credits: the credits left once refills stop")),
        (Some(pb::Credits { refill: Some(_), .. }), true) => {
            Err(InvalidField::new("clear_refill", "cannot be combined with credits.refill"))
        }
        (Some(credits), clear) => Ok(credits.refill.is_none() && !clear),
        (None, false) => Ok(false),
    }
}

fn owner_from_proto(raw: &str) -> Result<Option<OwnerId>, InvalidField> {
    Some(raw).filter(|r| !r.is_empty()).map(OwnerId::parse).transpose()
}

pub fn deleted_to_proto(deleted: &Deleted) -> pb::DeleteResponse {
    fn ids<T: ToString>(items: &[T]) -> Vec<String> {
        items.iter().map(ToString::to_string).collect()
    }
    pb::DeleteResponse {
        deleted_key_ids: ids(&deleted.keys),
        deleted_application_ids: ids(&deleted.applications),
        deleted_session_ids: ids(&deleted.sessions),
        deleted_owner_ids: ids(&deleted.owners),
        changed_key_ids: ids(&deleted.changed_keys),
    }
}

/// A key to import, checked field by field; a bad one is reported on its own line.
pub fn key_to_import(key: &pb::ImportedKey) -> Result<KeyToImport, InvalidField> {
    Ok(KeyToImport {
        account_id: AccountId::parse(&key.account_id)?,
        name: Name::parse("name", &key.name)?,
        scopes: Scopes::parse_grants(&key.scopes)?,
        application_ids: application_ids("application_ids", &key.application_ids)?,
        expires_at: key.expires_at.as_ref().map(|ts| timestamp_from_proto("expires_at", ts)).transpose()?,
        metadata: metadata_from_proto(&key.metadata_json)?,
        owner_id: owner_from_proto(&key.owner_id)?,
        hash: ForeignHash::parse(&key.algorithm, &key.hash, &key.strip_prefix, &key.start)?,
    })
}

pub fn import_result_to_proto(result: &ImportResult) -> pb::ImportResult {
    let mut duplicate_of = 0;
    let (status, key_id, error) = match result {
        ImportResult::Imported(Imported::Created(id)) => ("imported", id.to_string(), String::new()),
        ImportResult::Imported(Imported::AlreadyImported(id)) => ("already_imported", id.to_string(), String::new()),
        ImportResult::Imported(Imported::Conflict) => {
            ("conflict", String::new(), "another key holds the same credential form".to_owned())
        }
        ImportResult::Invalid(error) => ("invalid", String::new(), error.clone()),
        ImportResult::DuplicateInBatch(first) => {
            duplicate_of = u32::try_from(*first).unwrap_or(u32::MAX);
            let error = format!("the same credential, in the same account, as key {first} of this batch: not imported");
            ("duplicate_in_batch", String::new(), error)
        }
    };
    pb::ImportResult { status: status.to_owned(), key_id, error, duplicate_of }
}

fn limit_to_proto(limit: &KeyLimit) -> pb::KeyLimit {
    pb::KeyLimit {
        name: limit.name.to_string(),
        limit: limit.limit,
        window_seconds: limit.window.as_secs() as u32,
        route: limit.route.as_deref().unwrap_or_default().to_owned(),
    }
}

fn limits_from_proto(limits: &[pb::KeyLimit]) -> Result<Vec<KeyLimit>, InvalidField> {
    limits.iter().map(|l| KeyLimit::parse(&l.name, l.limit, u64::from(l.window_seconds), &l.route)).collect()
}

fn networks_from_proto(networks: &[String]) -> Result<Vec<Network>, InvalidField> {
    networks.iter().map(|n| Network::parse(n)).collect()
}

fn metadata_from_proto(raw: &str) -> Result<Option<Metadata>, InvalidField> {
    Some(raw).filter(|r| !r.is_empty()).map(Metadata::parse).transpose()
}

fn credits_from_proto(credits: &pb::Credits) -> Result<Credits, InvalidField> {
    if !(0..=MAX_CREDITS).contains(&credits.remaining) {
        return Err(InvalidField::new("credits.remaining", format!("must be 0 to {MAX_CREDITS}")));
    }
    let refill = credits.refill.as_ref().map(|r| Refill::parse(r.amount, &r.interval, &r.mode)).transpose()?;
    Ok(Credits { remaining: credits.remaining, refill })
}

/// What the admin API calls a revocable, expiring credential's state.
fn credential_status(revoked: bool, live: bool) -> &'static str {
    match (revoked, live) {
        (true, _) => "revoked",
        (false, true) => "active",
        (false, false) => "expired",
    }
}

pub fn admin_token_to_proto(token: &AdminTokenRecord, now: Timestamp) -> pb::AdminToken {
    let status = credential_status(token.revoked_at.is_some(), token.is_live(now));
    pb::AdminToken {
        name: token.name.as_str().to_owned(),
        role: token.role.as_str().to_owned(),
        account_id: token.account_id.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        created_at: Some(timestamp_to_proto(token.created_at)),
        expires_at: token.expires_at.map(timestamp_to_proto),
        revoked_at: token.revoked_at.map(timestamp_to_proto),
        created_by: token.created_by.clone(),
        revoked_by: token.revoked_by.clone().unwrap_or_default(),
        status: status.to_owned(),
    }
}

pub fn session_to_proto(session: &SessionRecord, now: Timestamp) -> pb::Session {
    let status = credential_status(session.revoked_at.is_some(), session.is_live_at(now));
    pb::Session {
        id: session.id.to_string(),
        account_id: session.account_id.to_string(),
        user_id: session.user_id.to_string(),
        created_at: Some(timestamp_to_proto(session.created_at)),
        expires_at: Some(timestamp_to_proto(session.expires_at)),
        revoked_at: session.revoked_at.map(timestamp_to_proto),
        status: status.to_owned(),
    }
}

fn principal_to_proto(principal: &Principal) -> pb::Principal {
    let kind = principal.kind().as_str().to_owned();
    match principal {
        Principal::Key(key) => pb::Principal {
            kind,
            // On every allowed call: one exact allocation each, not `Display`'s machinery.
            key_id: [KeyId::PREFIX, key.id.as_body()].concat(),
            account_id: key.account_id.as_str().to_owned(),
            scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            application_ids: key.application_ids.iter().map(|a| a.to_string()).collect(),
            metadata_json: key.terms.metadata.as_ref().map(|m| m.as_json().to_owned()).unwrap_or_default(),
            owner_id: key.owner_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            ..Default::default()
        },
        Principal::Session(session) => pb::Principal {
            kind,
            account_id: session.account_id.to_string(),
            session_id: session.id.to_string(),
            user_id: session.user_id.to_string(),
            ..Default::default()
        },
    }
}

/// `page_token` is the last id of the previous page; `valid_token` checks its shape.
pub fn audit_event_to_proto(event: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: event.id.clone(),
        account_id: event.account_id.to_string(),
        category: event.category().as_str().to_owned(),
        action: event.action.as_str().to_owned(),
        actor: event.actor.credential.clone(),
        on_behalf_of: event.actor.on_behalf_of.clone().unwrap_or_default(),
        target: event.target.clone(),
        request_id: event.actor.request_id.clone(),
        occurred_at: Some(timestamp_to_proto(event.occurred_at)),
        detail_json: event.detail.to_string(),
    }
}

pub fn page_request(
    page_size: u32,
    page_token: &str,
    valid_token: impl Fn(&str) -> bool,
) -> Result<PageRequest, InvalidField> {
    let limit = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n <= MAX_PAGE_SIZE => n,
        _ => return Err(InvalidField::new("page_size", format!("must be at most {MAX_PAGE_SIZE}"))),
    };
    let after = match page_token {
        "" => None,
        token if valid_token(token) => Some(token.to_owned()),
        _ => return Err(InvalidField::new("page_token", "is not a token this listing returned")),
    };
    Ok(PageRequest { after, limit })
}

pub fn application_ids(field: &'static str, raw: &[String]) -> Result<Vec<ApplicationId>, InvalidField> {
    let mut ids = raw.iter().map(|id| ApplicationId::parse_field(field, id)).collect::<Result<Vec<_>, _>>()?;
    ids.sort();
    ids.dedup();
    Ok(ids)
}

impl TryFrom<pb::CreateApiKeyRequest> for NewApiKey {
    type Error = InvalidField;

    fn try_from(req: pb::CreateApiKeyRequest) -> Result<Self, Self::Error> {
        Ok(NewApiKey {
            account_id: AccountId::parse(&req.account_id)?,
            name: Name::parse("name", &req.name)?,
            scopes: Scopes::parse_grants(&req.scopes)?,
            application_ids: application_ids("application_ids", &req.application_ids)?,
            expires_at: req.expires_at.as_ref().map(|ts| timestamp_from_proto("expires_at", ts)).transpose()?,
            terms: crate::domain::KeyTerms {
                limits: limits_from_proto(&req.limits)?,
                allowed_networks: networks_from_proto(&req.allowed_networks)?,
                metadata: metadata_from_proto(&req.metadata_json)?,
                refill: None,
            },
            credits: req.credits.as_ref().map(credits_from_proto).transpose()?,
            owner_id: owner_from_proto(&req.owner_id)?,
        })
    }
}

pub fn key_changes(req: &pb::UpdateApiKeyRequest) -> Result<(KeyId, KeyChanges), InvalidField> {
    let id = KeyId::parse(&req.id)?;
    if req.clear_expires_at && req.expires_at.is_some() {
        return Err(InvalidField::new("clear_expires_at", "cannot be combined with expires_at"));
    }
    let expires_at = match (&req.expires_at, req.clear_expires_at) {
        (Some(ts), _) => Some(Some(timestamp_from_proto("expires_at", ts)?)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    let changes = KeyChanges {
        name: req.name.as_deref().map(|n| Name::parse("name", n)).transpose()?,
        scopes: req.scopes.as_ref().map(|s| Scopes::parse_grants(&s.values)).transpose()?,
        application_ids: req
            .application_ids
            .as_ref()
            .map(|a| application_ids("application_ids", &a.values))
            .transpose()?,
        expires_at,
        disabled: req.enabled.map(|enabled| !enabled),
        limits: req.limits.as_ref().map(|l| limits_from_proto(&l.values)).transpose()?,
        allowed_networks: req.allowed_networks.as_ref().map(|n| networks_from_proto(&n.values)).transpose()?,
        metadata: req.metadata_json.as_deref().map(metadata_from_proto).transpose()?,
        credits: credit_change(req.credits.as_ref(), req.clear_credits)?,
        keep_refill: refill_kept(req)?,
        owner_id: req.owner_id.as_deref().map(owner_from_proto).transpose()?,
    };
    if changes.name.is_none()
        && changes.scopes.is_none()
        && changes.application_ids.is_none()
        && changes.expires_at.is_none()
        && changes.disabled.is_none()
        && changes.owner_id.is_none()
        && !changes.touches_terms()
    {
        return Err(InvalidField::new("update", "names no field to change"));
    }
    Ok((id, changes))
}

/// Checks the request's own shape; the credential is judged by the decision, not here.
/// Every field is refused as VALIDATION_ERROR, in the order they are checked.
pub fn authorize_query(req: &pb::AuthorizeRequest) -> Result<AuthorizeQuery<'_>, InvalidField> {
    crate::edge::method_and_path(&req.method, &req.path)?;
    if req.required_scopes.len() > MAX_REQUIRED_SCOPES {
        return Err(InvalidField::new("required_scopes", format!("at most {MAX_REQUIRED_SCOPES}")));
    }
    let client = match req.client_ip.as_str() {
        "" => None,
        raw => Some(raw.parse().map_err(|_| InvalidField::new("client_ip", "is not an IP address"))?),
    };
    if req.cost > MAX_COST {
        return Err(InvalidField::new("cost", format!("must be at most {MAX_COST}")));
    }
    if req.headers.len() > MAX_HEADERS {
        return Err(InvalidField::new("headers", format!("at most {MAX_HEADERS}")));
    }
    crate::edge::method_override(&req.method, &req.headers)?;
    // The caller read the credential and the client's address itself: the request is
    // asked about as the edges ask, with what only Authorize's callers state.
    let request = HttpRequest {
        method: &req.method,
        target: &req.path,
        headers: &req.headers,
        peer: None,
        body: Some(req.body.as_slice()).filter(|b| !b.is_empty()),
    };
    Ok(AuthorizeQuery {
        application_id: Some(req.application_id.as_str()).filter(|a| !a.is_empty()),
        required_scopes: req.required_scopes.iter().map(|s| Scope::parse_required(s)).collect::<Result<_, _>>()?,
        cost: Some(req.cost).filter(|c| *c > 0),
        ..request.ask(&req.credential, client)
    })
}

pub fn authorize_response(verdict: Verdict) -> pb::AuthorizeResponse {
    let (allowed, code, reason, http_status, message) = match &verdict.decision {
        Decision::Allowed => (true, String::new(), String::new(), 200, String::new()),
        Decision::Denied(deny) => (
            false,
            deny.code.as_str().to_owned(),
            deny.reason.as_str().to_owned(),
            u32::from(deny.code.http_status()),
            deny.message.to_string(),
        ),
    };
    pb::AuthorizeResponse {
        allowed,
        code,
        http_status,
        message,
        principal: verdict.principal.as_ref().map(principal_to_proto),
        route: verdict.route.as_deref().unwrap_or_default().to_owned(),
        application_id: verdict.application_id.unwrap_or_default(),
        limit: verdict.rate_limit.map_or(0, |r| r.limit),
        remaining: verdict.rate_limit.map_or(0, |r| r.remaining),
        retry_after_seconds: verdict.rate_limit.map_or(0, |r| r.retry_after_seconds),
        reason,
        credits_remaining: verdict.credits_remaining,
    }
}
