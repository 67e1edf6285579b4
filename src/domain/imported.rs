//! Keys imported from another system: their hashes, and how a credential keygate did not
//! issue (no `kg_` prefix, no key id inside) finds its record.
//!
//! A credential is found by **lookup**, an indexed column, or by the form it was imported
//! in (`import_ref`, never changed):
//! - `keyed:<hex>`, the HMAC of the whole credential under the digest key (the key is not
//!   in the database): what every imported key is found by after its first use, so a copy
//!   of the database offers no check faster than the hash the key came with;
//! - `sha256:<hex>` of the whole credential: what a SHA-256 import brought;
//! - `sha256:<hex>` of the credential after a prefix ending in `_` (an import whose digests
//!   were made of the prefix-stripped secret, as some systems do);
//! - `start:<first characters>` (8 to 32 of them), for bcrypt and argon2 imports, whose
//!   hashes cannot be looked up by: the system they come from kept such a start to find
//!   its rows too.
//!
//! A presented credential is turned into every form it could be stored under (at most
//! [`MAX_LOOKUPS`]) and looked up once; nothing slow runs for a credential that finds no
//! row. Forms are unique per account only: several accounts' records may match one
//! credential, and each is tried (at most [`MAX_CANDIDATES`]).
//!
//! Every hash is parsed at import as its verifier will read it, so a stored hash that can
//! never verify is refused then (`invalid`, naming `hash`), and one that got in otherwise
//! is told apart at use ([`check_stored`]) and denied like a wrong secret.

use super::{from_hex, hex, CredentialKind, InvalidField, SecretHash};
use sha2::{Digest, Sha256};

/// One bcrypt round (a cost of c runs 2^c of them) costs about as much CPU as this many
/// KiB-passes of argon2id: bcrypt 8, 10 and 12 against argon2id m=19456,t=2 on one core
/// of the CI host measured 103, 134 and 128 (`bcrypt 12` = 351 ms, argon2 = 26 ms).
pub const BCRYPT_KIB_PASSES_PER_ROUND: u64 = 128;

/// What verifying `phc` costs, in KiB-passes of argon2 (memory × iterations: the memory
/// counts every lane's, and the lanes run one after another, so p adds nothing); bcrypt
/// at [`BCRYPT_KIB_PASSES_PER_ROUND`] per round. `None` for anything else.
pub fn cost(phc: &str) -> Option<u64> {
    if let Some(rest) = phc.strip_prefix("$2") {
        let rounds = rest.get(2..4)?.parse::<u32>().ok().filter(|c| *c < 32)?;
        return Some((1u64 << rounds) * BCRYPT_KIB_PASSES_PER_ROUND);
    }
    if !phc.starts_with("$argon2") {
        return None;
    }
    let parsed = argon2::password_hash::PasswordHash::new(phc).ok()?;
    let m = u64::from(parsed.params.get_decimal("m")?);
    let t = u64::from(parsed.params.get_decimal("t")?);
    Some(m.max(1) * t.max(1))
}

/// The most an imported hash may cost to verify (bcrypt 14 is about a second; argon2 at
/// 64 MiB, 10 passes, 4 lanes about as much): whoever knows a key's start can make keygate
/// verify it once per guessing budget, so the price of one guess is bounded.
pub const MAX_BCRYPT_COST: u32 = 14;
pub const MAX_ARGON2_MEMORY_KIB: u32 = 64 * 1024;
pub const MAX_ARGON2_ITERATIONS: u32 = 10;
pub const MAX_ARGON2_LANES: u32 = 4;

/// The shortest and longest `start` an import may give.
pub const MIN_START: usize = 8;
pub const MAX_START: usize = 32;
/// How many `_`-ended prefixes of a credential are tried as stripped prefixes.
const MAX_STRIPPED: usize = 4;
/// The most lookups one credential is turned into.
pub const MAX_LOOKUPS: usize = 2 + MAX_STRIPPED + (MAX_START - MIN_START + 1);
/// The most records one credential is tried against: each account's best match comes
/// before any account's second, so records other accounts imported to shadow a start take
/// this many accounts, not this many lines.
pub const MAX_CANDIDATES: usize = 8;
/// bcrypt reads only this many bytes of a credential: a longer one is never judged by a
/// bcrypt hash (its variants sharing these bytes would all pass).
pub const BCRYPT_MAX_BYTES: usize = 72;
/// What a foreign credential may look like: printable ASCII without spaces.
const MIN_CREDENTIAL: usize = MIN_START;
const MAX_CREDENTIAL: usize = 256;
const MAX_PREFIX: usize = 32;

