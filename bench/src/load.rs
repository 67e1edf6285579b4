//! The load generator and its scenarios.

use crate::fixture::{self, Server};
use crate::report::{latency_plot, Run};
use hdrhistogram::Histogram;
use keygate::domain::{Credential, GeneratedKey};
use keygate::grpc::proto::{self as pb, authorizer_client::AuthorizerClient};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
    /// The floor and keygate's hot-key runs alternate this many times per concurrency (each
    /// round measures seconds/rounds), so drift in the machine's speed hits both alike.
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Concurrency levels for the floor and the hot-key runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Hot keys (Zipf-distributed).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Keys for the cold run (each used once, at concurrency 1).
    #[arg(long, default_value_t = 100)]
    cold_keys: usize,
    /// Only the cold-key run.
    #[arg(long)]
    cold_only: bool,
    /// Measure this running keygate instead of one started here (comma-separated for
    /// several replicas: connections alternate between them). Keys are made through its
    /// Admin API, each in an account of its own; the floor runs in a process of its own.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// With --target: its admin token.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", default_value = "", hide_env_values = true)]
    pub admin_token: String,
    /// With --target: the route called, e.g. the default policy's
    /// /api/v1/panel/applications (keys hold applications:read).
    #[arg(long, default_value = "/api/v1/panel/applications")]
    pub path: String,
    /// With --target https://…: mTLS with the certificates `keygate-bench certs DIR` wrote
    /// (the target serves DIR/server.pem and asks for DIR/ca.pem's clients; the floor too).
    #[arg(long, requires = "target")]
    pub tls: Option<PathBuf>,
    /// With --target: a floor already running (`keygate-bench floor`, started by hand, say
    /// under a profiler) instead of one started here.
    #[arg(long, requires = "target")]
    pub floor: Option<String>,
    /// With --target: every key called at the same rate (uniformly at random) instead of
    /// Zipf: with many keys, many accounts each at a small share of its limit.
    #[arg(long, requires = "target")]
    pub uniform: bool,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// splitmix64: fast, and plenty for choosing keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf (s = 1) over `n` ranks: rank 0 is the hottest key.
pub(crate) struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Self { cumulative }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let target = rng.unit() * self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|&c| c < target).min(self.cumulative.len() - 1)
    }
}

pub(crate) type Generator = Arc<dyn Fn(&mut Rng) -> pb::AuthorizeRequest + Send + Sync>;

pub(crate) struct Load {
    channels: Vec<Channel>,
    warmup: Duration,
    measure: Duration,
}

impl Load {
    pub(crate) async fn new(
        server: &Server,
        connections: usize,
        warmup: Duration,
        measure: Duration,
    ) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            // One connection each: `connect` on a fresh endpoint does not share.
            channels.push(server.channel().await?);
        }
        Ok(Self { channels, warmup, measure })
    }

    /// Connections to several servers in turn (replicas behind a client-side balancer).
    pub(crate) async fn spread(
        servers: &[Server],
        connections: usize,
        warmup: Duration,
        measure: Duration,
    ) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(connections);
        for i in 0..connections.max(servers.len()) {
            channels.push(servers[i % servers.len()].channel().await?);
        }
        Ok(Self { channels, warmup, measure })
    }

    /// `concurrency` callers in a closed loop for warm-up + measure; only calls that start
    /// after the warm-up are recorded.
    pub(crate) async fn run(&self, scenario: &str, concurrency: usize, generate: Generator) -> Run {
        let (histogram, errors) = self.record(concurrency, generate).await;
        Run::new(scenario, concurrency, &histogram, errors, self.measure.as_secs_f64())
    }

    async fn record(&self, concurrency: usize, generate: Generator) -> (Histogram<u64>, u64) {
        let start = Instant::now();
        let measure_from = start + self.warmup;
        let end = measure_from + self.measure;
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let mut client = AuthorizerClient::new(self.channels[i % self.channels.len()].clone());
                let generate = generate.clone();
                tokio::spawn(async move {
                    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                    let mut errors = 0u64;
                    let mut rng = Rng::new(i as u64 + 1);
                    loop {
                        let request = generate(&mut rng);
                        let sent = Instant::now();
                        if sent >= end {
                            break;
                        }
                        let outcome = client.authorize(request).await;
                        if sent >= measure_from {
                            match outcome {
                                Ok(_) => histogram.saturating_record(sent.elapsed().as_micros() as u64),
                                Err(_) => errors += 1,
                            }
                        }
                    }
                    (histogram, errors)
                })
            })
            .collect();
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut errors = 0;
        for task in tasks {
            let (h, e) = task.await.expect("load task");
            histogram.add(&h).expect("same bounds");
            errors += e;
        }
        (histogram, errors)
    }
}

