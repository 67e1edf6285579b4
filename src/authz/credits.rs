//! The last stage of a decision: the call's credits, spent from the key's (or its
//! owner's) balance in the store, after every other rule has let the call through.

use super::decision::Deny;
use super::{AuthorizeQuery, Authorizer, AuthzError, RateLimitState, Verdict};
use crate::code::{Code, Reason};
use crate::domain::{CreditBalance, KeyRecord, Refill, Timestamp};
use crate::policy::Route;
use crate::store::Spend;
use std::sync::Arc;
use std::time::Duration;

impl Authorizer {
    /// Credits last: a call that any other rule refuses spends none.
    pub(super) async fn spend_credits_of(
        &self,
        key: Option<Arc<KeyRecord>>,
        query: &AuthorizeQuery<'_>,
        route: &Route,
        now: Timestamp,
        verdict: Verdict,
    ) -> Result<Verdict, AuthzError> {
        match key {
            Some(key) if key.credit_holder().is_some() => match i64::from(query.cost.unwrap_or(route.cost)) {
                // A free route spends nothing and asks the store nothing.
                0 => Ok(verdict),
                cost => self.spend(&key, cost, now, verdict).await,
            },
            _ => Ok(verdict),
        }
    }

    /// Spends the call's cost from the key's credits, in the store (atomic across
    /// replicas); a key whose credits are spent is refused until they are refilled.
    async fn spend(
        &self,
        key: &KeyRecord,
        cost: i64,
        now: Timestamp,
        mut verdict: Verdict,
    ) -> Result<Verdict, AuthzError> {
        let Some((holder, refill)) = key.credit_holder() else { return Ok(verdict) };
        let known_empty =
            self.spent_out.get(&key.id).filter(|seen| seen.version == key.version && now < seen.ask_again_at);
        // What is left, in the refill period it stands in.
        let balance = match known_empty {
            Some(seen) => CreditBalance { remaining: 0, period: seen.period },
            None => match self.store.spend_credits(&holder, cost, refill, now).await? {
                Spend::Spent(balance) => {
                    verdict.credits_remaining = Some(balance.remaining);
                    return Ok(verdict);
                }
                // The record said credits, the store has none (or under another rule): the
                // record is stale. The call is decided again on the record reloaded, never
                // spending nothing on one it has not read.
                Spend::Unmetered | Spend::RuleChanged => return Err(AuthzError::StaleCredits(key.id)),
                Spend::Exhausted(balance) => {
                    // Nothing at all left: no call can pass before the next refill (or a change).
                    if balance.remaining == 0 {
                        let refilled_at = refill.map_or(Timestamp::from_millis(i64::MAX), |refill| {
                            refill.next_period_starts(refill.period(now).max(balance.period))
                        });
                        let ask_again_at = refilled_at.min(now.saturating_add(SPENT_OUT_RECHECK));
                        let seen = SpentOut { version: key.version, ask_again_at, period: balance.period };
                        self.spent_out.insert(key.id, seen);
                    }
                    balance
                }
            },
        };
        Ok(verdict.exhausted(cost, balance, refill.copied(), now))
    }
}

impl Verdict {
    /// The answer to a call of `cost` that `balance` cannot pay for: what is left, and a
    /// retry-after only when refills alone will bring enough (never one that cannot pass).
    /// `limit` is the call's cost, `remaining` 0: no call of that cost fits.
    fn exhausted(mut self, cost: i64, balance: CreditBalance, refill: Option<Refill>, now: Timestamp) -> Self {
        let enough_at = refill.and_then(|refill| refill.enough_for(cost, balance, now));
        let retry_after_seconds = enough_at.map_or(0, |at| {
            let wait_millis = (at.as_millis() - now.as_millis()).max(1);
            u32::try_from((wait_millis + 999) / 1000).unwrap_or(u32::MAX)
        });
        self.credits_remaining = Some(balance.remaining);
        let limit = u32::try_from(cost).unwrap_or(u32::MAX);
        self.rate_limit = Some(RateLimitState { limit, remaining: 0, retry_after_seconds });
        let left = format!("{} left, this call costs {cost}", balance.remaining);
        let message = match (refill, enough_at) {
            (None, _) => format!(
                "the key's credits are spent ({left}) and it has no refill: no retry passes until an operator adds credits"
            ),
            (Some(refill), None) => format!(
                "the key's credits are spent ({left}) and its refill of {} never brings {cost}: no retry passes until an operator adds credits",
                refill.amount
            ),
            (Some(_), Some(_)) => {
                format!("the key's credits are spent ({left}); enough are refilled in {retry_after_seconds} s")
            }
        };
        self.deny(Deny::new(Code::RateLimitReached, message).because(Reason::CreditsExhausted))
    }
}

/// A key this replica saw without credits, at its record's `version`.
#[derive(Clone, Copy)]
pub(super) struct SpentOut {
    version: i64,
    ask_again_at: Timestamp,
    /// The refill period the empty balance stood in.
    period: i64,
}

/// How long a replica refuses a key it saw without credits before asking the store again
/// (a spend given back to a caller that gave up is heard of no other way): one store write
/// a second per such key under a flood of its calls.
const SPENT_OUT_RECHECK: Duration = Duration::from_secs(1);
