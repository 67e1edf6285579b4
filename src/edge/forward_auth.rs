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

use super::{principal_headers, Answer, EdgeSettings, HttpRequest, Pass, PRINCIPAL_HEADERS};
use crate::authz::{Authorizer, Verdict};
use crate::breaker::Breaker;
use crate::code::Code;
use crate::domain::Deny;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_api::answer::{envelope_response, json_response, REASON_HEADER};
use keygate_api::edge::{is_reserved_header, CredentialSource};
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
    /// Set when keygate starts to shut down: /healthz then answers 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
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
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        // Still answering forward auth until the listener closes; a balancer moves away.
        return json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_serving"}"#.to_owned());
    }
    // Serving even while the store is down: cached keys are still decided.
    let store = if state.store_breaker.is_open() { "unreachable" } else { "up" };
    json_response(StatusCode::OK, format!(r#"{{"status":"serving","store":"{store}"}}"#))
}

async fn forward_auth(
    State(state): State<ForwardAuth>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let request = match original_request(&headers, peer) {
        Ok(request) => request,
        Err(deny) => return refused(&deny, None),
    };
    let (query, _) = request.query(&state.credential_headers, state.edge.trusted_proxy_hops);
    // No caller deadline travels over HTTP: the configured one, below the proxy's timeout.
    match Answer::of(state.authorizer.authorize_within(&query, state.edge.budget(None)).await).pass() {
        Pass::Allow(verdict) => allowed(&verdict),
        Pass::Deny(deny, retry_after_seconds) => refused(&deny, retry_after_seconds),
    }
}

/// The headers that name the original request; each is written by the proxy, once.
const ORIGINAL_REQUEST_HEADERS: [&str; 4] =
    ["x-forwarded-method", "x-forwarded-uri", "x-original-method", "x-original-uri"];

/// The original request, or why it is refused.
///
/// A client's `x-keygate-*` header is refused: nginx cannot remove a header namespace. Each
/// header that names the original request must come once: a proxy that appends its line
/// to the client's instead of replacing it would otherwise let the client's line choose
/// what keygate decides on. A URI with a space or a control byte cannot be a request
/// target: two values joined into one line (`/api/v1/health, /admin`) are refused too. An
/// override header naming another method ([`HttpRequest::check_override`]) is refused: the
/// upstream may honour it.
fn original_request(headers: &HeaderMap, peer: SocketAddr) -> Result<HttpRequest<'_, HeaderMap>, Deny> {
    if let Some(name) = headers.keys().find(|name| is_reserved_header(name.as_str())) {
        let message = format!("the header {name} is reserved for keygate and may not be sent by a client");
        return Err(Deny::new(Code::BadRequest, message));
    }
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
    let (Some(method), Some(target)) = (method, uri) else {
        let message = "a forward-auth request names the original request in X-Forwarded-Method and \
                       X-Forwarded-Uri (or X-Original-Method and X-Original-URI)";
        return Err(Deny::new(Code::ValidationError, message));
    };
    // The proxy's subrequest carries no body.
    let request = HttpRequest { method, target, headers, peer: Some(peer.ip()), body: None };
    request.check_shape()?;
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        let message = "the original URI holds a space or a control character: one request target, never a list";
        return Err(Deny::new(Code::BadRequest, message));
    }
    request.check_override()?;
    Ok(request)
}

/// 200, and every principal header (empty when it does not apply) for the proxy to copy.
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

/// The deny's status and envelope, and the same facts as headers for nginx, with the
/// finer reason in `x-keygate-reason`.
fn refused(deny: &Deny, retry_after_seconds: Option<u32>) -> Response {
    let Deny { code, reason, message } = deny;
    let code = *code;
    let envelope = code.envelope(message);
    // The envelope is one line (JSON escapes control characters); bytes, so UTF-8 passes.
    let envelope_header = HeaderValue::from_bytes(envelope.as_bytes());
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = envelope_response(status, envelope, retry_after_seconds);
    let headers = response.headers_mut();
    headers.insert("x-keygate-status", HeaderValue::from(code.http_status()));
    headers.insert("x-keygate-code", HeaderValue::from_static(code.as_str()));
    headers.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    if let Ok(value) = envelope_header {
        headers.insert("x-keygate-envelope", value);
    }
    response
}