/// The hash an import brings, as the system it comes from made it.
#[derive(Clone, PartialEq, Eq)]
pub enum ForeignHash {
    /// SHA-256 of the whole credential, or of what follows `strip_prefix`.
    Sha256 { digest: [u8; 32], strip_prefix: Option<String> },
    /// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`), found by the credential's start.
    Bcrypt { hash: String, start: String },
    /// An argon2 PHC string (argon2id, argon2i or argon2d, any parameters).
    Argon2 { hash: String, start: String },
}

impl ForeignHash {
    /// `algorithm` is `sha256`, `bcrypt` or `argon2`; `strip_prefix` only for sha256,
    /// `start` only (and always) for the others. Empty strings mean absent.
    pub fn parse(algorithm: &str, hash: &str, strip_prefix: &str, start: &str) -> Result<Self, InvalidField> {
        let needs_start = |start: &str| -> Result<String, InvalidField> {
            if !(MIN_START..=MAX_START).contains(&start.len()) || !start.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(InvalidField::new(
                    "start",
                    format!("must be the credential's first {MIN_START} to {MAX_START} characters (printable ASCII)"),
                ));
            }
            not_keygates("start", start)?;
            Ok(start.to_owned())
        };
        match algorithm {
            "sha256" => {
                if !start.is_empty() {
                    return Err(InvalidField::new("start", "is for bcrypt and argon2 hashes; sha256 needs none"));
                }
                let digest = from_hex::<32>(hash)
                    .ok_or_else(|| InvalidField::new("hash", "a sha256 hash is 64 hexadecimal digits"))?;
                let strip_prefix = match strip_prefix {
                    "" => None,
                    prefix
                        if prefix.len() <= MAX_PREFIX
                            && prefix.ends_with('_')
                            && prefix.matches('_').count() <= MAX_STRIPPED
                            && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                    {
                        not_keygates("strip_prefix", prefix)?;
                        Some(prefix.to_owned())
                    }
                    _ => {
                        return Err(InvalidField::new(
                            "strip_prefix",
                            format!(
                                "must end with '_', be at most {MAX_PREFIX} letters, digits, '_' or '-', \
                                 with at most {MAX_STRIPPED} '_'"
                            ),
                        ))
                    }
                };
                Ok(ForeignHash::Sha256 { digest, strip_prefix })
            }
            "bcrypt" => {
                check_bcrypt(hash, MAX_BCRYPT_COST)?;
                no_prefix(strip_prefix)?;
                Ok(ForeignHash::Bcrypt { hash: hash.to_owned(), start: needs_start(start)? })
            }
            "argon2" => {
                check_argon2(hash, true)?;
                no_prefix(strip_prefix)?;
                Ok(ForeignHash::Argon2 { hash: hash.to_owned(), start: needs_start(start)? })
            }
            other => Err(InvalidField::new(
                "algorithm",
                format!("unknown algorithm {other:?}; the algorithms are sha256, bcrypt, argon2"),
            )),
        }
    }

    /// Refuses a bcrypt or argon2 hash that costs more to verify than `max` (KiB-passes,
    /// [`cost`]: the server's own cost times
    /// the verifier's `IMPORT_COST_MULTIPLE`). Whoever knows a key's start can
    /// make keygate verify it once per guess; the price of a guess is the server's own
    /// times a known multiple, not whatever the other system chose.
    pub fn check_cost(&self, max: u64) -> Result<(), InvalidField> {
        let (ForeignHash::Bcrypt { hash, .. } | ForeignHash::Argon2 { hash, .. }) = self else { return Ok(()) };
        let cost = cost(hash).unwrap_or(u64::MAX);
        if cost <= max {
            return Ok(());
        }
        let per_round = BCRYPT_KIB_PASSES_PER_ROUND;
        // The largest bcrypt cost within `max`, to say what would be taken.
        let bcrypt = (4..=31u32).rev().find(|c| (1u64 << c) * per_round <= max).unwrap_or(4);
        Err(InvalidField::new(
            "hash",
            format!(
                "costs more to verify than this server allows for imports: at most bcrypt cost {bcrypt}, \
                 or argon2 with m × t at most {max} (m in KiB)"
            ),
        ))
    }

    pub const fn algorithm(&self) -> &'static str {
        match self {
            ForeignHash::Sha256 { .. } => "sha256",
            ForeignHash::Bcrypt { .. } => "bcrypt",
            ForeignHash::Argon2 { .. } => "argon2",
        }
    }

    /// How the record is found before its first use (see the module's notes).
    pub fn lookup(&self) -> String {
        match self {
            ForeignHash::Sha256 { digest, .. } => sha256_lookup(digest),
            ForeignHash::Bcrypt { start, .. } | ForeignHash::Argon2 { start, .. } => format!("start:{start}"),
        }
    }

    /// What the record's `secret_hash` holds until the first use replaces it with
    /// keygate's own: the foreign hash, with SHA-256 written as `$sha256$[p=<prefix>$]<hex>`.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::new(match self {
            ForeignHash::Sha256 { digest, strip_prefix: None } => format!("{SHA256_SCHEME}{}", hex(digest)),
            ForeignHash::Sha256 { digest, strip_prefix: Some(prefix) } => {
                format!("{SHA256_SCHEME}p={prefix}${}", hex(digest))
            }
            ForeignHash::Bcrypt { hash, .. } | ForeignHash::Argon2 { hash, .. } => hash.clone(),
        })
    }
}

