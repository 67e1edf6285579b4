//! The question every entry asks: a request in the shape of HTTP, checked once, turned
//! into Authorize's [`AuthorizeQuery`] in one place.

use crate::authz::AuthorizeQuery;
use crate::code::Code;
use crate::domain::{Deny, InvalidField};
use crate::policy::{RequestHeaders, RequestParts};
use keygate_api::edge::{client_address_from_headers, CredentialSource};
use std::collections::HashMap;
use std::net::IpAddr;

pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_METHOD_LEN: usize = 16;

/// The shape every entry checks before deciding: an HTTP method, and a target that starts
/// with '/' and is not absurdly long. Whether the path can match a route is the decision's
/// question ([`keygate_api::edge::request_target`]), answered not_found.
pub fn method_and_path(method: &str, path: &str) -> Result<(), InvalidField> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(InvalidField::new("method", "must be an HTTP method such as GET"));
    }
    if !path.starts_with('/') {
        return Err(InvalidField::new("path", "must start with '/'"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(InvalidField::new("path", format!("must be at most {MAX_PATH_LEN} bytes")));
    }
    Ok(())
}

/// Refuses a method-override header ([`keygate_api::edge::METHOD_OVERRIDE_HEADERS`], under
/// any spelling a CGI upstream reads) that names another method than `method`: an upstream
/// framework may honour it, so a request decided as a GET could act as a DELETE. The same
/// method, or an empty value, is harmless. `method` has passed [`method_and_path`].
pub fn method_override(method: &str, headers: &dyn RequestHeaders) -> Result<(), InvalidField> {
    for name in keygate_api::edge::METHOD_OVERRIDE_HEADERS {
        let lines = headers.header_spellings(name);
        let mut named = lines.iter().flat_map(|line| line.split(',')).map(str::trim).filter(|m| !m.is_empty());
        if named.any(|other| !other.eq_ignore_ascii_case(method)) {
            let problem = format!("{name} names another method than the request's {method}; send the real method");
            return Err(InvalidField::new("headers", problem));
        }
    }
    Ok(())
}

/// The headers the client's address is read from (`x-forwarded-for`, `forwarded`), every
/// line as the edge wrote it, without copying: this runs on every decision.
pub trait HopHeaders {
    fn hop_lines<'h>(&'h self, name: &'static str) -> impl DoubleEndedIterator<Item = &'h str>;
}

/// A forward-auth subrequest: every line, in order (a proxy may append a line of its own
/// rather than extend the client's).
impl HopHeaders for http::HeaderMap {
    fn hop_lines<'h>(&'h self, name: &'static str) -> impl DoubleEndedIterator<Item = &'h str> {
        self.get_all(name).into_iter().filter_map(|v| v.to_str().ok())
    }
}

/// Envoy's Check: one joined line per name, which Envoy writes in lower case.
impl HopHeaders for HashMap<String, String> {
    fn hop_lines<'h>(&'h self, name: &'static str) -> impl DoubleEndedIterator<Item = &'h str> {
        self.get(name).map(String::as_str).into_iter()
    }
}

/// A request as an edge saw it, in the shape of HTTP.
#[derive(Clone, Copy)]
pub struct HttpRequest<'a, H> {
    pub method: &'a str,
    /// The request target: the path, and maybe its query.
    pub target: &'a str,
    /// Every header line: the credential, the hops, a route's application.
    pub headers: &'a H,
    /// The address the request came from: Envoy's source address, a proxy's TCP peer.
    pub peer: Option<IpAddr>,
    /// The body, when the edge sends it.
    pub body: Option<&'a [u8]>,
}

impl<'a, H: RequestHeaders> HttpRequest<'a, H> {
    /// The method and target ([`method_and_path`]), refused as VALIDATION_ERROR.
    pub fn check_shape(&self) -> Result<(), Deny> {
        method_and_path(self.method, self.target)
            .map_err(|invalid| Deny::new(Code::ValidationError, invalid.to_string()))
    }

    /// A method override naming another method ([`method_override`]), refused as
    /// bad_request: the method is fine, the request contradicts it.
    pub fn check_override(&self) -> Result<(), Deny> {
        method_override(self.method, self.headers).map_err(|invalid| Deny::new(Code::BadRequest, invalid.to_string()))
    }

