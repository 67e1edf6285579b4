//! Credentials: a prefix that says what kind it is, then id (16) + secret (44) +
//! checksum (6), all base62.
//!
//! | kind | prefix | id names |
//! |------|--------|----------|
//! | API key | `kg_` | `key_…` |
//! | application runtime key | `kgr_` | `key_…` (same table, kind `runtime`) |
//! | dashboard session | `kgs_` | `ses_…` |
//!
//! - The key id is not secret: it finds the stored record with one indexed lookup.
//! - The secret is 44 base62 characters from the OS CSPRNG: 44 × log2(62) ≈ 262 bits.
//! - The checksum (CRC-32 of everything before it) rejects typos and garbage before any
//!   I/O. It is not a MAC: anyone can compute it, so the store and argon2 stay the gate.

use super::{KeyId, SessionId};
use std::fmt;

pub const CREDENTIAL_PREFIX: &str = "kg_";
pub(crate) const KEY_ID_LEN: usize = 16;
const SECRET_LEN: usize = 44;
const CHECKSUM_LEN: usize = 6;
const BODY_LEN: usize = KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN;

/// What a credential is, told by its prefix alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    ApiKey,
    RuntimeKey,
    Session,
}

impl CredentialKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => CREDENTIAL_PREFIX,
            CredentialKind::RuntimeKey => "kgr_",
            CredentialKind::Session => "kgs_",
        }
    }

    /// The kind a raw credential claims to be, by prefix; nothing else is checked.
    pub fn of(raw: &str) -> Option<Self> {
        [CredentialKind::ApiKey, CredentialKind::RuntimeKey, CredentialKind::Session]
            .into_iter()
            .find(|kind| raw.starts_with(kind.prefix()))
    }

    /// The name used in the policy file and in `Principal.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::RuntimeKey => "runtime_key",
            CredentialKind::Session => "session",
        }
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a credential was rejected before any lookup. Never carries the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedCredential {
    #[error("the credential does not start with the API key prefix")]
    Prefix,
    #[error("the credential has the wrong length")]
    Length,
    #[error("the credential contains characters outside the key alphabet")]
    Alphabet,
    #[error("the credential's checksum does not match")]
    Checksum,
}

/// A syntactically valid credential, borrowed from the request.
#[derive(Clone, Copy)]
pub struct Credential<'a> {
    kind: CredentialKind,
    raw: &'a str,
}

/// The common case, kept as a name of its own.
pub type ApiKeyCredential<'a> = Credential<'a>;

impl<'a> Credential<'a> {
    /// Checks prefix, length, alphabet and checksum. Allocates nothing.
    pub fn parse(raw: &'a str) -> Result<Self, MalformedCredential> {
        let kind = CredentialKind::of(raw).ok_or(MalformedCredential::Prefix)?;
        let rest = &raw[kind.prefix().len()..];
        if rest.len() != BODY_LEN {
            return Err(MalformedCredential::Length);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MalformedCredential::Alphabet);
        }
        let (body, checksum) = raw.split_at(raw.len() - CHECKSUM_LEN);
        if checksum.as_bytes() != encode_checksum(crc32(body.as_bytes())) {
            return Err(MalformedCredential::Checksum);
        }
        Ok(Self { kind, raw })
    }

    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    fn id_body(&self) -> &'a [u8] {
        let start = self.kind.prefix().len();
        &self.raw.as_bytes()[start..start + KEY_ID_LEN]
    }

    /// The key id of an API key or runtime key credential (a session's id body reads the same).
    pub fn key_id(&self) -> KeyId {
        KeyId::from_body(self.id_body()).expect("parse checked the alphabet and length")
    }

    pub fn session_id(&self) -> SessionId {
        SessionId::from_body(self.id_body()).expect("parse checked the alphabet and length")
    }

    /// The secret part, the only part that is hashed.
    pub fn secret(&self) -> &'a str {
        let start = self.kind.prefix().len() + KEY_ID_LEN;
        &self.raw[start..start + SECRET_LEN]
    }

    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({:?}, {}, <redacted>)", self.kind, self.key_id().as_body())
    }
}

/// A freshly generated credential: shown to its creator once, then dropped.
pub struct GeneratedKey {
    credential: String,
}

impl GeneratedKey {
    pub fn generate() -> Result<Self, getrandom::Error> {
        Self::generate_kind(CredentialKind::ApiKey)
    }

