//! High-rate limits across replicas without a Redis round trip per request: each replica
//! *leases* a slice of a subject's budget from Redis and spends it locally.
//!
//! In Redis, each (rule, subject) has two small hashes: the spent requests, in the buckets
//! of a [`BucketedWindow`](super::window::BucketedWindow) with their running total, and each
//! slice's live reservation (`amount:expires_at:reported`). A slice is granted only while spent +
//! reserved stays within the limit, so the budget is never handed out twice.
//!
//! A replica spends its slice with no round trip. It renews in the background, reporting
//! what it spent (counted in the current bucket) and what it still holds, when an eighth of
//! the slice is left or half the lease period has passed; only a request that finds nothing
//! held waits for Redis. A subject left idle is released: its spends reported, its unused
//! slice returned. A replica that dies stops renewing; its reservation lapses after one
//! lease period, so its unused slice returns then.
//!
//! A slice follows its subject's traffic on the replica: about [`LeaseSettings::target`]
//! of its admissions, never less than the smallest slice, and past that only while every
//! replica's slices of the subject together stay within the largest share (Redis checks
//! it in [`LEASE`]).
//!
//! The bound (docs/policy.md): the live slices of a subject hold at most the largest share
//! plus a smallest slice per replica, so in any window at most `limit + largest share +
//! replicas × smallest slice` are admitted — a dying replica's spends not yet reported, or
//! a reservation that lapsed on another replica's clock before it was renewed, are the only
//! ways past the limit — and a request is refused early by at most a bucket (1% of the
//! window) plus the slices other replicas hold unspent.

use std::time::Duration;

/// How big a slice is and how long a replica may spend it without renewing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseSettings {
    /// The smallest slice: this share of the limit (at least one request). A subject new,
    /// slow or idle on a replica holds this much.
    pub share: f64,
    /// The largest: a replica's slice grows past the smallest only while every replica's
    /// slices of the subject together stay within this share of the limit, and while its
    /// own stays within its fair part of it (the share over the replicas holding slices).
    pub max_share: f64,
    /// A busy subject's slice holds about this long of its admissions on this replica
    /// (its rate, estimated on the replica's clock), between the smallest and the largest.
    pub target: Duration,
    /// A slice not renewed within this long lapses (in Redis, for every other replica).
    pub period: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self { share: 0.01, max_share: 0.05, target: Duration::from_secs(1), period: Duration::from_secs(2) }
    }
}

impl LeaseSettings {
    /// The smallest slice of a limit: `share` of it, rounded up, at least 1, at most the
    /// limit.
    pub fn size(&self, limit: u32) -> u32 {
        ((f64::from(limit) * self.share).ceil() as u32).clamp(1, limit.max(1))
    }

    /// What every replica's slices of a subject may hold together beyond their smallest
    /// ones: `max_share` of the limit, at least the smallest slice, at most the limit.
    pub fn most(&self, limit: u32) -> u32 {
        ((f64::from(limit) * self.max_share).floor() as u32).clamp(self.size(limit), limit.max(1))
    }

    /// How a slice of `limit` is sized.
    pub fn sizing(&self, limit: u32) -> Sizing {
        Sizing { least: self.size(limit), most: self.most(limit), target_ms: self.target.as_millis() as i64 }
    }

    pub fn period_ms(&self) -> i64 {
        self.period.as_millis().max(1) as i64
    }
}

/// A slice's bounds for one limit, and how much of its subject's traffic it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub least: u32,
    pub most: u32,
    pub target_ms: i64,
}

/// What a slice of `size` is renewed at: an eighth of it, at least one. A subject spending
/// at its limit's steady rate takes about `share × window / 8` to spend that (60 ms for
/// the default 1% of 3,000 a minute), many round trips to Redis, so a renewal lands before
/// the slice runs out; and each renewal carries seven eighths of a slice of spends, not
/// half, so Redis sees fewer of them (every renewal is a script run there).
pub fn low_water(size: u32) -> u32 {
    (size / 8).max(1)
}

/// Arguments per slice in [`LEASE`]'s ARGV.
pub const LEASE_ARGS: usize = 13;

