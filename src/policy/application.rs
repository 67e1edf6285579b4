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

/// A request's headers, looked up by name.
pub trait RequestHeaders: Sync {
    /// The header's value, all of its lines joined by ", " (as Envoy sends them).
    fn header(&self, name: &str) -> Option<&str>;

    /// Every line of the header (one for a map that has joined them).
    fn header_lines<'h>(&'h self, name: &str) -> Vec<&'h str> {
        self.header(name).into_iter().collect()
    }

    /// Every line of every header that is `name` to a CGI/WSGI/Rack upstream, in any case
    /// and with `-` and `_` alike (see [`keygate_api::edge::same_header_name`]).
    fn header_spellings<'h>(&'h self, name: &str) -> Vec<&'h str>;
}

/// Envoy's Check and Authorize's `headers`: names should be lower case; a caller that sent
/// another case is still read.
impl RequestHeaders for HashMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(value) => Some(value),
            None => self.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str()),
        }
    }

    fn header_spellings<'h>(&'h self, name: &str) -> Vec<&'h str> {
        let same = |key: &&String| keygate_api::edge::same_header_name(key, name);
        self.iter().filter(|(key, _)| same(key)).map(|(_, value)| value.as_str()).collect()
    }
}

/// For callers that send no headers.
impl RequestHeaders for () {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }

    fn header_spellings<'h>(&'h self, _: &str) -> Vec<&'h str> {
        Vec::new()
    }
}

impl RequestHeaders for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_lines<'h>(&'h self, name: &str) -> Vec<&'h str> {
        self.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }

    fn header_spellings<'h>(&'h self, name: &str) -> Vec<&'h str> {
        let same = |key: &http::HeaderName| keygate_api::edge::same_header_name(key.as_str(), name);
        self.iter().filter(|(key, _)| same(key)).filter_map(|(_, value)| value.to_str().ok()).collect()
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

/// Reads `sources` (and the value the caller stated, if any) from the request. Every
/// value found must be the same: a source named twice (a repeated query parameter under
/// any spelling a framework reads, two header lines, a comma in one or a header under
/// another spelling, a body field under another case) that disagrees, or a
/// body the route reads that is not a JSON object keygate can read whole, is a conflict —
/// an upstream might read what keygate did not.
pub fn named_application<'a>(
    sources: &[ApplicationSource],
    path_value: Option<&'a str>,
    stated: Option<&'a str>,
    parts: &RequestParts<'a>,
) -> NamedApplication<'a> {
    // Most requests name their application once: no allocation for that.
    let mut values: smallvec::SmallVec<[Cow<'a, str>; 2]> = stated.into_iter().map(Cow::Borrowed).collect();
    let mut unreadable = false;
    for source in sources {
        match source {
            ApplicationSource::Path { .. } => values.extend(path_value.map(Cow::Borrowed)),
            ApplicationSource::Query(name) => {
                let query = parts.query.unwrap_or("");
                values.extend(keygate_api::edge::query_values(query, name).map(Cow::Borrowed));
            }
            ApplicationSource::Header(name) => {
                for line in parts.headers.header_spellings(name) {
                    values.extend(line.split(',').map(|v| Cow::Borrowed(v.trim())));
                }
            }
            ApplicationSource::Body(field) => match parts.body.map(|body| body_values(body, field)) {
                None => {}
                Some(Some(found)) => values.extend(found.into_iter().map(Cow::Owned)),
                Some(None) => unreadable = true,
            },
        }
    }
    // An empty value names nothing (an absent header sent as "", a "?application_id=").
    values.retain(|v| !v.is_empty());
    let mut values = values.into_iter();
    match values.next() {
        _ if unreadable => NamedApplication::Conflict,
        None => NamedApplication::None,
        Some(first) if values.any(|other| other != first) => NamedApplication::Conflict,
        Some(first) => NamedApplication::One(first),
    }
}

