//! Cross-replica cache invalidation over Postgres `LISTEN`/`NOTIFY`.
//!
//! A trigger notifies on every change to a key or an application, inside the writing
//! transaction (see the Postgres migrations). Each replica runs one listener task that
//! invalidates what a notification names. Notifications are lost while the listener's
//! connection is down, so each (re)connection distrusts the whole cache *after* `LISTEN` is
//! active: nothing changed during the gap can survive it. The cache TTL bounds staleness
//! if everything else fails.

use super::cached::CachedStore;
use crate::domain::{ApplicationId, KeyId, SessionId};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sqlx::postgres::{PgListener, PgNotification};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the listener is doing, for health, tests and metrics.
#[derive(Debug)]
pub struct ListenerStatus {
    connected: AtomicBool,
    backend_pid: AtomicI32,
    connections: AtomicU64,
    notifications: AtomicU64,
    /// Milliseconds from the writer's commit-time clock to this replica's invalidation.
    last_lag_millis: AtomicI64,
    /// The same lag, in seconds, for every notification.
    lag: Histogram,
}

impl Default for ListenerStatus {
    fn default() -> Self {
        Self {
            connected: Default::default(),
            backend_pid: Default::default(),
            connections: Default::default(),
            notifications: Default::default(),
            last_lag_millis: Default::default(),
            // 100 µs to ~3 s.
            lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl ListenerStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The Postgres backend pid of the listening connection (0 when not connected).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid.load(Ordering::SeqCst)
    }

    /// How many times the listener has connected (1 + reconnects).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::SeqCst)
    }

    pub fn last_lag_millis(&self) -> i64 {
        self.last_lag_millis.load(Ordering::SeqCst)
    }

    pub fn lag(&self) -> Histogram {
        self.lag.clone()
    }
}

/// Starts the listener task; it runs until the returned handle is aborted.
pub fn spawn(database_url: String, cache: Arc<CachedStore>) -> (Arc<ListenerStatus>, tokio::task::JoinHandle<()>) {
    let status = Arc::new(ListenerStatus::default());
    let task = tokio::spawn(listen_forever(database_url, cache, status.clone()));
    (status, task)
}

async fn listen_forever(database_url: String, cache: Arc<CachedStore>, status: Arc<ListenerStatus>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match connect(&database_url).await {
            Ok((mut listener, pid)) => {
                backoff = Duration::from_millis(50);
                status.backend_pid.store(pid, Ordering::SeqCst);
                status.connected.store(true, Ordering::SeqCst);
                let connections = status.connections.fetch_add(1, Ordering::SeqCst) + 1;
                // Whatever changed while nobody listened is unknown: reload everything.
                cache.distrust_all();
                if connections > 1 {
                    tracing::info!(
                        backend_pid = pid,
                        "invalidation listener reconnected; every cached record will be reloaded"
                    );
                }
                let reason = receive(&mut listener, &cache, &status).await;
                status.connected.store(false, Ordering::SeqCst);
                status.backend_pid.store(0, Ordering::SeqCst);
                tracing::warn!(%reason, "invalidation listener lost its connection; reconnecting");
                // Distrust now too, so the gap serves nothing fresh from before it.
                cache.distrust_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "invalidation listener cannot connect");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn connect(database_url: &str) -> Result<(PgListener, i32), sqlx::Error> {
    let mut listener = PgListener::connect(database_url).await?;
    // We reconnect ourselves, so that distrusting the cache comes after LISTEN is active again.
    listener.eager_reconnect(false);
    let (schema, pid): (String, i32) =
        sqlx::query_as("SELECT current_schema()::TEXT, pg_backend_pid()").fetch_one(&mut listener).await?;
    listener.listen(&channel_for(&schema)).await?;
    Ok((listener, pid))
}

/// The channel the migration's trigger notifies on.
fn channel_for(schema: &str) -> String {
    format!("keygate_changes_{schema}")
}

/// Handles notifications until the connection fails; returns why it stopped.
async fn receive(listener: &mut PgListener, cache: &CachedStore, status: &ListenerStatus) -> String {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => apply(&notification, cache, status),
            Ok(None) => return "connection closed".to_owned(),
            Err(e) => return e.to_string(),
        }
    }
}

fn apply(notification: &PgNotification, cache: &CachedStore, status: &ListenerStatus) {
    status.notifications.fetch_add(1, Ordering::SeqCst);
    let mut parts = notification.payload().splitn(3, ':');
    let (kind, id, sent) = (parts.next(), parts.next(), parts.next());
    match (kind, id) {
        (Some("key"), Some(id)) if KeyId::parse(id).is_ok() => {
            cache.invalidate_key(KeyId::parse(id).expect("checked"));
        }
        (Some("ses"), Some(id)) if SessionId::parse(id).is_ok() => {
            cache.invalidate_session(SessionId::parse(id).expect("checked"));
        }
        (Some("app"), Some(id)) if ApplicationId::parse(id).is_ok() => {
            cache.invalidate_application(&ApplicationId::parse(id).expect("checked"));
        }
        // Something we do not understand may still be a change: be safe.
        _ => {
            tracing::warn!(
                payload = notification.payload(),
                "unknown change notification; reloading every cached record"
            );
            cache.distrust_all();
        }
    }
    if let Some(sent) = sent.and_then(|s| s.parse::<i64>().ok()) {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock).as_millis();
        status.last_lag_millis.store(now - sent, Ordering::SeqCst);
        // Clocks of two machines can disagree a little; a negative lag counts as none.
        status.lag.observe((now - sent).max(0) as f64 / 1000.0);
    }
}
