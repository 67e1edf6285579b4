//! The change feed's subscribers on this replica (`keygate.v1.Watch`), and the promise an
//! admin change that narrows access makes: it returns once every live subscriber that
//! sees it has acknowledged its revision, or after `--change-ack-timeout-ms`, when those
//! that have not are fenced.
//!
//! A subscriber is *caught up* with revision `r` when it has acknowledged `r`, or when its
//! stream has looked at every row up to `r` and every change of those it was sent is
//! acknowledged (the rows it was not sent, of kinds or accounts it does not watch, ask
//! nothing of it). A change of account `a` waits only for subscribers that see `a`: one
//! tenant's subscriber that never acknowledges cannot hold up another tenant's revokes.
//!
//! *Fenced*: a subscriber an admin change stopped waiting for. The change is answered
//! anyway, counted as fenced; the subscriber is told ([`Fenced`] on its stream) and stays
//! fenced (no change waits for it again) until it acknowledges that revision. What keeps
//! a fenced subscriber from allowing stale data is its own lease, not this flag: see
//! docs/deployment.md ("The change feed").

use crate::domain::AccountId;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The lease a subscriber holds after an ack, in percent of the admin change's longest
/// wait (as replicas' own lease, [`crate::store::invalidation::LEASE_PERCENT_OF_WAIT`]).
pub const LEASE_PERCENT_OF_WAIT: u32 = crate::store::invalidation::LEASE_PERCENT_OF_WAIT;

/// Changes sent to one subscriber and not yet acknowledged, at most.
pub const MAX_UNACKED: usize = 10_000;

/// How many subscribers confirmed a change, and how many were fenced instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedSettled {
    pub acknowledged: usize,
    pub fenced: usize,
}

struct Subscriber {
    /// `None`: every account.
    account: Option<AccountId>,
    acked: i64,
    /// Every row up to this one was looked at (and sent, if the subscriber watches it).
    scanned: i64,
    /// Revisions sent and not acknowledged yet.
    unacked: BTreeSet<i64>,
    /// The revision an admin change stopped waiting at.
    fenced_at: Option<i64>,
}

impl Subscriber {
    fn caught_up(&self, revision: i64) -> bool {
        self.acked >= revision || (self.scanned >= revision && self.unacked.range(..=revision).next().is_none())
    }

    fn sees(&self, account: Option<&AccountId>) -> bool {
        match (&self.account, account) {
            (Some(own), Some(changed)) => own == changed,
            _ => true,
        }
    }
}

/// This replica's subscribers.
pub struct Subscribers {
    wait: Duration,
    state: Mutex<HashMap<u64, Subscriber>>,
    next_id: AtomicU64,
    /// Woken by every ack, scan and departure.
    changed: Notify,
    /// The newest revision this replica's admin calls committed: streams look for rows
    /// when it moves (and on their own every poll interval, for other replicas' changes).
    published: watch::Sender<i64>,
    /// Fencings to tell, by subscriber.
    fencings: watch::Sender<u64>,
    acknowledged_total: AtomicU64,
    fenced_total: AtomicU64,
}

