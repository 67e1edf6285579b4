//! The answer every entry gives, whatever its protocol: Authorize decided (allow or
//! deny), or no decision came and the cause is logged under an error id. Each protocol
//! renders an [`Answer`] in one place; an HTTP-shaped edge reads it as a [`Pass`] (allow
//! with headers, or deny), where a failure is the error page's 500 with its error id.

use crate::authz::decision::Principal;
use crate::authz::{AuthzError, Decision, Verdict};
use crate::code::Code;
use crate::domain::Deny;

/// What an entry answers.
#[derive(Debug)]
pub enum Answer {
    /// Authorize decided, allow or deny, with everything it found.
    Decided(Verdict),
    /// No decision (a store down, the deadline passed); the cause is logged.
    Failed(Failure),
}

/// A decision that did not come, logged with its cause: the caller gets only the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error_id: String,
    /// A store, the limiter or the deadline failed: retrying later may succeed.
    pub unavailable: bool,
    /// No decision within the call's budget.
    pub deadline: bool,
}

/// What an HTTP-shaped edge does with an [`Answer`].
#[derive(Debug)]
pub enum Pass {
    /// Pass the request on: the verdict says who the caller is.
    Allow(Verdict),
    /// Answer it with this deny and, when a limit says so, the seconds to wait.
    Deny(Deny, Option<u32>),
}

impl Answer {
    /// Authorize's result; a failure is logged here under a fresh error id.
    pub fn of(result: Result<Verdict, AuthzError>) -> Self {
        match result {
            Ok(verdict) => Self::Decided(verdict),
            Err(failure) => Self::Failed(Failure {
                unavailable: matches!(
                    failure,
                    AuthzError::Unavailable(_)
                        | AuthzError::LimiterUnavailable(_)
                        | AuthzError::DeadlineExceeded(_)
                        | AuthzError::StaleCredits(_)
                ),
                deadline: matches!(failure, AuthzError::DeadlineExceeded(_)),
                error_id: log_failure(&failure),
            }),
        }
    }

    /// The answer as an HTTP edge gives it: a failure is the error page's 500 with its
    /// error id (fail closed), a rate-limited deny says when to come back.
    pub fn pass(self) -> Pass {
        match self {
            Self::Decided(verdict @ Verdict { decision: Decision::Allowed, .. }) => Pass::Allow(verdict),
            Self::Decided(Verdict { decision: Decision::Denied(deny), rate_limit, .. }) => {
                Pass::Deny(deny, rate_limit.map(|r| r.retry_after_seconds).filter(|s| *s > 0))
            }
            Self::Failed(failure) => {
                Pass::Deny(Deny::new(Code::InternalError, keygate_api::answer::cannot_decide(&failure.error_id)), None)
            }
        }
    }
}

/// Logs `cause` with a fresh error id, and returns the id: the caller gets the id, the log
/// gets the cause. For every entry and the admin API alike.
pub fn log_failure(cause: &dyn std::error::Error) -> String {
    let error_id = keygate_api::answer::new_error_id();
    // Under the target these lines have always had, which log filters name.
    tracing::error!(target: "keygate::grpc::status", error_id = %error_id, error = %ErrorChain(cause), "request failed");
    error_id
}

/// Formats an error with its sources, for the log line only.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The headers keygate sets on an allowed request, for the upstream. Forward auth sends
/// every one (empty when it does not apply): Caddy would otherwise copy a literal
/// placeholder upstream for a missing one.
pub const PRINCIPAL_HEADERS: [&str; 9] = [
    "x-keygate-principal-kind",
    "x-keygate-account-id",
    "x-keygate-key-id",
    "x-keygate-session-id",
    "x-keygate-user-id",
    "x-keygate-scopes",
    "x-keygate-application-id",
    "x-keygate-meta",
    "x-keygate-owner-id",
];

/// The `x-keygate-*` headers an allowed request carries upstream.
pub fn principal_headers(verdict: &Verdict) -> Vec<(&'static str, String)> {
    let mut set = Vec::with_capacity(6);
    if let Some(principal) = &verdict.principal {
        set.push(("x-keygate-principal-kind", principal.kind().as_str().to_owned()));
        set.push(("x-keygate-account-id", principal.account_id().to_string()));
        match principal {
            Principal::Key(key) => {
                set.push(("x-keygate-key-id", key.id.to_string()));
                let scopes: Vec<_> = key.scopes.iter().map(|s| s.as_str()).collect();
                set.push(("x-keygate-scopes", scopes.join(",")));
                // One header, whatever the JSON holds: base64url of its compact form.
                if let Some(metadata) = &key.terms.metadata {
                    set.push(("x-keygate-meta", metadata.as_header().to_owned()));
                }
                if let Some(owner) = &key.owner_id {
                    set.push(("x-keygate-owner-id", owner.to_string()));
                }
            }
            Principal::Session(session) => {
                set.push(("x-keygate-session-id", session.id.to_string()));
                set.push(("x-keygate-user-id", session.user_id.to_string()));
            }
        }
    }
    // The application the decision was made for: what the upstream should act on.
    if let Some(application) = &verdict.application_id {
        set.push(("x-keygate-application-id", application.clone()));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::Reason;
    use std::time::Duration;

    #[test]
    fn a_failure_is_logged_under_an_id_and_answered_over_http_as_the_pages_500_with_it() {
        let answer = Answer::of(Err(AuthzError::DeadlineExceeded(Duration::from_millis(5))));
        let Answer::Failed(failure) = &answer else { panic!("{answer:?}") };
        assert!(failure.unavailable, "a deadline is worth retrying");
        let error_id = failure.error_id.clone();
        let Pass::Deny(deny, retry_after_seconds) = answer.pass() else { panic!("a failure never allows") };
        assert_eq!((deny.code, deny.reason, retry_after_seconds), (Code::InternalError, Reason::Internal, None));
        assert_eq!(deny.message, format!("the authorization service cannot decide right now (error id {error_id})"));
    }
}