/// Never printed: a hash of a credential says nothing, but logs have no use for it.
impl std::fmt::Debug for ForeignHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForeignHash({}, <redacted>)", self.algorithm())
    }
}

fn no_prefix(strip_prefix: &str) -> Result<(), InvalidField> {
    if strip_prefix.is_empty() {
        Ok(())
    } else {
        Err(InvalidField::new("strip_prefix", "is for sha256 hashes only"))
    }
}

/// keygate's own credentials (`kg_`, `kgr_`, `kgs_`) are read as keygate's: an import of
/// one could never be found.
fn not_keygates(field: &'static str, text: &str) -> Result<(), InvalidField> {
    match CredentialKind::of(text) {
        Some(kind) => Err(InvalidField::new(
            field,
            format!("begins with keygate's own prefix {:?}: such a credential cannot be imported", kind.prefix()),
        )),
        None => Ok(()),
    }
}

/// A bcrypt hash as the verifier reads it: `$2a$`, `$2b$` or `$2y$`, a two-digit cost from
/// 4 to `max_cost`, and 53 characters of bcrypt's base64 (a 16-byte salt, a 23-byte digest,
/// unused bits zero).
fn check_bcrypt(hash: &str, max_cost: u32) -> Result<(), InvalidField> {
    let known = ["$2a$", "$2b$", "$2y$"].iter().any(|v| hash.starts_with(v));
    if !known || hash.len() != 60 || !hash.is_ascii() || hash.as_bytes()[6] != b'$' {
        return Err(InvalidField::new("hash", "a bcrypt hash is 60 characters starting $2a$, $2b$ or $2y$"));
    }
    // Anyone who knows a start can make keygate verify once: the cost is bounded.
    match hash.get(4..6).filter(|c| c.bytes().all(|b| b.is_ascii_digit())).and_then(|c| c.parse::<u32>().ok()) {
        Some(cost) if (4..=max_cost).contains(&cost) => {}
        _ => return Err(InvalidField::new("hash", format!("a bcrypt cost must be 4 to {max_cost}"))),
    }
    use base64::Engine;
    let decodes = |part: &str, len: usize| bcrypt::BASE_64.decode(part).is_ok_and(|bytes| bytes.len() == len);
    if !decodes(&hash[7..29], 16) || !decodes(&hash[29..], 23) {
        return Err(InvalidField::new(
            "hash",
            "a bcrypt salt and digest are 22 and 31 characters of ./A-Za-z0-9 (the last of each with its unused bits zero)",
        ));
    }
    Ok(())
}