/// The floor and keygate at one concurrency, in alternating rounds: ABAB… rather than
/// AAAA…BBBB…, so that a machine that speeds up or slows down (shared hosts do, by 20%
/// over minutes) shifts both measurements alike.
pub(crate) async fn interleaved(
    floor: (&Load, &Generator),
    keygate: (&Load, &Generator),
    concurrency: usize,
    rounds: u32,
) -> (Run, Run) {
    let empty = || (Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"), 0u64);
    let (mut floor_total, mut keygate_total) = (empty(), empty());
    for _ in 0..rounds.max(1) {
        for ((load, generate), total) in [(floor, &mut floor_total), (keygate, &mut keygate_total)] {
            let (histogram, errors) = load.record(concurrency, (*generate).clone()).await;
            total.0.add(&histogram).expect("same bounds");
            total.1 += errors;
        }
    }
    let seconds = floor.0.measure.as_secs_f64() * f64::from(rounds.max(1));
    let floor_run = Run::new("floor (no-op tonic)", concurrency, &floor_total.0, floor_total.1, seconds);
    let mut keygate_run = Run::new("keygate hot keys (zipf)", concurrency, &keygate_total.0, keygate_total.1, seconds);
    keygate_run.compare_to(&floor_run);
    (floor_run, keygate_run)
}

pub(crate) const APP_PATH_PREFIX: &str = "/api/v1/panel/applications/";

/// Creates `count` keys (and one application) through the admin API, `parallel` at once.
async fn create_keys(server: &Server, count: usize, parallel: usize) -> anyhow::Result<(String, Vec<String>)> {
    let mut admin = server.admin().await?;
    let application = admin
        .create_application(pb::CreateApplicationRequest { account_id: "acct_bench".into(), name: "bench".into() })
        .await?
        .into_inner();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let mut admin = admin.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut secrets = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count as u64 {
                    let created = admin
                        .create_api_key(pb::CreateApiKeyRequest {
                            account_id: "acct_bench".into(),
                            name: "bench".into(),
                            scopes: vec!["applications:read".into()],
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    secrets.push(created.secret);
                }
                anyhow::Ok(secrets)
            })
        })
        .collect();
    let mut secrets = Vec::with_capacity(count);
    for worker in workers {
        secrets.extend(worker.await??);
    }
    Ok((format!("{APP_PATH_PREFIX}{}", application.id), secrets))
}

pub(crate) fn request(credential: &str, path: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        credential: credential.to_owned(),
        method: "GET".into(),
        path: path.to_owned(),
        ..Default::default()
    }
}

/// Cold keys: default (OWASP) argon2; every call a miss, one at a time. The argon2 part
/// of each call is read from the server's own verification histogram, so the overhead is
/// measured on the same calls, not on verifications run elsewhere at another moment.
async fn cold(dir: &std::path::Path, keys: usize) -> anyhow::Result<(Run, f64)> {
    let cold_dir = dir.join("cold");
    std::fs::create_dir_all(&cold_dir)?;
    let cold_server = fixture::keygate(&cold_dir, |_| {})?;
    eprintln!("creating {keys} cold keys…");
    let (cold_path, cold_secrets) = create_keys(&cold_server, keys, 1).await?;
    let mut client = AuthorizerClient::new(cold_server.channel().await?);
    let mut cold = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut seconds = 0.0;
    for secret in &cold_secrets {
        let sent = Instant::now();
        anyhow::ensure!(client.authorize(request(secret, &cold_path)).await?.into_inner().allowed, "cold call denied");
        cold.saturating_record(sent.elapsed().as_micros() as u64);
        seconds += sent.elapsed().as_secs_f64();
    }
    let run = Run::new("keygate cold keys (miss)", 1, &cold, 0, seconds);
    run.print();
    // Read as Prometheus would scrape it.
    let handles = cold_server.handles.as_ref().expect("keygate has handles");
    let text = keygate::metrics::render(&keygate::metrics::registry(&handles.metric_sources()));
    let sample = |series| keygate::metrics::sample(&text, series);
    let (Some(sum), Some(count)) =
        (sample("keygate_argon2_verification_seconds_sum"), sample("keygate_argon2_verification_seconds_count"))
    else {
        anyhow::bail!("the server reported no argon2 timings");
    };
    anyhow::ensure!(count as usize == cold_secrets.len(), "one verification per cold call, got {count}");
    let argon2_mean_us = sum / count * 1e6;
    println!(
        "    cold: mean {:.0}us = argon2 in the server, mean {:.0}us + {:.0}us overhead (p50 {:.0}us)",
        run.mean_us,
        argon2_mean_us,
        run.mean_us - argon2_mean_us,
        run.p50_us
    );
    Ok((run, argon2_mean_us))
}

