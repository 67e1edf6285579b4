//! Keyed digests of credentials: HMAC-SHA-256 under a server-side key that is not in the
//! database.
//!
//! A digest of a verified credential is stored beside the key's argon2 hash, so that every
//! replica, a restarted one included, recognises the key's holder at the cost of one HMAC
//! and tells any other credential for that key wrong without argon2. argon2 is there so
//! that a stolen database does not yield secrets; the digest keeps that promise as long as
//! the digest key is not stolen with it (it lives in a file or a variable, never a row),
//! and keygate's secrets are 262 random bits, which no fast hash makes guessable either.

use crate::domain::VerifiedDigest;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// At least this many bytes of key.
pub const MIN_DIGEST_KEY_LEN: usize = 32;

#[derive(Clone)]
pub struct CredentialDigester {
    /// The keyed state, cloned per digest: the key is hashed once, not per call.
    mac: Hmac<Sha256>,
    fingerprint: [u8; 8],
}

impl CredentialDigester {
    pub fn new(key: &[u8]) -> Self {
        let fingerprint: [u8; 32] =
            Sha256::new().chain_update(b"keygate digest key\0").chain_update(key).finalize().into();
        Self {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"),
            fingerprint: fingerprint[..8].try_into().expect("8 bytes"),
        }
    }

    /// The keyed digest of a whole credential (prefix, id, secret, checksum).
    pub fn digest(&self, credential: &str) -> [u8; 32] {
        self.mac.clone().chain_update(credential.as_bytes()).finalize().into_bytes().into()
    }

    /// What is stored for a credential argon2 accepted.
    pub fn verified(&self, digest: [u8; 32]) -> VerifiedDigest {
        VerifiedDigest { key_fingerprint: self.fingerprint, digest }
    }

    /// What a stored digest says about `digest`: nothing when another key made it.
    pub fn judge(&self, stored: Option<&VerifiedDigest>, digest: &[u8; 32]) -> Recognition {
        use subtle::ConstantTimeEq;
        match stored {
            Some(stored) if stored.key_fingerprint == self.fingerprint => {
                if bool::from(stored.digest.ct_eq(digest)) {
                    Recognition::Holder
                } else {
                    Recognition::Wrong
                }
            }
            _ => Recognition::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognition {
    /// The credential argon2 accepted before.
    Holder,
    /// Not it: the key has one secret, and this is not its credential.
    Wrong,
    /// No usable stored digest: argon2 must decide.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_and_judged_only_under_their_own_key() {
        let ours = CredentialDigester::new(&[7; 32]);
        let theirs = CredentialDigester::new(&[8; 32]);
        let (a, b) = (ours.digest("kg_a"), ours.digest("kg_b"));
        assert_ne!(a, b);
        assert_ne!(a, theirs.digest("kg_a"), "another key, another digest");
        let stored = ours.verified(a);
        assert_eq!(ours.judge(Some(&stored), &a), Recognition::Holder);
        assert_eq!(ours.judge(Some(&stored), &b), Recognition::Wrong);
        assert_eq!(ours.judge(None, &a), Recognition::Unknown);
        assert_eq!(theirs.judge(Some(&stored), &theirs.digest("kg_a")), Recognition::Unknown);
        assert_eq!(VerifiedDigest::from_hex(&stored.to_hex()), Some(stored));
        assert_eq!(VerifiedDigest::from_hex("zz"), None);
    }
}
