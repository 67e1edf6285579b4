//! What every edge entry (Authorize's callers, Envoy's Check, the HTTP forward-auth
//! listener, the tower layer) must agree on, so that each decides on the same facts:
//! which client address a request came from, and which header names belong to keygate.

use std::net::{IpAddr, Ipv6Addr};

/// Every header whose name starts with this belongs to keygate. What a client sent under
/// it is removed before the request goes upstream (or refused, where an edge cannot
/// remove it), so an upstream can trust every `x-keygate-*` header it receives.
pub const RESERVED_HEADER_PREFIX: &str = "x-keygate-";

/// True for a header name in keygate's namespace, in any case.
pub fn is_reserved_header(name: &str) -> bool {
    name.len() >= RESERVED_HEADER_PREFIX.len()
        && name.as_bytes()[..RESERVED_HEADER_PREFIX.len()].eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes())
}

/// Where an edge finds the credential; the first source that holds one wins. One type for
/// Check, forward auth and the Rust layer, so each reads a request the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `authorization: Bearer <credential>`.
    Authorization,
    /// A header with the bare credential, e.g. `x-api-key` (lower case).
    Header(String),
    /// A cookie by name, e.g. the dashboard's `keygate_session`.
    Cookie(String),
}

impl CredentialSource {
    /// The default sources as a flag spells them: `authorization: Bearer`, then
    /// `x-api-key`, then the `keygate_session` cookie.
    pub const DEFAULTS: &'static str = "authorization,x-api-key,cookie:keygate_session";

    /// [`Self::DEFAULTS`], parsed.
    pub fn defaults() -> Vec<Self> {
        Self::DEFAULTS.split(',').filter_map(|raw| Self::parse(raw).ok()).collect()
    }

    /// `authorization`, `cookie:NAME`, or any other header name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim().to_ascii_lowercase();
        let valid_name =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match raw.split_once(':') {
            Some(("cookie", name)) if valid_name(name) => Ok(Self::Cookie(name.to_owned())),
            None if raw == "authorization" => Ok(Self::Authorization),
            None if valid_name(&raw) => Ok(Self::Header(raw)),
            _ => Err(format!("{raw:?} is not a header name, 'authorization' or 'cookie:NAME'")),
        }
    }

    /// The header this source reads.
    pub fn header_name(&self) -> &str {
        match self {
            Self::Authorization => "authorization",
            Self::Header(name) => name,
            Self::Cookie(_) => "cookie",
        }
    }

    /// The first of `sources` that holds a credential, and the credential: the one search
    /// of every edge. `lines` gives every line of a header, by name.
    pub fn find<'s, 'h, L>(sources: &'s [Self], mut lines: impl FnMut(&str) -> L) -> Option<(&'s Self, &'h str)>
    where
        L: IntoIterator<Item = &'h str>,
    {
        sources.iter().find_map(|source| source.read(lines(source.header_name())).map(|found| (source, found)))
    }

    /// The credential among the lines of this source's header (see [`Self::header_name`]).
    pub fn read<'h>(&self, lines: impl IntoIterator<Item = &'h str>) -> Option<&'h str> {
        lines
            .into_iter()
            .find_map(|value| match self {
                Self::Authorization => {
                    let (scheme, token) = value.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                }
                Self::Header(_) => Some(value.trim()),
                Self::Cookie(name) => value.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    (key == name).then_some(value)
                }),
            })
            .filter(|c| !c.is_empty())
    }
}

