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

/// Query parameters whose value says nothing secret, so a masked URL shows it.
const SHOWN_PARAMETERS: [&str; 9] = [
    "sslmode",
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
