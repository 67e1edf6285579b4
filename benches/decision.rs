//! The decision path without I/O: parsing, route matching, scope checks, cache hits, and
//! a whole Authorize of a hot key (everything but gRPC).
//!
//! `cargo bench --bench decision`

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::authn::budget::{BudgetSettings, FailureBudgets};
use keygate::authn::digest::CredentialDigester;
use keygate::authn::verifier::{Argon2Settings, Verifier};
use keygate::authn::{Authenticator, AuthnSettings};
use keygate::authz::{AuthorizeQuery, Authorizer};
use keygate::clock::{Clock, SystemClock};
use keygate::domain::{AccountId, Credential, GeneratedKey, Name, NewKeyRecord, Scope, Scopes, Timestamp};
use keygate::policy::Policy;
use keygate::ratelimit::{Limiter, LocalLimiter};
use keygate::store::cached::{CacheSettings, CachedStore};
use keygate::store::memory::MemoryStore;
use keygate::store::{KeyKind, KeyRecord, Records};
use keygate::usage::{UsageRecorder, UsageSettings};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn policy_with(routes: usize) -> Policy {
    let mut text = String::new();
    for i in 0..routes {
        text += &format!(
            "[[routes]]\nroute = \"GET /api/v1/resource{i}/{{application_id}}/items/{{item_id}}\"\nscopes = [\"r{i}:read\"]\n"
        );
    }
    Policy::from_toml(&text, "bench").expect("valid")
}

fn parsing_and_matching(c: &mut Criterion) {
    let key = GeneratedKey::generate().expect("random").into_secret_string();
    c.bench_function("credential parse", |b| b.iter(|| Credential::parse(black_box(&key)).is_ok()));
    c.bench_function("credential reject (bad checksum)", |b| {
        let mut bad = key.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'a' { b'b' } else { b'a' };
        let bad = String::from_utf8(bad).expect("ascii");
        b.iter(|| Credential::parse(black_box(&bad)).is_err())
    });
    for routes in [10, 1000] {
        let policy = policy_with(routes);
        let last = format!("/api/v1/resource{}/app_1/items/42", routes - 1);
        c.bench_function(&format!("route match, {routes} routes"), |b| {
            b.iter(|| policy.match_route(black_box("GET"), black_box(&last)).is_some())
        });
    }
    let granted = Scopes::parse_grants(&["applications:read", "logs:*", "users:read", "billing:read"]).expect("valid");
    let required = [Scope::parse_required("logs:export").expect("valid")];
    c.bench_function("scope check (4 grants, wildcard hit)", |b| {
        b.iter(|| granted.first_missing(black_box(&required)).is_none())
    });
}

fn record(id: keygate::domain::KeyId, hash: keygate::domain::SecretHash) -> KeyRecord {
    KeyRecord::issued(
        NewKeyRecord {
            id,
            account_id: AccountId::parse("acct_bench").expect("valid"),
            kind: KeyKind::ApiKey,
            name: Name::parse("name", "bench").expect("valid"),
            scopes: Scopes::parse_grants(&["applications:read"]).expect("valid"),
            application_ids: vec![],
            secret_hash: hash,
            expires_at: None,
        },
        Timestamp::from_millis(0),
    )
}

/// An authorizer over `cache`, as `keygate serve` wires one.
fn wire(policy: &str, cache: &Arc<CachedStore>, verifier: &Arc<Verifier>, clock: Arc<dyn Clock>) -> Authorizer {
    let authn = Authenticator::new(
        cache.clone(),
        verifier.clone(),
        CredentialDigester::new(&[42; 32]),
        FailureBudgets::new(BudgetSettings::default()),
        AuthnSettings::default(),
    );
    Authorizer::new(
        Policy::from_toml(policy, "bench").expect("valid"),
        cache.clone(),
        Arc::new(authn),
        Arc::new(Limiter::Local(LocalLimiter::default())),
        clock,
        Arc::new(UsageRecorder::new(cache.clone(), UsageSettings::default(), 10_000)),
    )
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cheap = Argon2Settings { memory_kib: 8 * 1024, iterations: 1, parallelism: 1, max_concurrent: 1 };
    let verifier = Arc::new(Verifier::new(cheap).expect("verifier"));
    let generated = GeneratedKey::generate().expect("random");
    let credential = generated.credential();
    let hash = runtime.block_on(verifier.hash(credential.secret().as_bytes())).expect("hash");
    let memory = Arc::new(MemoryStore::default());
    memory.insert_key(&record(credential.key_id(), hash));
    let application = keygate::store::Application {
        id: keygate::domain::ApplicationId::parse("app_bench").expect("valid"),
        account_id: AccountId::parse("acct_bench").expect("valid"),
        name: Name::parse("name", "bench").expect("valid"),
        created_at: Timestamp::from_millis(0),
    };
    memory.insert_application(&application);
    let cache = Arc::new(CachedStore::new(
        memory,
        CacheSettings { capacity: 10_000, ttl: Duration::from_secs(30), max_stale: Duration::ZERO },
    ));

    c.bench_function("cache hit (key record)", |b| {
        let id = credential.key_id();
        b.iter(|| runtime.block_on(cache.key(black_box(id))).expect("hit").is_some())
    });

    // The routes of keygate-bench's load runs: an application in the path, no limits.
    let authorizer = wire(
        "[[routes]]\nroute = \"GET /api/v1/panel/applications/{application_id}\"\nscopes = [\"applications:read\"]\n",
        &cache,
        &verifier,
        Arc::new(SystemClock),
    );
    let secret = generated.credential().as_str().to_owned();
    let query = AuthorizeQuery {
        credential: &secret,
        method: "GET",
        path: "/api/v1/panel/applications/app_bench",
        application_id: None,
        required_scopes: vec![],
        client: None,
        cost: None,
        parts: keygate::policy::RequestParts::NONE,
    };
    let verdict = runtime.block_on(authorizer.authorize(&query)).expect("decides");
    assert!(verdict.decision.is_allowed(), "{:?}", verdict.decision);
    // The first call verified with argon2 and stored the digest; the next loads it.
    runtime.block_on(tokio::task::yield_now());
    assert!(runtime.block_on(authorizer.authorize(&query)).expect("decides").decision.is_allowed());
    c.bench_function("authorize, hot key, application in the path (no gRPC)", |b| {
        b.iter(|| runtime.block_on(authorizer.authorize(black_box(&query))).expect("decides").decision.is_allowed())
    });

    // The same under a global limit per account, as the default policy has one. An injected
    // clock moves 1 ms per call, so every call is admitted and counted, and each window
    // holds 1,000 calls.
    let clock = keygate::clock::ManualClock::starting_now();
    let limited = wire(
        "[global_limit]\nlimit = 100000\nwindow = \"second\"\nper = \"account\"\n\
         [[routes]]\nroute = \"GET /api/v1/panel/applications/{application_id}\"\nscopes = [\"applications:read\"]\n",
        &cache,
        &verifier,
        Arc::new(clock.clone()),
    );
    let verdict = runtime.block_on(limited.authorize(&query)).expect("decides");
    assert!(verdict.decision.is_allowed() && verdict.rate_limit.is_some(), "{verdict:?}");
    c.bench_function("authorize, hot key, under a global limit per account", |b| {
        b.iter(|| {
            clock.advance(Duration::from_millis(1));
            runtime.block_on(limited.authorize(black_box(&query))).expect("decides").decision.is_allowed()
        })
    });
}

criterion_group!(benches, parsing_and_matching, hot_path);
criterion_main!(benches);