/// The string values of `field` in a JSON object body, under any case of its name and
/// however often it appears; `None` when the body is not a JSON object that can be read
/// whole, or the field holds something other than a string.
fn body_values(body: &[u8], field: &str) -> Option<Vec<String>> {
    struct Fields(Vec<(String, serde_json::Value)>);
    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Fields, M::Error> {
                    let mut fields = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        fields.push(entry);
                    }
                    Ok(Fields(fields))
                }
            }
            deserializer.deserialize_map(Visit)
        }
    }
    let Fields(fields) = serde_json::from_slice(body).ok()?;
    fields
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(field))
        .map(|(_, value)| value.as_str().map(str::to_owned))
        .collect()
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
        // A body the route reads must be one keygate can read whole.
        for body in [&br#"{"app":"app_"#[..], b"app=app_9", br#"{"app":7}"#, br#"[1]"#] {
            let parts = RequestParts { query: None, headers: &(), body: Some(body) };
            assert_eq!(named_application(&all, None, None, &parts), NamedApplication::Conflict, "{body:?}");
        }
        for body in [&br#"{"app":""}"#[..], br#"{"other":"app_1"}"#] {
            let parts = RequestParts { query: None, headers: &(), body: Some(body) };
            assert_eq!(named_application(&all, None, None, &parts), NamedApplication::None);
        }
        // A second naming that disagrees, however it is spelled, is a conflict.
        for body in [&br#"{"app":"app_1","APP":"app_2"}"#[..], br#"{"app":"app_1","app":"app_2"}"#] {
            let parts = RequestParts { query: None, headers: &(), body: Some(body) };
            assert_eq!(named_application(&all, None, None, &parts), NamedApplication::Conflict, "{body:?}");
        }
        for query in ["application_id=app_1&application_id=app_2", "application_id=app_1&APPLICATION%5FID=app_2"] {
            let parts = RequestParts { query: Some(query), headers: &(), body: None };
            assert_eq!(named_application(&all, None, None, &parts), NamedApplication::Conflict, "{query}");
        }
        let twice = HashMap::from([("x-application-id".to_owned(), "app_1, app_2".to_owned())]);
        let parts = RequestParts { query: None, headers: &twice, body: None };
        assert_eq!(named_application(&all, None, None, &parts), NamedApplication::Conflict);
        let shouted = HashMap::from([("X-Application-Id".to_owned(), "app_3".to_owned())]);
        let parts = RequestParts { query: None, headers: &shouted, body: None };
        assert_eq!(named_application(&all, None, None, &parts), NamedApplication::One("app_3".into()));
        assert_eq!(named_application(&[], None, None, &RequestParts::NONE), NamedApplication::None);
    }

    #[test]
    fn a_header_under_another_spelling_names_the_application_too() {
        let all = sources(&["header:x-application-id"]);
        let named = |pairs: &[(&str, &str)], expected: NamedApplication| {
            let headers: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let parts = RequestParts { query: None, headers: &headers, body: None };
            assert_eq!(named_application(&all, None, None, &parts), expected, "{pairs:?}");
        };
        named(&[("x-application_id", "app_2")], NamedApplication::One("app_2".into()));
        named(&[("x-application-id", "app_1"), ("x-application_id", "app_2")], NamedApplication::Conflict);
        named(&[("x-application-id", "app_1"), ("X-Application-Id", "app_2")], NamedApplication::Conflict);
        named(&[("x-application-id", "app_1"), ("X_APPLICATION_ID", "app_1")], NamedApplication::One("app_1".into()));
        let mut map = http::HeaderMap::new();
        map.insert("x-application-id", http::HeaderValue::from_static("app_1"));
        map.insert("x-application_id", http::HeaderValue::from_static("app_2"));
        let parts = RequestParts { query: None, headers: &map, body: None };
        assert_eq!(named_application(&all, None, None, &parts), NamedApplication::Conflict);
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
