//! The tower layer: credential in, decision out.
//!
//! It asks about the request as the client sent it: the method, the path with its query,
//! the headers (routes may take their application from one), and the client's address
//! under the trusted-hop rule. It does not read bodies: a route that names its
//! application only in the body is answered bad_request behind the layer, so send it in
//! the path, the query or a header.

use crate::{ClientError, Code, Decision, KeygateClient, Principal, Reason};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use keygate_api::answer::{cannot_decide, envelope_response, new_error_id, REASON_HEADER};
pub use keygate_api::edge::CredentialSource;
use keygate_api::edge::{client_address_from_headers, is_method_override, is_reserved_header};
use keygate_api::proto as pb;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What to do when keygate cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Answer the error page's 500 with an `INTERNAL_ERROR` envelope and an error id.
    /// The default.
    Closed,
    /// Pass the request on without a [`Principal`]. Only for routes that can live with it.
    Open,
}

/// The longest decision-cache TTL: keygate's own worst-case revocation bound.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(30);

/// Headers sent along to keygate, in bytes at most. A request with more is answered 400
/// by the layer itself: leaving some out could hide the one a route reads.
pub const MAX_FORWARDED_HEADER_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct KeygateLayer {
    state: Arc<State>,
}

struct State {
    client: KeygateClient,
    sources: Vec<CredentialSource>,
    failure_mode: FailureMode,
    /// Decisions by a digest of what they read, each with the instant it expires.
    cache: Option<Arc<DecisionCache>>,
    trusted_proxy_hops: usize,
}

impl KeygateLayer {
    /// Reads `authorization: Bearer`, then `x-api-key`, then the `keygate_session` cookie;
    /// fails closed; caches nothing.
    pub fn new(client: KeygateClient) -> Self {
        Self {
            state: Arc::new(State {
                client,
                sources: CredentialSource::defaults(),
                failure_mode: FailureMode::Closed,
                cache: None,
                trusted_proxy_hops: 0,
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut State)) -> Self {
        let mut state = Arc::try_unwrap(self.state).unwrap_or_else(|shared| State {
            client: shared.client.clone(),
            sources: shared.sources.clone(),
            failure_mode: shared.failure_mode,
            cache: shared.cache.clone(),
            trusted_proxy_hops: shared.trusted_proxy_hops,
        });
        f(&mut state);
        Self { state: Arc::new(state) }
    }

    pub fn credential_sources(self, sources: Vec<CredentialSource>) -> Self {
        self.edit(|s| s.sources = sources)
    }

    pub fn failure_mode(self, mode: FailureMode) -> Self {
        self.edit(|s| s.failure_mode = mode)
    }

    /// Proxies in front of this service whose `x-forwarded-for` entries are believed (the
    /// client is the `hops`-th address from the right; 0, the default: the TCP peer, from
    /// axum's `ConnectInfo<SocketAddr>` or a `SocketAddr` in the request's extensions).
    pub fn trusted_proxy_hops(self, hops: usize) -> Self {
        // No real chain of proxies is longer; a huge count would only cost memory.
        self.edit(|s| s.trusted_proxy_hops = hops.min(usize::from(u8::MAX)))
    }

    /// Remembers decisions for `ttl` (at most [`MAX_CACHE_TTL`]). Off by default: a cached
    /// allow outlives a revoke by up to `ttl`. Decisions under a rate limit are never
    /// cached, so limits keep counting (nor those on keys with credits, so each call spends).
    pub fn decision_cache(self, ttl: Duration, capacity: u64) -> Self {
        let ttl = ttl.min(MAX_CACHE_TTL);
        let capacity = usize::try_from(capacity.max(1)).unwrap_or(usize::MAX);
        self.edit(|s| s.cache = Some(Arc::new(DecisionCache { ttl, entries: quick_cache::sync::Cache::new(capacity) })))
    }
}

impl<S> tower_layer::Layer<S> for KeygateLayer {
    type Service = Keygate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Keygate { inner, state: self.state.clone() }
    }
}

/// A service guarded by keygate.
#[derive(Clone)]
pub struct Keygate<S> {
    inner: S,
    state: Arc<State>,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Keygate<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let credential = CredentialSource::find(&state.sources, |name| lines(request.headers(), name))
                .map_or_else(String::new, |(_, credential)| credential.to_owned());
            let client_ip = client_address_from_headers(
                peer_address(request.extensions()),
                lines(request.headers(), "x-forwarded-for"),
                lines(request.headers(), "forwarded"),
                state.trusted_proxy_hops,
            );
            let Some(headers) = forwarded_headers(request.headers()) else {
                let message =
                    format!("the request's headers exceed the {MAX_FORWARDED_HEADER_BYTES} bytes keygate reads");
                return Ok(refuse(StatusCode::BAD_REQUEST, Code::ValidationError.envelope(&message), None, None));
            };
            let ask = pb::AuthorizeRequest {
                credential,
                method: request.method().as_str().to_owned(),
                path: request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                headers,
                ..Default::default()
            };
            match state.decide(ask).await {
                Ok(decision) if decision.allowed => {
                    strip_for_upstream(request.headers_mut());
                    if let Some(principal) = decision.principal.clone() {
                        request.extensions_mut().insert::<Principal>(principal);
                    }
                    inner.call(request).await
                }
                Ok(decision) => Ok(deny_response(&decision)),
                Err(ClientError::InvalidRequest(message)) => {
                    Ok(refuse(StatusCode::BAD_REQUEST, Code::ValidationError.envelope(&message), None, None))
                }
                Err(e) if state.failure_mode == FailureMode::Open => {
                    tracing::warn!(error = %e, "keygate unavailable; failing open as configured");
                    strip_for_upstream(request.headers_mut());
                    inner.call(request).await
                }
                Err(e) => {
                    // keygate's own id when it reported the failure; else one of ours, logged
                    // here, so the id in the answer is always in somebody's log.
                    let error_id = match e.error_id() {
                        Some(id) => id.to_owned(),
                        None => {
                            let id = new_error_id();
                            tracing::error!(error_id = %id, error = %e, "keygate unavailable; failing closed");
                            id
                        }
                    };
                    let envelope = Code::InternalError.envelope(&cannot_decide(&error_id));
                    Ok(refuse(StatusCode::INTERNAL_SERVER_ERROR, envelope, None, None))
                }
            }
        })
    }
}