/// The client's address, under the trusted-hop rule.
///
/// `peer` is the address the edge saw the request come from (Envoy's source address, the
/// TCP peer of an axum server, a forward-auth proxy's own address). `forwarded_for` are the
/// values of every `x-forwarded-for` header, in order. Each trusted proxy in front of the
/// peer appends the address it saw, so with `trusted_hops = N` the client is the N-th
/// address counted from the right of `forwarded_for ++ [peer]` (0 = the peer itself).
/// Entries left of that were written by the client and are never believed. When the list
/// is shorter than the hops, the leftmost address is the best anyone can say.
///
/// An entry that is not an IP address where the client is read makes the answer `None`:
/// a garbled hop is not guessed around.
pub fn client_address<'h, I>(peer: Option<IpAddr>, forwarded_for: I, trusted_hops: usize) -> Option<IpAddr>
where
    I: IntoIterator<Item = &'h str>,
    I::IntoIter: DoubleEndedIterator,
{
    if trusted_hops == 0 {
        return peer.map(canonical);
    }
    // Counted from the right (the peer is distance 0), without collecting anything: on
    // every decision, and a client may send thousands of entries.
    let mut leftmost = None;
    let from_right = forwarded_for.into_iter().rev().flat_map(|line| line.rsplit(','));
    for (distance, entry) in (1..).zip(from_right) {
        if distance == trusted_hops {
            return parse_forwarded_address(entry).map(canonical);
        }
        leftmost = Some(entry);
    }
    match leftmost {
        Some(entry) => parse_forwarded_address(entry).map(canonical),
        None => peer.map(canonical),
    }
}

/// The addresses of a `forwarded` header (RFC 7239), in order: each element's `for=`.
/// Obfuscated identifiers ("_hidden", "unknown") are kept, so that they are not believed.
pub fn forwarded_for(header: &str) -> impl DoubleEndedIterator<Item = &str> {
    header.split(',').filter_map(|element| {
        element.split(';').find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            key.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
        })
    })
}

/// [`client_address`] from an edge's headers, given every line of each: `x-forwarded-for`
/// when present, else `forwarded`.
pub fn client_address_from_headers<'h, X, F>(
    peer: Option<IpAddr>,
    x_forwarded_for: X,
    forwarded: F,
    trusted_hops: usize,
) -> Option<IpAddr>
where
    X: IntoIterator<Item = &'h str>,
    X::IntoIter: DoubleEndedIterator,
    F: IntoIterator<Item = &'h str>,
    F::IntoIter: DoubleEndedIterator,
{
    let mut x_forwarded_for = x_forwarded_for.into_iter().peekable();
    if x_forwarded_for.peek().is_some() {
        client_address(peer, x_forwarded_for, trusted_hops)
    } else {
        client_address(peer, forwarded.into_iter().flat_map(forwarded_for), trusted_hops)
    }
}

/// One `x-forwarded-for` entry: an address, possibly with a port or in brackets.
fn parse_forwarded_address(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim().trim_matches('"');
    if let Ok(ip) = raw.parse() {
        return Some(ip);
    }
    // "[2001:db8::1]:443" or "[2001:db8::1]".
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    // "203.0.113.7:443".
    raw.rsplit_once(':').filter(|(ip, _)| !ip.contains(':')).and_then(|(ip, _)| ip.parse().ok())
}

/// The one spelling of an address: an IPv4-mapped IPv6 address is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What per-address budgets and limits count: an IPv4 address, or an IPv6 address's /64
/// (one subscriber's network: a host that can pick any of 2^64 addresses must not get a
/// fresh budget with each).
pub fn counted_network(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// A request target split at its query, with a path that routes can be matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    /// Starts with '/'; never holds a dot segment, an empty segment (but for one trailing
    /// slash), an encoded dot, slash or backslash, a backslash, a ';' or a control byte.
    pub path: &'a str,
    /// After the first '?', without the fragment; `None` when there is no '?'.
    pub query: Option<&'a str>,
}

/// Why a path can match no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedPath(pub &'static str);

