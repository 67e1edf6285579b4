//! `keygate-bench accuracy`: how exact a high-rate limit is across replicas on one Redis,
//! and that an exact limit stays exact under the same storm.
//!
//! Three replicas (one SQLite file, one Redis) enforce 6,000 a minute on one account,
//! high-rate (leased slices). Callers offer three times that, spread evenly over the
//! replicas and paced, for two minutes; every admission's time is kept. Reported: the most
//! admitted in any sliding minute against the documented bound (limit + one slice per
//! replica), and the total against what an exact sliding log admits for the same offer.
//! Thirty seconds in, 50 concurrent calls over two replicas ask a route limited (exactly)
//! to 10 an hour per key.

use crate::fixture::{self, Server};
use keygate::grpc::proto::{self as pb, authorizer_client::AuthorizerClient};
use std::time::{Duration, Instant};

const LIMIT: u32 = 6_000;
const REPLICAS: usize = 3;

const POLICY: &str = r#"
[global_limit]
limit = 6000
window = "minute"
per = "account"
kind = "high_rate"

[[routes]]
route = "GET /api/v1/panel/applications"
accepts = ["api_key"]
scopes = ["applications:read"]

[[routes]]
route = "POST /api/v1/panel/exact"
accepts = ["api_key"]
scopes = ["applications:read"]

[[routes.limits]]
limit = 10
window = "hour"
per = "key"
"#;

#[derive(clap::Args)]
pub struct AccuracyArgs {
    #[arg(long, env = "KEYGATE_TEST_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// How long the storm lasts.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Offered load as a multiple of the limit.
    #[arg(long, default_value_t = 3)]
    times: u32,
}

pub async fn run(args: AccuracyArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keygate-accuracy-{}", keygate::domain::random_token(8)?));
    std::fs::create_dir_all(&dir)?;
    let result = storm(&dir, args).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn storm(dir: &std::path::Path, args: AccuracyArgs) -> anyhow::Result<()> {
    let prefix = format!("keygate-bench:{}:", keygate::domain::random_token(8)?);
    let mut replicas: Vec<Server> = Vec::new();
    for _ in 0..REPLICAS {
        let (url, prefix) = (args.redis_url.clone(), prefix.clone());
        replicas.push(fixture::keygate_with_policy(dir, POLICY, move |s| {
            s.rate_limit_store = Some(keygate::config::MaskedUrl::new(url));
            s.rate_limit_key_prefix = prefix;
        })?);
    }
    let admin = replicas[0].admin().await?;
    let key = |account: &str| {
        let request = pb::CreateApiKeyRequest {
            account_id: account.into(),
            name: "accuracy".into(),
            scopes: vec!["applications:read".into()],
            ..Default::default()
        };
        let mut admin = admin.clone();
        async move { anyhow::Ok(admin.create_api_key(request).await?.into_inner().secret) }
    };
    let stormed = key("acct_storm").await?;
    let exact_key = key("acct_exact").await?;
    drop(admin);
    let mut clients = Vec::new();
    for replica in &replicas {
        let mut client = AuthorizerClient::new(replica.channel().await?);
        // Each replica verifies the key once before the storm (argon2 is not measured).
        client.authorize(ask(&exact_key, "GET", "/api/v1/panel/applications")).await?;
        clients.push(client);
    }

    let offered_per_second = f64::from(LIMIT * args.times) / 60.0;
    let per_replica = Duration::from_secs_f64(REPLICAS as f64 / offered_per_second);
    let storm = Duration::from_secs(args.seconds);
    println!(
        "{REPLICAS} replicas on one Redis; high-rate limit {LIMIT}/min on one account; offered {}x ({:.0}/s) for {} s",
        args.times,
        offered_per_second,
        storm.as_secs()
    );
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let (mut client, secret) = (client.clone(), stormed.clone());
        callers.spawn(async move {
            // Staggered, so the replicas' calls interleave evenly.
            tokio::time::sleep(per_replica.mul_f64(i as f64 / REPLICAS as f64)).await;
            let mut every = tokio::time::interval(per_replica);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut admitted = Vec::new();
            let (mut denied, mut errors) = (0u64, 0u64);
            while start.elapsed() < storm {
                every.tick().await;
                let at = start.elapsed();
                match client.authorize(ask(&secret, "GET", "/api/v1/panel/applications")).await {
                    Ok(r) if r.get_ref().allowed => admitted.push(at),
                    Ok(_) => denied += 1,
                    Err(_) => errors += 1,
                }
            }
            (admitted, denied, errors)
        });
    }
    // Thirty seconds in: 50 at once at an exact 10-an-hour limit, over two replicas.
    tokio::time::sleep(Duration::from_secs(30).min(storm / 4)).await;
    let exact_admitted = exact_burst(&clients, &exact_key).await?;

    let mut admitted = Vec::new();
    let (mut denied, mut errors) = (0, 0);
    while let Some(caller) = callers.join_next().await {
        let (times, d, e) = caller?;
        admitted.extend(times);
        denied += d;
        errors += e;
    }
    admitted.sort();
    let most = most_in_a_minute(&admitted);
    let slice = keygate::ratelimit::lease::LeaseSettings::default().size(LIMIT);
    let bound = LIMIT as usize + REPLICAS * slice as usize;
    // What an exact sliding log admits for this offer: the limit in each minute that
    // starts when the previous one's admissions began (the offer never pauses).
    let minutes = storm.as_secs_f64() / 60.0;
    let ideal = (minutes.ceil() as usize) * LIMIT as usize;
    println!(
        "admitted {} of {} offered ({denied} refused, {errors} errors); most in any sliding minute: {most} (limit {LIMIT}, documented bound {bound}: +{} = one slice of {slice} per replica)",
        admitted.len(),
        admitted.len() as u64 + denied + errors,
        bound - LIMIT as usize
    );
    println!(
        "over {} s: {} admitted where an exact log admits {ideal} ({:+.2}%)",
        storm.as_secs(),
        admitted.len(),
        (admitted.len() as f64 - ideal as f64) / ideal as f64 * 100.0
    );
    print_by_ten_seconds(&admitted, storm);
    println!(
        "exact limit (10/hour per key), 50 concurrent over 2 replicas during the storm: {exact_admitted} admitted"
    );
    let (counts, reservations) = keygate::ratelimit::redis::lease_keys(&prefix, "global", 60_000, "acct_storm");
    let bytes = redis_bytes(&args.redis_url, &counts).await? + redis_bytes(&args.redis_url, &reservations).await?;
    println!("Redis: the stormed subject's high-rate counter holds {bytes} bytes (MEMORY USAGE of its two hashes)");
    Ok(())
}

