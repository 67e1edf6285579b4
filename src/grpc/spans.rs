//! A span for every admin call, `admin{rpc, request_id}`, around the whole call (the
//! admin-token check included), so its log lines, database spans and exported traces
//! carry the request id. The call gets a request id here if it has none, and the handler
//! echoes that same id. Authorize and Check are not wrapped: their span is made by the
//! handler at debug level, so the hot path builds no span unless asked to.

use super::RequestId;
use std::task::{Context, Poll};
use tonic::server::NamedService;
use tracing::Instrument;

/// Wraps a service (used for `keygate.v1.Admin`).
#[derive(Debug, Clone)]
pub struct CallSpans<S> {
    inner: S,
}

impl<S> CallSpans<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for CallSpans<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for CallSpans<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let request_id = RequestId::of_headers(request.headers_mut());
        let rpc = request.uri().path().rsplit('/').next().unwrap_or("");
        let span = tracing::info_span!("admin", rpc, request_id = %request_id);
        self.inner.call(request).instrument(span)
    }
}
