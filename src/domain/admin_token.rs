//! Admin tokens: named credentials for the admin API, each with a role, an optional
//! account it is confined to, and an optional expiry. Kept only as SHA-256 digests (a
//! token is 256 random bits: nothing to guess, so no slow hash is needed).
//!
//! What a role may do is decided here, from the RPC's need and the call's account, with
//! no store: the gRPC layer says what an RPC needs, the store says who the token is.

use super::{AccountId, InvalidField, Timestamp};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// Everything, admin tokens included.
    Admin,
    /// Reads: get and list applications, keys, sessions, owners, audit events.
    ReadOnly,
    /// Reads, and creating, changing, revoking, rolling, deleting and importing API keys.
    KeysWrite,
}

impl AdminRole {
    pub const ALL: [AdminRole; 3] = [AdminRole::Admin, AdminRole::ReadOnly, AdminRole::KeysWrite];

    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or_else(|| InvalidField::new("role", "must be admin, read_only or keys_write"))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::ReadOnly => "read_only",
            AdminRole::KeysWrite => "keys_write",
        }
    }

    pub fn may(self, need: AdminNeed) -> bool {
        matches!(
            (self, need),
            (AdminRole::Admin, _)
                | (AdminRole::KeysWrite, AdminNeed::Read | AdminNeed::KeysWrite)
                | (AdminRole::ReadOnly, AdminNeed::Read)
        )
    }
}

/// What an admin RPC needs of its caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminNeed {
    Read,
    KeysWrite,
    Admin,
}

/// A token's name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or a digit. Unique
/// for all time, so the audit trail's `token:<name>` names one token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdminTokenName(String);

impl AdminTokenName {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let ok_start = raw.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_rest = raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !(1..=64).contains(&raw.len()) || !ok_start || !ok_rest {
            return Err(InvalidField::new(
                "name",
                "must be 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or a digit",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An admin token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    pub name: AdminTokenName,
    pub role: AdminRole,
    /// Confined to this account's keys and records.
    pub account_id: Option<AccountId>,
    pub digest: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// The credential that created it, as the audit trail names credentials.
    pub created_by: String,
    pub revoked_by: Option<String>,
}

impl AdminTokenRecord {
    /// Usable at `now`: neither revoked nor expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }

    /// What a call made with it may do.
    pub fn grant(&self) -> AdminGrant {
        AdminGrant {
            credential: format!("token:{}", self.name.as_str()),
            role: self.role,
            account: self.account_id.clone(),
        }
    }
}

/// Who made an admin call and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminGrant {
    /// As the audit trail names it: `token:<name>`, or `admin:<8 hex>` for the bootstrap token.
    pub credential: String,
    pub role: AdminRole,
    pub account: Option<AccountId>,
}

impl AdminGrant {
    /// May it call an RPC that needs `need`?
    pub fn may(&self, need: AdminNeed) -> bool {
        self.role.may(need)
    }

