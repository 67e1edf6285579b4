//! What every edge entry shares (Envoy's Check, the HTTP forward-auth listener): the
//! request's shape, the headers an allowed request carries upstream, deadlines and
//! trusted hops. Where the credential is read from is
//! [`keygate_api::edge::CredentialSource`], shared with the Rust layer.
//! Each entry only translates; the decision is Authorize's.

use crate::authz::decision::Principal;
use crate::authz::Verdict;
use crate::domain::InvalidField;
use crate::policy::RequestHeaders;
use std::time::Duration;

/// What every edge entry shares: how the client's address is read, and how long a
/// decision may take.
#[derive(Debug, Clone, Copy)]
pub struct EdgeSettings {
    pub trusted_proxy_hops: usize,
    /// When the caller sets no deadline of its own.
    pub decision_deadline: Duration,
}

impl EdgeSettings {
    /// The time a decision may take: the caller's deadline less a fifth (kept for the
    /// answer's way back), never more than the configured deadline.
    pub fn budget(&self, caller_deadline: Option<Duration>) -> Duration {
        match caller_deadline {
            Some(deadline) => (deadline - deadline / 5).min(self.decision_deadline),
            None => self.decision_deadline,
        }
    }
}

pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_METHOD_LEN: usize = 16;

/// The shape every entry checks before deciding: an HTTP method, and a target that starts
/// with '/' and is not absurdly long. Whether the path can match a route is the decision's
/// question ([`keygate_api::edge::request_target`]), answered not_found.
pub fn method_and_path(method: &str, path: &str) -> Result<(), InvalidField> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(InvalidField::new("method", "must be an HTTP method such as GET"));
    }
    if !path.starts_with('/') {
        return Err(InvalidField::new("path", "must start with '/'"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(InvalidField::new("path", format!("must be at most {MAX_PATH_LEN} bytes")));
    }
    Ok(())
}

/// Refuses a method-override header ([`keygate_api::edge::METHOD_OVERRIDE_HEADERS`], under
/// any spelling a CGI upstream reads) that names another method than `method`: an upstream
/// framework may honour it, so a request decided as a GET could act as a DELETE. The same
/// method, or an empty value, is harmless. `method` has passed [`method_and_path`].
pub fn method_override(method: &str, headers: &dyn RequestHeaders) -> Result<(), InvalidField> {
    for name in keygate_api::edge::METHOD_OVERRIDE_HEADERS {
        let lines = headers.header_spellings(name);
        let mut named = lines.iter().flat_map(|line| line.split(',')).map(str::trim).filter(|m| !m.is_empty());
        if named.any(|other| !other.eq_ignore_ascii_case(method)) {
            let problem = format!("{name} names another method than the request's {method}; send the real method");
            return Err(InvalidField::new("headers", problem));
        }
    }
    Ok(())
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
