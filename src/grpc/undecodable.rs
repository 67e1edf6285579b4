//! A request the server cannot decode is the caller's fault: `INVALID_ARGUMENT`, not the
//! `INTERNAL` that tonic's protobuf codec answers (a string field that is not UTF-8, a
//! truncated message). One layer in front of every service, so Authorize, Check and Admin
//! all answer the same, and `INTERNAL` keeps meaning a failure of keygate's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// What tonic's codec writes (percent-encoded in `grpc-message`) when decoding fails.
const DECODE_FAILURE: &str = "failed%20to%20decode%20Protobuf%20message";

#[derive(Debug, Clone, Copy, Default)]
pub struct UndecodableIsInvalidArgument;

impl<S> tower::Layer<S> for UndecodableIsInvalidArgument {
    type Service = Undecodable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Undecodable { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Undecodable<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Undecodable<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Answer { inner: self.inner.call(request) }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, its status mended on the way out (in place: every call
    /// passes through here, so no box).
    pub struct Answer<F> {
        #[pin]
        inner: F,
    }
}

impl<F, R, E> Future for Answer<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        let headers = response.headers_mut();
        // A failed decode is answered at once, trailers-only: the status is a header.
        let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
            && headers.get("grpc-message").is_some_and(|m| m.as_bytes().starts_with(DECODE_FAILURE.as_bytes()));
        if undecodable {
            headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        }
        Poll::Ready(Ok(response))
    }
}