/// 50 calls at once at an exact 10-an-hour limit, over two replicas: how many were admitted.
async fn exact_burst(
    clients: &[AuthorizerClient<tonic::transport::Channel>],
    exact_key: &str,
) -> anyhow::Result<usize> {
    let mut exact_calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut client = clients[i % 2].clone();
        let secret = exact_key.to_owned();
        exact_calls.spawn(async move {
            client.authorize(ask(&secret, "POST", "/api/v1/panel/exact")).await.map(|r| r.into_inner().allowed)
        });
    }
    let mut exact_admitted = 0;
    while let Some(answer) = exact_calls.join_next().await {
        exact_admitted += usize::from(answer?.unwrap_or(false));
    }
    Ok(exact_admitted)
}

/// The most of `admitted` (sorted) in any sliding minute.
fn most_in_a_minute(admitted: &[Duration]) -> usize {
    let minute = Duration::from_secs(60);
    let (mut most, mut first) = (0usize, 0usize);
    for (last, &at) in admitted.iter().enumerate() {
        while admitted[first] + minute <= at {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// How many of `admitted` fell in each 10 s of the storm, on one line.
fn print_by_ten_seconds(admitted: &[Duration], storm: Duration) {
    for window in 0..storm.as_secs().div_ceil(10) {
        let (from, to) = (Duration::from_secs(window * 10), Duration::from_secs(window * 10 + 10));
        let n = admitted.iter().filter(|&&t| t >= from && t < to).count();
        print!("{}{}-{} s: {n}", if window == 0 { "  by 10 s: " } else { ", " }, from.as_secs(), to.as_secs());
    }
    println!();
}

fn ask(secret: &str, method: &str, path: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { credential: secret.into(), method: method.into(), path: path.into(), ..Default::default() }
}

pub async fn redis_bytes(url: &str, key: &str) -> anyhow::Result<i64> {
    let mut connection = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let bytes: Option<i64> = redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut connection).await?;
    Ok(bytes.unwrap_or(0))
}
