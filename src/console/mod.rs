//! The operator console: keygate's own web pages for accounts, applications, keys, their
//! usage and audit trail (docs/console.md). Served on `--console-listen` (loopback by
//! default), from this binary alone: HTML rendered here, one stylesheet and one small
//! script embedded, charts drawn as SVG on the server.
//!
//! Every page and action is checked by the admin gate's own code ([`AdminCheck`]: the
//! token, its role against the RPC the action stands for, its budgets) and done through the
//! [`Manager`], so the console can do exactly what the token could over gRPC.
//! - [`session`]: sign-in sessions (server-side, idle and absolute expiry on the clock).
//! - [`html`]: escaping, the page layout, the usage chart.
//! - [`pages`]: what is read (GET); [`actions`]: what is changed (POST, with a CSRF token).

// A page's early answer (a redirect to sign-in, an error page) is its `Err`: an axum
// `Response`, returned once per request, where a box would buy nothing.
#![allow(clippy::result_large_err)]

/// The value of a step that may end the request early: its `Err` is the answer to send.
macro_rules! or_answer {
    ($step:expr) => {
        match $step {
            Ok(value) => value,
            Err(answer) => return answer,
        }
    };
}

pub mod actions;
pub mod html;
pub mod pages;
pub mod session;

use crate::audit::Actor;
use crate::clock::Clock;
use crate::grpc::admin::AdminCheck;
use crate::manage::{Caller, ManageError, Manager};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use session::{Session, Sessions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The console's address unless `--console-listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// The session cookie; `__Host-` under TLS (Secure, no Domain, Path=/).
pub const SESSION_COOKIE: &str = "kg_console";
pub const SESSION_COOKIE_TLS: &str = "__Host-kg_console";
/// The sign-in form's CSRF cookie (double submit: there is no session yet).
pub const SIGN_IN_COOKIE: &str = "kg_console_signin";
/// Every response's Content-Security-Policy: nothing but this origin, no inline script
/// or style, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// Where the console listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleListen {
    Off,
    /// [`DEFAULT_LISTEN`]: a port already taken is a warning, not a failure.
    Default(SocketAddr),
    /// Given: a port taken stops start-up.
    Given(SocketAddr),
}

/// The console's listener and sessions.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleSettings {
    pub listen: ConsoleListen,
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, however used.
    pub absolute: Duration,
    /// Sessions held at once (each a few hundred bytes); past it, a sign-in is refused.
    pub max_sessions: usize,
}

impl ConsoleSettings {
    pub const IDLE: Duration = Duration::from_secs(30 * 60);
    pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
    pub const MAX_SESSIONS: usize = 10_000;
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            listen: ConsoleListen::Off,
            idle: Self::IDLE,
            absolute: Self::ABSOLUTE,
            max_sessions: Self::MAX_SESSIONS,
        }
    }
}

/// What every console request shares.
#[derive(Clone)]
pub struct Console {
    pub(crate) manager: Arc<Manager>,
    pub(crate) check: AdminCheck,
    pub(crate) sessions: Arc<Sessions>,
    /// Served over TLS: the cookie is `Secure` (and `__Host-`).
    pub(crate) tls: bool,
}

impl Console {
    pub fn new(
        manager: Arc<Manager>,
        check: AdminCheck,
        clock: Arc<dyn Clock>,
        settings: ConsoleSettings,
        tls: bool,
    ) -> Self {
        Self { manager, check, sessions: Arc::new(Sessions::new(clock, settings)), tls }
    }

    fn cookie_name(&self) -> &'static str {
        if self.tls {
            SESSION_COOKIE_TLS
        } else {
            SESSION_COOKIE
        }
    }

    /// `Set-Cookie` for a cookie of the console's: HttpOnly, SameSite=Strict, Path=/, and
    /// Secure under TLS; `max_age` 0 clears it.
    pub(crate) fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let secure = if self.tls { "; Secure" } else { "" };
        let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
        let raw = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/{secure}{age}");
        HeaderValue::from_str(&raw).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }
}

/// Binds the console's listener, if it is on.
pub async fn bind(listen: ConsoleListen) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use anyhow::Context;
    match listen {
        ConsoleListen::Off => Ok(None),
        ConsoleListen::Given(address) => Ok(Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for the console on {address}"))?,
        )),
        ConsoleListen::Default(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Ok(Some(listener)),
            Err(e) => {
                tracing::warn!(%address, error = %e, "no console: its default address is taken; set --console-listen (or off)");
                Ok(None)
            }
        },
    }
}

/// Serves the console until `shutdown` completes.
pub async fn serve(
    listener: crate::tls::HttpListener,
    console: Console,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(console).into_make_service_with_connect_info::<SocketAddr>();
    match listener {
        crate::tls::HttpListener::Plain(listener) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        crate::tls::HttpListener::Tls(listener) => {
            axum::serve(listener.tap_io(|_| {}), app).with_graceful_shutdown(shutdown).await
        }
    }
}