impl Subscribers {
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            state: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed: Notify::new(),
            published: watch::channel(0).0,
            fencings: watch::channel(0).0,
            acknowledged_total: AtomicU64::new(0),
            fenced_total: AtomicU64::new(0),
        }
    }

    /// How long an ack keeps a subscriber's copy trusted.
    pub fn lease(&self) -> Duration {
        self.wait * LEASE_PERCENT_OF_WAIT / 100
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new subscriber positioned at `since`; gone when the returned guard drops.
    pub fn join(self: &Arc<Self>, account: Option<AccountId>, since: i64) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber =
            Subscriber { account, acked: since, scanned: since, unacked: BTreeSet::new(), fenced_at: None };
        self.lock().insert(id, subscriber);
        Membership { subscribers: self.clone(), id }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes confirmed and fencings, over every admin call (metrics).
    pub fn acknowledged_total(&self) -> u64 {
        self.acknowledged_total.load(Ordering::Relaxed)
    }

    pub fn fenced_total(&self) -> u64 {
        self.fenced_total.load(Ordering::Relaxed)
    }

    /// What streams wait on to look for new rows.
    pub fn published(&self) -> watch::Receiver<i64> {
        self.published.subscribe()
    }

    /// What streams wait on to learn they were fenced.
    pub fn fencings(&self) -> watch::Receiver<u64> {
        self.fencings.subscribe()
    }

    /// Call after a change of `account` (`None`: any or unknown) committed at `revision`
    /// or before: returns once every subscriber that sees it is caught up with it, or
    /// after the wait, fencing those that are not. Never fails: the change is durable.
    pub async fn settle(&self, revision: i64, account: Option<&AccountId>) -> FeedSettled {
        self.published.send_if_modified(|newest| {
            let moved = revision > *newest;
            *newest = (*newest).max(revision);
            moved
        });
        let deadline = Instant::now() + self.wait;
        // Who is waited for: those here now that see the change and are not fenced.
        let waited: Vec<u64> =
            self.lock().iter().filter(|(_, s)| s.sees(account) && s.fenced_at.is_none()).map(|(id, _)| *id).collect();
        loop {
            let woken = self.changed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let pending = {
                let state = self.lock();
                waited.iter().any(|id| state.get(id).is_some_and(|s| !s.caught_up(revision)))
            };
            if !pending || tokio::time::timeout_at(deadline, woken).await.is_err() {
                break;
            }
        }
        let mut settled = FeedSettled::default();
        let mut state = self.lock();
        // Those waited for, and those fenced before: a subscriber that joined during the wait
        // (resuming from an older revision) was not waited for and is not fenced for it.
        let counted = |id: &u64, s: &Subscriber| s.sees(account) && (waited.contains(id) || s.fenced_at.is_some());
        for (_, subscriber) in state.iter_mut().filter(|(id, s)| counted(id, s)) {
            if subscriber.caught_up(revision) {
                settled.acknowledged += 1;
            } else {
                // Already fenced, or now: either way not confirmed.
                settled.fenced += 1;
                if subscriber.fenced_at.is_none() {
                    subscriber.fenced_at = Some(revision);
                    self.fencings.send_modify(|n| *n += 1);
                }
            }
        }
        // Those that left during the wait confirmed nothing.
        settled.fenced += waited.iter().filter(|id| !state.contains_key(id)).count();
        drop(state);
        self.acknowledged_total.fetch_add(settled.acknowledged as u64, Ordering::Relaxed);
        self.fenced_total.fetch_add(settled.fenced as u64, Ordering::Relaxed);
        settled
    }

    /// The change's revision could not be read: no subscriber that sees `account` can be
    /// shown to have it, so each is fenced (not waited for) until it acknowledges past the
    /// newest revision published here, which the change follows.
    pub fn fence_unread(&self, account: Option<&AccountId>) -> FeedSettled {
        let past = self.published.borrow().saturating_add(1);
        let mut settled = FeedSettled::default();
        for subscriber in self.lock().values_mut().filter(|s| s.sees(account)) {
            settled.fenced += 1;
            if subscriber.fenced_at.is_none() {
                subscriber.fenced_at = Some(past);
                self.fencings.send_modify(|n| *n += 1);
            }
        }
        self.fenced_total.fetch_add(settled.fenced as u64, Ordering::Relaxed);
        settled
    }
}

/// One subscriber's place among the [`Subscribers`]; it leaves when this drops.
pub struct Membership {
    subscribers: Arc<Subscribers>,
    id: u64,
}

impl Membership {
    /// The subscribers it is one of.
    pub fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn update<T>(&self, f: impl FnOnce(&mut Subscriber) -> T) -> Option<T> {
        let done = self.subscribers.lock().get_mut(&self.id).map(f);
        self.subscribers.changed.notify_waiters();
        done
    }

    /// About to send the change at `revision`: it waits for an ack. `false` when the
    /// subscriber already has [`MAX_UNACKED`] changes waiting: its stream ends rather than
    /// keep a set that grows for as long as a reader never acknowledges.
    pub fn sending(&self, revision: i64) -> bool {
        self.update(|s| {
            if s.unacked.len() >= MAX_UNACKED {
                return false;
            }
            s.unacked.insert(revision);
            true
        })
        .unwrap_or(true)
    }

