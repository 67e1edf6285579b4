//! The domain's own types. Each has a `parse` that is the only way in from the outside,
//! so everything past the edge can trust its shape.

mod admin_token;
mod credential;
mod ids;
pub mod imported;
mod records;
mod scope;
mod search;
mod terms;

pub use admin_token::{
    admin_token_digest, is_admin_token_signed, new_admin_token, AdminGrant, AdminNeed, AdminRole, AdminTokenName,
    AdminTokenRecord, ADMIN_TOKEN_PREFIX,
};
pub use credential::{
    ApiKeyCredential, Credential, CredentialKind, GeneratedKey, MalformedCredential, CREDENTIAL_PREFIX,
};
pub use ids::{AccountId, ApplicationId, KeyId, OwnerId, SessionId, UserId};
pub use records::{
    Application, CreditHolder, KeyKind, KeyRecord, Lookup, NewKeyRecord, Owner, Principal, SessionRecord,
    VerifiedDigest,
};
pub use scope::{Scope, Scopes};
pub use search::SearchParams;
pub use terms::{CreditBalance, KeyLimit, KeyTerms, Metadata, Network, Refill, RefillInterval, RefillMode, MAX_LIMIT};

use crate::code::{Code, Reason};
use std::borrow::Cow;
use std::fmt;

/// Why a request is denied: a stable code, the finer reason, and human text that never
/// holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub code: Code,
    pub reason: Reason,
    pub message: Cow<'static, str>,
}

impl Deny {
    /// A deny for the reason `code` means unless [`Deny::because`] says a finer one.
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, reason: Reason::of(code), message: message.into() }
    }

    pub fn of(code: Code) -> Self {
        Self::new(code, code.default_message())
    }

    pub fn because(mut self, reason: Reason) -> Self {
        self.reason = reason;
        self
    }
}

/// A field that failed validation, with a message that names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidField {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self { field, problem: problem.into() }
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

/// RFC 3339 in UTC, e.g. `2026-11-25T17:53:50.123Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        keygate_api::time::write_rfc3339(f, self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reads_back_what_it_writes_and_nothing_else() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(from_hex::<4>(&hex(&bytes)), Some(bytes));
        assert_eq!(from_hex::<4>("00FFAB7F"), Some([0x00, 0xff, 0xab, 0x7f]), "either case");
        for bad in ["007fabf", "007fabff00", "007fabfg", "+07fabff", "00é7fab"] {
            assert_eq!(from_hex::<4>(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(Timestamp::from_millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_millis(951_782_400_000).to_string(), "2000-02-29T00:00:00.000Z");
        assert_eq!(Timestamp::from_millis(1_795_629_230_123).to_string(), "2026-11-25T17:53:50.123Z");
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
            return Err(InvalidField::new(field, format!("must be at most {} characters", Self::MAX_LEN)));
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

/// Lowercase hex, for digests and ids written as text.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// `N` bytes from `2 × N` hex digits (either case), as [`hex`] writes them; `None`
/// otherwise.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Hex digits only: `from_str_radix` alone would take "+a" for a byte.
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A random base62 token from the OS CSPRNG (for admin tokens).
pub fn random_token(len: usize) -> Result<String, getrandom::Error> {
    credential::random_base62(len)
}

/// A client's network as budgets and limits count it: an IPv4 address, or an IPv6 /64
/// (see [`keygate_api::edge::counted_network`]), with its text kept inline so counting
/// allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientNetwork {
    network: std::net::IpAddr,
    text: [u8; 39],
    len: u8,
}

impl ClientNetwork {
    pub fn of(ip: std::net::IpAddr) -> Self {
        use std::io::Write;
        let network = keygate_api::edge::counted_network(ip);
        let mut text = [0u8; 39];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        // The longest IPv6 text is 39 bytes: it always fits.
        let _ = write!(cursor, "{network}");
        let len = cursor.position() as u8;
        Self { network, text, len }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or("")
    }

    /// The wider networks this one lies in, narrowest first: an IPv4 address's /24, an
    /// IPv6 /64's /56 and /48. Budgets count these too, so a client that can pick any
    /// address of a /24 or any /64 of a /48 does not get a fresh budget with each.
    pub fn wider(&self) -> impl Iterator<Item = NetworkPrefix> {
        let network = self.network;
        let lengths: &'static [u8] = match network {
            std::net::IpAddr::V4(_) => &[24],
            std::net::IpAddr::V6(_) => &[56, 48],
        };
        lengths.iter().map(move |&len| NetworkPrefix::of(network, len))
    }
}

/// An address's network of `len` leading bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkPrefix {
    pub network: std::net::IpAddr,
    pub len: u8,
}

impl NetworkPrefix {
    pub fn of(ip: std::net::IpAddr, len: u8) -> Self {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let network = match ip {
            IpAddr::V4(v4) => {
                let len = u32::from(len.min(32));
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let len = u32::from(len.min(128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Self { network, len }
    }
}

impl fmt::Display for NetworkPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl fmt::Debug for ClientNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
