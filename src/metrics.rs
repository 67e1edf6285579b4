//! Prometheus metrics: one registry over the instruments each part owns, served as
//! OpenMetrics text on a separate port (off by default: `--metrics-listen`).
//!
//! Parts keep their own instruments (the authorizer its decision counters, the store
//! decorator its latencies, the verifier its argon2 timings), so none of them depends on
//! this module; values that already live in atomics (cache sizes, counts of the listener)
//! are read at scrape time by [`StateCollector`].

use crate::authn::verifier::Verifier;
use crate::authz::AuthorizeMetrics;
use crate::breaker::Breaker;
use crate::store::cached::CachedStore;
use crate::store::invalidation::ListenerStatus;
use crate::store::metered::StoreMetrics;
use crate::usage::UsageRecorder;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::Arc;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the metrics read, handed over by whoever wires the server: this module depends on
/// the parts it reads, not on the wiring.
#[derive(Clone)]
pub struct Sources {
    pub authorize: AuthorizeMetrics,
    pub verifier: Arc<Verifier>,
    pub store: StoreMetrics,
    pub usage: Arc<UsageRecorder>,
    pub usage_counts: Arc<crate::analytics::UsageCounts>,
    pub cache: Arc<CachedStore>,
    /// The cross-replica invalidation listener (Postgres only).
    pub invalidation: Option<Arc<ListenerStatus>>,
    pub store_breaker: Arc<Breaker>,
    pub limiter_breaker: Option<Arc<Breaker>>,
    pub limiter: Arc<crate::ratelimit::Limiter>,
    /// Each TLS listener, for its handshake counts (empty without TLS).
    pub tls: Vec<Arc<crate::tls::ListenerTls>>,
    pub admin: crate::grpc::admin::AdminGateMetrics,
}

/// Every metric of a running server, under the `keygate_` prefix.
pub fn registry(handles: &Sources) -> Registry {
    let mut registry = Registry::with_prefix("keygate");
    let authz = handles.authorize.clone();
    registry.register("decisions", "Authorize and Check decisions, by route template and code", authz.decisions);
    registry.register(
        "authorize_failures",
        "Calls that could not be decided (answered UNAVAILABLE or INTERNAL), by cause",
        authz.failures,
    );
    registry.register(
        "rate_limit_checks",
        "Rate limit checks of otherwise allowed calls, by outcome (admitted, limited, unavailable)",
        authz.limits,
    );
    registry.register("policy_reloads", "Policy file reloads, by result (applied, rejected)", authz.policy_reloads);
    registry.register_with_unit(
        "argon2_verification",
        "argon2id verifications, from asking for a slot to the answer (decoys included)",
        Unit::Seconds,
        handles.verifier.durations(),
    );
    let store = handles.store.clone();
    registry.register_with_unit(
        "store_operation",
        "Database operations (cache misses and writes), by operation",
        Unit::Seconds,
        store.seconds,
    );
    registry.register("store_errors", "Failed database operations, by operation and kind", store.errors);
    registry.register(
        "admin_refusals",
        "Admin calls the gate refused, by reason (wrong_token, source_throttled, rate_limited)",
        handles.admin.refusals.clone(),
    );
    registry.register("key_usage_written", "Key uses written to last_used_at (batched)", handles.usage.written());
    if let Some(listener) = &handles.invalidation {
        registry.register_with_unit(
            "invalidation_lag",
            "From a change's commit on any replica to this replica dropping it from its cache",
            Unit::Seconds,
            listener.lag(),
        );
    }
    registry.register_collector(Box::new(StateCollector(handles.clone())));
    registry
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// One sample's value from rendered text, by its series as printed (`name{labels}`): for
/// tools and tests that read what a scrape would.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: crate::tls::HttpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE as CONTENT_TYPE_HEADER;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { ([(CONTENT_TYPE_HEADER, CONTENT_TYPE)], render(&registry)) }
        }),
    );
    match listener {
        crate::tls::HttpListener::Plain(listener) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        crate::tls::HttpListener::Tls(listener) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    cache: &'static str,
    result: &'static str,
}

/// Values read at scrape time from the parts that keep them.
struct StateCollector(Sources);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let handles = &self.0;
        cache(&mut encoder, handles)?;
        argon2(&mut encoder, handles)?;
        gauge(&mut encoder, "key_usage_pending", "Key uses waiting to be written", handles.usage.pending() as i64)?;
        usage_counts(&mut encoder, handles)?;
        breakers(&mut encoder, handles)?;
        rate_limit_leases(&mut encoder, handles)?;
        tls_handshakes(&mut encoder, handles)?;
        invalidation(&mut encoder, handles)
    }
}

