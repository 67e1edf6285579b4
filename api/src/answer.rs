//! How an HTTP edge (the server's forward-auth listener, the Rust tower layer) answers a
//! request it does not pass on, and the words of a failure: one spelling of each, so a
//! proxy or a client reads the same answer from every edge.

use http::{header, HeaderValue, Response, StatusCode};

/// The header that says why a request was denied, finer than its code
/// ([`crate::Reason`]), on every edge that answers over HTTP.
pub const REASON_HEADER: &str = "x-keygate-reason";

/// The message of the error page's 500 when keygate cannot decide: the error id names the
/// log line that holds the cause.
pub fn cannot_decide(error_id: &str) -> String {
    format!("the authorization service cannot decide right now (error id {error_id})")
}

/// A fresh error id: 16 lower-case hex digits, for a failure logged under it.
pub fn new_error_id() -> String {
    let mut bytes = [0u8; 8];
    // An all-zero id on a failing random source still logs and answers.
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error page's answer over HTTP: `status`, the `envelope` as a JSON body, and
/// `retry-after` when a limit says when to come back.
pub fn envelope_response<B: From<String>>(
    status: StatusCode,
    envelope: String,
    retry_after_seconds: Option<u32>,
) -> Response<B> {
    let mut response = json_response(status, envelope);
    if let Some(seconds) = retry_after_seconds {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `body` as `application/json` with `status`.
pub fn json_response<B: From<String>>(status: StatusCode, body: String) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn error_ids_are_sixteen_hex_digits() {
        let id = new_error_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
    }

    #[test]
    fn a_refusal_is_the_pages_envelope_as_json_with_its_wait() {
        let envelope = Code::RateLimitReached.envelope("slow down");
        let response: Response<String> = envelope_response(StatusCode::TOO_MANY_REQUESTS, envelope.clone(), Some(3));
        assert_eq!(response.status(), 429);
        assert_eq!(response.body(), &envelope);
        let names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "retry-after"], "in this order on the wire");
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(cannot_decide("00ff"), "the authorization service cannot decide right now (error id 00ff)");
    }
}
