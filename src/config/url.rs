//! [`MaskedUrl`]: a database or Redis URL that `Debug` and `Display` print without its
//! secrets, and the connect parameters a driver would silently ignore.

use std::fmt;

/// A database or Redis URL whose password `Debug` does not print.
#[derive(Clone)]
pub struct MaskedUrl(String);

impl MaskedUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl MaskedUrl {
    /// The URL split where masking needs it: what comes before the userinfo
    /// (`scheme://`), the userinfo if any, and the rest (`host/db?query`). The userinfo
    /// ends at the URL's last '@', so a password holding an unencoded '?', '#', '/' or '@'
    /// still counts as userinfo; an '@' after a '/', '?' or '#' in the user name's place is
    /// a query's or a path's, and there is no userinfo.
    fn parts(&self) -> (&str, Option<&str>, &str) {
        let (head, rest) = self.0.find("://").map_or(("", self.0.as_str()), |i| self.0.split_at(i + 3));
        let userinfo = rest.rfind('@').map(|at| (&rest[..at], &rest[at + 1..]));
        match userinfo {
            Some((userinfo, after)) if !userinfo.split(':').next().unwrap_or("").contains(['/', '?', '#']) => {
                (head, Some(userinfo), after)
            }
            _ => (head, None, rest),
        }
    }

    /// The query parameters' names, as written (after the userinfo).
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        let query = self.parts().2.split_once('?').map_or("", |(_, query)| query);
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        query.split('&').filter(|pair| !pair.is_empty()).map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
    }
}

impl MaskedUrl {
    /// The value of query parameter `name`, the last one given winning (as sqlx reads it).
    fn parameter(&self, name: &str) -> Option<&str> {
        let query = self.parts().2.split_once('?').map_or("", |(_, query)| query);
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        query.split('&').filter_map(|pair| pair.split_once('=')).filter(|(n, _)| *n == name).map(|(_, v)| v).next_back()
    }

    /// The host a Postgres URL connects to: `host=` in the query, else the authority's
    /// (without its port); empty for none (a local socket).
    fn postgres_host(&self) -> &str {
        if let Some(host) = self.parameter("host") {
            return host;
        }
        let rest = self.parts().2;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        }
    }

    /// Whether the Postgres URL stays on this machine: a local socket, `localhost` or a
    /// loopback address. Elsewhere, keygate asks for TLS that verifies the server.
    fn postgres_on_loopback(&self) -> bool {
        let host = self.postgres_host();
        host.is_empty()
            || host.starts_with('/')
            || host.starts_with("%2F")
            || host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The `sslmode` the URL asks for (`ssl-mode` is sqlx's spelling of the same).
    fn sslmode(&self) -> Option<&str> {
        self.parameter("sslmode").or_else(|| self.parameter("ssl-mode"))
    }
}

/// A Postgres URL that names no `sslmode` gets one: `verify-full` to a host elsewhere (the
/// server's certificate is checked against the OS's roots, or `sslrootcert`, and its
/// name); `disable` on this machine, where there is no network to protect and sqlx's own
/// default (`prefer`) would pay a handshake per connection for nothing. `PGSSLMODE`,
/// which sqlx reads when the URL says nothing, still wins.
pub(super) fn with_default_sslmode(url: MaskedUrl) -> MaskedUrl {
    let postgres = crate::store::sql::Backend::of_url(url.expose()) == Some(crate::store::sql::Backend::Postgres);
    if !postgres || url.sslmode().is_some() || std::env::var_os("PGSSLMODE").is_some() {
        return url;
    }
    let mode = if url.postgres_on_loopback() { "disable" } else { "verify-full" };
    let (body, fragment) = url.0.split_once('#').map_or((url.0.as_str(), None), |(b, f)| (b, Some(f)));
    let separator = if url.parts().2.contains('?') { "&" } else { "?" };
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    MaskedUrl(format!("{body}{separator}sslmode={mode}{fragment}"))
}

/// The start-up warning for a Postgres URL to a host elsewhere whose `sslmode` does not
/// verify the server (`disable`, `allow`, `prefer`, `require`): what it risks, never the URL.
pub fn weak_postgres_tls(url: &MaskedUrl) -> Option<String> {
    let mode = url.sslmode()?;
    if url.postgres_on_loopback()
        || !["disable", "allow", "prefer", "require"].contains(&mode.to_ascii_lowercase().as_str())
    {
        return None;
    }
    let risk = match mode.to_ascii_lowercase().as_str() {
        "require" => "encrypted, but the server's certificate is not verified: anyone on the path can impersonate it",
        _ => "the connection may be plaintext: key hashes, sessions and balances cross the network readable",
    };
    Some(format!(
        "the database URL asks for sslmode={} to a host that is not this machine: {risk}; use sslmode=verify-full \
         (with sslrootcert= for a private CA)",
        mode.escape_default()
    ))
}

/// Query parameters whose value says nothing secret, so a masked URL shows it.
const SHOWN_PARAMETERS: [&str; 13] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "ssl-mode",
    "statement-cache-capacity",
    "port",
    "dbname",
    "application_name",
    "mode",
    "cache",
    "immutable",
];