/// The record cache: entries, lookups, stale reads.
fn cache(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    let stats = handles.cache.stats();
    let caches = [("keys", stats.keys), ("applications", stats.applications), ("sessions", stats.sessions)];
    let entries = ConstGauge::new(0i64);
    let mut family = encoder.encode_descriptor(
        "cache_entries",
        "Records held in the in-process cache, by cache",
        None,
        entries.metric_type(),
    )?;
    for (cache, counts) in caches {
        ConstGauge::new(counts.entries as i64).encode(family.encode_family(&CacheLabels { cache })?)?;
    }

    let lookups = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(
        "cache_lookups",
        "Lookups by cache and result: hit (served from memory) or miss (read from the store)",
        None,
        lookups.metric_type(),
    )?;
    for (cache, counts) in caches {
        for (result, count) in [("hit", counts.hits), ("miss", counts.misses)] {
            ConstCounter::new(count).encode(family.encode_family(&LookupLabels { cache, result })?)?;
        }
    }

    counter(
        encoder,
        "served_stale",
        "Reads answered from the cache past its TTL because the store was unreachable",
        stats.served_stale,
    )?;
    Ok(())
}

/// argon2: verifications run, and the queue for its slots.
fn argon2(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    counter(
        encoder,
        "argon2_verifications",
        "argon2id verifications run (cache misses, wrong secrets and decoys)",
        handles.verifier.verifications(),
    )?;
    // No account in any label: one series per account would grow without bound.
    let queue = handles.verifier.queue_counts();
    gauge(
        encoder,
        "argon2_waiting",
        "Verifications waiting for a slot, in their accounts' queues",
        handles.verifier.waiting() as i64,
    )?;
    counter(encoder, "argon2_queued", "Verifications that found no slot free and waited", queue.queued)?;
    counter(
        encoder,
        "argon2_abandoned",
        "Verifications whose caller left while they waited (dropped unrun)",
        queue.abandoned,
    )?;
    let refused = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(
        "argon2_refused",
        "Hashing refused, by reason: account_queue_full (the key's account has as much waiting as it may; \
         answered throttled), admin_deadline (a new key's hash waited its deadline; answered UNAVAILABLE)",
        None,
        refused.metric_type(),
    )?;
    for (reason, count) in
        [("account_queue_full", queue.refused_account_full), ("admin_deadline", queue.refused_admin_deadline)]
    {
        ConstCounter::new(count).encode(family.encode_family(&ReasonLabels { reason })?)?;
    }
    Ok(())
}

