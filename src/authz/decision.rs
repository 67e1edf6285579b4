//! The decision itself: a pure function of the authenticated principal, the application
//! the request is about, the scopes it needs and the time. No I/O, no clock, no tonic.

use crate::code::{Code, Reason};
use crate::domain::{Application, KeyKind, Scope, Timestamp};
pub use crate::domain::{Deny, Principal};
use std::net::IpAddr;

/// What the request says about an application, after looking it up.
#[derive(Debug, Clone, Copy)]
pub enum ApplicationFact<'a> {
    /// The request names no application, and the route needs none.
    NotRequested,
    /// The route acts on an application, and the request names none.
    Missing,
    /// The request names two different applications (say, a path and a body field).
    Conflicting,
    /// It names one that does not exist (or is not a well-formed id).
    Unknown,
    Known(&'a Application),
}

/// What is decided for a principal whose secret was verified, in the decision table's
/// order: the key's state, where it is used from, the application, the scopes.
pub fn evaluate<'s>(
    principal: &Principal,
    application: ApplicationFact<'_>,
    required: impl IntoIterator<Item = &'s Scope>,
    client: Option<IpAddr>,
    now: Timestamp,
) -> Result<(), Deny> {
    match principal {
        Principal::Key(key) if key.is_rolled_at(now) => {
            return Err(Deny::new(Code::ApiKeyRevoked, "API key was rolled; use its successor").because(Reason::Rolled))
        }
        Principal::Key(key) if key.is_revoked_at(now) => return Err(Deny::of(Code::ApiKeyRevoked)),
        Principal::Key(key) if key.is_expired_at(now) => return Err(Deny::of(Code::ApiKeyExpired)),
        // The page has no code closer than revoked for a key switched off; the reason
        // tells them apart.
        Principal::Key(key) if key.disabled => {
            return Err(Deny::new(Code::ApiKeyRevoked, "API key is disabled").because(Reason::Disabled))
        }
        // Decided only now that the secret is proven, so that the allowlist (and the
        // key's existence) shows to nobody without it.
        Principal::Key(key) if !key.terms.allows_client(client) => {
            return Err(Deny::new(Code::ApplicationForbidden, "the key may not be used from this client's address")
                .because(Reason::IpNotAllowed))
        }
        Principal::Session(session) if !session.is_live_at(now) => {
            return Err(Deny::new(Code::Unauth, "the dashboard session has expired or was revoked"))
        }
        _ => {}
    }
    match application {
        ApplicationFact::NotRequested => {}
        ApplicationFact::Missing => return Err(application_missing()),
        ApplicationFact::Conflicting => return Err(application_conflict()),
        // Another account's application is as absent as one that never existed.
        ApplicationFact::Unknown => return Err(application_not_found()),
        ApplicationFact::Known(app) if app.account_id != *principal.account_id() => return Err(application_not_found()),
        ApplicationFact::Known(app) if !principal.allows_application(&app.id) => {
            return Err(Deny::new(
                Code::ApplicationForbidden,
                format!("the key is restricted away from application {}", app.id),
            ))
        }
        ApplicationFact::Known(_) => {}
    }
    // Scopes bound API keys. A session acts with its account's full rights; a runtime key
    // is bounded by the routes that accept it and by its one application.
    if let Principal::Key(key) = principal {
        if key.kind == KeyKind::ApiKey {
            if let Some(missing) = key.scopes.first_missing(required) {
                return Err(Deny::new(
                    Code::InsufficientScope,
                    format!("the key does not include the scope {missing}"),
                ));
            }
        }
    }
    Ok(())
}

/// A route that acts on an application, asked about a request that names none: never
/// decided as if the key's restriction and the application's limits did not apply.
pub fn application_missing() -> Deny {
    Deny::new(Code::BadRequest, "the route acts on an application: the application id is required")
}

pub fn application_conflict() -> Deny {
    Deny::new(Code::BadRequest, "the request names two different application ids")
}

