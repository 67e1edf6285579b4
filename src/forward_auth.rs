//! HTTP forward auth: keygate behind nginx (`auth_request`), Caddy (`forward_auth`),
//! Traefik (`forwardAuth`) and any proxy that asks an HTTP endpoint before it proxies.
//!
//! The proxy sends a subrequest with the client's headers and the original method and URI
//! in `X-Forwarded-Method`/`X-Forwarded-Uri` (Caddy, Traefik) or
//! `X-Original-Method`/`X-Original-URI` (nginx), never the body. The decision is
//! Authorize's; this module only translates:
//! - allow: 200, and every principal header (empty when it does not apply) for the proxy to
//!   copy upstream;
//! - deny: the error page's status, `content-type: application/json`, the exact envelope,
//!   `retry-after` on 429 — and the same facts as headers (`x-keygate-status`,
//!   `x-keygate-code`, `x-keygate-envelope`), because nginx can read an auth response's
//!   headers but not its body, and turns every status but 401 and 403 into 500;
//! - no decision (a store down, the deadline passed): the page's 500 with an error id.
//!
//! A subrequest that carries a client's `x-keygate-*` header is refused (400 bad_request):
//! nginx cannot remove a header namespace, so keygate makes sure none passes. So is one
//! that names its original request twice (a header repeated, two values in one line) or
//! carries a method-override header naming another method.

use crate::authz::decision::Deny;
use crate::authz::{AuthorizeQuery, Authorizer, Decision, Verdict};
use crate::breaker::Breaker;
use crate::code::Code;
use crate::edge::EdgeSettings;
use crate::edge::{principal_headers, PRINCIPAL_HEADERS};
use crate::policy::{RequestHeaders, RequestParts};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_api::edge::is_reserved_header;
use keygate_api::edge::CredentialSource;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the proxy asks.
pub const FORWARD_AUTH_PATH: &str = "/forward-auth";
/// Where proxies and orchestrators check that keygate serves.
pub const HEALTH_PATH: &str = "/healthz";

/// What the forward-auth listener needs.
#[derive(Clone)]
pub struct ForwardAuth {
    pub authorizer: Arc<Authorizer>,
    pub credential_headers: Arc<[CredentialSource]>,
    pub edge: EdgeSettings,
    pub store_breaker: Arc<Breaker>,
}

/// The listener's routes.
pub fn router(state: ForwardAuth) -> axum::Router {
    axum::Router::new()
        .route(FORWARD_AUTH_PATH, axum::routing::any(forward_auth))
        .route(HEALTH_PATH, axum::routing::get(health))
        .with_state(state)
}

/// Serves until `shutdown` completes; each connection's peer address is the proxy's.
pub async fn serve(
    listener: crate::tls::HttpListener,
    state: ForwardAuth,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    match listener {
        crate::tls::HttpListener::Plain(listener) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        // Through `tap_io`, which axum gives the peer address of any listener's connections.
        crate::tls::HttpListener::Tls(listener) => {
            axum::serve(listener.tap_io(|_| {}), app).with_graceful_shutdown(shutdown).await
        }
    }
}

