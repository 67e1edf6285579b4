//! A decision's outcome as a slot of a fixed array: allowed, or one of the (code, reason)
//! pairs a decision can end in. Resolved by a table lookup, so counting hashes no string.

use crate::code::{Code, Reason};
use crate::domain::Deny;

/// Slot 0 is `allowed` (reason empty); then every (code, reason) pair, by its strings.
pub const OUTCOMES: [(&str, &str); 21] = {
    let mut out = [("allowed", ""); 21];
    let mut i = 0;
    while i < DENIES.len() {
        out[i + 1] = (DENIES[i].0.as_str(), DENIES[i].1.as_str());
        i += 1;
    }
    out
};

/// Every (code, reason) a decision can end in. A pair not listed (a reason given a code
/// it is not made with) is counted under its code's own reason, which is listed for each.
const DENIES: [(Code, Reason); 20] = [
    (Code::ValidationError, Reason::InvalidRequest),
    (Code::BadRequest, Reason::InvalidRequest),
    (Code::Unauth, Reason::SessionInvalid),
    (Code::ApiKeyInvalid, Reason::InvalidCredential),
    (Code::ApiKeyExpired, Reason::Expired),
    (Code::ApiKeyRevoked, Reason::Revoked),
    (Code::ApiKeyRevoked, Reason::Rolled),
    (Code::ApiKeyRevoked, Reason::Disabled),
    (Code::InsufficientScope, Reason::InsufficientScope),
    (Code::ApplicationForbidden, Reason::ApplicationNotAllowed),
    (Code::ApplicationForbidden, Reason::IpNotAllowed),
    (Code::SessionRequired, Reason::SessionRequired),
    (Code::NotFound, Reason::ApplicationNotFound),
    (Code::NotFound, Reason::NoRoute),
    (Code::RateLimitReached, Reason::RateLimited),
    (Code::RateLimitReached, Reason::KeyRateLimited),
    (Code::RateLimitReached, Reason::OwnerRateLimited),
    (Code::RateLimitReached, Reason::CreditsExhausted),
    (Code::RateLimitReached, Reason::Throttled),
    (Code::InternalError, Reason::Internal),
];

const fn position(code: Code, reason: Reason) -> Option<usize> {
    let mut i = 0;
    while i < DENIES.len() {
        if DENIES[i].0 as usize == code as usize && DENIES[i].1 as usize == reason as usize {
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// The slot of every (code, reason), by their discriminants.
const SLOTS: [[u8; Reason::ALL.len()]; Code::ALL.len()] = {
    let mut table = [[0u8; Reason::ALL.len()]; Code::ALL.len()];
    let mut c = 0;
    while c < Code::ALL.len() {
        let code = Code::ALL[c];
        let fallback = match position(code, Reason::of(code)) {
            Some(slot) => slot,
            None => panic!("every code's own reason has a slot"),
        };
        let mut r = 0;
        while r < Reason::ALL.len() {
            table[c][r] = match position(code, Reason::ALL[r]) {
                Some(slot) => slot as u8,
                None => fallback as u8,
            };
            r += 1;
        }
        c += 1;
    }
    table
};

/// The slot of a decision: 0 when allowed.
pub fn outcome_of(deny: Option<&Deny>) -> usize {
    match deny {
        None => 0,
        // A fieldless enum's discriminant is its position in its `ALL`.
        Some(deny) => usize::from(SLOTS[deny.code as usize][deny.reason as usize]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_has_a_slot_named_by_its_strings() {
        for (position, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, position, "{reason:?}");
        }
        assert_eq!(OUTCOMES[outcome_of(None)], ("allowed", ""));
        let rolled = Deny::of(Code::ApiKeyRevoked).because(Reason::Rolled);
        assert_eq!(OUTCOMES[outcome_of(Some(&rolled))], ("api_key_revoked", "rolled"));
        let owner = Deny::of(Code::RateLimitReached).because(Reason::OwnerRateLimited);
        assert_eq!(OUTCOMES[outcome_of(Some(&owner))], ("rate_limit_reached", "owner_rate_limited"));
        for code in Code::ALL {
            assert_eq!(OUTCOMES[outcome_of(Some(&Deny::of(code)))], (code.as_str(), Reason::of(code).as_str()));
            // An unlisted pair falls back to the code's own reason, never to another code.
            let odd = Deny::of(code).because(Reason::Throttled);
            assert_eq!(OUTCOMES[outcome_of(Some(&odd))].0, code.as_str());
        }
        let mut names: Vec<_> = OUTCOMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OUTCOMES.len(), "each slot is a distinct outcome");
    }
}
