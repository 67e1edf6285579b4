//! argon2id hashing and verification, off the async workers.
//!
//! Each verification costs ~14 ms of CPU at the OWASP minimum. It runs on the blocking
//! pool under a semaphore, so a flood of misses queues here instead of stalling the
//! workers that serve cached (hot) keys. The permit travels into the blocking task: a
//! caller that goes away does not free a slot while its hash still runs.

use crate::domain::SecretHash;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tracing::Instrument;

#[derive(Debug, Clone, Copy)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Verifications (and hashes) running at once.
    pub max_concurrent: usize,
}

impl Argon2Settings {
    /// The OWASP minimum for argon2id: m = 19 MiB, t = 2, p = 1.
    pub const OWASP_MEMORY_KIB: u32 = 19 * 1024;
    pub const OWASP_ITERATIONS: u32 = 2;
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: Self::OWASP_MEMORY_KIB,
            iterations: Self::OWASP_ITERATIONS,
            parallelism: 1,
            // Half the cores: a flood of misses can take no more than half the machine
            // from the hot keys served from cache.
            max_concurrent: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("the stored secret hash cannot be parsed")]
    BadHash,
    #[error("hashing failed: {0}")]
    Hash(String),
    /// The OS random source failed while making a salt.
    #[error("the OS random source failed")]
    Salt(#[from] getrandom::Error),
    #[error("the hashing task did not finish")]
    Task(#[from] tokio::task::JoinError),
    /// More verifications are waiting than can finish within an edge's patience.
    #[error("{0} argon2 verifications are already waiting")]
    Busy(usize),
}

/// Verifications that may wait per slot: with ~15-20 ms each, a queue of 16 per slot is
/// about a quarter second, an edge's whole budget. Past it, callers are told to come back.
pub const QUEUED_PER_SLOT: usize = 16;

pub struct Verifier {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Verifications waiting or running, and how many may.
    queued: AtomicUsize,
    max_queued: usize,
    verifications: AtomicU64,
    /// What every hash [`Verifier::hash`] makes starts with: algorithm, version, parameters.
    current_prefix: String,
    /// Seconds per verification, waiting for a slot included: what a cache miss costs.
    durations: Histogram,
}

impl Verifier {
    pub fn new(settings: Argon2Settings) -> Result<Self, VerifierError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| VerifierError::Params(e.to_string()))?;
        Ok(Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            queued: AtomicUsize::new(0),
            max_queued: settings.max_concurrent.max(1) * QUEUED_PER_SLOT,
            verifications: AtomicU64::new(0),
            current_prefix: format!(
                "$argon2id$v=19$m={},t={},p={}$",
                settings.memory_kib, settings.iterations, settings.parallelism
            ),
            // 1 ms to ~4 s.
            durations: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
        })
    }

    /// Hashes a new secret into a PHC string with a fresh random salt.
    pub async fn hash(&self, secret: &[u8]) -> Result<SecretHash, VerifierError> {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt)?;
        let secret = secret.to_vec();
        let argon2 = self.argon2.clone();
        self.run(move || {
            let salt = SaltString::encode_b64(&salt).map_err(|e| VerifierError::Hash(e.to_string()))?;
            let hash = argon2.hash_password(&secret, &salt).map_err(|e| VerifierError::Hash(e.to_string()))?;
            Ok(SecretHash::new(hash.to_string()))
        })
        .await
    }

    /// Checks `secret` against `hash`: keygate's argon2id, or an imported key's bcrypt or
    /// any argon2 (the scheme is read off the hash). SHA-256 imports are checked without
    /// the verifier ([`crate::domain::imported::verify_sha256`]).
    pub async fn verify(&self, secret: &str, hash: &SecretHash) -> Result<bool, VerifierError> {
        // A bounded queue: a flood waits here at most this long, then is told to retry.
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let _slot = QueueSlot(&self.queued);
        if queued >= self.max_queued {
            return Err(VerifierError::Busy(queued));
        }
        let phc = hash.expose_phc().to_owned();
        let secret = secret.as_bytes().to_vec();
        let argon2 = self.argon2.clone();
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let verified = self
            .run(move || {
                if phc.starts_with("$2") {
                    return bcrypt::verify(&secret, &phc).map_err(|_| VerifierError::BadHash);
                }
                let parsed = PasswordHash::new(&phc).map_err(|_| VerifierError::BadHash)?;
                // The parameters (and the variant) come from the stored hash, so keys hashed
                // under older settings, or imported, keep verifying.
                let matches = argon2.verify_password(&secret, &parsed).is_ok();
                Ok(matches)
            })
            .await;
        self.durations.observe(started.elapsed().as_secs_f64());
        verified
    }

    /// Whether `hash` is what [`Verifier::hash`] makes now: argon2id with these settings.
    /// An imported key's hash is replaced by one when its credential is first verified.
    /// Asked on every call with an imported key: a prefix comparison, no parsing.
    pub fn is_current(&self, hash: &SecretHash) -> bool {
        hash.expose_phc().starts_with(&self.current_prefix)
    }

    /// The verification time histogram (shared: cloning it shares the counts).
    pub fn durations(&self) -> Histogram {
        self.durations.clone()
    }

    /// How many argon2 verifications have run.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Verifications waiting or running now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, VerifierError> + Send + 'static,
    ) -> Result<T, VerifierError> {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(work)
        })
        .instrument(tracing::Span::current())
        .await?
    }
}

/// One place in the verification queue, given back however the caller leaves.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fresh_hash_is_current_and_another_setting_is_not() {
        let cheap = Argon2Settings { memory_kib: 64, iterations: 1, parallelism: 1, max_concurrent: 1 };
        let verifier = Verifier::new(cheap).unwrap();
        let hash = verifier.hash(b"secret").await.unwrap();
        assert!(verifier.is_current(&hash), "{}", hash.expose_phc().split('$').nth(3).unwrap_or_default());
        let other = Verifier::new(Argon2Settings { iterations: 2, ..cheap }).unwrap();
        assert!(!other.is_current(&hash));
        assert!(!verifier.is_current(&SecretHash::new("$2b$04$abc".into())));
    }
}