fn application_not_found() -> Deny {
    Deny::new(Code::NotFound, "the application was not found for the account")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AccountId, ApplicationId, KeyId, KeyRecord, Name, NewKeyRecord, Scopes, SecretHash, SessionId, SessionRecord,
        UserId,
    };
    use std::sync::Arc;

    fn key() -> KeyRecord {
        KeyRecord::issued(
            NewKeyRecord {
                id: KeyId::parse("key_0000000000000000").unwrap(),
                account_id: AccountId::parse("acct_1").unwrap(),
                kind: KeyKind::ApiKey,
                name: Name::parse("name", "k").unwrap(),
                scopes: Scopes::parse_grants(&["applications:read"]).unwrap(),
                application_ids: vec![],
                secret_hash: SecretHash::new(String::new()),
                expires_at: None,
            },
            Timestamp::from_millis(0),
        )
    }

    fn session(expires_at: i64) -> Principal {
        Principal::Session(Arc::new(SessionRecord {
            id: SessionId::parse("ses_0000000000000000").unwrap(),
            account_id: AccountId::parse("acct_1").unwrap(),
            user_id: UserId::parse("user_1").unwrap(),
            secret_digest: [0; 32],
            created_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(expires_at),
            revoked_at: None,
            version: 1,
        }))
    }

    fn app(id: &str, account: &str) -> Application {
        Application {
            id: ApplicationId::parse(id).unwrap(),
            account_id: AccountId::parse(account).unwrap(),
            name: Name::parse("name", "a").unwrap(),
            created_at: Timestamp::from_millis(0),
        }
    }

    fn read() -> Vec<Scope> {
        vec![Scope::parse_required("applications:read").unwrap()]
    }

    fn code_of(result: Result<(), Deny>) -> Option<Code> {
        result.err().map(|d| d.code)
    }

    fn p(key: KeyRecord) -> Principal {
        Principal::Key(Arc::new(key))
    }

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    #[test]
    fn a_live_key_with_the_scope_is_allowed() {
        assert_eq!(code_of(evaluate(&p(key()), ApplicationFact::NotRequested, &read(), None, NOW)), None);
    }

    #[test]
    fn revoked_comes_before_expired_and_scheduled_revocations_wait() {
        let mut k = key();
        k.revoked_at = Some(Timestamp::from_millis(1));
        k.expires_at = Some(Timestamp::from_millis(2));
        assert_eq!(
            code_of(evaluate(&p(k.clone()), ApplicationFact::NotRequested, &read(), None, NOW)),
            Some(Code::ApiKeyRevoked)
        );
        k.revoked_at = None;
        k.expires_at = None;
        k.retire_at = Some(Timestamp::from_millis(NOW.as_millis() + 1));
        assert_eq!(code_of(evaluate(&p(k.clone()), ApplicationFact::NotRequested, &read(), None, NOW)), None);
        k.retire_at = Some(NOW);
        assert_eq!(
            code_of(evaluate(&p(k.clone()), ApplicationFact::NotRequested, &read(), None, NOW)),
            Some(Code::ApiKeyRevoked)
        );
        k.retire_at = Some(Timestamp::from_millis(NOW.as_millis() + 1));
        assert_eq!(code_of(evaluate(&p(k), ApplicationFact::NotRequested, &read(), None, NOW)), None);
    }

    #[test]
    fn expiry_is_inclusive_of_its_instant() {
        let mut k = key();
        k.expires_at = Some(NOW);
        assert_eq!(
            code_of(evaluate(&p(k.clone()), ApplicationFact::NotRequested, &read(), None, NOW)),
            Some(Code::ApiKeyExpired)
        );
        k.expires_at = Some(Timestamp::from_millis(NOW.as_millis() + 1));
        assert_eq!(code_of(evaluate(&p(k), ApplicationFact::NotRequested, &read(), None, NOW)), None);
    }

    #[test]
    fn applications_of_other_accounts_are_not_found() {
        let other = app("app_x", "acct_2");
        assert_eq!(
            code_of(evaluate(&p(key()), ApplicationFact::Known(&other), &read(), None, NOW)),
            Some(Code::NotFound)
        );
        assert_eq!(code_of(evaluate(&p(key()), ApplicationFact::Unknown, &read(), None, NOW)), Some(Code::NotFound));
        assert_eq!(
            code_of(evaluate(&session(5_000), ApplicationFact::Known(&other), &read(), None, NOW)),
            Some(Code::NotFound)
        );
    }

    #[test]
    fn restrictions_forbid_other_applications_before_scopes_are_checked() {
        let mut k = key();
        k.application_ids = vec![ApplicationId::parse("app_a").unwrap()];
        k.scopes = Scopes::default();
        let b = app("app_b", "acct_1");
        assert_eq!(
            code_of(evaluate(&p(k.clone()), ApplicationFact::Known(&b), &read(), None, NOW)),
            Some(Code::ApplicationForbidden)
        );
        let a = app("app_a", "acct_1");
        assert_eq!(
            code_of(evaluate(&p(k), ApplicationFact::Known(&a), &read(), None, NOW)),
            Some(Code::InsufficientScope)
        );
    }

    #[test]
    fn a_missing_scope_is_named() {
        let write = [Scope::parse_required("applications:write").unwrap()];
        let deny = evaluate(&p(key()), ApplicationFact::NotRequested, &write, None, NOW).unwrap_err();
        assert_eq!(deny.code, Code::InsufficientScope);
        assert!(deny.message.contains("applications:write"));
    }

    #[test]
    fn sessions_skip_scopes_and_end_at_expiry() {
        let write = [Scope::parse_required("applications:write").unwrap()];
        assert_eq!(code_of(evaluate(&session(5_000), ApplicationFact::NotRequested, &write, None, NOW)), None);
        assert_eq!(
            code_of(evaluate(&session(1_000), ApplicationFact::NotRequested, &write, None, NOW)),
            Some(Code::Unauth)
        );
    }

    #[test]
    fn runtime_keys_are_bound_to_their_application_not_to_scopes() {
        let mut k = key();
        k.kind = KeyKind::Runtime;
        k.scopes = Scopes::default();
        k.application_ids = vec![ApplicationId::parse("app_a").unwrap()];
        let a = app("app_a", "acct_1");
        let b = app("app_b", "acct_1");
        assert_eq!(code_of(evaluate(&p(k.clone()), ApplicationFact::Known(&a), &read(), None, NOW)), None);
        assert_eq!(
            code_of(evaluate(&p(k), ApplicationFact::Known(&b), &read(), None, NOW)),
            Some(Code::ApplicationForbidden)
        );
    }

    #[test]
    fn a_missing_or_doubly_named_application_is_a_bad_request_after_the_keys_state() {
        let missing = evaluate(&p(key()), ApplicationFact::Missing, &read(), None, NOW).unwrap_err();
        assert_eq!(missing.code, Code::BadRequest);
        assert!(missing.message.contains("application id is required"), "{}", missing.message);
        assert_eq!(
            code_of(evaluate(&p(key()), ApplicationFact::Conflicting, &read(), None, NOW)),
            Some(Code::BadRequest)
        );
        let mut revoked = key();
        revoked.revoked_at = Some(Timestamp::from_millis(1));
        assert_eq!(
            code_of(evaluate(&p(revoked), ApplicationFact::Missing, &read(), None, NOW)),
            Some(Code::ApiKeyRevoked),
            "the key's state comes first"
        );
    }
}