/// The TCP peer, as the server put it in the request's extensions.
fn peer_address(extensions: &http::Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(address)) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(address.ip());
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// Every line of a header, in order (a proxy may append a line of its own).
fn lines<'h>(headers: &'h HeaderMap, name: &str) -> impl DoubleEndedIterator<Item = &'h str> {
    headers.get_all(name).into_iter().filter_map(|v| v.to_str().ok())
}

/// The request's headers for keygate, names in lower case: not those that carry
/// credentials (keygate gets the credential on its own) nor keygate's own namespace.
fn forwarded_headers(headers: &HeaderMap) -> Option<HashMap<String, String>> {
    let mut forwarded: HashMap<String, String> = HashMap::new();
    let mut bytes = 0;
    for (name, value) in headers {
        if matches!(*name, header::AUTHORIZATION | header::COOKIE | header::PROXY_AUTHORIZATION)
            || is_reserved_header(name.as_str())
        {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        bytes += name.as_str().len() + value.len();
        if bytes > MAX_FORWARDED_HEADER_BYTES {
            return None;
        }
        forwarded
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    Some(forwarded)
}

/// Every `x-keygate-*` header the client sent, and every method-override header (keygate
/// decided on the request's own method), gone before a handler can read them.
fn strip_for_upstream(headers: &mut HeaderMap) {
    let reserved: Vec<header::HeaderName> = headers
        .keys()
        .filter(|name| is_reserved_header(name.as_str()) || is_method_override(name.as_str()))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
}

impl State {
    async fn decide(&self, ask: pb::AuthorizeRequest) -> Result<Arc<Decision>, ClientError> {
        let Some(cache) = &self.cache else {
            return self.client.authorize(ask).await.map(Arc::new);
        };
        // Everything the decision may read: the route's application may come from a header,
        // and limits may count per address.
        let mut hasher = Sha256::new();
        let mut headers: Vec<(&String, &String)> = ask.headers.iter().collect();
        headers.sort();
        let parts = [&ask.credential, &ask.method, &ask.path, &ask.client_ip].into_iter();
        for part in parts.chain(headers.into_iter().flat_map(|(name, value)| [name, value])) {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(hit) = cache.get(&key) {
            return Ok(hit);
        }
        let decision = Arc::new(self.client.authorize(ask).await?);
        // Nor decisions on keys with credits: each call must spend its own.
        if decision.limit == 0 && decision.credits_remaining.is_none() {
            cache.insert(key, decision.clone());
        }
        Ok(decision)
    }
}

/// Remembered decisions, bounded by count; an entry past its TTL is a miss (and is replaced
/// by the next decision for the same request).
struct DecisionCache {
    ttl: Duration,
    entries: quick_cache::sync::Cache<[u8; 32], (Instant, Arc<Decision>)>,
}

impl DecisionCache {
    fn get(&self, key: &[u8; 32]) -> Option<Arc<Decision>> {
        let (expires, decision) = self.entries.get(key)?;
        if Instant::now() < expires {
            return Some(decision);
        }
        // Gone, so a stale entry does not keep its place over live ones.
        self.entries.remove(key);
        None
    }

    fn insert(&self, key: [u8; 32], decision: Arc<Decision>) {
        self.entries.insert(key, (Instant::now() + self.ttl, decision));
    }
}

/// A deny of keygate's, with its status, reason and wait.
fn deny_response<B: From<String>>(decision: &Decision) -> Response<B> {
    let status = StatusCode::from_u16(decision.http_status).unwrap_or(StatusCode::FORBIDDEN);
    let retry_after = (decision.retry_after_seconds > 0).then_some(decision.retry_after_seconds);
    refuse(status, decision.envelope().unwrap_or_default(), decision.reason, retry_after)
}

/// The one way the layer answers a request it does not pass on: the error page's envelope
/// with its status, and why, finer than the code, when keygate said (as Check and forward
/// auth send it).
fn refuse<B: From<String>>(
    status: StatusCode,
    envelope: String,
    reason: Option<Reason>,
    retry_after_seconds: Option<u32>,
) -> Response<B> {
    let mut response = envelope_response(status, envelope, retry_after_seconds);
    if let Some(reason) = reason {
        response.headers_mut().insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_credential(source: &CredentialSource, headers: &HeaderMap) -> Option<String> {
        CredentialSource::find(std::slice::from_ref(source), |name| lines(headers, name)).map(|(_, c)| c.to_owned())
    }

    #[test]
    fn credentials_are_read_from_every_line_of_a_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "theme=dark".parse().unwrap());
        headers.append(header::COOKIE, "keygate_session=kgs_abc".parse().unwrap());
        let cookie = CredentialSource::Cookie("keygate_session".into());
        assert_eq!(read_credential(&cookie, &headers).as_deref(), Some("kgs_abc"));
        assert_eq!(read_credential(&CredentialSource::Authorization, &headers), None);
        headers.insert(header::AUTHORIZATION, "bearer kg_xyz".parse().unwrap());
        assert_eq!(read_credential(&CredentialSource::Authorization, &headers).as_deref(), Some("kg_xyz"));
    }
}
