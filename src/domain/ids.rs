//! Identifiers. Ids that keygate makes carry a prefix (`key_`, `app_`) so a stray id in a
//! log says what it names.

use super::credential::{random_base62, KEY_ID_LEN};
use super::InvalidField;
use std::fmt;

/// An API key's id: `key_` + the 16 base62 characters embedded in its credential.
/// Kept as a fixed array so the hot path can hash and copy it without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    pub const PREFIX: &'static str = "key_";

    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        raw.strip_prefix(Self::PREFIX)
            .and_then(|body| Self::from_body(body.as_bytes()))
            .ok_or_else(|| InvalidField::new("id", "is not an API key id (key_ followed by 16 letters or digits)"))
    }

    pub(crate) fn from_body(body: &[u8]) -> Option<Self> {
        let array: [u8; KEY_ID_LEN] = body.try_into().ok()?;
        array.iter().all(u8::is_ascii_alphanumeric).then_some(Self(array))
    }

    pub fn as_body(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII at construction")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.as_body())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A dashboard session's id: `ses_` + the 16 base62 characters embedded in its token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; KEY_ID_LEN]);

impl SessionId {
    pub const PREFIX: &'static str = "ses_";

    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        raw.strip_prefix(Self::PREFIX)
            .and_then(|body| Self::from_body(body.as_bytes()))
            .ok_or_else(|| InvalidField::new("id", "is not a session id (ses_ followed by 16 letters or digits)"))
    }

    pub(crate) fn from_body(body: &[u8]) -> Option<Self> {
        KeyId::from_body(body).map(|k| Self(k.0))
    }

    pub fn as_body(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII at construction")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.as_body())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Letters, digits, `_` and `-`, 1 to 64 of them: the shape of every external id.
fn check_external_id(field: &'static str, raw: &str) -> Result<(), InvalidField> {
    if raw.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if raw.len() > 64 {
        return Err(InvalidField::new(field, "must be at most 64 characters"));
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(InvalidField::new(field, "may contain only letters, digits, '_' and '-'"));
    }
    Ok(())
}

macro_rules! external_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidField> {
                Self::parse_field($field, raw)
            }

            pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, InvalidField> {
                check_external_id(field, raw)?;
                Ok(Self(raw.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

external_id!(
    /// The account (tenant) that owns applications and keys; assigned by the dashboard.
    AccountId,
    "account_id"
);
external_id!(
    /// Whom keys belong to in the customer's own terms (their customer or user id, like
    /// Unkey's `externalId`): unique within an account. Limits and credits set on an owner
    /// are shared by all its keys.
    OwnerId,
    "owner_id"
);
external_id!(
    /// A dashboard user; assigned by the dashboard.
    UserId,
    "user_id"
);
external_id!(
    /// An application of an account: `app_` + 16 base62 characters when keygate made it.
    ApplicationId,
    "application_id"
);

impl ApplicationId {
    pub fn generate() -> Result<Self, getrandom::Error> {
        Ok(Self(format!("app_{}", random_base62(16)?).into()))
    }
}

impl KeyId {
    /// A fresh id for a key whose credential carries none (an imported key's).
    pub fn generate() -> Result<Self, getrandom::Error> {
        Ok(Self::from_body(random_base62(KEY_ID_LEN)?.as_bytes()).expect("base62 of the right length"))
    }

    /// Only for ids read back from the store, which keygate wrote itself.
    pub(crate) fn from_stored(raw: &str) -> Option<Self> {
        Self::parse(raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_need_their_prefix_and_shape() {
        assert!(KeyId::parse("key_0123456789abcdef").is_ok());
        assert!(KeyId::parse("0123456789abcdef").is_err());
        assert!(KeyId::parse("key_0123456789abcde").is_err());
        assert!(KeyId::parse("key_0123456789abcde-").is_err());
        assert!(KeyId::parse("key_0123456789abcdeé").is_err());
    }

    #[test]
    fn external_ids_are_bounded() {
        assert!(AccountId::parse("acct_42").is_ok());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse(&"a".repeat(65)).is_err());
        assert!(ApplicationId::parse("app 1").is_err());
        assert!(ApplicationId::generate().unwrap().as_str().starts_with("app_"));
    }
}
