//! Memory per cached hot key: a million key records in the real caching decorator, each
//! with the verified-credential digest and last use a hot key carries, measured as the process's
//! resident memory before and after. The records come from a [`MemoryStore`], which hands out fresh copies as a
//! database would; its own copies are counted before the measurement starts.

use keygate::domain::{AccountId, KeyId, Name, NewKeyRecord, Scopes, SecretHash, Timestamp, VerifiedDigest};
use keygate::store::cached::{CacheSettings, CachedStore};
use keygate::store::memory::MemoryStore;
use keygate::store::{KeyKind, KeyRecord, Records};
use std::sync::Arc;
use std::time::Duration;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

pub async fn run(keys: usize) -> anyhow::Result<()> {
    let store = Arc::new(MemoryStore::default());
    // A real argon2id PHC string: stored hashes are all this long.
    let hash = SecretHash::new(
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$qJ8m2k0cXo9gq9Zt7wOQm8Lr2nF1xjv6vX0jH3k4b9E".into(),
    );
    let ids: Vec<KeyId> = (0..keys).map(|i| KeyId::parse(&format!("key_{i:016}")).expect("valid")).collect();
    for &id in &ids {
        let created = Timestamp::from_millis(1_700_000_000_000);
        let mut record = KeyRecord::issued(
            NewKeyRecord {
                id,
                account_id: AccountId::parse("acct_0123456789").expect("valid"),
                kind: KeyKind::ApiKey,
                name: Name::parse("name", "production backend key").expect("valid"),
                scopes: Scopes::parse_grants(&["applications:read", "logs:read"]).expect("valid"),
                application_ids: vec![],
                secret_hash: hash.clone(),
                expires_at: None,
            },
            created,
        );
        // A hot key carries the digest of its verified credential, and a last use.
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&(id.to_string().len() as u64 ^ created.as_millis() as u64).to_le_bytes());
        record.verified_digest = Some(VerifiedDigest { key_fingerprint: [1; 8], digest });
        record.last_used_at = Some(created);
        store.insert_key(&record);
    }
    let settings = CacheSettings { capacity: keys as u64 * 2, ttl: Duration::from_secs(30), max_stale: Duration::ZERO };
    let cache = CachedStore::new(store, settings);

    let before = resident_bytes();
    for &id in &ids {
        cache.key(id).await?.expect("stored");
    }
    let cached = cache.stats().keys.entries;
    let after = resident_bytes();
    println!(
        "{keys} hot keys cached and verified ({cached} records): resident memory +{:.1} MiB, {:.0} bytes per cached key",
        (after - before) as f64 / (1024.0 * 1024.0),
        (after.saturating_sub(before)) as f64 / keys as f64,
    );
    Ok(())
}

/// Memory per subject of a limit at 100,000 a minute, admitted to the full: exact (a log of
/// every admission in the window) against high-rate (100 buckets), in the real in-process
/// limiter, measured as resident memory before and after. Each subject is filled by one
/// admission every 0.6 ms for a minute, so every one of its buckets holds counts.
pub fn limits(subjects: usize) -> anyhow::Result<()> {
    use keygate::policy::{LimitKind, LimitRule, LimitSubject, OnStoreError};
    use keygate::ratelimit::{LimitCheck, LimitOutcome, LimitSource, LocalLimiter};
    const LIMIT: u32 = 100_000;
    for kind in [LimitKind::Exact, LimitKind::HighRate] {
        let rule = LimitRule {
            key: "plan".into(),
            limit: LIMIT,
            window: Duration::from_secs(60),
            per: LimitSubject::Account,
            on_store_error: OnStoreError::Local,
            kind,
        };
        let limiter = LocalLimiter::new(subjects as u64 * 2);
        let names: Vec<String> = (0..subjects).map(|i| format!("acct_{i:08}")).collect();
        let before = resident_bytes();
        let mut admitted = 0u64;
        for step in 0..LIMIT as i64 {
            let now = Timestamp::from_millis(1_700_000_000_000 + step * 6 / 10);
            for name in &names {
                let check = [LimitCheck { rule: &rule, subject: name, source: LimitSource::Policy }];
                if matches!(limiter.check(&check, now), LimitOutcome::Admitted { .. }) {
                    admitted += 1;
                }
            }
        }
        let after = resident_bytes();
        println!(
            "{kind:?}: {subjects} subjects at {LIMIT}/min, {admitted} admitted: resident memory +{:.1} MiB, {:.0} bytes per subject",
            after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
            after.saturating_sub(before) as f64 / subjects as f64,
        );
    }
    Ok(())
}