    pub fn generate_kind(kind: CredentialKind) -> Result<Self, getrandom::Error> {
        let mut credential = String::with_capacity(kind.prefix().len() + BODY_LEN);
        credential.push_str(kind.prefix());
        credential.push_str(&random_base62(KEY_ID_LEN)?);
        credential.push_str(&random_base62(SECRET_LEN)?);
        let checksum = encode_checksum(crc32(credential.as_bytes()));
        credential.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
        Ok(Self { credential })
    }

    pub fn credential(&self) -> Credential<'_> {
        Credential::parse(&self.credential).expect("generated credentials are well-formed")
    }

    /// A well-formed credential with this one's kind and id and a fresh random secret:
    /// what an attacker who knows a key id can make. For tests and benchmarks.
    pub fn impostor_of(credential: &Credential<'_>) -> Result<Self, getrandom::Error> {
        let mut forged = String::with_capacity(credential.kind.prefix().len() + BODY_LEN);
        forged.push_str(credential.kind.prefix());
        forged.push_str(credential.key_id().as_body());
        forged.push_str(&random_base62(SECRET_LEN)?);
        let checksum = encode_checksum(crc32(forged.as_bytes()));
        forged.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
        Ok(Self { credential: forged })
    }

    /// The full credential, for the one response that may carry it.
    pub fn into_secret_string(self) -> String {
        self.credential
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.credential().fmt(f)
    }
}

/// Uniform base62 from the OS CSPRNG, by rejection sampling (248 = 4 × 62).
pub(crate) fn random_base62(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::getrandom(&mut buf)?;
        for &b in &buf {
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

fn encode_checksum(mut value: u32) -> [u8; CHECKSUM_LEN] {
    // 62^6 > 2^32, so six digits hold any CRC-32.
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// CRC-32 (ISO-HDLC, the zlib one), slice-by-16: several times faster than a byte at a
/// time on a credential's 63 bytes, and it runs on every Authorize.
const CRC32: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn generated_keys_parse_and_round_trip() {
        for _ in 0..100 {
            let key = GeneratedKey::generate().unwrap();
            let parsed = key.credential();
            assert_eq!(parsed.as_str().len(), CREDENTIAL_PREFIX.len() + BODY_LEN);
            assert_eq!(parsed.secret().len(), SECRET_LEN);
            let id = parsed.key_id();
            assert_eq!(KeyId::parse(&id.to_string()).unwrap(), id);
        }
    }

    #[test]
    fn every_single_character_typo_is_rejected() {
        let key = GeneratedKey::generate().unwrap().into_secret_string();
        for i in CREDENTIAL_PREFIX.len()..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(ApiKeyCredential::parse(&typo).unwrap_err(), MalformedCredential::Checksum);
        }
    }

    #[test]
    fn garbage_is_classified() {
        let key = GeneratedKey::generate().unwrap().into_secret_string();
        assert_eq!(ApiKeyCredential::parse("").unwrap_err(), MalformedCredential::Prefix);
        assert_eq!(ApiKeyCredential::parse("sk_live_x").unwrap_err(), MalformedCredential::Prefix);
        assert_eq!(ApiKeyCredential::parse("kg_short").unwrap_err(), MalformedCredential::Length);
        let long = format!("{key}a");
        assert_eq!(ApiKeyCredential::parse(&long).unwrap_err(), MalformedCredential::Length);
        let unicode = format!("kg_é{}", &key[5..]);
        assert!(ApiKeyCredential::parse(&unicode).is_err());
        let dashed = format!("kg_-{}", &key[4..]);
        assert_eq!(ApiKeyCredential::parse(&dashed).unwrap_err(), MalformedCredential::Alphabet);
    }

    #[test]
    fn the_prefix_tells_the_kind() {
        for kind in [CredentialKind::ApiKey, CredentialKind::RuntimeKey, CredentialKind::Session] {
            let generated = GeneratedKey::generate_kind(kind).unwrap();
            assert_eq!(generated.credential().kind(), kind);
            assert_eq!(CredentialKind::of(generated.credential().as_str()), Some(kind));
        }
        assert_eq!(CredentialKind::of("kgx_abc"), None);
        // A session token with an API key's prefix swapped in fails its checksum.
        let session = GeneratedKey::generate_kind(CredentialKind::Session).unwrap().into_secret_string();
        let swapped = format!("kg_{}", &session[4..]);
        assert!(Credential::parse(&swapped).is_err());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = GeneratedKey::generate().unwrap();
        let secret = key.credential().secret().to_owned();
        assert!(!format!("{key:?}").contains(&secret));
        assert!(!format!("{:?}", key.credential()).contains(&secret));
    }
}
