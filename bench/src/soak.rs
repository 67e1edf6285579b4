//! A soak run: keygate under high load for minutes, with key churn (creates and revokes),
//! a stream of garbage credentials, and a check of every single decision against what the
//! run knows to be true. Reports calls, wrong decisions, panics and resident memory over
//! time. A report, not a test: run it by hand (`keygate-bench soak --minutes 10`).

use crate::fixture;
use crate::load::Rng;
use keygate::grpc::proto::{self as pb, authorizer_client::AuthorizerClient};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    /// The revoke was sent but has not returned: either answer is right.
    Revoking,
    Revoked,
}

struct Key {
    id: String,
    secret: String,
    state: State,
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
    created: AtomicU64,
    revoked: AtomicU64,
}

fn resident_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

const PATH: &str = "/api/v1/panel/applications/app_soak0000000000";

pub async fn run(minutes: u64, callers: usize) -> anyhow::Result<()> {
    let panics = Arc::new(AtomicU64::new(0));
    {
        let panics = panics.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::Relaxed);
            previous(info);
        }));
    }
    let dir = std::env::temp_dir().join(format!("keygate-soak-{}", keygate::domain::random_token(8)?));
    std::fs::create_dir_all(&dir)?;
    let server = fixture::keygate(&dir, |s| {
        s.argon2.memory_kib = 8 * 1024;
        s.argon2.iterations = 1;
        // Churn makes and revokes thousands of keys; keep the caches small enough to evict.
        s.cache.capacity = 2_000;
    })?;
    let admin = server.admin().await?;
    let keys: Arc<Mutex<Vec<Key>>> = Arc::default();
    let counts = Arc::new(Counts::default());
    let running = Arc::new(AtomicBool::new(true));
    let create = |admin: &mut fixture::Admin| {
        let mut admin = admin.clone();
        async move {
            let created = admin
                .create_api_key(pb::CreateApiKeyRequest {
                    account_id: "acct_soak".into(),
                    name: "soak".into(),
                    scopes: vec!["*".into()],
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::Ok(Key { id: created.key.expect("key").id, secret: created.secret, state: State::Live })
        }
    };
    for _ in 0..200 {
        let key = create(&mut admin.clone()).await?;
        keys.lock().expect("keys").push(key);
    }

    // Churn: a new key and a revoke, 20 of each per second.
    let churn = {
        let (mut admin, keys, counts, running) = (admin.clone(), keys.clone(), counts.clone(), running.clone());
        tokio::spawn(async move {
            let mut rng = Rng::new(7);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(key) = create(&mut admin).await {
                    keys.lock().expect("keys").push(key);
                    counts.created.fetch_add(1, Ordering::Relaxed);
                }
                let victim = {
                    let mut keys = keys.lock().expect("keys");
                    let live: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].state == State::Live).collect();
                    if live.len() < 50 {
                        continue;
                    }
                    let i = live[(rng.next_u64() % live.len() as u64) as usize];
                    keys[i].state = State::Revoking;
                    (i, keys[i].id.clone())
                };
                let revoke = pb::RevokeApiKeyRequest { id: victim.1, reason: "soak".into() };
                if admin.revoke_api_key(revoke).await.is_ok() {
                    keys.lock().expect("keys")[victim.0].state = State::Revoked;
                    counts.revoked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // Callers: 90% real keys (checked against their state), 10% garbage.
    let channel = server.channel().await?;
    let load: Vec<_> = (0..callers)
        .map(|c| {
            let client = AuthorizerClient::new(channel.clone());
            let (keys, counts, running) = (keys.clone(), counts.clone(), running.clone());
            tokio::spawn(caller(client, keys, counts, running, 100 + c as u64))
        })
        .collect();

    let peak = report_every_30_seconds(Duration::from_secs(minutes * 60), &counts).await;
    running.store(false, Ordering::Relaxed);
    churn.await?;
    for task in load {
        task.await?;
    }
    println!(
        "soak: {} minutes, {} calls, {} keys created, {} revoked, {} wrong decisions, {} errors, {} panics, peak RSS {:.1} MiB",
        minutes,
        counts.calls.load(Ordering::Relaxed),
        counts.created.load(Ordering::Relaxed),
        counts.revoked.load(Ordering::Relaxed),
        counts.wrong.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        panics.load(Ordering::Relaxed),
        peak
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One caller, until `running` turns false: 90% real keys (each answer checked against
/// the key's state), 10% garbage.
async fn caller(
    mut client: AuthorizerClient<tonic::transport::Channel>,
    keys: Arc<Mutex<Vec<Key>>>,
    counts: Arc<Counts>,
    running: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    while running.load(Ordering::Relaxed) {
        let mut picked = None;
        let (credential, expected) = if rng.unit() < 0.1 {
            (format!("kg_{:016x}garbage", rng.next_u64()), Some(false))
        } else {
            let keys = keys.lock().expect("keys");
            let index = (rng.next_u64() % keys.len() as u64) as usize;
            picked = Some(index);
            let key = &keys[index];
            let expected = match key.state {
                State::Live => None, // checked below: allowed, or not_found for the made-up app
                State::Revoking => Some(true),
                State::Revoked => Some(false),
            };
            (key.secret.clone(), expected)
        };
        let request =
            pb::AuthorizeRequest { credential, method: "GET".into(), path: PATH.into(), ..Default::default() };
        counts.calls.fetch_add(1, Ordering::Relaxed);
        match client.authorize(request).await {
            Ok(response) => {
                let code = response.into_inner().code;
                // A revoke that started while this call was on its way may
                // or may not have been seen: both answers are right then.
                let raced = picked.is_some_and(|i| keys.lock().expect("keys")[i].state != State::Live);
                let expected = if expected.is_none() && raced { Some(true) } else { expected };
                let right = match expected {
                    // A live key reaches the application check: it does not exist.
                    None => code == "not_found",
                    Some(true) => code == "not_found" || code == "api_key_revoked",
                    Some(false) => code == "api_key_revoked" || code == "api_key_invalid",
                };
                if !right {
                    counts.wrong.fetch_add(1, Ordering::Relaxed);
                    eprintln!("wrong decision: {code}");
                }
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Prints the counts and the resident memory every 30 s for `length`; the peak memory.
async fn report_every_30_seconds(length: Duration, counts: &Counts) -> f64 {
    let started = Instant::now();
    let end = started + length;
    let mut peak = 0.0f64;
    println!(
        "{:>6} {:>12} {:>10} {:>8} {:>8} {:>7} {:>7} {:>10}",
        "s", "calls", "calls/s", "created", "revoked", "wrong", "errors", "RSS MiB"
    );
    let mut last_calls = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let calls = counts.calls.load(Ordering::Relaxed);
        let rss = resident_mib();
        peak = peak.max(rss);
        println!(
            "{:>6} {:>12} {:>10.0} {:>8} {:>8} {:>7} {:>7} {:>10.1}",
            started.elapsed().as_secs(),
            calls,
            (calls - last_calls) as f64 / 30.0,
            counts.created.load(Ordering::Relaxed),
            counts.revoked.load(Ordering::Relaxed),
            counts.wrong.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed),
            rss
        );
        last_calls = calls;
    }
    peak
}
