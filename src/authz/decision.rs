//! The decision itself: a pure function of the verified key, the application the request
//! is about, the scopes it needs and the time. No I/O, no clock, no tonic.

use crate::code::Code;
use crate::domain::{Scope, Timestamp};
use crate::store::{Application, KeyRecord};
use std::borrow::Cow;

/// Why a request is denied: a stable code and human text that never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub code: Code,
    pub message: Cow<'static, str>,
}

impl Deny {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What the request says about an application, after looking it up.
#[derive(Debug, Clone, Copy)]
pub enum ApplicationFact<'a> {
    /// The request names no application.
    NotRequested,
    /// It names one that does not exist (or is not a well-formed id).
    Unknown,
    Known(&'a Application),
}

/// Steps 5 to 7 of the decision table, in order, for a key whose secret was verified.
pub fn evaluate<'s>(
    key: &KeyRecord,
    application: ApplicationFact<'_>,
    required: impl IntoIterator<Item = &'s Scope>,
    now: Timestamp,
) -> Result<(), Deny> {
    if key.is_revoked() {
        return Err(Deny::new(Code::ApiKeyRevoked, Code::ApiKeyRevoked.default_message()));
    }
    if key.is_expired_at(now) {
        return Err(Deny::new(Code::ApiKeyExpired, Code::ApiKeyExpired.default_message()));
    }
    match application {
        ApplicationFact::NotRequested => {}
        // Another account's application is as absent as one that never existed.
        ApplicationFact::Unknown => return Err(application_not_found()),
        ApplicationFact::Known(app) if app.account_id != key.account_id => return Err(application_not_found()),
        ApplicationFact::Known(app) if !key.allows_application(&app.id) => {
            return Err(Deny::new(
                Code::ApplicationForbidden,
                format!("the key is restricted away from application {}", app.id),
            ))
        }
        ApplicationFact::Known(_) => {}
    }
    if let Some(missing) = key.scopes.first_missing(required) {
        return Err(Deny::new(Code::InsufficientScope, format!("the key does not include the scope {missing}")));
    }
    Ok(())
}

fn application_not_found() -> Deny {
    Deny::new(Code::NotFound, "the application was not found for the account")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, ApplicationId, KeyId, Name, Scopes, SecretHash};

    fn key() -> KeyRecord {
        KeyRecord {
            id: KeyId::parse("key_0000000000000000").unwrap(),
            account_id: AccountId::parse("acct_1").unwrap(),
            name: Name::parse("name", "k").unwrap(),
            scopes: Scopes::parse_grants(&["applications:read"]).unwrap(),
            application_ids: vec![],
            secret_hash: SecretHash::new(String::new()),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            expires_at: None,
            revoked_at: None,
            revoked_reason: None,
            version: 1,
        }
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

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    #[test]
    fn a_live_key_with_the_scope_is_allowed() {
        assert_eq!(code_of(evaluate(&key(), ApplicationFact::NotRequested, &read(), NOW)), None);
    }

    #[test]
    fn revoked_comes_before_expired() {
        let mut k = key();
        k.revoked_at = Some(Timestamp::from_millis(1));
        k.expires_at = Some(Timestamp::from_millis(2));
        assert_eq!(code_of(evaluate(&k, ApplicationFact::NotRequested, &read(), NOW)), Some(Code::ApiKeyRevoked));
    }

    #[test]
    fn expiry_is_inclusive_of_its_instant() {
        let mut k = key();
        k.expires_at = Some(NOW);
        assert_eq!(code_of(evaluate(&k, ApplicationFact::NotRequested, &read(), NOW)), Some(Code::ApiKeyExpired));
        k.expires_at = Some(Timestamp::from_millis(NOW.as_millis() + 1));
        assert_eq!(code_of(evaluate(&k, ApplicationFact::NotRequested, &read(), NOW)), None);
    }

    #[test]
    fn applications_of_other_accounts_are_not_found() {
        let other = app("app_x", "acct_2");
        assert_eq!(code_of(evaluate(&key(), ApplicationFact::Known(&other), &read(), NOW)), Some(Code::NotFound));
        assert_eq!(code_of(evaluate(&key(), ApplicationFact::Unknown, &read(), NOW)), Some(Code::NotFound));
    }

    #[test]
    fn restrictions_forbid_other_applications_before_scopes_are_checked() {
        let mut k = key();
        k.application_ids = vec![ApplicationId::parse("app_a").unwrap()];
        k.scopes = Scopes::default();
        let b = app("app_b", "acct_1");
        assert_eq!(code_of(evaluate(&k, ApplicationFact::Known(&b), &read(), NOW)), Some(Code::ApplicationForbidden));
        let a = app("app_a", "acct_1");
        assert_eq!(code_of(evaluate(&k, ApplicationFact::Known(&a), &read(), NOW)), Some(Code::InsufficientScope));
    }

    #[test]
    fn a_missing_scope_is_named() {
        let write = [Scope::parse_required("applications:write").unwrap()];
        let deny = evaluate(&key(), ApplicationFact::NotRequested, &write, NOW).unwrap_err();
        assert_eq!(deny.code, Code::InsufficientScope);
        assert!(deny.message.contains("applications:write"));
    }
}
