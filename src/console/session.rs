//! Console sessions: made at sign-in from an admin token, kept in this process's memory
//! only (a restart, or another replica, asks to sign in again). The cookie holds a random
//! id; the map is keyed by its SHA-256, so memory holds no cookie. A session ends when
//! unused for the idle time, at the absolute time after sign-in (both on the server's
//! clock), at sign-out, or when the gate no longer accepts its token.

use super::ConsoleSettings;
use crate::clock::Clock;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The most sessions one admin token holds: its next sign-in ends its least recently
/// used one, so one token (a read-only one included) cannot fill the map and lock every
/// other operator out.
pub const MAX_SESSIONS_PER_TOKEN: usize = 16;

/// Random characters of a session id and of a CSRF token (base62: ~190 bits).
const ID_LEN: usize = 32;

/// One signed-in console user.
#[derive(Clone)]
pub struct Session {
    /// The admin token signed in with: checked by the gate at every request (so a revoked
    /// token ends the session), never written anywhere.
    pub token: String,
    /// Every form's hidden `csrf` field must carry it.
    pub csrf: String,
    pub signed_in_ms: i64,
    pub last_seen_ms: i64,
    /// A new key's secret, shown by the next page and then gone.
    pub flash_secret: Option<(String, String)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("signed_in_ms", &self.signed_in_ms).finish_non_exhaustive()
    }
}

pub struct Sessions {
    clock: Arc<dyn Clock>,
    settings: ConsoleSettings,
    live: Mutex<HashMap<[u8; 32], Session>>,
}

/// Why a sign-in made no session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("too many console sessions at once; sign out elsewhere or retry later")]
    Full,
    #[error("the OS random source failed")]
    Randomness(#[from] getrandom::Error),
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new(clock: Arc<dyn Clock>, settings: ConsoleSettings) -> Self {
        Self { clock, settings, live: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expired(&self, session: &Session, now: i64) -> bool {
        let idle = i64::try_from(self.settings.idle.as_millis()).unwrap_or(i64::MAX);
        let absolute = i64::try_from(self.settings.absolute.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(session.last_seen_ms) >= idle || now.saturating_sub(session.signed_in_ms) >= absolute
    }

    /// A new session for `token` (the gate accepted it): its cookie value.
    pub fn create(&self, token: &str) -> Result<String, SessionError> {
        let now = self.clock.now().as_millis();
        let id = crate::domain::random_token(ID_LEN)?;
        let csrf = crate::domain::random_token(ID_LEN)?;
        let mut live = self.lock();
        let (mut held, mut oldest) = (0, None::<([u8; 32], i64)>);
        for (key, session) in live.iter().filter(|(_, s)| s.token == token) {
            held += 1;
            if oldest.is_none_or(|(_, seen)| session.last_seen_ms < seen) {
                oldest = Some((*key, session.last_seen_ms));
            }
        }
        if let (true, Some((key, _))) = (held >= MAX_SESSIONS_PER_TOKEN, oldest) {
            live.remove(&key);
        }
        if live.len() >= self.settings.max_sessions {
            live.retain(|_, s| !self.expired(s, now));
            if live.len() >= self.settings.max_sessions {
                return Err(SessionError::Full);
            }
        }
        let session =
            Session { token: token.to_owned(), csrf, signed_in_ms: now, last_seen_ms: now, flash_secret: None };
        live.insert(key_of(&id), session);
        Ok(id)
    }

    /// The live session of cookie `id` (now seen), or none; an expired one is dropped.
    pub fn get(&self, id: &str) -> Option<([u8; 32], Session)> {
        let now = self.clock.now().as_millis();
        let key = key_of(id);
        let mut live = self.lock();
        let session = live.get_mut(&key)?;
        if self.expired(session, now) {
            live.remove(&key);
            return None;
        }
        session.last_seen_ms = now.max(session.last_seen_ms);
        Some((key, session.clone()))
    }

    pub fn remove(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }

    /// Keeps a new key's secret for the next page of this session only.
    pub fn set_flash(&self, key: &[u8; 32], key_id: String, secret: String) {
        if let Some(session) = self.lock().get_mut(key) {
            session.flash_secret = Some((key_id, secret));
        }
    }

    /// The secret kept for key `key_id`, taken: shown once.
    pub fn take_flash(&self, key: &[u8; 32], key_id: &str) -> Option<String> {
        let mut live = self.lock();
        let session = live.get_mut(key)?;
        match &session.flash_secret {
            Some((id, _)) if id == key_id => session.flash_secret.take().map(|(_, secret)| secret),
            _ => None,
        }
    }

    /// Sessions held now (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Does the form's `csrf` field match the session's (in constant time)?
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match given {
        Some(given) if given.len() == expected.len() && !expected.is_empty() => {
            bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::Timestamp;
    use std::time::Duration;

    #[test]
    fn one_token_holds_a_bounded_share_and_leaves_room_for_others() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let settings = ConsoleSettings { max_sessions: MAX_SESSIONS_PER_TOKEN + 4, ..ConsoleSettings::default() };
        let sessions = Sessions::new(Arc::new(clock.clone()), settings);
        let first = sessions.create("token-a").unwrap();
        for _ in 0..100 {
            clock.advance(Duration::from_millis(1));
            sessions.create("token-a").expect("a token's own sign-ins end its oldest session");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_TOKEN);
        assert!(sessions.get(&first).is_none(), "the least recently used went first");
        sessions.create("token-b").expect("another operator still signs in");
    }

    #[test]
    fn sessions_end_when_idle_and_at_their_absolute_time() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let settings = ConsoleSettings {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(150),
            ..ConsoleSettings::default()
        };
        let sessions = Sessions::new(Arc::new(clock.clone()), settings);
        let id = sessions.create("token").unwrap();
        clock.advance(Duration::from_secs(59));
        assert!(sessions.get(&id).is_some(), "used within the idle time");
        clock.advance(Duration::from_secs(59));
        assert!(sessions.get(&id).is_some(), "the idle time counts from the last use");
        clock.advance(Duration::from_secs(40));
        assert!(sessions.get(&id).is_none(), "150 s after sign-in it ends, however used");
        let idle = sessions.create("token").unwrap();
        clock.advance(Duration::from_secs(60));
        assert!(sessions.get(&idle).is_none(), "unused for the idle time");
        assert!(sessions.get("not-a-session").is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        assert!(csrf_matches("abc", Some("abc")));
        assert!(!csrf_matches("abc", Some("abd")));
        assert!(!csrf_matches("abc", None));
        assert!(!csrf_matches("", Some("")));
    }
}