impl fmt::Debug for MaskedUrl {
    /// `scheme://user:***@host/db?sslmode=require&password=***`: the userinfo's password,
    /// and the value of every query parameter but those in [`SHOWN_PARAMETERS`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, userinfo, rest) = self.parts();
        f.write_str(head)?;
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((user, _)) => write!(f, "{user}:***@")?,
                None => write!(f, "{userinfo}@")?,
            }
        }
        let (before_query, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
        f.write_str(before_query)?;
        let Some(query) = query else { return Ok(()) };
        f.write_str("?")?;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((name, _)) if !SHOWN_PARAMETERS.contains(&name) => write!(f, "{name}=***")?,
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// Whether sqlx reads the connect parameter `name` from a URL of `backend`. sqlx ignores
/// any other Postgres parameter with a warning that prints its value (`sslpassword=…`),
/// so keygate refuses them first, naming the parameter and never its value.
fn known_connect_parameter(backend: crate::store::sql::Backend, name: &str) -> bool {
    use crate::store::sql::Backend;
    const POSTGRES: [&str; 18] = [
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
        "statement-cache-capacity",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
        "options",
    ];
    match backend {
        Backend::Postgres => POSTGRES.contains(&name) || (name.starts_with("options[") && name.ends_with(']')),
        Backend::Sqlite => ["mode", "cache", "immutable", "vfs"].contains(&name),
    }
}

/// Every parameter of the database URL that sqlx would not read, each named once.
pub(super) fn unknown_connect_parameters(url: &MaskedUrl, backend: crate::store::sql::Backend) -> Vec<String> {
    let mut unknown: Vec<String> = Vec::new();
    for name in url.parameter_names().filter(|name| !known_connect_parameter(backend, name)) {
        // A name is printed, never a value; odd bytes are shown escaped.
        let name = name.escape_default().to_string();
        if !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    unknown
}

impl fmt::Display for MaskedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_debug_masks_the_password() {
        let url = MaskedUrl::new("postgres://kg:hunter2@db:5432/keygate");
        assert_eq!(format!("{url:?}"), "postgres://kg:***@db:5432/keygate");
        let url = MaskedUrl::new("postgres://kg@db/keygate?sslmode=require&password=hunter2&sslpassword=x&PWD=y");
        assert_eq!(url.to_string(), "postgres://kg@db/keygate?sslmode=require&password=***&sslpassword=***&PWD=***");
        let url = MaskedUrl::new("redis://:hunter2@cache:6379/0?token=t");
        assert_eq!(url.to_string(), "redis://:***@cache:6379/0?token=***");
        assert_eq!(MaskedUrl::new("sqlite://data/k.db").to_string(), "sqlite://data/k.db");
    }

    #[test]
    fn a_password_with_url_delimiters_and_every_parameter_value_are_masked() {
        for (url, shown) in [
            (
                "postgres://kg:hun?ter2@db:5432/keygate?sslmode=require",
                "postgres://kg:***@db:5432/keygate?sslmode=require",
            ),
            ("postgres://kg:a#b/c@d@db/k", "postgres://kg:***@db/k"),
            ("postgres://db/k?options=-c%20x&application_name=kg", "postgres://db/k?options=***&application_name=kg"),
            ("postgres://db/k?application_name=a@b&token=t", "postgres://db/k?application_name=a@b&token=***"),
            ("postgres://db?x=a:b@c&password=p", "postgres://db?x=***&password=***"),
            ("redis://:s3cret?x@cache:6379/0", "redis://:***@cache:6379/0"),
        ] {
            assert_eq!(MaskedUrl::new(url).to_string(), shown);
        }
    }

    /// guards: the `verify-full` default elsewhere (without it, such a URL got sqlx's
    /// `prefer`) and `disable` on this machine.
    #[test]
    fn postgres_elsewhere_without_an_sslmode_verifies_the_server() {
        let defaulted = |url: &str| with_default_sslmode(MaskedUrl::new(url)).expose().to_owned();
        assert_eq!(
            defaulted("postgres://kg:pw@db.example:5432/k"),
            "postgres://kg:pw@db.example:5432/k?sslmode=verify-full"
        );
        assert_eq!(
            defaulted("postgres://db.example/k?application_name=kg"),
            "postgres://db.example/k?application_name=kg&sslmode=verify-full"
        );
        assert_eq!(
            defaulted("postgres://10.0.0.5/k?host=db.internal"),
            "postgres://10.0.0.5/k?host=db.internal&sslmode=verify-full"
        );
        assert_eq!(defaulted("postgres://kg@localhost/k"), "postgres://kg@localhost/k?sslmode=disable");
        assert_eq!(defaulted("postgres://[::1]:5432/k"), "postgres://[::1]:5432/k?sslmode=disable");
        assert_eq!(
            defaulted("postgres:///k?host=/run/postgresql"),
            "postgres:///k?host=/run/postgresql&sslmode=disable"
        );
        assert_eq!(defaulted("postgres://127.0.0.1/k?x=1#f"), "postgres://127.0.0.1/k?x=1&sslmode=disable#f");
        for unchanged in [
            "postgres://db.example/k?sslmode=disable",
            "postgres://db.example/k?ssl-mode=require",
            "postgres://127.0.0.1:5432/k?sslmode=verify-full",
            "sqlite://data/k.db",
        ] {
            assert_eq!(defaulted(unchanged), unchanged);
        }
    }

    /// guards: the start-up warning's text, which names the mode and never the URL.
    #[test]
    fn a_weak_sslmode_to_another_host_is_warned_without_the_url() {
        let warning = weak_postgres_tls(&MaskedUrl::new("postgres://kg:hunter2@db.example/k?sslmode=require")).unwrap();
        assert!(warning.contains("sslmode=require") && warning.contains("not verified"), "{warning}");
        assert!(!warning.contains("hunter2") && !warning.contains("db.example"), "{warning}");
        assert!(weak_postgres_tls(&MaskedUrl::new("postgres://db.example/k?sslmode=prefer"))
            .unwrap()
            .contains("plaintext"));
        assert!(weak_postgres_tls(&MaskedUrl::new("postgres://db.example/k?sslmode=disable")).is_some());
        for quiet in [
            "postgres://db.example/k?sslmode=verify-full",
            "postgres://db.example/k?sslmode=verify-ca",
            "postgres://localhost/k?sslmode=disable",
            "postgres://db.example/k",
        ] {
            assert_eq!(weak_postgres_tls(&MaskedUrl::new(quiet)), None, "{quiet}");
        }
    }

    #[test]
    fn connect_parameters_sqlx_would_ignore_are_named_without_their_value() {
        use crate::store::sql::Backend;
        let url = MaskedUrl::new("postgres://kg:p?w@db/k?sslmode=require&sslpassword=hunter2&options[search_path]=x&x");
        assert_eq!(unknown_connect_parameters(&url, Backend::Postgres), ["sslpassword", "x"]);
        let url = MaskedUrl::new("sqlite://data/k.db?mode=rwc&password=hunter2");
        assert_eq!(unknown_connect_parameters(&url, Backend::Sqlite), ["password"]);
        let url = MaskedUrl::new("postgres://kg:p?sslpassword=1@db/k");
        assert!(unknown_connect_parameters(&url, Backend::Postgres).is_empty(), "a password's '?' starts no query");
        let url = MaskedUrl::new("postgres://db/k?sslpassword=a@b");
        assert_eq!(unknown_connect_parameters(&url, Backend::Postgres), ["sslpassword"], "an '@' in the query");
    }
}
