//! What every edge entry shares (Envoy's Check, the HTTP forward-auth listener): where
//! the credential is read from, and the headers an allowed request carries upstream.
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

/// The headers keygate sets on an allowed request, for the upstream. Forward auth sends
/// every one (empty when it does not apply): Caddy would otherwise copy a literal
/// placeholder upstream for a missing one.
pub const PRINCIPAL_HEADERS: [&str; 7] = [
    "x-keygate-principal-kind",
    "x-keygate-account-id",
    "x-keygate-key-id",
    "x-keygate-session-id",
    "x-keygate-user-id",
    "x-keygate-scopes",
    "x-keygate-application-id",
];

/// Where an edge finds the credential; the first source that holds one wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `authorization: Bearer <credential>`.
    Authorization,
    /// A header with the bare credential, e.g. `x-api-key` (lowercase).
    Header(String),
    /// A cookie by name.
    Cookie(String),
}

impl CredentialHeader {
    /// `authorization`, `cookie:NAME`, or any other header name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim().to_ascii_lowercase();
        let valid_name =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match raw.split_once(':') {
            Some(("cookie", name)) if valid_name(name) => Ok(Self::Cookie(name.to_owned())),
            None if raw == "authorization" => Ok(Self::Authorization),
            None if valid_name(&raw) => Ok(Self::Header(raw)),
            _ => Err(format!("{raw:?} is not a header name, 'authorization' or 'cookie:NAME'")),
        }
    }

    pub fn header_name(&self) -> &str {
        match self {
            Self::Authorization => "authorization",
            Self::Header(name) => name,
            Self::Cookie(_) => "cookie",
        }
    }

    /// The credential in `headers`, if this source holds one.
    pub fn read<'h>(&self, headers: &'h dyn RequestHeaders) -> Option<&'h str> {
        let value = headers.header(self.header_name())?;
        match self {
            Self::Authorization => {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            }
            Self::Header(_) => Some(value.trim()),
            Self::Cookie(name) => value.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value)
            }),
        }
        .filter(|c| !c.is_empty())
    }
}

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
    use std::collections::HashMap;

    #[test]
    fn credential_headers_parse_and_read() {
        assert_eq!(CredentialHeader::parse("Authorization").unwrap(), CredentialHeader::Authorization);
        assert_eq!(CredentialHeader::parse("X-Api-Key").unwrap(), CredentialHeader::Header("x-api-key".into()));
        assert_eq!(CredentialHeader::parse("cookie:sid").unwrap(), CredentialHeader::Cookie("sid".into()));
        assert!(CredentialHeader::parse("cookie:").is_err());
        assert!(CredentialHeader::parse("a b").is_err());
        let headers = HashMap::from([
            ("authorization".to_owned(), "Bearer kg_1".to_owned()),
            ("cookie".to_owned(), "a=1; sid=kgs_2".to_owned()),
        ]);
        assert_eq!(CredentialHeader::Authorization.read(&headers), Some("kg_1"));
        assert_eq!(CredentialHeader::Cookie("sid".into()).read(&headers), Some("kgs_2"));
        assert_eq!(CredentialHeader::Header("x-api-key".into()).read(&headers), None);
    }
}