/// The same in Redis: one subject at 100,000 a minute, filled through the real limiter (an
/// admission every 0.6 ms of a simulated minute), then Redis' own `MEMORY USAGE` of what
/// it holds for the subject: the exact limit's sorted set against the high-rate limit's two
/// hashes (bucket counts and reservations).
pub async fn limits_in_redis(url: &str) -> anyhow::Result<()> {
    use keygate::policy::{LimitKind, LimitRule, LimitSubject, OnStoreError};
    use keygate::ratelimit::{lease::LeaseSettings, redis::RedisLimiter, LimitCheck, LimitOutcome, LimitSource};
    const LIMIT: u32 = 100_000;
    let prefix = format!("keygate-bench:{}:", keygate::domain::random_token(8)?);
    for kind in [LimitKind::HighRate, LimitKind::Exact] {
        let rule = LimitRule {
            key: "plan".into(),
            limit: LIMIT,
            window: Duration::from_secs(60),
            per: LimitSubject::Account,
            on_store_error: OnStoreError::Closed,
            kind,
        };
        let breaker = keygate::breaker::Breaker::new(
            "rate limit store",
            keygate::breaker::BreakerSettings {
                timeout: Duration::from_secs(5),
                failures_to_open: 3,
                probe_every: Duration::from_millis(250),
            },
        );
        let limiter = RedisLimiter::new(url, prefix.clone(), std::sync::Arc::new(breaker), LeaseSettings::default())?;
        let start = 1_700_000_000_000i64;
        let mut admitted = 0u64;
        for step in 0..LIMIT as i64 {
            let now = Timestamp::from_millis(start + step * 6 / 10);
            let check = [LimitCheck { rule: &rule, subject: "acct_busy", source: LimitSource::Policy }];
            if matches!(limiter.check(&check, now).await?, LimitOutcome::Admitted { .. }) {
                admitted += 1;
            }
        }
        // Spends still held are reported, as a replica does when the subject goes idle.
        limiter.release_idle(Timestamp::from_millis(start + 60_000), Duration::ZERO).await;
        let bytes = match kind {
            LimitKind::HighRate => {
                let (counts, reservations) =
                    keygate::ratelimit::redis::lease_keys(&prefix, "plan", 60_000, "acct_busy");
                crate::accuracy::redis_bytes(url, &counts).await?
                    + crate::accuracy::redis_bytes(url, &reservations).await?
            }
            LimitKind::Exact => crate::accuracy::redis_bytes(url, &format!("{prefix}plan:acct_busy")).await?,
        };
        println!("{kind:?} in Redis: one subject at {LIMIT}/min, {admitted} admitted: {bytes} bytes (MEMORY USAGE)");
    }
    Ok(())
}