    /// May it act on `account`'s records? (Only a token confined to another account may not.)
    pub fn covers(&self, account: &AccountId) -> bool {
        self.account.as_ref().is_none_or(|own| own == account)
    }
}

/// The prefix of every admin token keygate makes (the bootstrap token file's is `kgadm_`).
pub const ADMIN_TOKEN_PREFIX: &str = "kgat_";

/// After the prefix: random base62 characters, then a tag of hex digits that a keyed
/// digest of them gives (43 in all).
const ADMIN_TOKEN_RANDOM_LEN: usize = 31;
const ADMIN_TOKEN_TAG_BYTES: usize = 6;

/// A new token, shown once at creation. `sign` is the server's keyed digest (the digest
/// key's HMAC): a token carries a tag of it, so one that keygate did not make is refused
/// without a store read.
pub fn new_admin_token(sign: impl Fn(&str) -> [u8; 32]) -> Result<String, getrandom::Error> {
    let random = super::random_token(ADMIN_TOKEN_RANDOM_LEN)?;
    let tag = super::hex(&sign(&random)[..ADMIN_TOKEN_TAG_BYTES]);
    Ok(format!("{ADMIN_TOKEN_PREFIX}{random}{tag}"))
}

/// Did keygate (a replica with the same digest key) make `token`? Only such tokens are
/// looked up in the store: made-up ones, however many, cost no query.
pub fn is_admin_token_signed(token: &str, sign: impl Fn(&str) -> [u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(rest) = token.strip_prefix(ADMIN_TOKEN_PREFIX) else { return false };
    if rest.len() != ADMIN_TOKEN_RANDOM_LEN + 2 * ADMIN_TOKEN_TAG_BYTES || !rest.is_ascii() {
        return false;
    }
    let (random, tag) = rest.split_at(ADMIN_TOKEN_RANDOM_LEN);
    let expected = super::hex(&sign(random)[..ADMIN_TOKEN_TAG_BYTES]);
    random.bytes().all(|b| b.is_ascii_alphanumeric()) && bool::from(expected.as_bytes().ct_eq(tag.as_bytes()))
}

/// The digest a token is kept and found by.
pub fn admin_token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_may_what_it_says() {
        let needs = [AdminNeed::Read, AdminNeed::KeysWrite, AdminNeed::Admin];
        let table = [
            (AdminRole::Admin, [true, true, true]),
            (AdminRole::KeysWrite, [true, true, false]),
            (AdminRole::ReadOnly, [true, false, false]),
        ];
        for (role, allowed) in table {
            for (need, expected) in needs.into_iter().zip(allowed) {
                assert_eq!(role.may(need), expected, "{role:?} {need:?}");
            }
            assert_eq!(AdminRole::parse(role.as_str()), Ok(role));
        }
        assert!(AdminRole::parse("root").is_err());
        assert!(AdminRole::parse("Admin").is_err());
    }

    #[test]
    fn a_confined_token_covers_its_account_only() {
        let acct = |s: &str| AccountId::parse(s).unwrap();
        let grant = AdminGrant { credential: "token:ci".into(), role: AdminRole::KeysWrite, account: Some(acct("a1")) };
        assert!(grant.covers(&acct("a1")));
        assert!(!grant.covers(&acct("a2")));
        let everywhere = AdminGrant { account: None, ..grant };
        assert!(everywhere.covers(&acct("a2")));
    }

    #[test]
    fn names_and_liveness() {
        for good in ["ci", "dash-board.v2", "0day_tool"] {
            assert!(AdminTokenName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "CI", "-x", "a b", "a/b", "token:x", &"x".repeat(65)] {
            assert!(AdminTokenName::parse(bad).is_err(), "{bad}");
        }
        let at = Timestamp::from_millis;
        let record = AdminTokenRecord {
            name: AdminTokenName::parse("ci").unwrap(),
            role: AdminRole::ReadOnly,
            account_id: None,
            digest: admin_token_digest("kgat_x"),
            created_at: at(0),
            expires_at: Some(at(1_000)),
            revoked_at: None,
            created_by: "admin:00000000".into(),
            revoked_by: None,
        };
        let sign = |s: &str| -> [u8; 32] { Sha256::digest(format!("key:{s}")).into() };
        let other_key = |s: &str| -> [u8; 32] { Sha256::digest(format!("other:{s}")).into() };
        let made = new_admin_token(sign).unwrap();
        assert_eq!(made.len(), ADMIN_TOKEN_PREFIX.len() + 43);
        assert!(is_admin_token_signed(&made, sign));
        assert!(!is_admin_token_signed(&made, other_key), "another deployment's key");
        let mut forged = made.clone();
        forged.replace_range(10..11, if &made[10..11] == "A" { "B" } else { "A" });
        assert!(!is_admin_token_signed(&forged, sign), "a changed random part");
        for other in ["kgat_short", "kgadm_0123456789012345678901234567890123456789012", "kgat_!", &made[1..]] {
            assert!(!is_admin_token_signed(other, sign), "{other}");
        }
        assert!(record.is_live(at(999)));
        assert!(!record.is_live(at(1_000)), "expires at its expiry");
        let revoked = AdminTokenRecord { revoked_at: Some(at(5)), expires_at: None, ..record };
        assert!(!revoked.is_live(at(6)));
        assert_eq!(revoked.grant().credential, "token:ci");
    }
}
