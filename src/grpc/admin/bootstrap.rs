//! The bootstrap admin token: kept as its digest, compared in constant time, named in the
//! audit trail without a fingerprint to test guesses against, and warned about when weak.

use crate::authn::digest::CredentialDigester;
use crate::domain::{admin_token_digest, hex};
use subtle::ConstantTimeEq;

/// The bootstrap token, kept only as its SHA-256 digest and compared in constant time,
/// and how the audit trail names it.
#[derive(Clone)]
pub struct BootstrapToken {
    digest: [u8; 32],
    /// `admin:` and 8 hex digits of the token's keyed digest (the one credentials get,
    /// under the digest key): tells bootstrap tokens apart in the trail, which read-only
    /// tokens may read, without giving anyone a fingerprint to test guesses of a chosen
    /// token against offline.
    pub(super) credential: String,
}

impl BootstrapToken {
    pub fn new(token: &str, digester: &CredentialDigester) -> Self {
        let bits = entropy_bits(token);
        if bits < MIN_BOOTSTRAP_BITS {
            // Said at every start: guessing it is bounded per source, not impossible.
            tracing::warn!(
                estimated_bits = bits.round() as u64,
                "the bootstrap admin token has less than {MIN_BOOTSTRAP_BITS} bits of entropy (estimated from its \
                 length and the kinds of characters it uses): give KEYGATE_ADMIN_TOKEN at least 22 random \
                 letters and digits, or let keygate make one (delete the admin-token file)"
            );
        }
        let keyed = digester.digest(token);
        Self { digest: admin_token_digest(token), credential: format!("admin:{}", hex(&keyed[..4])) }
    }

    /// Whether a presented token, by its SHA-256, is this one (in constant time).
    pub(super) fn accepts(&self, digest: &[u8; 32]) -> bool {
        self.digest.ct_eq(digest).into()
    }
}

/// Entropy below which `serve` warns about the bootstrap token.
pub const MIN_BOOTSTRAP_BITS: f64 = 128.0;

/// An upper estimate of a token's entropy: its length times log2 of the alphabet its kinds
/// of characters span (lowercase 26, uppercase 26, digits 10, anything else 33; hex digits
/// alone 16). keygate's own prefix (`kgadm_`) is no secret and not counted. An upper
/// bound: a dictionary word scores like random letters, so a warning is certain and its
/// absence is not proof.
pub fn entropy_bits(token: &str) -> f64 {
    let secret = token.strip_prefix("kgadm_").unwrap_or(token);
    let has = |f: fn(&char) -> bool| secret.chars().any(|c| f(&c));
    let hex_only = secret.chars().all(|c| c.is_ascii_hexdigit());
    let alphabet = if hex_only {
        16
    } else {
        [
            (has(char::is_ascii_lowercase), 26),
            (has(char::is_ascii_uppercase), 26),
            (has(char::is_ascii_digit), 10),
            (has(|c| !c.is_ascii_alphanumeric()), 33),
        ]
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, size)| size)
        .sum()
    };
    match alphabet {
        0 | 1 => 0.0,
        n => secret.chars().count() as f64 * f64::from(n).log2(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the start-up warning about a weak bootstrap token (issue 27, item 5).
    #[test]
    fn bootstrap_token_entropy_is_estimated_from_length_and_alphabet() {
        // 16 lowercase letters and digits: the shortest token accepted, 83 bits.
        assert!(entropy_bits("abcdefgh12345678") < MIN_BOOTSTRAP_BITS);
        assert!((entropy_bits("abcdefgh12345678") - 16.0 * 36f64.log2()).abs() < 1e-9);
        // 32 hex digits: 128 bits exactly, no warning; 31 are short of it.
        assert_eq!(entropy_bits(&"a1".repeat(16)), 128.0);
        assert!(entropy_bits(&"a".repeat(31)) < MIN_BOOTSTRAP_BITS);
        // What keygate generates: kgadm_ and 43 random letters and digits (~256 bits).
        let generated = format!("kgadm_{}", crate::domain::random_token(43).unwrap());
        assert!(entropy_bits(&generated) >= MIN_BOOTSTRAP_BITS, "{generated}");
        assert_eq!(entropy_bits(""), 0.0);
    }
}
