//! `envoy.service.auth.v3.Authorization/Check`: keygate as Envoy's external authorizer
//! (and any gateway's that speaks ext_authz), on the same port as everything else.
//!
//! The decision is Authorize's; this module only translates. A deny becomes a
//! `DeniedHttpResponse` with the error page's status and exact JSON envelope; an allow
//! becomes an `OkHttpResponse` that tells the upstream who the caller is and removes every
//! `x-keygate-*` header the client sent; a failure, or no decision within the caller's
//! deadline, denies with the page's 500 `INTERNAL_ERROR` and an error id (fail closed),
//! whatever Envoy's own `failure_mode_allow` says.

use super::status::log_failure;
use crate::authz::decision::Deny;
use crate::authz::{AuthorizeQuery, Authorizer, Decision, Verdict};
use crate::code::Code;
use crate::edge::principal_headers;
use crate::edge::EdgeSettings;
use crate::policy::{RequestHeaders, RequestParts};
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use keygate_api::edge::is_reserved_header;
use keygate_api::edge::CredentialSource;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct ExtAuthzSettings {
    pub credential_headers: Vec<CredentialSource>,
    /// Remove the header the credential came in before the request goes upstream.
    pub strip_credential: bool,
}

impl Default for ExtAuthzSettings {
    fn default() -> Self {
        Self { credential_headers: CredentialSource::defaults(), strip_credential: false }
    }
}

pub struct CheckService {
    authorizer: Arc<Authorizer>,
    settings: ExtAuthzSettings,
    edge: EdgeSettings,
}

impl CheckService {
    pub fn new(authorizer: Arc<Authorizer>, settings: ExtAuthzSettings, edge: EdgeSettings) -> Self {
        Self { authorizer, settings, edge }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let budget = self.edge.budget(super::caller_deadline(request.metadata()));
        let check = request.into_inner();
        let Some(http) = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref())
        else {
            return Ok(Response::new(denied(Code::ValidationError, "the check request has no HTTP attributes", None)));
        };
        if let Err(invalid) = crate::edge::method_and_path(&http.method, &http.path) {
            return Ok(Response::new(denied(Code::ValidationError, &invalid.to_string(), None)));
        }
        if let Err(invalid) = crate::edge::method_override(&http.method, &http.headers) {
            return Ok(Response::new(denied(Code::BadRequest, &invalid.to_string(), None)));
        }
        let found = self
            .settings
            .credential_headers
            .iter()
            .find_map(|h| h.read(http.headers.header_lines(h.header_name())).map(|c| (h, c)));
        // Envoy's source address is the peer it saw; what proxies before it wrote in
        // x-forwarded-for is believed only through the configured trusted hops.
        let peer = check.get_client_address().and_then(|ip| ip.parse().ok());
        let client = keygate_api::edge::client_address_from_headers(
            peer,
            http.headers.get("x-forwarded-for").map(String::as_str),
            http.headers.get("forwarded").map(String::as_str),
            self.edge.trusted_proxy_hops,
        );
        // The body, when Envoy sends it (`with_request_body`): as bytes or as text.
        let body = [http.raw_body.as_slice(), http.body.as_bytes()].into_iter().find(|b| !b.is_empty());
        let query = AuthorizeQuery {
            credential: found.map_or("", |(_, c)| c),
            method: &http.method,
            path: &http.path,
            application_id: None,
            required_scopes: Vec::new(),
            client,
            cost: None,
            parts: RequestParts { query: None, headers: &http.headers, body },
        };
        let response = match self.authorizer.authorize_within(&query, budget).await {
            Ok(verdict @ Verdict { decision: Decision::Allowed, .. }) => {
                allowed(&verdict, http.headers.keys(), found.filter(|_| self.settings.strip_credential).map(|(h, _)| h))
            }
            Ok(Verdict { decision: Decision::Denied(deny), rate_limit, .. }) => {
                refused(&deny, rate_limit.map(|r| r.retry_after_seconds).filter(|s| *s > 0))
            }
            Err(failure) => {
                let error_id = log_failure(&failure);
                denied(
                    Code::InternalError,
                    &format!("the authorization service cannot decide right now (error id {error_id})"),
                    None,
                )
            }
        };
        Ok(Response::new(response))
    }
}

/// An allow: who the caller is and which application it acts on, for the upstream; every
/// other name in keygate's header namespace that the client sent is removed.
fn allowed<'h>(
    verdict: &Verdict,
    client_headers: impl Iterator<Item = &'h String>,
    strip: Option<&CredentialSource>,
) -> CheckResponse {
    let mut ok = OkHttpResponseBuilder::new();
    let set = principal_headers(verdict);
    for (name, value) in &set {
        ok.add_header(*name, value.clone(), Some(HeaderAppendAction::OverwriteIfExistsOrAdd), true);
    }
    for name in client_headers.filter(|name| is_reserved_header(name)) {
        if !set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
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

fn denied(code: Code, message: &str, retry_after_seconds: Option<u32>) -> CheckResponse {
    refused(&Deny::new(code, message.to_owned()), retry_after_seconds)
}

/// A deny with the code's own HTTP and gRPC statuses, the page's exact envelope, and the
/// finer reason in `x-keygate-reason`.
fn refused(deny: &Deny, retry_after_seconds: Option<u32>) -> CheckResponse {
    let Deny { code, reason, message } = deny;
    let code = *code;
    let mut denied = DeniedHttpResponseBuilder::new();
    denied
        .set_http_status(HttpStatusCode::try_from(i32::from(code.http_status())).unwrap_or(HttpStatusCode::Forbidden));
    denied.add_header("content-type", "application/json", None, false);
    denied.add_header("x-keygate-reason", reason.as_str(), None, false);
    if let Some(seconds) = retry_after_seconds {
        denied.add_header("retry-after", seconds.to_string(), None, false);
    }
    denied.set_body(code.envelope(message));
    let mut response = CheckResponse::with_status(Status::new(code.grpc_code(), message.as_ref()));
    response.set_http_response(denied);
    response
}
