//! Benchmarks that need running servers. They report; they never pass or fail.
//!
//! - `propagation`: revoke-to-deny time between two replicas on one Postgres.
//! - `load`: keygate against the floor (a no-op tonic service with messages of
//!   Authorize's size), both loaded the same way in the same run; every figure is also
//!   reported as a ratio to the floor.
//! - `memory`: bytes per cached hot key with a million keys cached.
//! - `soak`: minutes of load with key churn and garbage, every decision checked.
//! - `proxy`: HTTP through a real nginx asking keygate's forward auth, against the same
//!   nginx asking a no-op endpoint (every server in a process of its own).
//! - `terms`: what a key's terms (metadata, allowlist, credits) cost on the hot path.
//! - `accuracy`: a high-rate limit across three replicas on one Redis, stormed at three
//!   times its rate: the most admitted in any minute against the documented bound.
//! - `neighbours`: tenant A's attacks one at a time and together, while tenant B's hot
//!   keys, first uses and credit spends are measured.
//! - `import`: importing keys hashed by another system (sha256, bcrypt, argon2), and what
//!   an imported credential's first use costs against keygate's own keys and the hot path.
//!
//! Servers run on a runtime of their own (two workers) and the load on another, so the
//! client and the server compete for the machine the same way for keygate and the floor.

mod accuracy;
mod fixture;
mod import;
mod load;
mod memory;
mod neighbours;
mod propagation;
mod proxy;
mod report;
mod soak;
mod target;
mod terms;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keygate-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Revoke-to-deny propagation between two replicas on one Postgres.
    Propagation {
        /// A Postgres database; the benchmark works in a schema of its own and drops it.
        #[arg(long, env = "KEYGATE_TEST_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
        database_url: String,
        #[arg(long, default_value_t = 200)]
        revocations: usize,
        /// One busy thread per core while revoking, as on a loaded machine.
        #[arg(long)]
        contention: bool,
        /// Also write the results here as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Throughput and latency of keygate's scenarios against the floor.
    Load(load::LoadArgs),
    /// What a key's terms (metadata, allowlist, credits) cost on the hot path.
    Terms(terms::TermsArgs),
    /// Importing keys hashed by another system, and the first use of an imported key.
    Import(import::ImportArgs),
    /// What tenant A's attacks (handshake flood, expensive imports, admin scans, IPv6
    /// spread, admin-token guessing) take from tenant B's hot keys, first uses and credits.
    Neighbours(neighbours::NeighboursArgs),
    /// Memory per cached hot key.
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
    },
    /// Memory per key counted by usage analytics (between two flushes).
    UsageMemory {
        #[arg(long, default_value_t = 100_000)]
        subjects: usize,
    },
    /// A high-rate limit across three replicas on Redis under a storm: how exact it stays.
    Accuracy(accuracy::AccuracyArgs),
    /// Memory per subject of a limit at 100,000 a minute: exact against high-rate.
    LimitMemory {
        #[arg(long, default_value_t = 50)]
        subjects: usize,
        /// Also measure what one subject holds in this Redis.
        #[arg(long)]
        redis: Option<String>,
    },
    /// HTTP through nginx with keygate's forward auth against nginx with a no-op one.
    Proxy(proxy::ProxyArgs),
    /// (Used by `proxy`.) A no-op forward-auth endpoint and upstream, in its own process.
    #[command(hide = true)]
    NoopHttp {
        #[arg(long)]
        listen: String,
    },
    /// (Used by `load --target`.) The floor in its own process.
    #[command(hide = true)]
    Floor {
        /// Serve TLS (mTLS) with the certificates in this directory.
        #[arg(long)]
        tls: Option<std::path::PathBuf>,
    },
    /// A test CA, a server certificate (localhost, 127.0.0.1) and a client certificate in
    /// DIR, for `keygate serve --tls-…` and `load --target https://… --tls DIR`.
    Certs { dir: std::path::PathBuf },
    /// Minutes of load with key churn and garbage, every decision checked.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 32)]
        callers: usize,
    },
}

fn main() -> anyhow::Result<()> {
    // The logging `keygate serve` installs, so the servers pay what they pay in production
    // (without a subscriber, tracing falls back to the `log` crate on every span: sqlx
    // turns on tracing's `log` feature).
    let _telemetry = keygate::telemetry::init(keygate::config::LogFormat::Pretty);
    // The load runs here; servers get a runtime of their own (see fixture.rs).
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("load").enable_all().build()?;
    runtime.block_on(async {
        match Cli::parse().command {
            Command::Propagation { database_url, revocations, contention, json } => {
                propagation::run(&database_url, revocations, contention, json).await
            }
            Command::Load(args) if !args.target.is_empty() => target::run_load(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Memory { keys } => memory::run(keys).await,
            Command::UsageMemory { subjects } => memory::usage(subjects).await,
            Command::Neighbours(args) => neighbours::run(args).await,
            Command::LimitMemory { subjects, redis } => {
                memory::limits(subjects)?;
                match redis {
                    Some(url) => {
                        memory::limits_in_redis(&url).await?;
                        memory::limit_path(&url).await
                    }
                    None => Ok(()),
                }
            }
            Command::Terms(args) => terms::run(args).await,
            Command::Import(args) => import::run(args).await,
            Command::Accuracy(args) => accuracy::run(args).await,
            Command::Soak { minutes, callers } => soak::run(minutes, callers).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::NoopHttp { listen } => proxy::serve_noop(&listen).await,
            Command::Floor { tls } => target::serve_floor(tls).await,
            Command::Certs { dir } => {
                tls::write_certificates(&dir)?;
                println!("wrote ca.pem, server.pem, server.key, client.pem, client.key in {}", dir.display());
                Ok(())
            }
        }
    })
}