async fn health(State(state): State<ForwardAuth>) -> Response {
    // Serving even while the store is down: cached keys are still decided.
    let store = if state.store_breaker.is_open() { "unreachable" } else { "up" };
    json(StatusCode::OK, format!(r#"{{"status":"serving","store":"{store}"}}"#))
}

async fn forward_auth(
    State(state): State<ForwardAuth>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(name) = headers.keys().find(|name| is_reserved_header(name.as_str())) {
        let message = format!("the header {name} is reserved for keygate and may not be sent by a client");
        return denied(Code::BadRequest, &message, None);
    }
    let (method, uri) = match original_request(&headers) {
        Ok(found) => found,
        Err(deny) => return refused(&deny, None),
    };
    let credential = state
        .credential_headers
        .iter()
        .find_map(|source| source.read(headers.header_lines(source.header_name())))
        .unwrap_or("");
    let client = keygate_api::edge::client_address_from_headers(
        Some(peer.ip()),
        lines(&headers, "x-forwarded-for"),
        lines(&headers, "forwarded"),
        state.edge.trusted_proxy_hops,
    );
    let query = AuthorizeQuery {
        credential,
        method,
        path: uri,
        application_id: None,
        required_scopes: Vec::new(),
        client,
        cost: None,
        parts: RequestParts { query: None, headers: &headers, body: None },
    };
    // No caller deadline travels over HTTP: the configured one, below the proxy's timeout.
    match state.authorizer.authorize_within(&query, state.edge.decision_deadline).await {
        Ok(verdict @ Verdict { decision: Decision::Allowed, .. }) => allowed(&verdict),
        Ok(Verdict { decision: Decision::Denied(deny), rate_limit, .. }) => {
            refused(&deny, rate_limit.map(|r| r.retry_after_seconds).filter(|s| *s > 0))
        }
        Err(failure) => {
            let error_id = crate::grpc::status::log_failure(&failure);
            let message = format!("the authorization service cannot decide right now (error id {error_id})");
            denied(Code::InternalError, &message, None)
        }
    }
}

/// The headers that name the original request; each is written by the proxy, once.
const ORIGINAL_REQUEST_HEADERS: [&str; 4] =
    ["x-forwarded-method", "x-forwarded-uri", "x-original-method", "x-original-uri"];

/// The original request's method and URI, or why it is refused.
///
/// Each header must come once: a proxy that appends its line to the client's instead of
/// replacing it would otherwise let the client's line choose what keygate decides on. A
/// URI with a space or a control byte cannot be a request target: two values joined into
/// one line (`/api/v1/health, /admin`) are refused too. An override header naming another
/// method ([`crate::edge::method_override`]) is refused: the upstream may honour it.
fn original_request(headers: &HeaderMap) -> Result<(&str, &str), Deny> {
    if let Some(name) = ORIGINAL_REQUEST_HEADERS.into_iter().find(|name| headers.get_all(*name).iter().count() > 1) {
        let message = format!("the header {name} appears more than once; a proxy must replace it, never append");
        return Err(Deny::new(Code::BadRequest, message));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Proxies write one pair (Caddy and Traefik X-Forwarded-*, nginx X-Original-*) and pass
    // the client's own headers along: a pair the proxy did not write is the client's. So
    // when both are present they must say the same, or a client could choose what keygate
    // decides on (the shipped nginx configuration writes both).
    let pick = |names: [&str; 2]| match (header(names[0]), header(names[1])) {
        (Some(a), Some(b)) if a != b => Err(()),
        (a, b) => Ok(a.or(b)),
    };
    let (Ok(method), Ok(uri)) =
        (pick(["x-forwarded-method", "x-original-method"]), pick(["x-forwarded-uri", "x-original-uri"]))
    else {
        let message = "X-Forwarded-Method/-Uri and X-Original-Method/-URI name different requests";
        return Err(Deny::new(Code::BadRequest, message));
    };
    let (Some(method), Some(uri)) = (method, uri) else {
        let message = "a forward-auth request names the original request in X-Forwarded-Method and \
                       X-Forwarded-Uri (or X-Original-Method and X-Original-URI)";
        return Err(Deny::new(Code::ValidationError, message));
    };
    if let Err(invalid) = crate::edge::method_and_path(method, uri) {
        return Err(Deny::new(Code::ValidationError, invalid.to_string()));
    }
    if uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
        let message = "the original URI holds a space or a control character: one request target, never a list";
        return Err(Deny::new(Code::BadRequest, message));
    }
    if let Err(invalid) = crate::edge::method_override(method, headers) {
        return Err(Deny::new(Code::BadRequest, invalid.to_string()));
    }
    Ok((method, uri))
}

/// Every line of a header, in order (a proxy may append a line of its own rather than
/// extend the client's).
fn lines<'h>(headers: &'h HeaderMap, name: &str) -> impl DoubleEndedIterator<Item = &'h str> {
    headers.get_all(name).into_iter().filter_map(|v| v.to_str().ok())
}

fn allowed(verdict: &Verdict) -> Response {
    let set = principal_headers(verdict);
    let mut response = StatusCode::OK.into_response();
    for name in PRINCIPAL_HEADERS {
        let value = set.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v.as_str());
        // Ids and scopes are printable ASCII; anything else is sent empty rather than mangled.
        let value = HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static(""));
        response.headers_mut().insert(HeaderName::from_static(name), value);
    }
    response
}

fn denied(code: Code, message: &str, retry_after_seconds: Option<u32>) -> Response {
    refused(&Deny::new(code, message.to_owned()), retry_after_seconds)
}

/// The deny's status and envelope, and the same facts as headers for nginx, with the
/// finer reason in `x-keygate-reason`.
fn refused(deny: &Deny, retry_after_seconds: Option<u32>) -> Response {
    let Deny { code, reason, message } = deny;
    let code = *code;
    let envelope = code.envelope(message);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, envelope.clone());
    let headers = response.headers_mut();
    if let Some(seconds) = retry_after_seconds {
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    headers.insert("x-keygate-status", HeaderValue::from(code.http_status()));
    headers.insert("x-keygate-code", HeaderValue::from_static(code.as_str()));
    headers.insert("x-keygate-reason", HeaderValue::from_static(reason.as_str()));
    // The envelope is one line (JSON escapes control characters); bytes, so UTF-8 passes.
    if let Ok(value) = HeaderValue::from_bytes(envelope.as_bytes()) {
        headers.insert("x-keygate-envelope", value);
    }
    response
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
