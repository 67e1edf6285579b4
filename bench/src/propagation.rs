//! Revoke-to-deny propagation: two replicas (each with its own caches, listener and pool)
//! on one Postgres. Each of N keys is warmed into replica B's cache, revoked through A,
//! and B is asked until it denies. Reports the time from the revoke's return (the change
//! is durable, and every live replica has applied it or was fenced) to B's first deny,
//! and how many of B's answers after the revoke returned still honoured the key (the
//! promise says none). `--contention` runs one busy thread per core throughout, as on a
//! loaded machine.

use crate::fixture::{self, Server};
use crate::report::{ms, percentile};
use keygate::grpc::proto as pb;
use keygate::grpc::proto::authorizer_client::AuthorizerClient;
use sqlx::Connection;
use std::time::{Duration, Instant};

const PATH: &str = "/api/v1/panel/applications/app_propagation00";

fn replica(url: String) -> anyhow::Result<Server> {
    let dir = tempfile_dir()?;
    fixture::keygate(&dir, move |s| s.database_url = keygate::config::MaskedUrl::new(url))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("keygate-bench-{}", keygate::domain::random_token(8)?));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn request(secret: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { credential: secret.into(), method: "GET".into(), path: PATH.into(), ..Default::default() }
}

pub async fn run(
    database_url: &str,
    revocations: usize,
    contention: bool,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let schema = format!("kg_bench_{}", keygate::domain::random_token(10)?.to_lowercase());
    let mut admin_conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin_conn).await?;
    let sep = if database_url.contains('?') { '&' } else { '?' };
    let url = format!("{database_url}{sep}options=-c%20search_path%3D{schema}");
    let result = measure(&url, revocations, contention, json).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin_conn).await?;
    result
}

/// One busy thread per core until dropped.
struct Contention {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Contention {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut spin = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(7));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
    }
}

async fn measure(
    url: &str,
    revocations: usize,
    contention: bool,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let a = replica(url.to_owned())?;
    let b = replica(url.to_owned())?;
    for server in [&a, &b] {
        let status = server.handles.as_ref().and_then(|h| h.invalidation.clone()).expect("Postgres replicas listen");
        while !status.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut admin = a.admin().await?;
    let mut on_b = AuthorizerClient::new(b.channel().await?);
    eprintln!("creating and warming {revocations} keys…");
    let mut keys = Vec::with_capacity(revocations);
    for i in 0..revocations {
        let created = admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: "acct_bench".into(),
                name: format!("bench {i}"),
                scopes: vec!["*".into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        let warm = on_b.authorize(request(&created.secret)).await?.into_inner();
        anyhow::ensure!(warm.code == "not_found", "warm-up answered {:?}", warm.code);
        keys.push(created);
    }

    let busy = contention.then(Contention::start);
    let mut latencies = Vec::with_capacity(revocations);
    let mut revoke_rpc = Vec::with_capacity(revocations);
    let (mut polls, mut honoured_after, mut fenced) = (0u64, 0u64, 0u64);
    for created in &keys {
        let id = created.key.as_ref().expect("key").id.clone();
        let started = Instant::now();
        let response = admin.revoke_api_key(pb::RevokeApiKeyRequest { id, reason: "bench".into() }).await?;
        let durable = Instant::now();
        fenced += response
            .metadata()
            .get(keygate::grpc::admin::FENCED_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        loop {
            polls += 1;
            if on_b.authorize(request(&created.secret)).await?.into_inner().code == "api_key_revoked" {
                break;
            }
            // Its route is unknown (not_found): any other answer means B still took the key.
            honoured_after += 1;
            anyhow::ensure!(durable.elapsed() < Duration::from_secs(60), "replica B never denied");
        }
        latencies.push(durable.elapsed());
        revoke_rpc.push(durable - started);
    }
    drop(busy);
    latencies.sort();
    revoke_rpc.sort();
    let max = *latencies.last().expect("samples");
    let per_revocation = polls as f64 / revocations as f64;
    println!(
        "revoke-to-deny across replicas, {revocations} revocations{}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (revoke RPC itself: p50 {:.2} ms, p99 {:.2} ms; {per_revocation:.2} Authorize calls on B per revocation; \
         {honoured_after} answers still honouring the key after the revoke returned; {fenced} fenced)",
        if contention { " under contention (a busy thread per core)" } else { "" },
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(max),
        ms(percentile(&revoke_rpc, 0.50)),
        ms(percentile(&revoke_rpc, 0.99)),
    );
    if let Some(path) = json {
        let report = serde_json::json!({
            "benchmark": "propagation",
            "revocations": revocations,
            "contention": contention,
            "honoured_after_return": honoured_after,
            "fenced": fenced,
            "revoke_return_to_deny_ms": {
                "p50": ms(percentile(&latencies, 0.50)), "p99": ms(percentile(&latencies, 0.99)), "max": ms(max),
            },
            "revoke_rpc_ms": { "p50": ms(percentile(&revoke_rpc, 0.50)), "p99": ms(percentile(&revoke_rpc, 0.99)) },
            "authorize_calls_per_revocation": per_revocation,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