/// Renews (or releases) the slices of one or more subjects at once: one script run, one
/// round trip, for every slice a replica has due (on a cluster, those of one slot).
///
/// KEYS, two per slice: the subject's counts (a hash: `t` the total of the buckets in the
/// window, `o` the oldest bucket that may hold counts, then bucket index → count) and its
/// reservations (a hash: slice → `amount:expires_at:reported`). ARGV, [`LEASE_ARGS`] per
/// slice: now (ms), window (ms), limit, bucket (ms), ring (buckets kept), the slice's
/// field, its spends so far (cumulative), what Redis acknowledged of them, keep (still
/// held), want (more), period (ms), least (the smallest slice), most (what all replicas'
/// slices may hold together beyond their smallest). Returns, per slice, {granted, room
/// left after it, ms until there may be more room (0 unless the room granted less than
/// wanted), keep accepted}.
///
/// A slice is granted past `least` only while every live slice of the subject together
/// stays within `most`, and while it stays within its fair part of `most` (`most` over
/// the replicas holding slices, this one among them): so all slices together hold at
/// most `most` plus a smallest slice per replica, whatever their rates.
///
/// Spends are reported cumulatively and counted once: a renewal that timed out on our side
/// but ran in Redis is not counted again by the next. The running total keeps a renewal's
/// work small: only buckets that left the window since the last call are read; every
/// bucket is walked only to say when a refused subject has room.
pub const LEASE: &str = r#"
local function lease(counts, reservations, now, window, limit, bucket, ring, me, reported, acked, keep, want, period, least, most)
-- Every slice's reservation, this one's among them: what of this slice's spends Redis has
-- already counted and whether its reservation lives; what the others hold, and the lapsed
-- ones (removed).
local others, holders, soonest, live, lapsed = 0, 1, -1, false, {}
local held = redis.call('HGETALL', reservations)
for i = 1, #held, 2 do
  if held[i] == me then
    local _, expires, counted = string.match(held[i + 1], '^(%d+):(%d+):(%d+)$')
    if counted then
      acked = math.max(acked, tonumber(counted))
      live = tonumber(expires) > now
    end
  else
    local amount, expires = string.match(held[i + 1], '^(%d+):(%d+):')
    amount, expires = tonumber(amount), tonumber(expires)
    if amount == nil or expires <= now then
      lapsed[#lapsed + 1] = held[i]
    else
      others = others + amount
      holders = holders + 1
      if soonest < 0 or expires < soonest then soonest = expires end
    end
  end
end
-- In chunks: Lua's unpack takes a few thousand values at most.
for i = 1, #lapsed, 1000 do
  redis.call('HDEL', reservations, unpack(lapsed, i, math.min(i + 999, #lapsed)))
end
local spent = math.max(0, reported - acked)
local newest = math.floor(now / bucket)
local oldest = newest - ring + 1
local state = redis.call('HMGET', counts, 't', 'o')
local total, o = tonumber(state[1] or '0'), tonumber(state[2] or oldest)
if o < oldest then
  if oldest - o >= ring then
    redis.call('DEL', counts)
    total = 0
  else
    -- The buckets that left the window since the last call, read and removed at once.
    local gone = {}
    for index = o, oldest - 1 do gone[#gone + 1] = index end
    local counted = redis.call('HMGET', counts, unpack(gone))
    for i = 1, #gone do
      if counted[i] then total = total - tonumber(counted[i]) end
    end
    redis.call('HDEL', counts, unpack(gone))
  end
  o = oldest
end
if total < 0 then total = 0 end
if spent > 0 then
  -- A caller whose clock is behind counts in the oldest bucket kept, never before it.
  redis.call('HINCRBY', counts, math.max(newest, o), spent)
  total = total + spent
end
redis.call('HSET', counts, 't', total, 'o', o)
local used = total + others
-- A slice whose reservation lapsed was given back: what it still holds is kept only as far
-- as there is room.
if not live then keep = math.max(0, math.min(keep, limit - used)) end
-- The slice's size: past the smallest only within `most` for all, and its fair part.
local allowed = math.min(math.max(least, most - others), math.max(least, math.floor(most / holders)))
want = math.max(0, math.min(want, allowed - keep))
local room = limit - used - keep
local granted = math.max(0, math.min(want, room))
if keep + granted > 0 then
  redis.call('HSET', reservations, me, (keep + granted) .. ':' .. (now + period) .. ':' .. reported)
else
  redis.call('HDEL', reservations, me)
end
redis.call('PEXPIRE', counts, window + bucket + period)
redis.call('PEXPIRE', reservations, window + bucket + period)
local retry = 0
if granted < want then
  -- Room comes when enough old buckets leave the window, or another replica's slice lapses.
  local need, freed = used + keep - limit + 1, 0
  retry = window
  for index = o, math.max(newest, o) do
    freed = freed + tonumber(redis.call('HGET', counts, index) or '0')
    if freed >= need then
      retry = (index + ring) * bucket - now
      break
    end
  end
  if soonest >= 0 and soonest - now < retry then retry = soonest - now end
  if retry < 1 then retry = 1 end
end
return granted, math.max(room - granted, 0), retry, keep
end
local answers = {}
for s = 0, #KEYS / 2 - 1 do
  local a = s * 13
  local n = function(i) return tonumber(ARGV[a + i]) end
  local granted, room, retry, kept = lease(KEYS[2 * s + 1], KEYS[2 * s + 2], n(1), n(2), n(3), n(4), n(5), ARGV[a + 6],
    n(7), n(8), n(9), n(10), n(11), n(12), n(13))
  answers[#answers + 1] = granted
  answers[#answers + 1] = room
  answers[#answers + 1] = retry
  answers[#answers + 1] = kept
end
return answers
"#;

/// What Redis answered a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub granted: u32,
    /// The subject's room left across all replicas after the grant.
    pub room: u32,
    /// Less than wanted was granted: ms until there may be more room.
    pub retry_after_ms: i64,
    /// Of what the slice kept, what stays reserved (less only when its reservation had
    /// lapsed and others took the room).
    pub kept: u32,
}

/// What a replica sends Redis to renew (or release) a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The slice's spends so far (cumulative: Redis counts what it has not yet).
    pub reported: u64,
    /// What of them Redis acknowledged.
    pub acked: u64,
    /// Still held and unexpired: stays reserved.
    pub keep: u32,
    /// More wanted (0 to release).
    pub want: u32,
    /// When it was sent (ms): the new reservation lapses a period after.
    pub at: i64,
}

impl Renewal {
    /// Spends this renewal reports that Redis has not acknowledged.
    pub fn spent(&self) -> u64 {
        self.reported - self.acked.min(self.reported)
    }
}

/// One replica's slice of one subject's budget under one rule. Plain state: the caller
/// locks it, talks to Redis, and tells it what Redis said.
#[derive(Debug, Default)]
pub struct Lease {
    /// Requests that may still be admitted from the slice, until `expires_at`.
    held: u32,
    /// Taken from this slice, ever, less those given back; Redis counts what it has not
    /// acknowledged, except the pending ones.
    spent: u64,
    /// Taken for calls not decided yet ([`Lease::settle`]): not reported (a call refused
    /// after its limits, for credits, gives its request back exactly), and still reserved.
    pending: u32,
    /// What of `spent` Redis acknowledged counting.
    acked: u64,
    expires_at: i64,
    renewed_at: i64,
    /// A renewal is in flight: nobody else starts one.
    renewing: bool,
    /// Redis had no room: refuse until then without asking again.
    denied_until: i64,
    /// Redis had less room than wanted: no background renewal before then (a subject at
    /// its limit would otherwise ask again at every request).
    quiet_until: i64,
    /// The subject's room across replicas at the last renewal (for `remaining`).
    room: u32,
    /// Bumped when the slice's reservation lapses or is released: a request taken before
    /// then is not held again when given back (nothing is reserved for it any more).
    generation: u64,
    last_used: i64,
    /// Released for idleness: the caller must look the subject up again.
    released: bool,
    /// The subject's admissions on this replica, per ms, as estimated at the last renewal
    /// (`None` before a first estimate): what its slice is sized by.
    rate: Option<f64>,
    /// Admissions since `rate_since`, the start of the current estimate (0: none yet).
    admitted: u32,
    rate_since: Option<i64>,
}

/// The outcome of taking one request from a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted from the slice. `renew`: this caller starts a background renewal.
    Spent { generation: u64, remaining: u32, renew: Option<Renewal> },
    /// Redis had no room a moment ago.
    Limited { retry_after_ms: i64 },
    /// Nothing held: renew now (`Some`: this caller; `None`: wait for the one in flight).
    Empty { renew: Option<Renewal> },
    /// This slice was released; look the subject up again.
    Released,
}

impl Lease {
    pub fn take(&mut self, now: i64, size: u32, period: i64) -> Take {
        if self.released {
            return Take::Released;
        }
        self.last_used = self.last_used.max(now);
        if self.held > 0 && now < self.expires_at {
            self.held -= 1;
            self.spent += 1;
            self.pending += 1;
            self.admitted = self.admitted.saturating_add(1);
            let generation = self.generation;
            // Or half way to its lapse: a subject called every second or so still renews
            // in the background before its slice lapses, and its requests do not wait.
            let due = (self.held <= low_water(size) && now >= self.quiet_until) || now >= self.renewed_at + period / 2;
            let renew = (due && !self.renewing).then(|| self.start_renewal(now, size, period));
            return Take::Spent { generation, remaining: self.room.saturating_add(self.held), renew };
        }
        if now < self.denied_until {
            return Take::Limited { retry_after_ms: self.denied_until - now };
        }
        let renew = (!self.renewing).then(|| self.start_renewal(now, size, period));
        Take::Empty { renew }
    }

    /// Settles a request taken (`generation` as [`Take::Spent`] said): `kept`, it is
    /// spent and the next renewal reports it; otherwise (another limit refused the call,
    /// or its credits did) it is given back, held again while its reservation lives.
    pub fn settle(&mut self, generation: u64, kept: bool) {
        self.pending = self.pending.saturating_sub(1);
        if kept {
            return;
        }
        self.spent = self.spent.saturating_sub(1);
        if generation == self.generation && !self.released {
            self.held += 1;
        }
    }

    /// Snapshots a renewal up to `size` held, and marks it in flight. Pending requests are
    /// not reported yet, and stay reserved while the slice lives.
    fn start_renewal(&mut self, now: i64, size: u32, period: i64) -> Renewal {
        self.renewing = true;
        self.observe(now, period);
        let keep = if now < self.expires_at { self.held + self.pending } else { 0 };
        if keep == 0 {
            self.generation += 1;
        }
        Renewal { reported: self.reported(), acked: self.acked, keep, want: size.saturating_sub(keep), at: now }
    }

    /// The slice this subject wants on this replica: its estimated rate over `target_ms`,
    /// within `sizing`'s bounds (the smallest until a first estimate).
    pub fn size(&self, sizing: Sizing) -> u32 {
        let most = sizing.most.max(sizing.least);
        let Some(rate) = self.rate else { return sizing.least };
        let wanted = (rate * sizing.target_ms.max(0) as f64).ceil();
        if wanted.is_finite() {
            (wanted.min(f64::from(most)) as u32).clamp(sizing.least, most)
        } else {
            sizing.least
        }
    }

    /// Updates the rate estimate at a renewal: the admissions since the last estimate over
    /// the time between them, weighed against the estimate so far by how long that was
    /// (half a period weighs as much as all before it). Under an eighth of a period is too
    /// short to tell a burst from a rate: the admissions wait for a later renewal.
    fn observe(&mut self, now: i64, period: i64) {
        let Some(since) = self.rate_since else {
            self.rate_since = Some(now);
            self.admitted = 0;
            return;
        };
        let elapsed = now - since;
        if elapsed < (period / 8).max(1) {
            return;
        }
        let sample = f64::from(self.admitted) / elapsed as f64;
        let weight = elapsed as f64 / (elapsed as f64 + (period / 2).max(1) as f64);
        self.rate = Some(match self.rate {
            None => sample,
            Some(rate) => rate + (sample - rate) * weight,
        });
        self.rate_since = Some(now);
        self.admitted = 0;
    }

    /// Spends Redis may count: all but the pending ones.
    fn reported(&self) -> u64 {
        self.spent - u64::from(self.pending).min(self.spent)
    }

    /// Releases a slice unused for `min_idle`: reports its spends and returns what it
    /// holds. `None` if it is in use (or renewing).
    pub fn release(&mut self, now: i64, min_idle: i64) -> Option<Renewal> {
        if self.released || self.renewing || self.pending > 0 || now < self.last_used.saturating_add(min_idle) {
            return None;
        }
        self.released = true;
        self.renewing = true;
        self.generation += 1;
        self.held = 0;
        Some(Renewal { reported: self.reported(), acked: self.acked, keep: 0, want: 0, at: now })
    }

    /// Redis answered `sent`.
    pub fn renewed(&mut self, sent: &Renewal, answer: Granted, period: i64) {
        self.renewing = false;
        self.acked = self.acked.max(sent.reported);
        if sent.keep == 0 {
            // The slice had lapsed (or was empty): what it held is no longer reserved.
            self.held = 0;
        } else {
            // Its reservation had lapsed in Redis and others took part of the room.
            self.held = self.held.saturating_sub(sent.keep.saturating_sub(answer.kept));
        }
        self.held += answer.granted;
        self.room = answer.room;
        self.renewed_at = sent.at;
        self.expires_at = sent.at + period;
        self.quiet_until =
            if answer.granted < sent.want { sent.at + answer.retry_after_ms.clamp(0, period / 2) } else { 0 };
        if answer.granted == 0 && self.held == 0 && sent.want > 0 {
            // Until Redis may have room; never longer than a period, so slices returned by
            // other replicas are found soon.
            self.denied_until = sent.at + answer.retry_after_ms.clamp(1, period);
        } else {
            self.denied_until = 0;
        }
    }

    /// Redis did not answer `sent`: the spends are reported again next time (counted once,
    /// whether or not this one ran); the slice is spent until it lapses.
    pub fn renewal_failed(&mut self, _sent: &Renewal) {
        self.renewing = false;
    }
}

/// The longest subject written into a Redis key as it is; a longer one (a request can name
/// an application id of any length) is written as its SHA-256.
const MAX_SUBJECT_IN_KEY: usize = 128;

/// [`lease_keys`]' counts key, written into `buffer` (`None` when it is not written as is,
/// or does not fit).
pub(super) fn counts_key_on_stack<'b>(
    prefix: &str,
    rule: &str,
    window_ms: i64,
    subject: &str,
    buffer: &'b mut [u8],
) -> Option<&'b str> {
    if subject.len() > MAX_SUBJECT_IN_KEY || subject.contains(['{', '}']) {
        return None;
    }
    let bucket = super::window::bucket_ms(window_ms);
    // As `lease_keys` writes it: {prefix}lease:c:{{len}:{rule}:{bucket}:{subject}}
    let key = super::StackKey::new(buffer).text(prefix)?.text("lease:c:{")?.number(rule.len() as u64)?;
    let key = key.text(":")?.text(rule)?.text(":")?.number(u64::try_from(bucket).ok()?)?;
    key.text(":")?.text(subject)?.text("}").map(super::StackKey::finish)
}

/// The two hashes of a high-rate limit's subject in Redis: its counts and its reservations.
/// The rule's name is length-prefixed, so no two (rule, subject) pairs share keys; the
/// bucket length is part of the name, so a policy reload that changes the window starts a
/// new count instead of misreading the old one; and both keys share a hash tag (one Redis
/// Cluster slot), as the script needs.
pub fn lease_keys(prefix: &str, rule: &str, window_ms: i64, subject: &str) -> (String, String) {
    let bucket = super::window::bucket_ms(window_ms);
    let tag = if subject.len() <= MAX_SUBJECT_IN_KEY && !subject.contains(['{', '}']) {
        format!("{{{}:{rule}:{bucket}:{subject}}}", rule.len())
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(subject.as_bytes());
        format!("{{{}:{rule}:{bucket}:sha256:{}}}", rule.len(), crate::domain::hex(&digest))
    };
    (format!("{prefix}lease:c:{tag}"), format!("{prefix}lease:r:{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: i64 = 1_000;

    fn granted(granted: u32, room: u32) -> Granted {
        Granted { granted, room, retry_after_ms: 0, kept: u32::MAX }
    }

    /// Takes a request for a call that is then allowed.
    fn spend(lease: &mut Lease, now: i64, size: u32) -> Take {
        let taken = lease.take(now, size, PERIOD);
        if let Take::Spent { generation, .. } = taken {
            lease.settle(generation, true);
        }
        taken
    }

    /// A fresh lease renewed to `size` at `now`.
    fn leased(size: u32, now: i64) -> Lease {
        let mut lease = Lease::default();
        let Take::Empty { renew: Some(sent) } = lease.take(now, size, PERIOD) else { panic!() };
        assert_eq!(sent, Renewal { reported: 0, acked: 0, keep: 0, want: size, at: now });
        lease.renewed(&sent, granted(size, 1_000), PERIOD);
        lease
    }

    #[test]
    fn a_slice_is_spent_locally_and_renewed_when_an_eighth_is_left() {
        assert_eq!((low_water(16), low_water(10), low_water(7), low_water(1)), (2, 1, 1, 1));
        let mut lease = leased(16, 0);
        for i in 0..13 {
            assert!(matches!(spend(&mut lease, 1, 16), Take::Spent { renew: None, .. }), "{i}");
        }
        // The fourteenth leaves 2 held, an eighth of the slice: this caller renews,
        // reporting the 13 before it (its own call is not decided yet: reserved, not spent).
        let Take::Spent { renew: Some(sent), .. } = spend(&mut lease, 1, 16) else { panic!() };
        assert_eq!(sent, Renewal { reported: 13, acked: 0, keep: 3, want: 13, at: 1 });
        // While it is in flight, the slice is still spent, and nobody else renews.
        for _ in 0..2 {
            assert!(matches!(spend(&mut lease, 2, 16), Take::Spent { renew: None, .. }));
        }
        let Take::Empty { renew: None } = lease.take(2, 16, PERIOD) else { panic!("wait for the renewal in flight") };
        lease.renewed(&sent, granted(13, 100), PERIOD);
        // 2 held − 2 spent in flight + 13 granted.
        let Take::Spent { remaining, .. } = spend(&mut lease, 3, 16) else { panic!() };
        assert_eq!(remaining, 100 + 12);
    }

    #[test]
    fn an_exhausted_subject_is_refused_without_asking_again_until_redis_said() {
        let mut lease = Lease::default();
        let Take::Empty { renew: Some(sent) } = lease.take(0, 10, PERIOD) else { panic!() };
        lease.renewed(&sent, Granted { granted: 0, room: 0, retry_after_ms: 300, kept: 0 }, PERIOD);
        assert_eq!(lease.take(100, 10, PERIOD), Take::Limited { retry_after_ms: 200 });
        assert!(matches!(lease.take(300, 10, PERIOD), Take::Empty { renew: Some(_) }));
    }

    #[test]
    fn a_subject_at_its_limit_is_not_renewed_at_every_request() {
        let mut lease = Lease::default();
        let Take::Empty { renew: Some(sent) } = lease.take(0, 10, PERIOD) else { panic!() };
        // Only 3 of the 10 wanted were left; more may come in 200 ms.
        lease.renewed(&sent, Granted { granted: 3, room: 0, retry_after_ms: 200, kept: 0 }, PERIOD);
        assert!(matches!(lease.take(1, 10, PERIOD), Take::Spent { renew: None, .. }));
        assert!(matches!(lease.take(2, 10, PERIOD), Take::Spent { renew: None, .. }));
        assert!(matches!(lease.take(3, 10, PERIOD), Take::Spent { renew: None, .. }));
        // Spent: the next request asks (and waits), whatever the quiet time says.
        assert!(matches!(lease.take(4, 10, PERIOD), Take::Empty { renew: Some(_) }));
        let mut lease = Lease::default();
        let Take::Empty { renew: Some(sent) } = lease.take(0, 10, PERIOD) else { panic!() };
        lease.renewed(&sent, Granted { granted: 2, room: 0, retry_after_ms: 200, kept: 0 }, PERIOD);
        assert!(matches!(lease.take(199, 10, PERIOD), Take::Spent { renew: None, .. }));
        assert!(matches!(lease.take(200, 10, PERIOD), Take::Spent { renew: Some(_), .. }), "room may have come");
    }

    #[test]
    fn a_lapsed_slice_is_not_spent_and_not_kept() {
        let mut lease = leased(10, 0);
        assert!(matches!(spend(&mut lease, 1, 10), Take::Spent { .. }));
        let Take::Empty { renew: Some(sent) } = lease.take(PERIOD, 10, PERIOD) else { panic!("lapsed") };
        assert_eq!(sent, Renewal { reported: 1, acked: 0, keep: 0, want: 10, at: PERIOD });
        lease.renewed(&sent, granted(10, 0), PERIOD);
        let Take::Spent { remaining, .. } = lease.take(PERIOD + 1, 10, PERIOD) else { panic!() };
        assert_eq!(remaining, 9, "the 9 left of the lapsed slice are gone");
    }

    #[test]
    fn a_half_period_renews_even_with_most_of_the_slice_left() {
        let mut lease = leased(10, 0);
        assert!(matches!(spend(&mut lease, PERIOD / 2 - 1, 10), Take::Spent { renew: None, .. }));
        let Take::Spent { renew: Some(sent), .. } = spend(&mut lease, PERIOD / 2, 10) else { panic!() };
        assert_eq!(sent, Renewal { reported: 1, acked: 0, keep: 9, want: 1, at: PERIOD / 2 });
    }

    #[test]
    fn a_request_given_back_is_held_again_also_across_a_renewal() {
        let mut lease = leased(16, 0);
        let Take::Spent { generation, .. } = lease.take(1, 16, PERIOD) else { panic!() };
        lease.settle(generation, false);
        assert_eq!((lease.held, lease.spent, lease.pending), (16, 0, 0));
        for _ in 0..13 {
            spend(&mut lease, 1, 16);
        }
        let Take::Spent { generation, renew: Some(sent), .. } = lease.take(1, 16, PERIOD) else { panic!() };
        assert_eq!((sent.spent(), sent.keep), (13, 3), "the undecided fourteenth is reserved, not reported");
        lease.renewed(&sent, granted(13, 100), PERIOD);
        lease.settle(generation, false);
        assert_eq!((lease.held, lease.spent, lease.pending), (16, 13, 0), "given back: held again");
        // A request whose slice lapsed meanwhile is given back to nobody.
        let Take::Spent { generation, .. } = lease.take(2, 16, PERIOD) else { panic!() };
        let Take::Empty { renew: Some(lapsed) } = lease.take(2 + PERIOD, 16, PERIOD) else { panic!("lapsed") };
        assert_eq!((lapsed.reported, lapsed.keep), (13, 0));
        lease.settle(generation, false);
        assert_eq!((lease.held, lease.spent), (15, 13), "not held again, not spent");
    }

    #[test]
    fn a_failed_renewal_reports_its_spends_next_time() {
        let mut lease = leased(16, 0);
        for _ in 0..13 {
            spend(&mut lease, 1, 16);
        }
        let Take::Spent { renew: Some(sent), .. } = spend(&mut lease, 1, 16) else { panic!() };
        lease.renewal_failed(&sent);
        let Take::Spent { renew: Some(again), .. } = spend(&mut lease, 2, 16) else { panic!() };
        assert_eq!(again.spent(), 14, "13 from the failed renewal, 1 since");
        lease.renewal_failed(&again);
        let Take::Spent { renew: Some(last), .. } = spend(&mut lease, 3, 16) else { panic!("the last held") };
        lease.renewal_failed(&last);
        let Take::Empty { renew: Some(now_or_never) } = lease.take(3, 16, PERIOD) else { panic!("the slice is spent") };
        assert_eq!(now_or_never, Renewal { reported: 16, acked: 0, keep: 0, want: 16, at: 3 });
    }

    #[test]
    fn an_idle_slice_is_released_with_its_spends() {
        let mut lease = leased(10, 0);
        let Take::Spent { generation, .. } = lease.take(1, 10, PERIOD) else { panic!() };
        assert_eq!(lease.release(PERIOD, PERIOD / 2), None, "a call not decided yet holds it");
        lease.settle(generation, true);
        assert_eq!(lease.release(PERIOD / 2, PERIOD / 2), None, "used within half a period");
        let sent = lease.release(PERIOD / 2 + 1, PERIOD / 2).unwrap();
        assert_eq!(sent, Renewal { reported: 1, acked: 0, keep: 0, want: 0, at: PERIOD / 2 + 1 });
        assert_eq!(lease.take(PERIOD, 10, PERIOD), Take::Released);
    }

    #[test]
    fn spends_are_reported_cumulatively_and_acknowledged_once() {
        let mut lease = leased(16, 0);
        for _ in 0..13 {
            spend(&mut lease, 1, 16);
        }
        let Take::Spent { renew: Some(sent), .. } = spend(&mut lease, 1, 16) else { panic!() };
        assert_eq!((sent.reported, sent.acked, sent.spent()), (13, 0, 13));
        lease.renewed(&sent, granted(14, 100), PERIOD);
        for _ in 0..13 {
            spend(&mut lease, 2, 16);
        }
        let Take::Spent { renew: Some(next), .. } = spend(&mut lease, 2, 16) else { panic!() };
        assert_eq!((next.reported, next.acked, next.spent()), (27, 13, 14), "only what is new");
        // Timed out on our side: the next report carries the same spends again, and Redis
        // (which keeps what it counted per slice) counts them once.
        lease.renewal_failed(&next);
        let Take::Spent { renew: Some(again), .. } = spend(&mut lease, 3, 16) else { panic!() };
        assert_eq!((again.reported, again.acked), (28, 13));
    }

    #[test]
    fn a_lapsed_reservation_keeps_only_what_redis_still_had_room_for() {
        let mut lease = leased(16, 0);
        for _ in 0..13 {
            spend(&mut lease, 1, 16);
        }
        let Take::Spent { renew: Some(sent), .. } = spend(&mut lease, 1, 16) else { panic!() };
        assert_eq!(sent.keep, 3, "2 held, 1 taken by a call not decided then");
        lease.renewed(&sent, Granted { granted: 0, room: 0, retry_after_ms: 100, kept: 2 }, PERIOD);
        assert!(matches!(spend(&mut lease, 2, 16), Take::Spent { .. }));
        assert!(matches!(lease.take(2, 16, PERIOD), Take::Empty { .. }), "1 of the 3 kept was given up");
    }

    #[test]
    fn slice_sizes() {
        let s = LeaseSettings::default();
        assert_eq!((s.size(6_000), s.size(3_000), s.size(150), s.size(10), s.size(0)), (60, 30, 2, 1, 1));
        assert_eq!((s.most(3_000), s.most(150), s.most(10), s.most(0)), (150, 7, 1, 1));
        assert_eq!(s.sizing(3_000), Sizing { least: 30, most: 150, target_ms: 1_000 });
    }

    /// Calls `lease` every `every` ms from `from` to `to`, Redis granting all it asks.
    fn drive(lease: &mut Lease, sizing: Sizing, from: i64, to: i64, every: i64) -> u32 {
        let (mut t, mut renewals) = (from, 0);
        while t < to {
            let size = lease.size(sizing);
            match lease.take(t, size, PERIOD) {
                Take::Spent { generation, renew, .. } => {
                    lease.settle(generation, true);
                    if let Some(sent) = renew {
                        renewals += 1;
                        lease.renewed(&sent, granted(sent.want, 1_000_000), PERIOD);
                    }
                    t += every;
                }
                Take::Empty { renew: Some(sent) } => {
                    renewals += 1;
                    lease.renewed(&sent, granted(sent.want, 1_000_000), PERIOD);
                }
                other => panic!("{other:?}"),
            }
        }
        renewals
    }

    #[test]
    fn a_slice_follows_its_subjects_rate_between_its_bounds() {
        let sizing = Sizing { least: 30, most: 150, target_ms: 1_000 };
        let mut lease = Lease::default();
        assert_eq!(lease.size(sizing), 30, "no estimate yet: the smallest");
        // 100 a second: a slice of about a second of it.
        let renewals = drive(&mut lease, sizing, 0, 5_000, 10);
        assert!((90..=110).contains(&lease.size(sizing)), "{}", lease.size(sizing));
        // Renewed about once a half period (the time rule), not every 26 calls of a
        // fixed 30: 500 calls.
        assert!(renewals <= 14, "{renewals} renewals");
        let mut fixed = Lease::default();
        let fixed_renewals = drive(&mut fixed, Sizing { least: 30, most: 30, target_ms: 1_000 }, 0, 5_000, 10);
        assert!(fixed_renewals >= 18, "{fixed_renewals} renewals of a fixed slice");
        // A thousand a second: the largest.
        drive(&mut lease, sizing, 5_000, 8_000, 1);
        assert_eq!(lease.size(sizing), 150);
        // Two a second: back to the smallest.
        drive(&mut lease, sizing, 8_000, 14_000, 500);
        assert_eq!(lease.size(sizing), 30);
        // A burst (100 calls in 100 ms, or a clock that does not move) is not a rate.
        for step in [1, 0] {
            let mut burst = Lease::default();
            for i in 0..100 {
                let size = burst.size(sizing);
                match burst.take(i * step, size, PERIOD) {
                    Take::Spent { generation, renew, .. } => {
                        burst.settle(generation, true);
                        if let Some(sent) = renew {
                            burst.renewed(&sent, granted(sent.want, 1_000_000), PERIOD);
                        }
                    }
                    Take::Empty { renew: Some(sent) } => burst.renewed(&sent, granted(sent.want, 1_000_000), PERIOD),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(burst.size(sizing), 30, "step {step}");
        }
    }

    #[test]
    fn lease_keys_keep_subjects_rules_and_windows_apart() {
        let (counts, reservations) = lease_keys("kg:", "global", 60_000, "acct_1");
        assert_eq!(counts, "kg:lease:c:{6:global:600:acct_1}");
        // The hot path finds a slice by the same key written on the stack.
        let mut buffer = [0u8; 512];
        assert_eq!(super::counts_key_on_stack("kg:", "global", 60_000, "acct_1", &mut buffer), Some(counts.as_str()));
        assert_eq!(super::counts_key_on_stack("kg:", "app", 60_000, "}{", &mut buffer), None);
        assert_eq!(reservations, "kg:lease:r:{6:global:600:acct_1}");
        // A subject cannot reach another's reservations, nor a rule another rule's counts.
        assert_ne!(lease_keys("kg:", "global", 60_000, "x:reserved").0, reservations);
        assert_ne!(lease_keys("kg:", "a:1", 60_000, "b").0, lease_keys("kg:", "a", 60_000, "1:b").0);
        // Another window (a policy reload) counts anew.
        assert_ne!(lease_keys("kg:", "global", 3_600_000, "acct_1").0, counts);
        // Long or brace-bearing subjects are written as their digest: bounded keys, one tag.
        let long = lease_keys("kg:", "app", 60_000, &"a".repeat(10_000)).0;
        assert!(long.len() < 120 && long.contains(":sha256:"), "{long}");
        let braces = lease_keys("kg:", "app", 60_000, "}{").0;
        assert_eq!(braces.matches('{').count(), 1, "{braces}");
    }
}
