//! `envoy.service.auth.v3.Authorization/Check`: keygate as Envoy's external authorizer
//! (and any gateway's that speaks ext_authz), on the same port as everything else.
//!
//! The decision is Authorize's; this module only translates. A deny becomes a
//! `DeniedHttpResponse` with the error page's status and exact JSON envelope; an allow
//! becomes an `OkHttpResponse` that tells the upstream who the caller is and removes every
//! `x-keygate-*` header the client sent; a failure, or no decision within the caller's
//! deadline, denies with the page's 500 `INTERNAL_ERROR` and an error id (fail closed),
//! whatever Envoy's own `failure_mode_allow` says.

use super::envoy::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use super::envoy::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use super::envoy::google::rpc;
use super::envoy::{Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HttpResponse, OkHttpResponse};
use crate::authz::{Authorizer, Verdict};
use crate::code::Code;
use crate::domain::Deny;
use crate::edge::{principal_headers, Answer, EdgeSettings, HttpRequest, Pass};
use keygate_api::answer::REASON_HEADER;
use keygate_api::edge::{is_reserved_header, CredentialSource};
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
            let deny = Deny::new(Code::ValidationError, "the check request has no HTTP attributes");
            return Ok(Response::new(refused(&deny, None)));
        };
        let request = HttpRequest {
            method: &http.method,
            target: &http.path,
            headers: &http.headers,
            // Envoy's source address is the peer it saw; what proxies before it wrote in
            // x-forwarded-for is believed only through the configured trusted hops.
            peer: client_address(&check).and_then(|ip| ip.parse().ok()),
            // The body, when Envoy sends it (`with_request_body`): as bytes or as text.
            body: [http.raw_body.as_slice(), http.body.as_bytes()].into_iter().find(|b| !b.is_empty()),
        };
        if let Err(deny) = request.check() {
            return Ok(Response::new(refused(&deny, None)));
        }
        let (query, found) = request.query(&self.settings.credential_headers, self.edge.trusted_proxy_hops);
        let response = match Answer::of(self.authorizer.authorize_within(&query, budget).await).pass() {
            Pass::Allow(verdict) => {
                allowed(&verdict, http.headers.keys(), found.filter(|_| self.settings.strip_credential))
            }
            Pass::Deny(deny, retry_after_seconds) => refused(&deny, retry_after_seconds),
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
    let mut ok = OkHttpResponse::default();
    let set = principal_headers(verdict);
    for (name, value) in &set {
        ok.headers.push(header(name, value.clone(), HeaderAppendAction::OverwriteIfExistsOrAdd, true));
    }
    for name in client_headers.filter(|name| is_reserved_header(name)) {
        if !set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            ok.headers_to_remove.push(name.clone());
        }
    }
    if let Some(source) = strip {
        ok.headers_to_remove.push(source.header_name().to_owned());
    }
    answer(Status::ok(""), HttpResponse::OkResponse(ok))
}

/// A deny with the code's own HTTP and gRPC statuses, the page's exact envelope, and the
/// finer reason in `x-keygate-reason`.
fn refused(deny: &Deny, retry_after_seconds: Option<u32>) -> CheckResponse {
    let Deny { code, reason, message } = deny;
    let code = *code;
    let status = HttpStatusCode::try_from(i32::from(code.http_status())).unwrap_or(HttpStatusCode::Forbidden);
    let append = HeaderAppendAction::AppendIfExistsOrAdd;
    let mut headers = vec![
        header("content-type", "application/json".to_owned(), append, false),
        header(REASON_HEADER, reason.as_str().to_owned(), append, false),
    ];
    if let Some(seconds) = retry_after_seconds {
        headers.push(header("retry-after", seconds.to_string(), append, false));
    }
    let denied =
        DeniedHttpResponse { status: Some(HttpStatus { code: status.into() }), headers, body: code.envelope(message) };
    answer(Status::new(code.grpc_code(), message.as_ref()), HttpResponse::DeniedResponse(denied))
}

/// The response: the gRPC status Envoy reads first (its details are not sent) and the HTTP
/// answer.
fn answer(status: Status, http: HttpResponse) -> CheckResponse {
    let status = rpc::Status { code: status.code().into(), message: status.message().into(), details: Vec::new() };
    CheckResponse { status: Some(status), http_response: Some(http), ..Default::default() }
}

/// One header to set; `keep_empty` keeps it even when its value is empty.
fn header(name: &str, value: String, append: HeaderAppendAction, keep_empty: bool) -> HeaderValueOption {
    #[allow(deprecated)] // `append`, superseded by `append_action`, stays unset.
    HeaderValueOption {
        header: Some(HeaderValue { key: name.to_owned(), value, raw_value: Vec::new() }),
        append: None,
        append_action: append.into(),
        keep_empty_value: keep_empty,
    }
}

/// The address Envoy saw the request come from, when it is a socket address.
fn client_address(check: &CheckRequest) -> Option<&String> {
    let peer = check.attributes.as_ref()?.source.as_ref()?;
    match peer.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(socket) => Some(&socket.address),
        _ => None,
    }
}