/// The one reading of a request target, at every entry (Authorize, Check, forward auth,
/// and so the layer, which passes the URI on as it got it).
///
/// Nothing is decoded or resolved: a path that would mean something else after
/// normalisation (`/a/../b`, `/a/%2e%2e/b`, `/a%2Fb`, `/a//b`, `/a\b`, `/a;x=1`) is
/// refused, so it can never match a route that its normalised form would not. Edges
/// normalise legitimate paths before they ask (see the edge sections of the docs).
pub fn request_target(raw: &str) -> Result<RequestTarget<'_>, RefusedPath> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(RefusedPath("the path does not start with '/'"));
    }
    // One pass over the path (it runs on every decision): where it ends, and whether it
    // holds anything a normalising edge would have changed.
    let mut end = bytes.len();
    let mut segment_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'?' | b'#' => {
                end = i;
                break;
            }
            b'/' => {
                check_segment(&bytes[segment_start..i])?;
                segment_start = i + 1;
            }
            b'%' if matches!(
                (bytes.get(i + 1), bytes.get(i + 2).map(u8::to_ascii_lowercase)),
                (Some(b'2'), Some(b'e' | b'f')) | (Some(b'5'), Some(b'c'))
            ) =>
            {
                return Err(RefusedPath("the path holds an encoded '.', '/' or '\\'"))
            }
            0..=0x20 | 0x7f | b'\\' | b';' => {
                return Err(RefusedPath("the path holds a control character, a space, a backslash or a ';'"))
            }
            _ => {}
        }
    }
    // The last segment may be empty: one trailing slash is allowed ("/a/b/", and "/").
    let last = &bytes[segment_start..end];
    if !last.is_empty() {
        check_segment(last)?;
    }
    let query = match bytes.get(end) {
        Some(b'?') => {
            let rest = &raw[end + 1..];
            Some(rest.split_once('#').map_or(rest, |(query, _)| query))
        }
        _ => None,
    };
    Ok(RequestTarget { path: &raw[..end], query })
}

fn check_segment(segment: &[u8]) -> Result<(), RefusedPath> {
    match segment {
        b"" => Err(RefusedPath("the path has an empty segment")),
        b"." | b".." => Err(RefusedPath("the path has a dot segment")),
        _ => Ok(()),
    }
}

/// Every value of `name` in a query string (`a=1&b=2`), values as written (not decoded).
///
/// Read as the most lenient common upstream framework would, so that no spelling an
/// upstream reads can hide from keygate: `;` separates pairs as `&` does (Python's older
/// `parse_qs`, many Java containers), and names are compared decoded, without case, and
/// with PHP's mangling of `.`, ` ` and `[` into `_` (`application.id`, `application+id`,
/// `application[id`, `APPLICATION%5FID` all name `application_id`).
pub fn query_values<'q, 'n>(query: &'q str, name: &'n str) -> impl Iterator<Item = &'q str> + use<'q, 'n> {
    query.split(['&', ';']).filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        same_name(key, name).then_some(value)
    })
}

/// The first value of `name` in a query string (see [`query_values`]).
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query_values(query, name).next()
}

/// `raw` (percent-encoded, maybe with `+`) names `name`: ASCII case ignored, and `.`, ` `
/// and `[` taken for `_`, as PHP does.
fn same_name(raw: &str, name: &str) -> bool {
    let mut decoded = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let fold = |b: &u8| match b {
        b'.' | b' ' | b'[' => b'_',
        b => b.to_ascii_lowercase(),
    };
    decoded.len() == name.len() && decoded.iter().map(fold).eq(name.as_bytes().iter().map(fold))
}

/// Headers that ask an upstream framework to treat a request as another method (Rails,
/// Laravel, Symfony, ASP.NET, Express's `method-override`, Google's APIs). An edge strips
/// them before the upstream; keygate refuses a request whose override names another method
/// than the one it decides on.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-method-override", "x-http-method"];

/// True for a method-override header under any spelling (see [`same_header_name`]).
pub fn is_method_override(name: &str) -> bool {
    METHOD_OVERRIDE_HEADERS.iter().any(|header| same_header_name(header, name))
}

