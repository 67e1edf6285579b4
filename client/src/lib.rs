//! A client for keygate, for Rust edges.
//!
//! - [`KeygateClient`]: Authorize as a typed call, with a timeout.
//! - [`KeygateAdmin`]: the admin API with its token, and lists followed to the last page.
//! - [`KeygateLayer`]: a tower layer for axum/hyper services. It takes the credential from
//!   the request, asks keygate, and either passes the request on with the [`Principal`] in
//!   its extensions, or answers with the error page's envelope and status itself.
//!
//! When keygate cannot decide (unreachable, or no decision within the client's timeout)
//! the layer fails closed by default: the error page's 500 with an `INTERNAL_ERROR`
//! envelope whose message holds an error id (keygate's, or one the layer made and logged).
//! Fail-open is a choice you make explicitly.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keygate_client::ClientError> {
//! use keygate_client::{KeygateClient, KeygateLayer};
//! let client = KeygateClient::connect_lazy("http://127.0.0.1:50051")?;
//! let layer = KeygateLayer::new(client); // .layer(...) on an axum Router
//! # Ok(()) }
//! ```

mod admin;
#[cfg(feature = "cli")]
pub mod cli;
mod layer;
mod tls;

pub use admin::{AdminRpc, AdminToken, KeygateAdmin};
pub use keygate_api::code::{Code, Envelope, Reason};
pub use layer::{CredentialSource, FailureMode, Keygate, KeygateLayer};
pub use tls::{endpoint, ClientTls};

use keygate_api::proto::{self as pb, authorizer_client::AuthorizerClient};
use std::time::Duration;
use tonic::transport::Channel;

/// The default time to wait for a decision.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Who the verified caller is, as keygate saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// "api_key", "runtime_key" or "session".
    pub kind: String,
    pub account_id: String,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub scopes: Vec<String>,
    pub application_ids: Vec<String>,
    /// The key's metadata, a JSON object as the operator set it.
    pub metadata_json: Option<String>,
    /// Whom the key belongs to, in the customer's own terms.
    pub owner_id: Option<String>,
}

impl Principal {
    /// The key's metadata, parsed; `None` when it has none.
    pub fn metadata(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.metadata_json.as_deref().and_then(|json| serde_json::from_str(json).ok())
    }
}

impl From<pb::Principal> for Principal {
    fn from(p: pb::Principal) -> Self {
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        Self {
            kind: p.kind,
            account_id: p.account_id,
            key_id: some(p.key_id),
            session_id: some(p.session_id),
            user_id: some(p.user_id),
            scopes: p.scopes,
            application_ids: p.application_ids,
            metadata_json: some(p.metadata_json),
            owner_id: some(p.owner_id),
        }
    }
}

/// keygate's answer.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// `None` when allowed.
    pub code: Option<Code>,
    /// Why it was denied, finer than the code; `None` when allowed (or for a reason this
    /// client does not know yet).
    pub reason: Option<Reason>,
    pub http_status: u16,
    pub message: String,
    pub principal: Option<Principal>,
    pub route: String,
    /// The tightest rate limit that applied (0 when none did) and the room left in it.
    pub limit: u32,
    pub remaining: u32,
    pub retry_after_seconds: u32,
    /// The key's credits left after the call, when it carries credits.
    pub credits_remaining: Option<i64>,
}

impl Decision {
    /// The error page's envelope for a deny.
    pub fn envelope(&self) -> Option<String> {
        self.code.map(|code| code.envelope(&self.message))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid keygate address: {0}")]
    Address(String),
    /// keygate could not decide: unreachable, timed out, a call cut off by a restart, or a
    /// failure it reported (its message then holds keygate's error id). A deny is never an
    /// error. Safe to retry, except on a key with credits: the failed call may have spent.
    #[error("keygate is unavailable: {0}")]
    Unavailable(String),
    /// keygate says the request itself is malformed (e.g. a path not starting with '/').
    #[error("keygate rejected the request: {0}")]
    InvalidRequest(String),
    /// A value this client was given cannot be sent as a header (e.g. an admin token
    /// with a line break).
    #[error("{0}")]
    Header(&'static str),
    /// TLS settings that cannot be used (an unreadable file, a certificate without its key).
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The error id keygate logged the failure under, when keygate reported one.
    pub fn error_id(&self) -> Option<&str> {
        let ClientError::Unavailable(message) = self else { return None };
        let (_, rest) = message.split_once("(error id ")?;
        let id = rest.split(')').next()?;
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
    }
}

#[derive(Clone)]
pub struct KeygateClient {
    authorizer: AuthorizerClient<Channel>,
    timeout: Duration,
}

impl KeygateClient {
    /// Connects on first use, so an edge can start while keygate is still down. An
    /// `https://` address speaks TLS, trusting the system's roots.
    pub fn connect_lazy(address: &str) -> Result<Self, ClientError> {
        Self::connect_lazy_tls(address, None)
    }

    /// As [`connect_lazy`](Self::connect_lazy), with a CA of its own and, for mTLS, this
    /// client's certificate.
    pub fn connect_lazy_tls(address: &str, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let channel = tls::endpoint(address, tls)?.connect_timeout(DEFAULT_TIMEOUT).connect_lazy();
        Ok(Self::new(channel))
    }

    pub fn new(channel: Channel) -> Self {
        Self { authorizer: AuthorizerClient::new(channel), timeout: DEFAULT_TIMEOUT }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub async fn authorize(&self, request: pb::AuthorizeRequest) -> Result<Decision, ClientError> {
        let mut authorizer = self.authorizer.clone();
        // keygate sees the deadline (grpc-timeout) and answers fail-closed before it.
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        let response = tokio::time::timeout(self.timeout, authorizer.authorize(request))
            .await
            .map_err(|_| ClientError::Unavailable(format!("no decision within {:?}", self.timeout)))?;
        let response = match response {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(ClientError::InvalidRequest(status.message().to_owned()))
            }
            Err(status) => return Err(ClientError::Unavailable(format!("{:?}: {}", status.code(), status.message()))),
        };
        Ok(Decision {
            allowed: response.allowed,
            code: if response.allowed {
                None
            } else {
                Some(Code::parse(&response.code).unwrap_or(Code::InternalError))
            },
            reason: Reason::parse(&response.reason),
            http_status: u16::try_from(response.http_status).unwrap_or(500),
            message: response.message,
            principal: response.principal.map(Principal::from),
            route: response.route,
            limit: response.limit,
            remaining: response.remaining,
            retry_after_seconds: response.retry_after_seconds,
            credits_remaining: response.credits_remaining,
        })
    }
}