    /// [`Self::check_shape`], then [`Self::check_override`].
    pub fn check(&self) -> Result<(), Deny> {
        self.check_shape()?;
        self.check_override()
    }

    /// The question about this request for `credential` from `client`. What only
    /// Authorize's callers state (an application, required scopes, a cost) is left to the
    /// route.
    pub fn ask(&self, credential: &'a str, client: Option<IpAddr>) -> AuthorizeQuery<'a> {
        AuthorizeQuery {
            credential,
            method: self.method,
            path: self.target,
            application_id: None,
            required_scopes: Vec::new(),
            client,
            cost: None,
            parts: RequestParts { query: None, headers: self.headers, body: self.body },
        }
    }
}

impl<'a, H: RequestHeaders + HopHeaders> HttpRequest<'a, H> {
    /// The question, with the credential of the first of `sources` that holds one (and
    /// that source, for an edge that removes it) and the client's address under the
    /// trusted-hop rule: `x-forwarded-for` when present, else `forwarded`, then the peer.
    pub fn query(
        &self,
        sources: &'a [CredentialSource],
        trusted_hops: usize,
    ) -> (AuthorizeQuery<'a>, Option<&'a CredentialSource>) {
        let headers: &'a H = self.headers;
        let found = CredentialSource::find(sources, |name| headers.header_lines(name));
        let client = client_address_from_headers(
            self.peer,
            headers.hop_lines("x-forwarded-for"),
            headers.hop_lines("forwarded"),
            trusted_hops,
        );
        (self.ask(found.map_or("", |(_, credential)| credential), client), found.map(|(source, _)| source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn one_builder_reads_the_credential_and_the_client_from_either_kind_of_headers() {
        let sources = CredentialSource::defaults();
        let mut map = HashMap::new();
        map.insert("x-api-key".to_owned(), "kg_map".to_owned());
        map.insert("x-forwarded-for".to_owned(), "6.6.6.6, 203.0.113.9".to_owned());
        let request = HttpRequest { method: "GET", target: "/a?b=c", headers: &map, peer: ip("10.0.0.1"), body: None };
        let (query, source) = request.query(&sources, 1);
        assert_eq!((query.credential, query.method, query.path), ("kg_map", "GET", "/a?b=c"));
        assert_eq!(query.client, ip("203.0.113.9"));
        assert_eq!(source, Some(&sources[1]));

        let mut lines = http::HeaderMap::new();
        lines.append("authorization", "Bearer kg_lines".parse().unwrap());
        lines.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        lines.append("x-forwarded-for", "203.0.113.2".parse().unwrap());
        let request = HttpRequest { method: "POST", target: "/", headers: &lines, peer: ip("10.0.0.1"), body: None };
        let (query, source) = request.query(&sources, 1);
        assert_eq!((query.credential, query.client), ("kg_lines", ip("203.0.113.2")));
        assert_eq!(source, Some(&sources[0]));
        let (query, source) = request.query(&sources[1..], 0);
        assert_eq!((query.credential, query.client, source), ("", ip("10.0.0.1"), None));
    }

    #[test]
    fn a_bad_shape_is_a_validation_error_and_a_contradicting_override_a_bad_request() {
        fn request<'a>(
            method: &'a str,
            target: &'a str,
            headers: &'a HashMap<String, String>,
        ) -> HttpRequest<'a, HashMap<String, String>> {
            HttpRequest { method, target, headers, peer: None, body: None }
        }
        let mut headers = HashMap::new();
        assert_eq!(request("G T", "/", &headers).check().unwrap_err().code, Code::ValidationError);
        assert_eq!(request("GET", "a", &headers).check().unwrap_err().code, Code::ValidationError);
        assert!(request("GET", "/", &headers).check().is_ok());
        headers.insert("X-HTTP-Method-Override".to_owned(), "DELETE".to_owned());
        assert_eq!(request("GET", "/", &headers).check().unwrap_err().code, Code::BadRequest);
        assert!(request("DELETE", "/", &headers).check().is_ok());
    }
}