/// An argon2 PHC string as the verifier reads it: a known variant and version; m, t and p
/// given, within argon2's lower bounds (t ≥ 1, p ≥ 1, m ≥ 8 × p) and, when `capped`, the
/// import caps; a salt of 8 to 48 bytes and a digest, in base64.
fn check_argon2(hash: &str, capped: bool) -> Result<(), InvalidField> {
    use argon2::password_hash::PasswordHash;
    let phc = || InvalidField::new("hash", "an argon2 hash is a PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash)");
    let known = ["$argon2id$", "$argon2i$", "$argon2d$"].iter().any(|v| hash.starts_with(v));
    let parsed = PasswordHash::new(hash).ok().filter(|_| known).ok_or_else(phc)?;
    argon2::Algorithm::try_from(parsed.algorithm).map_err(|_| phc())?;
    if let Some(version) = parsed.version {
        argon2::Version::try_from(version)
            .map_err(|_| InvalidField::new("hash", "an argon2 version is v=16 or v=19"))?;
    }
    let param = |name: &str| parsed.params.get_decimal(name);
    let (Some(m), Some(t), Some(p)) = (param("m"), param("t"), param("p")) else {
        return Err(InvalidField::new("hash", "an argon2 hash gives m, t and p"));
    };
    if capped && (m > MAX_ARGON2_MEMORY_KIB || t > MAX_ARGON2_ITERATIONS || p > MAX_ARGON2_LANES) {
        return Err(InvalidField::new(
            "hash",
            format!(
                "argon2 parameters must be at most m={MAX_ARGON2_MEMORY_KIB}, t={MAX_ARGON2_ITERATIONS}, \
                 p={MAX_ARGON2_LANES}"
            ),
        ));
    }
    if argon2::Params::try_from(&parsed).is_err() {
        return Err(InvalidField::new("hash", "argon2 parameters must be t ≥ 1, p ≥ 1 and m ≥ 8 × p (KiB)"));
    }
    let mut salt = [0u8; 64];
    let salt_len = match parsed.salt {
        Some(given) => given.decode_b64(&mut salt).map_or(0, <[u8]>::len),
        None => 0,
    };
    if !(argon2::MIN_SALT_LEN..=48).contains(&salt_len) || parsed.hash.is_none() {
        return Err(InvalidField::new("hash", "an argon2 salt is 8 to 48 bytes (base64), and a digest follows it"));
    }
    Ok(())
}

/// Whether a stored imported hash can be verified at all (one written before hashes were
/// checked at import, or by hand, may not): its scheme's shape, without the import caps.
pub fn check_stored(phc: &str) -> Result<(), InvalidField> {
    if phc.starts_with("$2") {
        check_bcrypt(phc, 31)
    } else if phc.starts_with("$argon2") {
        check_argon2(phc, false)
    } else if phc.starts_with(SHA256_SCHEME) {
        Ok(())
    } else {
        Err(InvalidField::new("hash", "an unknown scheme"))
    }
}

/// A credential bcrypt would judge by its first [`BCRYPT_MAX_BYTES`] only.
pub fn beyond_bcrypt(raw: &str, phc: &str) -> bool {
    phc.starts_with("$2") && raw.len() > BCRYPT_MAX_BYTES
}

const SHA256_SCHEME: &str = "$sha256$";

/// Checks `credential` against a stored `$sha256$` hash, constant-time; `None` if the
/// hash is of another scheme (a slow one, for the verifier).
pub fn verify_sha256(credential: &str, hash: &SecretHash) -> Option<bool> {
    let rest = hash.expose_phc().strip_prefix(SHA256_SCHEME)?;
    let (prefix, digest) = match rest.strip_prefix("p=") {
        Some(with_prefix) => with_prefix.split_once('$')?,
        None => ("", rest),
    };
    let Some(expected) = from_hex::<32>(digest) else { return Some(false) };
    let Some(secret) = credential.strip_prefix(prefix) else { return Some(false) };
    let actual: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    Some(bool::from(subtle::ConstantTimeEq::ct_eq(&actual[..], &expected[..])))
}

/// Whether `raw` could be a credential from another system: 8 to 256 printable ASCII
/// characters. Anything else is refused without a lookup.
pub fn plausible(raw: &str) -> bool {
    (MIN_CREDENTIAL..=MAX_CREDENTIAL).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic())
}

