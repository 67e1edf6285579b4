//! Where a route's request names the application it acts on.
//!
//! Edges send different parts of a request: Envoy's Check sends headers and, with
//! `with_request_body`, the body; forward-auth proxies send headers and the URI but never
//! the body; Authorize's callers send what they choose. So each route says where its
//! application travels, and the decision reads every source it was given. Sources that
//! are present must agree: an edge that forwards one client-controlled field while the
//! upstream reads another cannot widen a key's reach.

use std::borrow::Cow;
use std::collections::HashMap;

/// One place a request can name its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplicationSource {
    /// A parameter of the route's path; `segment` is its 0-based position.
    Path { name: Box<str>, segment: usize },
    /// A query parameter, read as written (ids need no decoding).
    Query(Box<str>),
    /// A request header, by its lower-case name.
    Header(Box<str>),
    /// A top-level string field of a JSON body.
    Body(Box<str>),
}

impl ApplicationSource {
    /// "path:NAME", "query:NAME", "header:NAME" or "body:FIELD".
    pub(super) fn parse(raw: &str, param_position: impl Fn(&str) -> Option<usize>) -> Result<Self, String> {
        let (kind, name) = raw.split_once(':').unwrap_or(("", ""));
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "application source {raw:?} must be \"path:NAME\", \"query:NAME\", \"header:NAME\" or \"body:FIELD\""
            ));
        }
        match kind.trim() {
            "path" => match param_position(name) {
                Some(segment) => Ok(Self::Path { name: name.into(), segment }),
                None => Err(format!("application source {raw:?}: {name:?} is not a parameter of the path")),
            },
            "query" => Ok(Self::Query(name.into())),
            "header" if keygate_api::edge::is_reserved_header(name) => {
                Err(format!("application source {raw:?}: x-keygate-* headers are keygate's own, never the client's"))
            }
            "header" if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
                Ok(Self::Header(name.to_ascii_lowercase().into()))
            }
            "header" => Err(format!("application source {raw:?}: {name:?} is not a header name")),
            "body" => Ok(Self::Body(name.into())),
            other => Err(format!("application source {raw:?}: unknown kind {other:?} (path, query, header, body)")),
        }
    }

    /// As written in the policy, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Path { name, .. } => format!("path parameter {{{name}}}"),
            Self::Query(name) => format!("query parameter {name}"),
            Self::Header(name) => format!("header {name}"),
            Self::Body(name) => format!("JSON body field {name}"),
        }
    }
}

/// A request's headers, looked up by lower-case name.
pub trait RequestHeaders: Sync {
    fn header(&self, name: &str) -> Option<&str>;
}

impl RequestHeaders for HashMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl RequestHeaders for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// For callers that send no headers.
impl RequestHeaders for () {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
}

/// What an edge sent of the request, beyond its path.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    pub query: Option<&'a str>,
    pub headers: &'a dyn RequestHeaders,
    /// The body, or its first bytes (a truncated body names nothing).
    pub body: Option<&'a [u8]>,
}

impl std::fmt::Debug for RequestParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers and bodies may carry secrets: never printed.
        f.debug_struct("RequestParts").field("query", &self.query).finish_non_exhaustive()
    }
}

impl RequestParts<'_> {
    pub const NONE: RequestParts<'static> = RequestParts { query: None, headers: &(), body: None };
}

/// Which application a request names, after reading every source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedApplication<'a> {
    None,
    One(Cow<'a, str>),
    /// Two sources name different applications.
    Conflict,
}

/// Reads `sources` (and the value the caller stated, if any) from the request.
pub fn named_application<'a>(
    sources: &[ApplicationSource],
    path_value: Option<&'a str>,
    stated: Option<&'a str>,
    parts: &RequestParts<'a>,
) -> NamedApplication<'a> {
    let mut found: Option<Cow<'a, str>> = stated.map(Cow::Borrowed);
    // Parsed at most once, and only for routes that read the body.
    let mut body: Option<Option<serde_json::Map<String, serde_json::Value>>> = None;
    for source in sources {
        let value: Option<Cow<'a, str>> = match source {
            ApplicationSource::Path { .. } => path_value.map(Cow::Borrowed),
            ApplicationSource::Query(name) => {
                parts.query.and_then(|q| keygate_api::edge::query_value(q, name)).map(Cow::Borrowed)
            }
            ApplicationSource::Header(name) => parts.headers.header(name).map(|v| Cow::Borrowed(v.trim())),
            ApplicationSource::Body(field) => body
                .get_or_insert_with(|| parts.body.and_then(|b| serde_json::from_slice(b).ok()))
                .as_ref()
                .and_then(|fields| fields.get(&**field))
                .and_then(|v| v.as_str())
                .map(|v| Cow::Owned(v.to_owned())),
        };
        // An empty value names nothing (an absent header sent as "", a "?application_id=").
        let Some(value) = value.filter(|v| !v.is_empty()) else { continue };
        match &found {
            Some(earlier) if *earlier != value => return NamedApplication::Conflict,
            Some(_) => {}
            None => found = Some(value),
        }
    }
    match found {
        Some(value) => NamedApplication::One(value),
        None => NamedApplication::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(raw: &[&str]) -> Vec<ApplicationSource> {
        raw.iter().map(|r| ApplicationSource::parse(r, |n| (n == "application_id").then_some(3)).unwrap()).collect()
    }

    #[test]
    fn every_source_is_read_and_they_must_agree() {
        let all = sources(&["path:application_id", "query:application_id", "header:X-Application-Id", "body:app"]);
        let headers = HashMap::from([("x-application-id".to_owned(), "app_1".to_owned())]);
        let parts = RequestParts { query: Some("a=b&application_id=app_1"), headers: &headers, body: None };
        assert_eq!(named_application(&all, Some("app_1"), None, &parts), NamedApplication::One("app_1".into()));
        assert_eq!(named_application(&all, None, Some("app_2"), &parts), NamedApplication::Conflict);
        let body = br#"{"app":"app_9","other":1}"#;
        let parts = RequestParts { query: None, headers: &(), body: Some(body) };
        assert_eq!(named_application(&all, None, None, &parts), NamedApplication::One("app_9".into()));
        assert_eq!(named_application(&all, Some("app_1"), None, &parts), NamedApplication::Conflict);
        // Truncated, not JSON, not a string, or empty: names nothing.
        for body in [&br#"{"app":"app_"#[..], b"app=app_9", br#"{"app":7}"#, br#"{"app":""}"#] {
            let parts = RequestParts { query: None, headers: &(), body: Some(body) };
            assert_eq!(named_application(&all, None, None, &parts), NamedApplication::None);
        }
        assert_eq!(named_application(&[], None, None, &RequestParts::NONE), NamedApplication::None);
    }

    #[test]
    fn bad_sources_are_refused_with_their_text() {
        let position = |n: &str| (n == "id").then_some(0);
        assert!(ApplicationSource::parse("path:nope", position).unwrap_err().contains("not a parameter"));
        assert!(ApplicationSource::parse("cookie:x", position).unwrap_err().contains("unknown kind"));
        assert!(ApplicationSource::parse("header:x-keygate-application-id", position).is_err());
        assert!(ApplicationSource::parse("header:a b", position).is_err());
        assert!(ApplicationSource::parse("query:", position).is_err());
    }
}
