//! The domain's own types. Each has a `parse` that is the only way in from the outside,
//! so everything past the edge can trust its shape.

mod credential;
mod ids;
mod scope;
mod search;

pub use credential::{ApiKeyCredential, GeneratedKey, MalformedCredential, CREDENTIAL_PREFIX};
pub use ids::{AccountId, ApplicationId, KeyId};
pub use scope::{Scope, Scopes};
pub use search::SearchParams;

use std::fmt;

/// A field that failed validation, with a message that names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidField {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Milliseconds since the Unix epoch. The store keeps this integer as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, by: std::time::Duration) -> Self {
        Self(self.0.saturating_add(by.as_millis() as i64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A human-readable name of an application or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 200;

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidField> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidField::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > Self::MAX_LEN {
            return Err(InvalidField::new(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(InvalidField::new(field, "must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_trusted(raw: String) -> Self {
        Self(raw)
    }
}

/// A hash of a secret in PHC string form (argon2id). Not the secret, but still kept out
/// of logs: `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    pub fn expose_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// A random base62 token from the OS CSPRNG (for admin tokens).
pub fn random_token(len: usize) -> Result<String, getrandom::Error> {
    credential::random_base62(len)
}
