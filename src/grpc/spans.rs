//! The one layer that gives every admin call its request id: a span, `admin{rpc,
//! request_id}`, around the whole call (the admin-token check included), so its log lines,
//! database spans and exported traces carry the id; and the id echoed in the answer's
//! metadata. The call gets a request id here if it has none (the handlers read that same id
//! for the audit trail). Authorize and Check are not wrapped: their span is made by the
//! handler at debug level, so the hot path builds no span unless asked to.

use super::{RequestId, REQUEST_ID_HEADER};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tonic::server::NamedService;
use tracing::instrument::Instrumented;
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

impl<S, B, R> tower::Service<http::Request<B>> for CallSpans<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Echoed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let request_id = RequestId::of_headers(request.headers_mut());
        // `of_headers` left the id (given or made) in the request's headers.
        let echo = request.headers().get(REQUEST_ID_HEADER).cloned();
        let rpc = request.uri().path().rsplit('/').next().unwrap_or("");
        let span = tracing::info_span!("admin", rpc, request_id = %request_id);
        Echoed { inner: self.inner.call(request).instrument(span), request_id: echo }
    }
}

pin_project_lite::pin_project! {
    /// An admin call in its span; its answer echoes the call's request id.
    pub struct Echoed<F> {
        #[pin]
        inner: Instrumented<F>,
        request_id: Option<http::HeaderValue>,
    }
}

impl<F, R, E> Future for Echoed<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let headers = response.headers_mut();
        // Only answers carry the id: a refusal is trailers-only, its status a header.
        if let (false, Some(mut id)) = (headers.contains_key("grpc-status"), this.request_id.take()) {
            // Never indexed by HPACK: every id is new, so an indexed one would only push out
            // of both ends' tables the entries that repeat, and cost both a table search.
            id.set_sensitive(true);
            headers.insert(REQUEST_ID_HEADER, id);
        }
        Poll::Ready(Ok(response))
    }
}
