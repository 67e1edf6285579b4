//! Scopes and how a granted scope covers a required one.
//!
//! A scope is `resource:action` style text: letters, digits and `_ . -`, segments joined
//! by `:`. A key may be granted wildcards, a route never requires one:
//! - `*` covers every scope;
//! - `applications:*` covers every scope that starts with `applications:`
//!   (`applications:read`, `applications:users:write`), but not `applications` itself;
//! - anything else covers exactly itself.

use super::InvalidField;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Box<str>);

impl Scope {
    pub const MAX_LEN: usize = 128;

    /// A scope a key may be granted: wildcards allowed.
    pub fn parse_grant(raw: &str) -> Result<Self, InvalidField> {
        if raw == "*" {
            return Ok(Self(raw.into()));
        }
        let name = raw.strip_suffix(":*").unwrap_or(raw);
        check_name("scopes", name)?;
        Ok(Self(raw.into()))
    }

    /// A scope a route or request may require: no wildcards.
    pub fn parse_required(raw: &str) -> Result<Self, InvalidField> {
        check_name("required_scopes", raw)?;
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does this granted scope cover `required`?
    pub fn covers(&self, required: &str) -> bool {
        if &*self.0 == "*" {
            return true;
        }
        match self.0.strip_suffix('*') {
            // "applications:*" keeps its ':' so "applications" alone is not covered.
            Some(prefix) => required.len() > prefix.len() && required.starts_with(prefix),
            None => &*self.0 == required,
        }
    }
}

fn check_name(field: &'static str, raw: &str) -> Result<(), InvalidField> {
    let problem = if raw.is_empty() {
        "a scope must not be empty".to_owned()
    } else if raw.len() > Scope::MAX_LEN {
        format!("a scope must be at most {} characters", Scope::MAX_LEN)
    } else if raw.split(':').any(str::is_empty) {
        format!("scope '{}' has an empty segment", raw.escape_debug())
    } else if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':')) {
        format!(
            "scope '{}' may contain only letters, digits, '_', '.', '-' and ':' (and a final ':*' or '*' in grants)",
            raw.escape_debug()
        )
    } else {
        return Ok(());
    };
    Err(InvalidField::new(field, problem))
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// The scopes a key holds: sorted, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub const MAX: usize = 100;

    pub fn parse_grants<S: AsRef<str>>(raw: &[S]) -> Result<Self, InvalidField> {
        if raw.len() > Self::MAX {
            return Err(InvalidField::new("scopes", format!("at most {} scopes", Self::MAX)));
        }
        let mut scopes = raw.iter().map(|s| Scope::parse_grant(s.as_ref())).collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        Ok(Self(scopes))
    }

    pub fn covers(&self, required: &str) -> bool {
        self.0.iter().any(|granted| granted.covers(required))
    }

    /// The first of `required` that no granted scope covers.
    pub fn first_missing<'r>(&self, required: impl IntoIterator<Item = &'r Scope>) -> Option<&'r Scope> {
        required.into_iter().find(|r| !self.covers(r.as_str()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(raw: &[&str]) -> Scopes {
        Scopes::parse_grants(raw).unwrap()
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let s = grants(&["applications:read"]);
        assert!(s.covers("applications:read"));
        assert!(!s.covers("applications:write"));
        assert!(!s.covers("applications:read:all"));

        let s = grants(&["applications:*"]);
        assert!(s.covers("applications:read"));
        assert!(s.covers("applications:users:write"));
        assert!(!s.covers("applications"));
        assert!(!s.covers("applicationsx:read"));
        assert!(!s.covers("api_keys:read"));

        assert!(grants(&["*"]).covers("anything:at:all"));
        assert!(!grants(&[]).covers("applications:read"));
    }

    #[test]
    fn required_scopes_reject_wildcards() {
        assert!(Scope::parse_required("applications:*").is_err());
        assert!(Scope::parse_required("*").is_err());
        assert!(Scope::parse_required("applications:read").is_ok());
    }

    #[test]
    fn bad_grants_are_named() {
        for bad in ["", "a b", "a::b", ":a", "a:", "a*", "*:a", "é"] {
            let err = Scope::parse_grant(bad).unwrap_err();
            assert_eq!(err.field, "scopes", "{bad}");
        }
    }

    #[test]
    fn grants_are_sorted_and_deduplicated() {
        let s = grants(&["b", "a", "b"]);
        let names: Vec<_> = s.iter().map(Scope::as_str).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