/// What one limit check costs in the limiter itself, leased (`RedisLimiter`, the slice
/// already held, so no round trip) against in-process (`LocalLimiter`), over 500 subjects:
/// one caller, then 64 callers on two workers. No Redis round trip is timed.
pub async fn limit_path(url: &str) -> anyhow::Result<()> {
    use keygate::policy::{LimitKind, LimitRule, LimitSubject, OnStoreError};
    use keygate::ratelimit::{lease::LeaseSettings, redis::RedisLimiter, LimitCheck, LimitSource, LocalLimiter};
    let breaker = keygate::breaker::Breaker::new(
        "rate limit store",
        keygate::breaker::BreakerSettings {
            timeout: Duration::from_secs(1),
            failures_to_open: 3,
            probe_every: Duration::from_millis(250),
        },
    );
    let prefix = format!("keygate-bench:{}:", keygate::domain::random_token(8)?);
    // Slices of half the limit and a long period: nothing is renewed while timing.
    let settings =
        LeaseSettings { share: 0.5, max_share: 0.5, period: Duration::from_secs(600), ..LeaseSettings::default() };
    let leased = Arc::new(RedisLimiter::new(url, prefix, Arc::new(breaker), settings)?);
    let local = Arc::new(LocalLimiter::default());
    let rule = Arc::new(LimitRule {
        key: "global".into(),
        limit: 100_000_000,
        window: Duration::from_secs(60),
        per: LimitSubject::Account,
        on_store_error: OnStoreError::Local,
        kind: LimitKind::HighRate,
    });
    let now = Timestamp::from_millis(1_700_000_000_000);
    let subjects: Arc<Vec<String>> = Arc::new((0..500).map(|s| format!("acct_{s:04}")).collect());
    for subject in subjects.iter() {
        let check = [LimitCheck { rule: &rule, subject, source: LimitSource::Policy }];
        leased.check(&check, now).await?;
        local.check(&check, now);
    }
    const CHECKS: usize = 400_000;
    for callers in [1usize, 64] {
        let mut per_check = Vec::new();
        for kind in ["leased", "local"] {
            let started = std::time::Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for caller in 0..callers {
                let (leased, local, rule, subjects) = (leased.clone(), local.clone(), rule.clone(), subjects.clone());
                set.spawn(async move {
                    for i in 0..CHECKS / callers {
                        let check = [LimitCheck {
                            rule: &rule,
                            subject: &subjects[(i * 7 + caller) % 500],
                            source: LimitSource::Policy,
                        }];
                        match kind {
                            "leased" => drop(leased.check(&check, now).await),
                            _ => drop(local.check(&check, now)),
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
            per_check.push(started.elapsed().as_nanos() as f64 / CHECKS as f64);
        }
        println!(
            "{callers} caller(s): leased {:.0} ns per check, in process {:.0} ns ({:.2}x)",
            per_check[0],
            per_check[1],
            per_check[0] / per_check[1]
        );
    }
    Ok(())
}

/// Memory per subject counted by usage analytics: `subjects` keys (100 to an account), each
/// with one decision in the current minute, in the real in-memory counter, measured as
/// resident memory before and after (nothing is flushed: the counter holds them all, as it
/// does between two flushes).
pub async fn usage(subjects: usize) -> anyhow::Result<()> {
    use keygate::analytics::UsageCountSettings;
    use keygate::analytics::{UsageCounts, OUTCOMES};
    use keygate::clock::SystemClock;
    use keygate::store::sql::SqlStore;
    let dir = std::env::temp_dir().join(format!("keygate-usage-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}/kg.db", dir.display());
    let store = Arc::new(SqlStore::connect(&url, 1, Duration::from_secs(5)).await?);
    let settings =
        UsageCountSettings { max_keys: subjects, max_keys_per_account: subjects, ..UsageCountSettings::default() };
    let counts = UsageCounts::new(store, Arc::new(SystemClock), settings);
    let hash = SecretHash::new("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$qJ8m2k0cXo9gq9Zt7wOQm8".into());
    let now = Timestamp::from_millis(1_700_000_000_000);
    let records: Vec<KeyRecord> = (0..subjects)
        .map(|i| {
            let mut record = KeyRecord::issued(
                NewKeyRecord {
                    id: KeyId::parse(&format!("key_{i:016}")).expect("valid"),
                    account_id: AccountId::parse(&format!("acct_{:010}", i / 100)).expect("valid"),
                    kind: KeyKind::ApiKey,
                    name: Name::parse("name", "k").expect("valid"),
                    scopes: Scopes::parse_grants(&["logs:read"]).expect("valid"),
                    application_ids: vec![],
                    secret_hash: hash.clone(),
                    expires_at: None,
                },
                now,
            );
            record.owner_id = Some(keygate::domain::OwnerId::parse(&format!("owner-{}", i / 10)).expect("valid"));
            record
        })
        .collect();
    let before = resident_bytes();
    for (n, record) in records.iter().enumerate() {
        counts.count(record, now, n % OUTCOMES.len());
    }
    let after = resident_bytes();
    let held = counts.stats();
    println!(
        "{subjects} keys counted in one minute ({} held): resident memory +{:.1} MiB, {:.0} bytes per counted key",
        held.keys,
        (after - before) as f64 / (1024.0 * 1024.0),
        (after.saturating_sub(before)) as f64 / subjects as f64,
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