/// The hot keys' scenarios beside the calm runs: each loads the hot keys while something
/// else goes on, and is compared with the floor and with the calm run.
struct Scenarios<'a> {
    server: &'a Server,
    load: &'a Load,
    secrets: Arc<Vec<String>>,
    path: String,
    hot: Generator,
    top: usize,
    floor_top: &'a Run,
    calm: &'a Run,
}

impl Scenarios<'_> {
    async fn miss_storm(&self) -> anyhow::Result<Run> {
        // Miss storm: 8 callers sending wrong secrets for known key ids, beside the hot load.
        let storming = Arc::new(AtomicBool::new(true));
        let storm_calls = Arc::new(AtomicU64::new(0));
        let storm: Vec<_> = (0..8)
            .map(|i| {
                let mut client = AuthorizerClient::new(self.load.channels[i % self.load.channels.len()].clone());
                let (secrets, path, storming, calls) =
                    (self.secrets.clone(), self.path.clone(), storming.clone(), storm_calls.clone());
                tokio::spawn(async move {
                    let mut rng = Rng::new(1_000 + i as u64);
                    while storming.load(Ordering::Relaxed) {
                        let known = &secrets[(rng.next_u64() % secrets.len() as u64) as usize];
                        let credential = Credential::parse(known).expect("generated");
                        let wrong = GeneratedKey::impostor_of(&credential).expect("random").into_secret_string();
                        let _ = client.authorize(request(&wrong, &path)).await;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut run = self.load.run("keygate hot during miss storm", self.top, self.hot.clone()).await;
        storming.store(false, Ordering::Relaxed);
        for task in storm {
            task.await?;
        }
        run.compare_to(self.floor_top);
        run.print();
        println!(
            "    miss storm: {} wrong secrets sent; hot p99 {:.0}us during vs {:.0}us calm = {:.2}x",
            storm_calls.load(Ordering::Relaxed),
            run.p99_us,
            self.calm.p99_us,
            run.p99_us / self.calm.p99_us
        );
        Ok(run)
    }

    async fn revoke_storm(&self) -> anyhow::Result<Run> {
        // Revoke storm: 100 revokes per second beside the hot load.
        let revoking = Arc::new(AtomicBool::new(true));
        let revoker = {
            let mut admin = self.server.admin().await?;
            let (secrets, revoking) = (self.secrets.clone(), revoking.clone());
            tokio::spawn(async move {
                let mut revoked = 0usize;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                // Revoke from the cold end of the distribution first.
                while revoking.load(Ordering::Relaxed) && revoked < secrets.len() {
                    tick.tick().await;
                    let id = Credential::parse(&secrets[secrets.len() - 1 - revoked]).expect("generated").key_id();
                    let _ = admin
                        .revoke_api_key(pb::RevokeApiKeyRequest { id: id.to_string(), reason: "bench".into() })
                        .await;
                    revoked += 1;
                }
                revoked
            })
        };
        let mut run = self.load.run("keygate hot during revoke storm", self.top, self.hot.clone()).await;
        revoking.store(false, Ordering::Relaxed);
        let revoked = revoker.await?;
        run.compare_to(self.floor_top);
        run.print();
        println!(
            "    revoke storm: {revoked} keys revoked during the run; hot p99 {:.2}x calm",
            run.p99_us / self.calm.p99_us
        );
        Ok(run)
    }

    async fn forged_flood(&self) -> anyhow::Result<Run> {
        // Hostile: a flood of forged credentials (fresh random ids with valid checksums, a new
        // client address each call) beside the hot load, while keys nobody has used yet are
        // verified one after another.
        let (fresh_path, fresh) = create_keys(self.server, 20, 2).await?;
        let flooding = Arc::new(AtomicBool::new(true));
        let flood_calls = Arc::new(AtomicU64::new(0));
        let flood: Vec<_> = (0..8)
            .map(|i| {
                let mut client = AuthorizerClient::new(self.load.channels[i % self.load.channels.len()].clone());
                let (path, flooding, calls) = (self.path.clone(), flooding.clone(), flood_calls.clone());
                tokio::spawn(async move {
                    let mut rng = Rng::new(7_000 + i as u64);
                    while flooding.load(Ordering::Relaxed) {
                        let forged = GeneratedKey::generate().expect("random").into_secret_string();
                        let n = rng.next_u64();
                        let client_ip = format!("10.{}.{}.{}", n & 255, (n >> 8) & 255, (n >> 16) & 255);
                        let _ = client.authorize(pb::AuthorizeRequest { client_ip, ..request(&forged, &path) }).await;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let first_uses = {
            let mut client = AuthorizerClient::new(self.load.channels[0].clone());
            let fresh = fresh.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut took = Vec::new();
                for secret in &fresh {
                    let sent = Instant::now();
                    // From an address of its own: callers without one share a single budget,
                    // which the storms above have spent.
                    let ask = pb::AuthorizeRequest { client_ip: "192.0.2.10".into(), ..request(secret, &fresh_path) };
                    let answer = client.authorize(ask).await;
                    anyhow::ensure!(answer?.into_inner().allowed, "a fresh key was not allowed during the flood");
                    took.push(sent.elapsed());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                anyhow::Ok(took)
            })
        };
        let started = Instant::now();
        let mut run = self.load.run("keygate hot during forged flood", self.top, self.hot.clone()).await;
        flooding.store(false, Ordering::Relaxed);
        let flood_seconds = started.elapsed().as_secs_f64();
        for task in flood {
            task.await?;
        }
        let mut took = first_uses.await??;
        took.sort();
        run.compare_to(self.floor_top);
        run.print();
        let handles = self.server.handles.as_ref().expect("keygate has handles");
        let text = keygate::metrics::render(&keygate::metrics::registry(&handles.metric_sources()));
        let metric = |series| keygate::metrics::sample(&text, series).unwrap_or(0.0);
        let argon2_mean_ms = metric("keygate_argon2_verification_seconds_sum")
            / metric("keygate_argon2_verification_seconds_count").max(1.0)
            * 1000.0;
        println!(
            "    forged flood: {:.0} forged credentials/s from fresh addresses; hot p99 {:.0}us during vs {:.0}us calm = {:.2}x; \
             first use of {} fresh keys p50 {:.1} ms, max {:.1} ms (argon2 in the server: mean {:.1} ms)",
            flood_calls.load(Ordering::Relaxed) as f64 / flood_seconds,
            run.p99_us,
            self.calm.p99_us,
            run.p99_us / self.calm.p99_us,
            took.len(),
            crate::report::ms(crate::report::percentile(&took, 0.5)),
            crate::report::ms(*took.last().unwrap_or(&Duration::ZERO)),
            argon2_mean_ms,
        );
        Ok(run)
    }
}

/// `count` keys on `server`, each used once (and so in its caches): their route and secrets.
async fn warm_keys(server: &Server, count: usize) -> anyhow::Result<(String, Arc<Vec<String>>)> {
    eprintln!("creating and warming {count} hot keys…");
    let (path, secrets) = create_keys(server, count, 8).await?;
    let mut client = AuthorizerClient::new(server.channel().await?);
    for secret in &secrets {
        anyhow::ensure!(client.authorize(request(secret, &path)).await?.into_inner().allowed, "warm-up denied");
    }
    Ok((path, Arc::new(secrets)))
}

/// `load` without `--target` (which [`crate::target::run_load`] measures).
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.cold_only {
        let dir = std::env::temp_dir().join(format!("keygate-load-{}", keygate::domain::random_token(8)?));
        let result = cold(&dir, args.cold_keys).await;
        let _ = std::fs::remove_dir_all(&dir);
        return result.map(|_| ());
    }
    let warmup = Duration::from_secs(args.warmup_seconds);
    let measure = Duration::from_secs(args.seconds);
    let dir = std::env::temp_dir().join(format!("keygate-load-{}", keygate::domain::random_token(8)?));
    std::fs::create_dir_all(&dir)?;

    // The floor, loaded in rounds alternating with keygate's hot keys (below).
    let floor_server = fixture::floor()?;
    let rounds = args.rounds.max(1);
    let round_measure = measure / rounds;
    let floor_load = Load::new(&floor_server, args.connections, warmup, round_measure).await?;
    let sample_path = format!("{APP_PATH_PREFIX}app_0123456789abcdef");
    let sample = GeneratedKey::generate()?.into_secret_string();
    let floor_generator: Generator = Arc::new(move |_| request(&sample, &sample_path));

    // Hot keys. New keys are hashed with cheap argon2 parameters so that making and warming
    // 10k of them takes a minute; the hot path never runs argon2, whatever its parameters.
    let hot_dir = dir.join("hot");
    std::fs::create_dir_all(&hot_dir)?;
    let hot_server = fixture::keygate(&hot_dir, |s| {
        s.argon2.memory_kib = 8 * 1024;
        s.argon2.iterations = 1;
    })?;
    let (path, secrets) = warm_keys(&hot_server, args.keys).await?;
    // A profiler attached from here on sees only the hot-key runs (`perf record -p`).
    eprintln!("hot keys warm; loading them");
    let zipf = Arc::new(Zipf::new(secrets.len()));
    let hot: Generator = {
        let (secrets, zipf, path) = (secrets.clone(), zipf.clone(), path.clone());
        Arc::new(move |rng| request(&secrets[zipf.sample(rng)], &path))
    };
    let mut runs = Vec::new();
    let mut floor = Vec::new();
    let mut hot_runs = Vec::new();
    {
        let hot_load = Load::new(&hot_server, args.connections, warmup, round_measure).await?;
        for &c in &args.concurrency {
            let (floor_run, hot_run) = interleaved((&floor_load, &floor_generator), (&hot_load, &hot), c, rounds).await;
            floor_run.print();
            hot_run.print();
            floor.push(floor_run);
            hot_runs.push(hot_run);
        }
    }
    drop(floor_load);
    drop(floor_server);
    let load = Load::new(&hot_server, args.connections, warmup, measure).await?;
    let top = *args.concurrency.last().unwrap_or(&64);
    let floor_top = floor.last().expect("a floor run").clone();
    let calm = hot_runs.last().expect("a hot run").clone();

    // 1% garbage.
    let garbage: Generator = {
        let (secrets, zipf, path) = (secrets.clone(), zipf.clone(), path.clone());
        Arc::new(move |rng| {
            if rng.unit() < 0.01 {
                request("kg_garbageGARBAGEgarbageGARBAGEgarbage", &path)
            } else {
                request(&secrets[zipf.sample(rng)], &path)
            }
        })
    };
    let mut run = load.run("keygate hot + 1% garbage", top, garbage).await;
    run.compare_to(&floor_top);
    run.print();
    runs.push(run);

    let scenarios = Scenarios {
        server: &hot_server,
        load: &load,
        secrets: secrets.clone(),
        path: path.clone(),
        hot: hot.clone(),
        top,
        floor_top: &floor_top,
        calm: &calm,
    };
    runs.push(scenarios.miss_storm().await?);
    runs.push(scenarios.revoke_storm().await?);
    runs.push(scenarios.forged_flood().await?);
    drop(load);
    drop(hot_server);

    let (cold_run, argon2_mean_us) = cold(&dir, args.cold_keys).await?;
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(path) = &args.svg {
        std::fs::write(path, latency_plot(&floor, &hot_runs))?;
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "benchmark": "load",
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "rounds": rounds,
            "connections": args.connections,
            "hot_keys": args.keys,
            "floor": floor,
            "hot": hot_runs,
            "scenarios": runs,
            "cold": cold_run,
            "cold_mean_us": cold_run.mean_us,
            "argon2_in_server_mean_us": argon2_mean_us,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
