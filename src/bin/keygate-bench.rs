//! Benchmarks that need running servers. They report; they never pass or fail.
//!
//! `keygate-bench propagation`: two keygate replicas (in this process, each with its own
//! caches, listener and pool) on one Postgres. For each of N keys, warmed into replica B's
//! cache: revoke through replica A, then call Authorize on B until it denies. Reports the
//! time from the revoke's return (the change is durable) to B's first deny.

use clap::{Parser, Subcommand};
use keygate::cli::BearerToken;
use keygate::clock::SystemClock;
use keygate::config::{AdminTokenSource, Settings};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use keygate::startup::{Application, Handles};
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const PATH: &str = "/api/v1/panel/applications";

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
        /// Also write the results here as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

struct Replica {
    handles: Handles,
    admin: AdminClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>,
    authorizer: AuthorizerClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn replica(url: &str) -> anyhow::Result<Replica> {
    let mut settings = Settings::with_database(url);
    settings.listen = "127.0.0.1:0".parse()?;
    settings.admin_token = AdminTokenSource::Given(ADMIN_TOKEN.into());
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    let address = format!("http://{}", app.local_addr());
    let handles = app.handles();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(address)?.connect().await?;
    Ok(Replica {
        handles,
        admin: AdminClient::with_interceptor(channel.clone(), BearerToken::new(ADMIN_TOKEN)?),
        authorizer: AuthorizerClient::new(channel),
        _stop: stop,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn propagation(database_url: &str, revocations: usize, json: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let schema = format!("kg_bench_{}", keygate::domain::random_token(10)?.to_lowercase());
    let mut admin_conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin_conn).await?;
    let sep = if database_url.contains('?') { '&' } else { '?' };
    let url = format!("{database_url}{sep}options=-c%20search_path%3D{schema}");

    let result = async {
        let a = replica(&url).await?;
        let mut b = replica(&url).await?;
        for r in [&a, &b] {
            while !r.handles.invalidation.as_ref().is_some_and(|s| s.is_connected()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        eprintln!("creating and warming {revocations} keys…");
        let mut keys = Vec::with_capacity(revocations);
        for i in 0..revocations {
            let created = a
                .admin
                .clone()
                .create_api_key(pb::CreateApiKeyRequest {
                    account_id: "acct_bench".into(),
                    name: format!("bench {i}"),
                    scopes: vec!["*".into()],
                    ..Default::default()
                })
                .await?
                .into_inner();
            let request = authorize_request(&created.secret);
            anyhow::ensure!(b.authorizer.authorize(request).await?.into_inner().allowed, "warm-up call denied");
            keys.push(created);
        }

        let mut latencies = Vec::with_capacity(revocations);
        let mut revoke_rpc = Vec::with_capacity(revocations);
        let mut polls = 0u64;
        for created in &keys {
            let id = created.key.as_ref().expect("key").id.clone();
            let started = Instant::now();
            a.admin.clone().revoke_api_key(pb::RevokeApiKeyRequest { id, reason: "bench".into() }).await?;
            let durable = Instant::now();
            loop {
                polls += 1;
                let response = b.authorizer.authorize(authorize_request(&created.secret)).await?.into_inner();
                if response.code == "api_key_revoked" {
                    break;
                }
                anyhow::ensure!(durable.elapsed() < Duration::from_secs(60), "replica B never denied");
            }
            latencies.push(durable.elapsed());
            revoke_rpc.push(durable - started);
        }
        latencies.sort();
        revoke_rpc.sort();
        let report = serde_json::json!({
            "benchmark": "propagation",
            "revocations": revocations,
            "revoke_return_to_deny_ms": {
                "p50": ms(percentile(&latencies, 0.50)),
                "p99": ms(percentile(&latencies, 0.99)),
                "max": ms(*latencies.last().expect("samples")),
            },
            "revoke_rpc_ms": {
                "p50": ms(percentile(&revoke_rpc, 0.50)),
                "p99": ms(percentile(&revoke_rpc, 0.99)),
            },
            "authorize_polls_per_revocation": polls as f64 / revocations as f64,
            "notifications_seen_by_b": b.handles.invalidation.as_ref().map(|s| s.notifications()),
        });
        println!(
            "revoke-to-deny across replicas, {revocations} revocations: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
             (revoke RPC itself: p50 {:.2} ms, p99 {:.2} ms; {:.1} Authorize polls per revocation)",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().expect("samples")),
            ms(percentile(&revoke_rpc, 0.50)),
            ms(percentile(&revoke_rpc, 0.99)),
            polls as f64 / revocations as f64,
        );
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
        anyhow::Ok(())
    }
    .await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin_conn).await?;
    result
}

fn authorize_request(secret: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { credential: secret.into(), method: "GET".into(), path: PATH.into(), ..Default::default() }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Propagation { database_url, revocations, json } => propagation(&database_url, revocations, json).await,
    }
}