/// Two header names are one variable for CGI, WSGI, Rack and PHP's `$_SERVER`: the same
/// letters in any case, `-` and `_` alike (`X-Application-Id`, `x-application_id`).
pub fn same_header_name(a: &str, b: &str) -> bool {
    let fold = |b: &u8| match b {
        b'-' => b'_',
        b => b.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.as_bytes().iter().map(fold).eq(b.as_bytes().iter().map(fold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn with_no_trusted_hop_the_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(client_address(Some(ip("198.51.100.1")), ["6.6.6.6"], 0), Some(ip("198.51.100.1")));
        assert_eq!(client_address(None, ["6.6.6.6"], 0), None);
    }

    #[test]
    fn trusted_hops_count_from_the_right_and_ignore_what_the_client_wrote() {
        // The client wrote "6.6.6.6"; the trusted proxy appended the address it saw.
        let peer = Some(ip("127.0.0.1"));
        assert_eq!(client_address(peer, ["6.6.6.6, 203.0.113.9"], 1), Some(ip("203.0.113.9")));
        assert_eq!(client_address(peer, ["6.6.6.6", "203.0.113.9, 10.0.0.2"], 2), Some(ip("203.0.113.9")));
        // Fewer entries than hops: the leftmost is the best there is.
        assert_eq!(client_address(peer, ["203.0.113.9"], 3), Some(ip("203.0.113.9")));
        assert_eq!(client_address(peer, [] as [&str; 0], 1), Some(ip("127.0.0.1")));
        // Ports and brackets, as some proxies write them.
        assert_eq!(client_address(peer, ["[2001:db8::1]:443"], 1), Some(ip("2001:db8::1")));
        assert_eq!(client_address(peer, ["203.0.113.9:5000"], 1), Some(ip("203.0.113.9")));
        // A garbled entry where the client is read is not guessed around.
        assert_eq!(client_address(peer, ["unknown"], 1), None);
    }

    #[test]
    fn forwarded_headers_are_read_like_x_forwarded_for() {
        let peer = Some(ip("127.0.0.1"));
        let forwarded = r#"for=6.6.6.6;proto=http, for="[2001:db8::7]:80""#;
        assert_eq!(forwarded_for(forwarded).collect::<Vec<_>>(), ["6.6.6.6", "[2001:db8::7]:80"]);
        assert_eq!(client_address_from_headers(peer, None::<&str>, Some(forwarded), 1), Some(ip("2001:db8::7")));
        assert_eq!(client_address_from_headers(peer, Some("203.0.113.1"), Some(forwarded), 1), Some(ip("203.0.113.1")));
        assert_eq!(client_address_from_headers(peer, None::<&str>, Some("for=_hidden"), 1), None);
        assert_eq!(client_address_from_headers(peer, Some("6.6.6.6"), None::<&str>, 0), peer);
        // A proxy that adds a line of its own instead of extending the client's.
        assert_eq!(
            client_address_from_headers(peer, ["6.6.6.6", "203.0.113.2"], None::<&str>, 1),
            Some(ip("203.0.113.2"))
        );
    }

    #[test]
    fn addresses_are_canonical_and_ipv6_counts_per_64() {
        assert_eq!(canonical(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(client_address(Some(ip("::ffff:203.0.113.9")), [] as [&str; 0], 0), Some(ip("203.0.113.9")));
        assert_eq!(counted_network(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(counted_network(ip("2001:db8:1:2:bbbb::7")), counted_network(ip("2001:db8:1:2:aaaa::1")));
        assert_eq!(counted_network(ip("203.0.113.9")), ip("203.0.113.9"));
    }

    #[test]
    fn the_reserved_namespace_is_matched_in_any_case() {
        assert!(is_reserved_header("x-keygate-application-id"));
        assert!(is_reserved_header("X-Keygate-Anything"));
        assert!(!is_reserved_header("x-keygat"));
        assert!(!is_reserved_header("x-api-key"));
    }

    #[test]
    fn request_targets_split_at_the_query_and_refuse_what_normalisation_would_change() {
        let ok = request_target("/api/v1/apps/app_1/users?x=1#frag").unwrap();
        assert_eq!((ok.path, ok.query), ("/api/v1/apps/app_1/users", Some("x=1")));
        assert_eq!(request_target("/").unwrap().query, None);
        assert!(request_target("/a/b/").is_ok());
        for bad in [
            "a/b",
            "/a//b",
            "//a",
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2E/b",
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a;x=1/b",
            "/a b",
            "/a\tb",
            "/a/b//",
        ] {
            assert!(request_target(bad).is_err(), "{bad:?} was accepted");
        }
        // Only the path is judged: a query may say anything.
        assert!(request_target("/a?next=/../x;y").is_ok());
    }

    #[test]
    fn query_values_are_found_under_every_spelling_of_their_name() {
        assert_eq!(query_value("a=1&application_id=app_2&b", "application_id"), Some("app_2"));
        assert_eq!(query_value("xapplication_id=app_2", "application_id"), None);
        assert_eq!(query_value("flag&x=1", "flag"), Some(""));
        let all: Vec<_> =
            query_values("application_id=a&APPLICATION_ID=b&application%5Fid=c&application%5fID=d", "application_id")
                .collect();
        assert_eq!(all, ["a", "b", "c", "d"]);
        assert_eq!(query_value("application_id%=x", "application_id"), None, "a broken escape names nothing else");
    }

    #[test]
    fn query_names_are_read_as_php_and_semicolon_splitting_frameworks_read_them() {
        let all: Vec<_> = query_values(
            "application_id=m&x=1;application_id=a&application.id=b&application+id=c&application%20id=d&application[id=e",
            "application_id",
        )
        .collect();
        assert_eq!(all, ["m", "a", "b", "c", "d", "e"]);
        // A closed bracket is an array of another name for PHP.
        assert_eq!(query_value("application[id]=x", "application_id"), None);
        assert_eq!(query_value("applicationid=x&application-id=y", "application_id"), None);
    }

    #[test]
    fn header_names_are_one_variable_for_cgi() {
        assert!(same_header_name("x-application-id", "X-Application_Id"));
        assert!(same_header_name("x_http_method_override", "x-http-method-override"));
        assert!(!same_header_name("x-application-i", "x-application-id"));
        assert!(!same_header_name("x-applicationid", "x-application-id"));
    }

    #[test]
    fn credentials_are_read_from_each_source() {
        assert_eq!(CredentialSource::parse("Authorization").unwrap(), CredentialSource::Authorization);
        assert_eq!(CredentialSource::parse("X-Api-Key").unwrap(), CredentialSource::Header("x-api-key".into()));
        assert_eq!(CredentialSource::parse("cookie:sid").unwrap(), CredentialSource::Cookie("sid".into()));
        assert!(CredentialSource::parse("cookie:").is_err());
        assert!(CredentialSource::parse("a b").is_err());
        assert_eq!(CredentialSource::Authorization.read(["Bearer kg_1"]), Some("kg_1"));
        assert_eq!(CredentialSource::Authorization.read(["bearer kg_1"]), Some("kg_1"));
        assert_eq!(CredentialSource::Authorization.read(["Basic abc"]), None);
        let cookie = CredentialSource::Cookie("sid".into());
        assert_eq!(cookie.read(["theme=dark", "a=1; sid=kgs_2"]), Some("kgs_2"), "any line of the header");
        assert_eq!(CredentialSource::Header("x-api-key".into()).read([" "]), None, "blank is none");
        assert_eq!(CredentialSource::Header("x-api-key".into()).read([]), None);
        // The first source that holds one wins, whatever the order of the headers.
        let sources = CredentialSource::defaults();
        let lines = |name: &str| match name {
            "x-api-key" => vec!["kg_header"],
            "cookie" => vec!["keygate_session=kgs_cookie"],
            _ => vec![],
        };
        assert_eq!(CredentialSource::find(&sources, lines), Some((&sources[1], "kg_header")));
        assert_eq!(CredentialSource::find(&sources[2..], lines), Some((&sources[2], "kgs_cookie")));
        assert_eq!(CredentialSource::find(&sources[..1], lines), None);
    }
}
