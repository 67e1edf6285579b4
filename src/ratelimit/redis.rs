//! Rate-limit counters in Redis, shared by every replica: one Lua script checks every
//! limit of a request and counts it in all of them, atomically, so "10 per hour per
//! account" means 10 across all replicas. Each counter is a sorted set of admitted
//! requests scored by time, expiring with its window.
//!
//! Time comes from the replica's clock (keep replicas NTP-synced; skew of milliseconds is
//! immaterial for windows of a second or more).

use super::{LimitCheck, LimitOutcome, LimiterError, LocalLimiter, Room};
use crate::breaker::Breaker;
use crate::domain::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

/// KEYS: one sorted set per limit. ARGV: now (ms), a unique member, then per key its window
/// (ms) and limit. Returns {1, tightest limit, remaining} or {0, limit, retry after ms, which
/// key (1-based)}.
const CHECK_AND_COUNT: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
local worst_limit, worst_retry, worst_index = 0, -1, 0
local tight_limit, tight_remaining = 0, -1
for i = 1, #KEYS do
  local window = tonumber(ARGV[1 + 2 * i])
  local limit = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2])
    local retry = oldest + window - now
    if retry > worst_retry then worst_limit, worst_retry, worst_index = limit, retry, i end
  else
    local remaining = limit - count - 1
    if tight_remaining < 0 or remaining < tight_remaining then tight_limit, tight_remaining = limit, remaining end
  end
end
if worst_retry >= 0 then return {0, worst_limit, worst_retry, worst_index} end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, member)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1 + 2 * i]))
end
return {1, tight_limit, tight_remaining}
"#;

pub struct RedisLimiter {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    /// Makes each counted request a distinct member of the sorted sets.
    nonce: String,
    counter: AtomicU64,
    fallback: LocalLimiter,
    /// Bounds each check, and skips Redis entirely while it is known to be down.
    breaker: std::sync::Arc<Breaker>,
}

impl RedisLimiter {
    /// Does not connect yet: keygate starts (and fails closed per limit) while Redis is down.
    pub fn new(url: &str, prefix: String, breaker: std::sync::Arc<Breaker>) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: OnceCell::new(),
            script: redis::Script::new(CHECK_AND_COUNT),
            prefix,
            nonce: crate::domain::random_token(12).unwrap_or_default(),
            counter: AtomicU64::new(0),
            fallback: LocalLimiter::default(),
            breaker,
        })
    }

    /// Counts for limits that fall back to local counting while Redis is unreachable.
    pub fn fallback(&self) -> &LocalLimiter {
        &self.fallback
    }

    async fn connection(&self) -> Result<ConnectionManager, LimiterError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
            .map_err(|e| LimiterError::Unreachable(Box::new(e)))
    }

    pub fn breaker(&self) -> &std::sync::Arc<Breaker> {
        &self.breaker
    }

    /// Does Redis answer a PING? For the breaker's background probe.
    pub async fn ping(&self) -> bool {
        let Ok(mut connection) = self.connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
    }

    /// Checks and counts in Redis, within the breaker's timeout.
    pub async fn check(&self, checks: &[LimitCheck<'_>], now: Timestamp) -> Result<LimitOutcome, LimiterError> {
        self.breaker
            .guard(self.check_in_redis(checks, now), |_| true)
            .await
            .map_err(|refused| LimiterError::Unreachable(Box::new(refused)))?
    }

    async fn check_in_redis(&self, checks: &[LimitCheck<'_>], now: Timestamp) -> Result<LimitOutcome, LimiterError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for check in checks {
            invocation.key(format!("{}{}:{}", self.prefix, check.rule.key, check.subject));
        }
        let member = format!("{}-{}", self.nonce, self.counter.fetch_add(1, Ordering::Relaxed));
        invocation.arg(now.as_millis()).arg(member);
        for check in checks {
            invocation.arg(check.rule.window.as_millis() as i64).arg(check.rule.limit);
        }
        let answer: Vec<i64> =
            invocation.invoke_async(&mut connection).await.map_err(|e| LimiterError::Unreachable(Box::new(e)))?;
        let [admitted, limit, value, ..] = answer[..] else {
            return Err(LimiterError::Unreachable("the limit script answered in an unknown shape".into()));
        };
        Ok(if admitted == 1 {
            let tightest = (value >= 0).then(|| Room { limit: limit.max(0) as u32, remaining: value.max(0) as u32 });
            LimitOutcome::Admitted { tightest }
        } else {
            LimitOutcome::Limited {
                limit: limit.max(0) as u32,
                retry_after: Duration::from_millis(value.max(0) as u64),
                check: answer.get(3).map_or(0, |i| (*i - 1).max(0) as usize),
            }
        })
    }
}
