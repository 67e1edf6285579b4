//! Refused TLS clients, logged at `warn` so that an operator whose edges are all refused
//! sees why at the default level: a failed handshake (no client certificate, one of another
//! CA, a client that does not trust keygate's certificate, plaintext sent to a TLS port) or
//! a client certificate without an allowed name. One line per source (an IPv4 address, an
//! IPv6 /64) per [`WARNING_EVERY`] at most, saying how many were refused meanwhile without
//! a line, so a misconfigured edge retrying in a loop, or a scanner, cannot flood the log.
//! The memory is bounded: at most [`MAX_SOURCES`] sources are remembered; beyond them, all
//! other sources share one line per [`WARNING_EVERY`].

use super::Source;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// At most one refusal line per source this often.
pub const WARNING_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered at once per listener.
pub const MAX_SOURCES: usize = 4096;

/// When a source's (or the overflow's) last line was written, and refusals since.
#[derive(Debug, Clone, Copy)]
struct Seen {
    logged: Instant,
    unlogged: u64,
}

impl Seen {
    /// `Some(refusals not logged since the last line)` when this one gets a line.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.logged) < WARNING_EVERY {
            self.unlogged += 1;
            return None;
        }
        let unlogged = self.unlogged;
        *self = Seen { logged: now, unlogged: 0 };
        Some(unlogged)
    }
}

#[derive(Debug, Default)]
struct Memory {
    sources: HashMap<Source, Seen>,
    /// Every source beyond the remembered ones, together.
    overflow: Option<Seen>,
}

impl Memory {
    /// Whether a refusal from `source` gets a line: `Some((unlogged, shared))`, where
    /// `shared` says the line stands for every source beyond the remembered ones.
    fn refused(&mut self, source: Source, now: Instant, cap: usize) -> Option<(u64, bool)> {
        if let Some(seen) = self.sources.get_mut(&source) {
            return seen.refused(now).map(|n| (n, false));
        }
        if self.sources.len() >= cap {
            // Sources whose quiet time is over need no memory: their next line is due anyway.
            self.sources.retain(|_, seen| now.duration_since(seen.logged) < WARNING_EVERY);
        }
        if self.sources.len() < cap {
            self.sources.insert(source, Seen { logged: now, unlogged: 0 });
            return Some((0, false));
        }
        match &mut self.overflow {
            Some(seen) => seen.refused(now).map(|n| (n, true)),
            None => {
                self.overflow = Some(Seen { logged: now, unlogged: 0 });
                Some((0, true))
            }
        }
    }
}

/// One listener's refusals.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    memory: Mutex<Memory>,
}

impl Refusals {
    /// Logs a refused client at `warn`, unless its source had a line in the last
    /// [`WARNING_EVERY`] (then it is counted into the next line).
    pub(super) fn note(&self, listener: &'static str, peer: SocketAddr, reason: &dyn std::fmt::Display) {
        let now = Instant::now();
        let decided =
            self.memory.lock().unwrap_or_else(|e| e.into_inner()).refused(Source::from(peer.ip()), now, MAX_SOURCES);
        let Some((unlogged, shared)) = decided else { return };
        let reason = reason.to_string();
        if shared {
            tracing::warn!(
                listener,
                %peer,
                reason,
                refused_without_a_line = unlogged,
                "TLS client refused (one line per 60 s for all sources beyond the 4096 remembered)"
            );
        } else {
            tracing::warn!(
                listener,
                %peer,
                reason,
                refused_without_a_line = unlogged,
                "TLS client refused (one line per source per 60 s)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn source(ip: &str) -> Source {
        Source::from(ip.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn one_line_per_source_per_period_with_the_count_of_the_others() {
        let (mut memory, start) = (Memory::default(), Instant::now());
        let edge = source("192.0.2.1");
        assert_eq!(memory.refused(edge, start, 8), Some((0, false)), "the first refusal has a line");
        for n in 1..=5 {
            assert_eq!(memory.refused(edge, start + Duration::from_secs(n), 8), None, "then quiet");
        }
        assert_eq!(memory.refused(source("192.0.2.2"), start, 8), Some((0, false)), "another source has its own");
        assert_eq!(memory.refused(edge, start + WARNING_EVERY, 8), Some((5, false)), "the next line counts them");
    }

    #[test]
    fn beyond_the_cap_sources_share_one_line_and_memory_stays_bounded() {
        let (mut memory, start) = (Memory::default(), Instant::now());
        for n in 0..4 {
            assert_eq!(memory.refused(source(&format!("10.0.0.{n}")), start, 4), Some((0, false)));
        }
        assert_eq!(memory.refused(source("10.0.1.1"), start, 4), Some((0, true)), "the overflow's first line");
        assert_eq!(memory.refused(source("10.0.1.2"), start, 4), None, "shared: quiet");
        assert_eq!(memory.sources.len(), 4);
        // Once the remembered sources' period is over, they make room.
        assert_eq!(memory.refused(source("10.0.2.1"), start + WARNING_EVERY, 4), Some((0, false)));
        assert_eq!(memory.sources.len(), 1);
    }
}