    /// Every row up to `revision` has been looked at (and sent, where watched).
    pub fn scanned(&self, revision: i64) {
        self.update(|s| s.scanned = s.scanned.max(revision));
    }

    /// Moves the subscriber to a snapshot's revision (everything before is in it).
    pub fn reset_to(&self, revision: i64) {
        self.update(|s| {
            s.unacked.clear();
            s.scanned = revision;
        });
    }

    /// The subscriber applied everything sent up to `revision`. An ack of more than was
    /// sent counts as an ack of what was.
    pub fn ack(&self, revision: i64) {
        self.update(|s| {
            let sent = s.unacked.last().copied().unwrap_or(s.scanned).max(s.scanned);
            let revision = revision.min(sent);
            s.acked = s.acked.max(revision);
            s.unacked = s.unacked.split_off(&(revision + 1));
            if s.fenced_at.is_some_and(|at| s.acked >= at) {
                s.fenced_at = None;
            }
        });
    }

    /// The revision this subscriber was fenced at, if it is fenced.
    pub fn fenced_at(&self) -> Option<i64> {
        self.subscribers.lock().get(&self.id).and_then(|s| s.fenced_at)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.subscribers.lock().remove(&self.id);
        self.subscribers.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> AccountId {
        AccountId::parse(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_waits_for_the_subscribers_that_see_it() {
        let subscribers = Arc::new(Subscribers::new(Duration::from_millis(500)));
        let a = subscribers.join(Some(account("acct_a")), 0);
        let all = subscribers.join(None, 0);
        // A change of B's: A's subscriber is not asked; the other acknowledges.
        all.sending(1);
        all.scanned(1);
        a.scanned(1);
        all.ack(1);
        let settled = subscribers.settle(1, Some(&account("acct_b"))).await;
        assert_eq!(settled, FeedSettled { acknowledged: 1, fenced: 0 });
        // A change of A's that A's subscriber never acknowledges: fenced after the wait.
        a.sending(2);
        all.sending(2);
        a.scanned(2);
        all.scanned(2);
        all.ack(2);
        let settled = subscribers.settle(2, Some(&account("acct_a"))).await;
        assert_eq!(settled, FeedSettled { acknowledged: 1, fenced: 1 });
        assert_eq!(a.fenced_at(), Some(2));
        // Fenced, it is not waited for again, until it acknowledges.
        a.ack(2);
        assert_eq!(a.fenced_at(), None);
    }

    #[test]
    fn an_ack_past_what_was_sent_counts_for_what_was() {
        let subscribers = Arc::new(Subscribers::new(Duration::from_millis(500)));
        let s = subscribers.join(None, 3);
        s.sending(5);
        s.ack(100);
        let state = subscribers.lock();
        let sub = state.get(&s.id()).unwrap();
        assert_eq!(sub.acked, 5, "nothing past 5 was sent yet");
        assert!(sub.unacked.is_empty());
        assert!(!sub.caught_up(6));
    }

    #[test]
    fn a_reader_that_never_acknowledges_holds_a_bounded_set() {
        let subscribers = Arc::new(Subscribers::new(Duration::from_millis(500)));
        let s = subscribers.join(None, 0);
        let revisions = 1..=i64::try_from(MAX_UNACKED).unwrap();
        assert!(revisions.into_iter().all(|r| s.sending(r)));
        assert!(!s.sending(i64::try_from(MAX_UNACKED).unwrap() + 1), "the stream is to end");
        assert_eq!(subscribers.lock().get(&s.id()).unwrap().unacked.len(), MAX_UNACKED);
        s.ack(10);
        assert!(s.sending(20_000), "room again once some are acknowledged");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_revision_fences_without_a_wait_and_not_for_good() {
        let subscribers = Arc::new(Subscribers::new(Duration::from_millis(500)));
        let a = subscribers.join(Some(account("acct_a")), 0);
        let b = subscribers.join(Some(account("acct_b")), 0);
        let settled = subscribers.fence_unread(Some(&account("acct_a")));
        assert_eq!(settled, FeedSettled { acknowledged: 0, fenced: 1 });
        assert_eq!((a.fenced_at(), b.fenced_at()), (Some(1), None));
        a.sending(1);
        a.ack(1);
        assert_eq!(a.fenced_at(), None, "acknowledging past what was published ends the fence");
    }
}
