//! A high-rate limit's counter: the window cut into [`BUCKETS`] buckets, each a count of the
//! requests admitted in it. Constant memory per subject, whatever the limit (a 100,000 a
//! minute plan tier holds 101 counters, not 100,000 timestamps), and never more than
//! `limit` admitted in any window: the bucket the window's start falls in is counted whole,
//! so a request may be refused up to one bucket (1% of the window) earlier than an exact
//! log would, never admitted later.

/// Buckets per window: the refusal comes at most `window / BUCKETS` early.
pub const BUCKETS: i64 = 100;
/// The shortest bucket: windows under a second have fewer, longer buckets.
const MIN_BUCKET_MS: i64 = 10;

/// Counts of one subject under one rule, for the window's buckets and the one its start
/// falls in (a ring of `BUCKETS + 1`).
#[derive(Debug, Clone)]
pub struct BucketedWindow {
    counts: Box<[u32]>,
    /// The index (time / bucket length) of the newest bucket counted.
    newest: i64,
    /// The sum of `counts`.
    total: u64,
}

impl Default for BucketedWindow {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS as usize + 1].into_boxed_slice(), newest: i64::MIN, total: 0 }
    }
}

/// The bucket length for a window, in ms.
pub fn bucket_ms(window_ms: i64) -> i64 {
    (window_ms / BUCKETS).max(MIN_BUCKET_MS).min(window_ms.max(1))
}

impl BucketedWindow {
    /// Room after admitting one more at `now` (`Ok`), or the ms until one fits (`Err`).
    /// Counts nothing; [`BucketedWindow::admit`] does.
    pub fn room(&mut self, limit: u32, window_ms: i64, now: i64) -> Result<u32, i64> {
        let bucket = bucket_ms(window_ms);
        self.advance(now.div_euclid(bucket));
        if self.total < u64::from(limit) {
            return Ok(limit - self.total as u32 - 1);
        }
        // Full: the oldest buckets leave one by one; wait until enough have left.
        let ring = self.counts.len() as i64;
        let oldest = self.newest - ring + 1;
        let mut freed = 0u64;
        for age in 0..ring {
            freed += u64::from(self.counts[(oldest + age).rem_euclid(ring) as usize]);
            if self.total - freed < u64::from(limit) {
                // That bucket leaves the ring when the newest index passes it by `ring`.
                let leaves_at = (oldest + age + ring) * bucket;
                return Err((leaves_at - now).max(1));
            }
        }
        Err(window_ms)
    }

    /// Counts one admitted request at `now` (after [`BucketedWindow::room`] said it fits).
    pub fn admit(&mut self, window_ms: i64, now: i64) {
        self.advance(now.div_euclid(bucket_ms(window_ms)));
        let ring = self.counts.len() as i64;
        self.counts[self.newest.rem_euclid(ring) as usize] += 1;
        self.total += 1;
    }

    /// Takes back one request admitted at `at`, if its bucket is still counted.
    pub fn give_back(&mut self, window_ms: i64, at: i64) {
        let index = at.div_euclid(bucket_ms(window_ms));
        let ring = self.counts.len() as i64;
        if index > self.newest || index <= self.newest - ring {
            return;
        }
        let slot = &mut self.counts[index.rem_euclid(ring) as usize];
        if *slot > 0 {
            *slot -= 1;
            self.total -= 1;
        }
    }

    /// Moves the ring to `index`, dropping the buckets that left. A clock that stepped back
    /// counts in the newest bucket (never unlimits a subject).
    fn advance(&mut self, index: i64) {
        if index <= self.newest {
            return;
        }
        let ring = self.counts.len() as i64;
        if self.newest == i64::MIN || index - self.newest >= ring {
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.total = 0;
        } else {
            for gone in self.newest + 1..=index {
                let slot = &mut self.counts[gone.rem_euclid(ring) as usize];
                self.total -= u64::from(*slot);
                *slot = 0;
            }
        }
        self.newest = index;
    }

    /// The counted requests as times (each at its bucket's start), oldest first: for a
    /// rule that becomes exact at a policy reload.
    pub fn admissions(&self, window_ms: i64) -> Vec<i64> {
        if self.newest == i64::MIN {
            return Vec::new();
        }
        let (bucket, ring) = (bucket_ms(window_ms), self.counts.len() as i64);
        let mut out = Vec::with_capacity(self.total as usize);
        for index in self.newest - ring + 1..=self.newest {
            let count = self.counts[index.rem_euclid(ring) as usize];
            out.extend(std::iter::repeat_n(index * bucket, count as usize));
        }
        out
    }

    /// Bytes one subject holds, for the memory benchmark.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.len() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        // Admit greedily every 7 ms for ten minutes; then check every window of a minute.
        let (limit, mut w) = (1_000u32, BucketedWindow::default());
        let mut admitted = Vec::new();
        for now in (0..10 * MINUTE).step_by(7) {
            if w.room(limit, MINUTE, now).is_ok() {
                w.admit(MINUTE, now);
                admitted.push(now);
            }
        }
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().take_while(|&&t| t < start + MINUTE).count();
            assert!(in_window <= limit as usize, "{in_window} admitted in the minute from {start}");
        }
        // And it is not stingy: over ten minutes, within 2% of ten limits.
        assert!(admitted.len() as f64 >= 10.0 * f64::from(limit) * 0.98, "{}", admitted.len());
    }

    #[test]
    fn a_full_window_says_when_the_oldest_bucket_leaves() {
        let mut w = BucketedWindow::default();
        for _ in 0..10 {
            assert!(w.room(10, MINUTE, 1_000).is_ok());
            w.admit(MINUTE, 1_000);
        }
        // All ten in the bucket [600, 1200): it leaves the ring at 1200 + 60 s.
        assert_eq!(w.room(10, MINUTE, 5_000), Err(61_200 - 5_000));
        assert!(w.room(10, MINUTE, 61_199).is_err());
        assert_eq!(w.room(10, MINUTE, 61_200), Ok(9));
    }

    #[test]
    fn memory_does_not_grow_with_the_limit() {
        let mut w = BucketedWindow::default();
        let before = w.bytes();
        for now in 0..100_000 {
            if w.room(100_000, MINUTE, now).is_ok() {
                w.admit(MINUTE, now);
            }
        }
        assert_eq!(w.bytes(), before);
        assert!(before < 512, "{before} bytes");
    }

    #[test]
    fn a_clock_stepping_back_counts_in_the_newest_bucket() {
        let mut w = BucketedWindow::default();
        w.admit(MINUTE, 10_000);
        assert_eq!(w.room(2, MINUTE, 5_000), Ok(0));
        w.admit(MINUTE, 5_000);
        assert!(w.room(2, MINUTE, 5_000).is_err());
    }
}
