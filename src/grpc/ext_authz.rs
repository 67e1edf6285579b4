//! `envoy.service.auth.v3.Authorization/Check`: keygate as Envoy's external authorizer
//! (and any gateway's that speaks ext_authz), on the same port as everything else.
//!
//! The decision is Authorize's; this module only translates. A deny becomes a
//! `DeniedHttpResponse` with the error page's status and exact JSON envelope; an allow
//! becomes an `OkHttpResponse` that tells the upstream who the caller is; a failure
//! denies with 503 (fail closed), whatever Envoy's own `failure_mode_allow` says.

use super::convert;
use super::status::log_failure;
use crate::authz::decision::{Deny, Principal};
use crate::authz::{Authorizer, Verdict};
use crate::code::Code;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Headers keygate sets on allowed requests. Any the caller sent are removed or
/// overwritten, so the upstream can trust them.
const PRINCIPAL_HEADERS: [&str; 6] = [
    "x-keygate-account-id",
    "x-keygate-key-id",
    "x-keygate-session-id",
    "x-keygate-user-id",
    "x-keygate-scopes",
    "x-keygate-principal-kind",
];

/// Where Check finds the credential, in order.
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

    fn header_name(&self) -> &str {
        match self {
            Self::Authorization => "authorization",
            Self::Header(name) => name,
            Self::Cookie(_) => "cookie",
        }
    }

    fn read<'h>(&self, headers: &'h HashMap<String, String>) -> Option<&'h str> {
        let value = headers.get(self.header_name())?;
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

#[derive(Debug, Clone)]
pub struct ExtAuthzSettings {
    pub credential_headers: Vec<CredentialHeader>,
    /// Remove the header the credential came in before the request goes upstream.
    pub strip_credential: bool,
}

impl Default for ExtAuthzSettings {
    fn default() -> Self {
        Self {
            credential_headers: vec![
                CredentialHeader::Authorization,
                CredentialHeader::Header("x-api-key".into()),
                CredentialHeader::Cookie("keygate_session".into()),
            ],
            strip_credential: false,
        }
    }
}

pub struct CheckService {
    authorizer: Arc<Authorizer>,
    settings: ExtAuthzSettings,
}

impl CheckService {
    pub fn new(authorizer: Arc<Authorizer>, settings: ExtAuthzSettings) -> Self {
        Self { authorizer, settings }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let Some(http) = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref())
        else {
            return Ok(Response::new(denied(Code::ValidationError, "the check request has no HTTP attributes", None)));
        };
        let found = self.settings.credential_headers.iter().find_map(|h| h.read(&http.headers).map(|c| (h, c)));
        let ask = super::proto::AuthorizeRequest {
            credential: found.map(|(_, c)| c.to_owned()).unwrap_or_default(),
            method: http.method.clone(),
            path: http.path.clone(),
            client_ip: check
                .get_client_address()
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        };
        let query = match convert::authorize_query(&ask) {
            Ok(query) => query,
            Err(invalid) => return Ok(Response::new(denied(Code::ValidationError, &invalid.to_string(), None))),
        };
        let response = match self.authorizer.authorize(&query).await {
            Ok(Verdict { deny: None, principal, .. }) => {
                allowed(principal.as_ref(), found.filter(|_| self.settings.strip_credential).map(|(h, _)| h))
            }
            Ok(Verdict { deny: Some(Deny { code, message }), rate_limit, .. }) => {
                denied(code, &message, rate_limit.map(|r| r.retry_after_seconds).filter(|s| *s > 0))
            }
            Err(failure) => {
                let error_id = log_failure(&failure);
                // Not the error page's 500: the edge should see that this is retryable.
                deny_response(
                    HttpStatusCode::ServiceUnavailable,
                    tonic::Code::Unavailable,
                    Code::InternalError,
                    &format!("the authorization service cannot decide right now (error id {error_id})"),
                    None,
                )
            }
        };
        Ok(Response::new(response))
    }
}

fn allowed(principal: Option<&Principal>, strip: Option<&CredentialHeader>) -> CheckResponse {
    let mut ok = OkHttpResponseBuilder::new();
    let mut set = Vec::new();
    if let Some(principal) = principal {
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
    for (name, value) in &set {
        ok.add_header(*name, value.clone(), Some(HeaderAppendAction::OverwriteIfExistsOrAdd), true);
    }
    for name in PRINCIPAL_HEADERS {
        if !set.iter().any(|(n, _)| *n == name) {
            ok.remove_header(name);
        }
    }
    if let Some(header) = strip {
        ok.remove_header(header.header_name());
    }
    let mut response = CheckResponse::with_status(Status::ok(""));
    response.set_http_response(ok);
    response
}

/// A deny with the code's own HTTP and gRPC statuses.
fn denied(code: Code, message: &str, retry_after_seconds: Option<u32>) -> CheckResponse {
    let http = HttpStatusCode::try_from(i32::from(code.http_status())).unwrap_or(HttpStatusCode::Forbidden);
    deny_response(http, code.grpc_code(), code, message, retry_after_seconds)
}

fn deny_response(
    http: HttpStatusCode,
    grpc: tonic::Code,
    code: Code,
    message: &str,
    retry_after_seconds: Option<u32>,
) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(http);
    denied.add_header("content-type", "application/json", None, false);
    if let Some(seconds) = retry_after_seconds {
        denied.add_header("retry-after", seconds.to_string(), None, false);
    }
    denied.set_body(code.envelope(message));
    let mut response = CheckResponse::with_status(Status::new(grpc, message));
    response.set_http_response(denied);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