/// Usage analytics: what is held, written, and what could not be counted.
fn usage_counts(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    let stats = handles.usage_counts.stats();
    gauge(
        encoder,
        "usage_keys",
        "Keys (per minute) whose decisions are counted in memory until the next flush",
        stats.keys as i64,
    )?;
    gauge(encoder, "usage_pending", "Usage increments a failed flush left for the next one", stats.pending as i64)?;
    counter(encoder, "usage_written", "Usage increments written to the store", stats.written)?;
    counter(
        encoder,
        "usage_flush_failures",
        "Usage flushes the store refused (their increments kept)",
        stats.flush_failures,
    )?;
    let mut family = encoder.encode_descriptor(
        "usage_dropped",
        "Decisions not counted in usage, by reason: keys_full (--usage-max-keys keys were already counted \
         since the last flush), account_full (the account's keys held --usage-max-keys-per-account), pending_full (a failed flush's increments could not all be kept)",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for (reason, count) in [
        ("keys_full", stats.dropped_keys_full),
        ("account_full", stats.dropped_account_full),
        ("pending_full", stats.dropped_pending_full),
    ] {
        ConstCounter::new(count).encode(family.encode_family(&ReasonLabels { reason })?)?;
    }
    Ok(())
}

/// The stores' breakers.
fn breakers(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    let breakers =
        [Some(("store", &handles.store_breaker)), handles.limiter_breaker.as_ref().map(|b| ("rate_limit_store", b))];
    for (name, breaker) in breakers.into_iter().flatten() {
        gauge(
            encoder,
            &format!("{name}_circuit_open"),
            "1 while the store is known to be unreachable: nothing waits for it until a probe succeeds",
            i64::from(breaker.is_open()),
        )?;
        counter(
            encoder,
            &format!("{name}_circuit_opened"),
            "Times the store was found unreachable (the breaker opened)",
            breaker.times_opened(),
        )?;
    }
    Ok(())
}

/// High-rate limits' slices, and counts taken back, on Redis.
fn rate_limit_leases(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    if let crate::ratelimit::Limiter::Redis(redis) = &*handles.limiter {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = redis.stats();
        gauge(
            encoder,
            "rate_limit_leases",
            "Slices of high-rate limits this replica holds (one per busy subject and rule)",
            redis.leases_held() as i64,
        )?;
        counter(
            encoder,
            "rate_limit_lease_renewals",
            "Slices of high-rate limits renewed or released in Redis (one per subject; several share a round trip)",
            stats.renewals.load(Relaxed),
        )?;
        counter(
            encoder,
            "rate_limit_lease_round_trips",
            "Round trips to Redis (lease script runs) that renewed or released slices of high-rate limits",
            stats.round_trips.load(Relaxed),
        )?;
        counter(
            encoder,
            "rate_limit_lease_failures",
            "Renewals Redis did not answer (the slice is spent until it lapses)",
            stats.failed.load(Relaxed),
        )?;
        counter(
            encoder,
            "rate_limit_lease_waits",
            "Requests that found their slice empty and waited for Redis",
            stats.waited.load(Relaxed),
        )?;
        counter(
            encoder,
            "rate_limit_uncounted",
            "Requests to exact limits Redis counted but whose answer never came in time (a timeout, a caller that hung up), taken back",
            stats.uncounted.load(Relaxed),
        )?;
        counter(
            encoder,
            "rate_limit_uncount_lost",
            "Unanswered requests' counts that could not be taken back (each stays until its window passes)",
            stats.uncount_lost.load(Relaxed),
        )?;
        counter(
            encoder,
            "rate_limit_rolled_back",
            "On a Redis Cluster: exact counts of requests one slot refused, taken back out of the slots that counted them",
            stats.rolled_back.load(Relaxed),
        )?;
    }
    Ok(())
}

/// TLS handshakes, by listener.
fn tls_handshakes(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    if !handles.tls.is_empty() {
        let listeners: Vec<_> = handles.tls.iter().map(|tls| (tls.name(), tls.handshakes())).collect();
        let mut family = encoder.encode_descriptor(
            "tls_handshakes_in_progress",
            "TLS handshakes in progress, by listener",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (listener, counts) in &listeners {
            ConstGauge::new(counts.in_progress as i64).encode(family.encode_family(&ListenerLabels { listener })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "tls_handshakes_evicted",
            "TLS handshakes closed to make room for a newer connection, by listener and the cap reached (source_full, listener_full)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (listener, counts) in &listeners {
            for (reason, count) in
                [("source_full", counts.evicted_source_full), ("listener_full", counts.evicted_listener_full)]
            {
                ConstCounter::new(count).encode(family.encode_family(&HandshakeLabels { listener, reason })?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tls_handshakes_timed_out",
            "TLS handshakes dropped at a deadline, by listener and deadline (first_bytes, handshake)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (listener, counts) in &listeners {
            for (reason, count) in
                [("first_bytes", counts.first_bytes_timeouts), ("handshake", counts.handshake_timeouts)]
            {
                ConstCounter::new(count).encode(family.encode_family(&HandshakeLabels { listener, reason })?)?;
            }
        }
    }
    Ok(())
}

/// Other replicas' changes, heard and acknowledged (Postgres).
fn invalidation(encoder: &mut DescriptorEncoder, handles: &Sources) -> std::fmt::Result {
    if let Some(listener) = &handles.invalidation {
        gauge(
            encoder,
            "invalidation_listener_connected",
            "1 while this replica listens for other replicas' changes",
            i64::from(listener.is_connected()),
        )?;
        counter(
            encoder,
            "invalidation_listener_connections",
            "Connections made by the invalidation listener (1 + reconnects)",
            listener.connections(),
        )?;
        counter(
            encoder,
            "invalidation_notifications",
            "Change notifications received from the database",
            listener.notifications(),
        )?;
        counter(
            encoder,
            "change_acknowledged",
            "Replicas that applied a change before its admin call returned",
            listener.replicas().acknowledged_total(),
        )?;
        counter(
            encoder,
            "change_fenced",
            "Live replicas that did not acknowledge a change within the wait (fenced)",
            listener.replicas().fenced_total(),
        )?;
        gauge(
            encoder,
            "cache_trusted",
            "1 while this replica's lease on its cache holds (its own heartbeats come back)",
            i64::from(handles.cache.trust().holds()),
        )?;
    }
    Ok(())
}

/// Binds the metrics port, if one was asked for.
pub async fn bind(address: Option<SocketAddr>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use anyhow::Context;
    match address {
        None => Ok(None),
        Some(address) => Ok(Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for metrics on {address}"))?,
        )),
    }
}