/// SHA-256 of the whole credential: how a SHA-256 import of it is found.
pub fn whole_digest(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

pub fn sha256_lookup(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex(digest))
}

/// What an imported key is found by once it has been used: the credential's keyed digest
/// (HMAC under the digest key), which a copy of the database cannot compute.
pub fn keyed_lookup(keyed: &[u8; 32]) -> String {
    format!("keyed:{}", hex(keyed))
}

/// Every lookup a plausible credential may be stored under, most specific first: its
/// keyed digest, the whole credential's SHA-256, the SHA-256s after each of its first
/// `_`-ended prefixes, and its starts, longest first.
pub fn lookups(raw: &str, keyed: &[u8; 32]) -> Vec<String> {
    let mut out = Vec::with_capacity(MAX_LOOKUPS);
    out.push(keyed_lookup(keyed));
    out.push(sha256_lookup(&whole_digest(raw)));
    let cuts = raw.char_indices().filter(|(_, c)| *c == '_').map(|(i, _)| i + 1).filter(|&i| i <= MAX_PREFIX);
    for cut in cuts.take(MAX_STRIPPED).filter(|&cut| cut < raw.len()) {
        out.push(sha256_lookup(&Sha256::digest(&raw.as_bytes()[cut..]).into()));
    }
    for len in (MIN_START..=MAX_START.min(raw.len().saturating_sub(1))).rev() {
        out.push(format!("start:{}", &raw[..len]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(text: &str) -> String {
        hex(&Sha256::digest(text.as_bytes()))
    }

    #[test]
    fn a_stripped_sha256_import_is_found_and_checks_its_prefix() {
        let credential = "sk_live_abcdefghijklmnop";
        let hash = ForeignHash::parse("sha256", &sha256_hex("abcdefghijklmnop"), "sk_live_", "").unwrap();
        let found = lookups(credential, &[7; 32]);
        assert!(found.contains(&hash.lookup()), "{found:?}");
        assert_eq!(verify_sha256(credential, &hash.secret_hash()), Some(true));
        // The same secret under another prefix strips to the same digest, and is refused.
        assert_eq!(verify_sha256("xx_abcdefghijklmnop", &hash.secret_hash()), Some(false));
        assert_eq!(verify_sha256("sk_live_abcdefghijklmnoq", &hash.secret_hash()), Some(false));
    }

    #[test]
    fn the_keyed_digest_then_a_whole_sha256_import_are_the_first_lookups() {
        let credential = "ghp_0123456789";
        let hash = ForeignHash::parse("sha256", &sha256_hex(credential), "", "").unwrap();
        let found = lookups(credential, &[7; 32]);
        assert_eq!(found[0], keyed_lookup(&[7; 32]));
        assert_eq!(found[1], hash.lookup());
        assert_eq!(verify_sha256(credential, &hash.secret_hash()), Some(true));
        assert_eq!(verify_sha256(credential, &SecretHash::new("$2b$04$x".into())), None);
    }

    #[test]
    fn starts_are_tried_from_eight_to_thirty_two_characters() {
        let credential = "uk_".to_owned() + &"a".repeat(60);
        let found = lookups(&credential, &[7; 32]);
        assert!(found.len() <= MAX_LOOKUPS);
        assert!(found.contains(&format!("start:{}", &credential[..8])));
        assert!(found.contains(&format!("start:{}", &credential[..32])));
        assert!(!found.contains(&format!("start:{}", &credential[..33])));
        // A start is never the whole credential: that would be the secret in clear.
        let short = "ab_cdefghij";
        assert!(!lookups(short, &[7; 32]).contains(&format!("start:{short}")));
    }

    #[test]
    fn bad_imports_name_their_field() {
        assert_eq!(ForeignHash::parse("md5", "x", "", "").unwrap_err().field, "algorithm");
        assert_eq!(ForeignHash::parse("sha256", "xyz", "", "").unwrap_err().field, "hash");
        assert_eq!(ForeignHash::parse("sha256", &"a".repeat(64), "sk", "").unwrap_err().field, "strip_prefix");
        let bcrypt = format!("$2b$04${}", ".".repeat(53));
        assert_eq!(ForeignHash::parse("bcrypt", &bcrypt, "", "short").unwrap_err().field, "start");
        assert!(ForeignHash::parse("bcrypt", &bcrypt, "", "ghp_abcdefgh").is_ok());
        let costly = format!("$2b$31${}", ".".repeat(53));
        assert_eq!(ForeignHash::parse("bcrypt", &costly, "", "ghp_abcdefgh").unwrap_err().field, "hash");
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert_eq!(ForeignHash::parse("argon2", huge, "", "uk_abcdefgh").unwrap_err().field, "hash");
        assert_eq!(ForeignHash::parse("argon2", "$argon2id$nonsense", "", "uk_abcdefgh").unwrap_err().field, "hash");
        assert!(!format!("{:?}", ForeignHash::parse("bcrypt", &bcrypt, "", "ghp_abcdefgh").unwrap()).contains("$2b$"));
    }

    #[test]
    fn hashes_that_could_never_verify_are_refused_naming_hash() {
        let start = "ghp_abcdefgh";
        let good = "$2b$04$C5SAXS3gdahugr4rw4.hpeZhU4m9r25PPFJQOXb3wlEACnsmYQkoq";
        assert!(ForeignHash::parse("bcrypt", good, "", start).is_ok());
        assert!(check_stored(good).is_ok());
        for bad in [
            good.replace("C5SA", "C5S!"), // outside the alphabet
            format!("{}r", &good[..59]),  // the digest's unused bits set
            good.replace("$04$", "$4$$"), // not a two-digit cost
            good.replace("$04$", "$03$"), // below bcrypt's lowest cost
        ] {
            assert_eq!(ForeignHash::parse("bcrypt", &bad, "", start).unwrap_err().field, "hash", "{bad}");
            assert!(check_stored(&bad).is_err(), "{bad}");
        }
        let argon2 =
            |params: &str, salt: &str| format!("$argon2id$v=19${params}${salt}$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA");
        assert!(ForeignHash::parse("argon2", &argon2("m=64,t=1,p=1", "c2FsdHNhbHQ"), "", start).is_ok());
        for bad in [
            argon2("m=64,t=0,p=1", "c2FsdHNhbHQ"),
            argon2("m=64,t=1,p=0", "c2FsdHNhbHQ"),
            argon2("m=1,t=1,p=1", "c2FsdHNhbHQ"),
            argon2("m=64,t=1", "c2FsdHNhbHQ"),
            argon2("m=64,t=1,p=1", "c2FsdA"),
            argon2("m=64,t=1,p=1", "c2Fs*HNhbHQ"),
            "$argon2id$v=18$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA".to_owned(),
        ] {
            assert_eq!(ForeignHash::parse("argon2", &bad, "", start).unwrap_err().field, "hash", "{bad}");
        }
        assert!(check_stored("$unknown$").is_err());
    }

    #[test]
    fn keygates_own_prefixes_are_refused_and_bcrypt_is_not_asked_past_72_bytes() {
        let bcrypt = "$2b$04$C5SAXS3gdahugr4rw4.hpeZhU4m9r25PPFJQOXb3wlEACnsmYQkoq";
        for start in ["kg_abcdefgh", "kgr_abcdefg", "kgs_abcdefg"] {
            assert_eq!(ForeignHash::parse("bcrypt", bcrypt, "", start).unwrap_err().field, "start");
        }
        assert_eq!(ForeignHash::parse("sha256", &"a".repeat(64), "kg_", "").unwrap_err().field, "strip_prefix");
        assert!(beyond_bcrypt(&"x".repeat(73), bcrypt));
        assert!(!beyond_bcrypt(&"x".repeat(72), bcrypt));
        assert!(!beyond_bcrypt(&"x".repeat(100), "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA"));
    }

    #[test]
    fn a_lookup_never_prints() {
        let lookup = crate::domain::Lookup::new("start:ghp_z6Dh4OHJ".into());
        assert!(!format!("{lookup:?}").contains("ghp_"));
        assert_eq!(&*lookup, "start:ghp_z6Dh4OHJ");
    }

    #[test]
    fn only_plausible_credentials_are_looked_up() {
        assert!(plausible("sk_live_123"));
        assert!(!plausible("short"));
        assert!(!plausible("has a space in it"));
        assert!(!plausible(&"x".repeat(300)));
    }
}