/// Every page and action, and the security headers on every answer.
pub fn router(console: Console) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(pages::home))
        .route("/sign-in", get(pages::sign_in_form).post(actions::sign_in))
        .route("/sign-out", post(actions::sign_out))
        .route("/static/console.css", get(pages::stylesheet))
        .route("/static/console.js", get(pages::script))
        .route("/accounts", get(pages::accounts))
        .route("/accounts/{account}", get(pages::account))
        .route("/accounts/{account}/applications", post(actions::create_application))
        .route("/accounts/{account}/keys", get(pages::keys).post(actions::create_key))
        .route("/accounts/{account}/audit", get(pages::audit))
        .route("/accounts/{account}/sessions", get(pages::sessions))
        .route("/accounts/{account}/owners/{owner}", get(pages::owner))
        .route("/keys/{id}", get(pages::key))
        .route("/keys/{id}/delete", get(pages::confirm_delete).post(actions::delete_key))
        .route("/keys/{id}/revoke", post(actions::revoke_key))
        .route("/keys/{id}/roll", post(actions::roll_key))
        .route("/keys/{id}/enable", post(actions::enable_key))
        .route("/keys/{id}/disable", post(actions::disable_key))
        .route("/admin-tokens", get(pages::admin_tokens))
        .route("/admin-tokens/{name}/revoke", post(actions::revoke_admin_token))
        .fallback(pages::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(console)
}

/// `Server-Timing: render;dur=<ms>`: how long the server took for the answer (the
/// console's render benchmark reads it; docs/console.md).
async fn server_timing(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("render;dur={ms:.2}")) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Pages hold records (and once a secret): never kept by the browser or a proxy.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A signed-in request that the gate let through for one RPC: who, and the session.
pub struct Signed {
    pub caller: Caller,
    pub session: Session,
    pub session_key: [u8; 32],
}

impl Signed {
    /// May this token do what `rpc` needs? (To show an action; doing it is checked again.)
    pub fn may(&self, rpc: &str) -> bool {
        AdminCheck::allows(&self.caller.grant, rpc)
    }
}

/// The value of cookie `name` in the request, if sent.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // Split as bytes: another site's cookie with a non-ASCII value in the same header must
    // not hide the console's own (HeaderValue::to_str refuses the whole header then).
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The request's live session, or the answer to give instead (to sign-in).
fn session_of(console: &Console, headers: &HeaderMap) -> Result<([u8; 32], Session), Response> {
    cookie_value(headers, console.cookie_name())
        .and_then(|cookie| console.sessions.get(cookie))
        .ok_or_else(|| Redirect::to("/sign-in").into_response())
}

/// The request's session, checked by the gate for `rpc`: or the answer to give instead
/// (to sign-in when there is no live session or its token no longer works).
pub(crate) async fn signed(
    console: &Console,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    rpc: &str,
) -> Result<Signed, Response> {
    let (key, session) = session_of(console, headers)?;
    admit(console, key, session, peer, rpc).await
}

/// [`signed`], for a change: the form must carry the session's CSRF token (checked before
/// the gate, so a forged request from another site spends nothing of the token's budget).
pub(crate) async fn signed_form(
    console: &Console,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    rpc: &str,
    form: &std::collections::HashMap<String, String>,
) -> Result<Signed, Response> {
    let (key, session) = session_of(console, headers)?;
    if !session::csrf_matches(&session.csrf, form.get("csrf").map(String::as_str)) {
        return Err(html::error_page(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong: reload the page and submit it again",
        ));
    }
    admit(console, key, session, peer, rpc).await
}

async fn admit(
    console: &Console,
    session_key: [u8; 32],
    session: Session,
    peer: Option<SocketAddr>,
    rpc: &str,
) -> Result<Signed, Response> {
    match console.check.admit(&session.token, peer.map(|p| p.ip()), rpc).await {
        Ok(grant) => {
            let request_id = crate::grpc::RequestId::generate();
            let actor = Actor {
                credential: grant.credential.clone(),
                on_behalf_of: None,
                request_id: request_id.as_str().to_owned(),
            };
            Ok(Signed { caller: Caller { grant, actor }, session, session_key })
        }
        Err(refused) if refused.code() == tonic::Code::Unauthenticated => {
            // Revoked or expired since sign-in: the session ends with it.
            console.sessions.remove(&session_key);
            Err(Redirect::to("/sign-in").into_response())
        }
        Err(refused) => Err(gate_refusal(&refused)),
    }
}

/// A page saying why the gate refused, with the HTTP status of its gRPC code.
pub(crate) fn gate_refusal(refused: &tonic::Status) -> Response {
    let status = match refused.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    html::error_page(status, refused.message())
}

/// A page saying why the manager refused, with the HTTP status the admin API's code maps to.
pub(crate) fn manage_refusal(error: &ManageError) -> Response {
    let (status, message) = match error {
        ManageError::Invalid(e) => (StatusCode::BAD_REQUEST, e.to_string()),
        ManageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
        ManageError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
        ManageError::OutOfScope(m) => (StatusCode::FORBIDDEN, m.clone()),
        other => {
            // The store's or the OS's failure: logged here, never shown (it may name SQL).
            tracing::warn!(error = %other, "a console request failed");
            (StatusCode::SERVICE_UNAVAILABLE, "the store could not answer; retry".to_owned())
        }
    };
    html::error_page(status, &message)
}

/// The peer's address, for the gate's budget of wrong tokens per source (none when the
/// router is called without a listener, as the render benchmark does).
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

/// The state, for handlers.
pub(crate) type St = State<Console>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_cookie_with_a_non_ascii_value_does_not_hide_the_session() {
        let mut headers = HeaderMap::new();
        let raw = HeaderValue::from_bytes(b"theme=caf\xc3\xa9; kg_console=abc").unwrap();
        headers.append(header::COOKIE, raw);
        headers.append(header::COOKIE, HeaderValue::from_static("kg_console_signin=n1"));
        assert_eq!(cookie_value(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&headers, SIGN_IN_COOKIE), Some("n1"));
    }
}
