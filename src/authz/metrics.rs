//! The authorizer's instruments. They are counted on every call, so each is resolved to a
//! counter handle once (per route and code, per limit outcome): a count is one atomic add,
//! with no lock and no hashing of labels.

use super::{Decision, Verdict};
use crate::code::Code;
use crate::policy::Policy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::{Arc, OnceLock};

/// Handles to `keygate_rate_limit_checks_total`'s three series (all shown from the start).
pub(super) struct LimitOutcomes {
    pub(super) admitted: Counter,
    pub(super) limited: Counter,
    pub(super) unavailable: Counter,
}

impl LimitOutcomes {
    pub(super) fn of(family: &Family<OutcomeLabels, Counter>) -> Self {
        let series = |outcome| family.get_or_create_owned(&OutcomeLabels { outcome });
        Self { admitted: series("admitted"), limited: series("limited"), unavailable: series("unavailable") }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The policy's route template; empty when no route matched.
    pub route: Option<Arc<str>>,
    /// `allowed`, or the deny's code.
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

/// A policy in force, with a decision counter per route and code resolved once, so that
/// counting a decision takes no lock and hashes nothing.
pub(super) struct ActivePolicy {
    pub(super) policy: Policy,
    pub(super) decisions: Box<[DecisionCounters]>,
}

impl ActivePolicy {
    pub(super) fn new(policy: Policy) -> Self {
        let decisions = policy.routes().iter().map(|_| DecisionCounters::default()).collect();
        Self { policy, decisions }
    }
}

/// One route's counters: slot 0 for allowed, then one per code, in `Code::ALL`'s order.
pub(super) struct DecisionCounters([OnceLock<Counter>; 1 + Code::ALL.len()]);

impl Default for DecisionCounters {
    fn default() -> Self {
        Self([const { OnceLock::new() }; 1 + Code::ALL.len()])
    }
}

impl DecisionCounters {
    pub(super) fn count(&self, family: &Family<DecisionLabels, Counter>, verdict: &Verdict) {
        let (slot, code) = match &verdict.decision {
            Decision::Allowed => (0, "allowed"),
            // A fieldless enum's discriminant is its position in `Code::ALL`.
            Decision::Denied(deny) => (1 + deny.code as usize, deny.code.as_str()),
        };
        // The family hands out a handle to the same counter for the same labels, so a
        // reloaded policy keeps counting into the series it had.
        self.0[slot]
            .get_or_init(|| family.get_or_create_owned(&DecisionLabels { route: verdict.route.clone(), code }))
            .inc();
    }
}

/// The authorizer's instruments; cloning shares them.
#[derive(Clone, Default)]
pub struct AuthorizeMetrics {
    pub decisions: Family<DecisionLabels, Counter>,
    /// By cause: store_unavailable, store, limiter_unavailable, verifier, deadline, stale_credits.
    pub failures: Family<CauseLabels, Counter>,
    /// By outcome: admitted, limited, unavailable.
    pub limits: Family<OutcomeLabels, Counter>,
    /// By outcome: applied, rejected.
    pub policy_reloads: Family<OutcomeLabels, Counter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_slot() {
        for (position, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, position, "{code:?}");
        }
    }
}
