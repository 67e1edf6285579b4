//! What a key's terms cost on the hot path (issue 16): keys that carry metadata and an IP
//! allowlist, and keys that also carry credits (one store write per allowed call),
//! against plain keys and the no-op floor, in alternating rounds of the same run; and the
//! calls per second one key with credits sustains, on SQLite and on Postgres.

use crate::fixture::{self, Server};
use crate::load::{interleaved, request, Generator, Load, APP_PATH_PREFIX};
use crate::report::Run;
use keygate::grpc::proto as pb;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct TermsArgs {
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Keys of each kind, chosen uniformly.
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// A Postgres database for the credits runs on Postgres (a schema of its own, dropped
    /// after); without it only SQLite is measured.
    #[arg(long, env = "KEYGATE_TEST_POSTGRES_URL")]
    postgres: Option<String>,
}

/// What each kind of key carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    MetadataAndAllowlist,
    AlsoCredits,
}

impl Kind {
    fn terms(self) -> pb::CreateApiKeyRequest {
        let carrying = pb::CreateApiKeyRequest {
            metadata_json: r#"{"plan":"pro","tier":3,"region":"eu-west-1"}"#.into(),
            allowed_networks: vec!["10.0.0.0/8".into(), "192.168.0.0/16".into(), "2001:db8::/32".into()],
            ..Default::default()
        };
        match self {
            Kind::Plain => pb::CreateApiKeyRequest::default(),
            Kind::MetadataAndAllowlist => carrying,
            // Enough that no run spends them all.
            Kind::AlsoCredits => pb::CreateApiKeyRequest {
                credits: Some(pb::Credits { remaining: 1_000_000_000_000, refill: None }),
                ..carrying
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "keygate plain keys",
            Kind::MetadataAndAllowlist => "keygate keys with metadata + allowlist",
            Kind::AlsoCredits => "keygate keys with metadata + allowlist + credits",
        }
    }
}

async fn create(server: &Server, kind: Kind, count: usize) -> anyhow::Result<(String, Vec<String>)> {
    let mut admin = server.admin().await?;
    let application = admin
        .create_application(pb::CreateApplicationRequest { account_id: "acct_terms".into(), name: "bench".into() })
        .await?
        .into_inner();
    let path = format!("{APP_PATH_PREFIX}{}", application.id);
    let mut secrets = Vec::with_capacity(count);
    let mut client = pb::authorizer_client::AuthorizerClient::new(server.channel().await?);
    for _ in 0..count {
        let created = admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: "acct_terms".into(),
                name: "bench".into(),
                scopes: vec!["applications:read".into()],
                ..kind.terms()
            })
            .await?
            .into_inner();
        // Warm: verified once, so the runs measure the hot path.
        let answer = client.authorize(from_inside(&created.secret, &path)).await?.into_inner();
        anyhow::ensure!(answer.allowed, "warm-up denied: {} {}", answer.code, answer.reason);
        secrets.push(created.secret);
    }
    Ok((path, secrets))
}

/// From inside every allowlist, as an edge would say it.
fn from_inside(secret: &str, path: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { client_ip: "10.1.2.3".into(), ..request(secret, path) }
}

fn uniform(path: String, secrets: Vec<String>) -> Generator {
    Arc::new(move |rng| from_inside(&secrets[(rng.next_u64() % secrets.len() as u64) as usize], &path))
}

fn server(dir: &std::path::Path, postgres: Option<String>) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    fixture::keygate(dir, move |s| {
        s.argon2.memory_kib = 8 * 1024;
        s.argon2.iterations = 1;
        if let Some(url) = postgres {
            s.database_url = keygate::config::MaskedUrl::new(url);
        }
    })
}

pub async fn run(args: TermsArgs) -> anyhow::Result<()> {
    let warmup = Duration::from_secs(args.warmup_seconds);
    let round = Duration::from_secs(args.seconds) / args.rounds.max(1);
    let dir = std::env::temp_dir().join(format!("keygate-terms-{}", keygate::domain::random_token(8)?));
    let floor_server = fixture::floor()?;
    let floor_load = Load::new(&floor_server, args.connections, warmup, round).await?;
    let sample = keygate::domain::GeneratedKey::generate()?.into_secret_string();
    let floor: Generator = Arc::new(move |_| from_inside(&sample, &format!("{APP_PATH_PREFIX}app_0123456789abcdef")));

    let hot = server(&dir.join("hot"), None)?;
    let mut runs: Vec<Run> = Vec::new();
    for kind in [Kind::Plain, Kind::MetadataAndAllowlist, Kind::AlsoCredits] {
        eprintln!("{}: creating and warming {} keys…", kind.name(), args.keys);
        let (path, secrets) = create(&hot, kind, args.keys).await?;
        let load = Load::new(&hot, args.connections, warmup, round).await?;
        for &c in &args.concurrency {
            let (floor_run, mut run) =
                interleaved((&floor_load, &floor), (&load, &uniform(path.clone(), secrets.clone())), c, args.rounds)
                    .await;
            run.scenario = format!("{} (SQLite)", kind.name());
            floor_run.print();
            run.print();
            runs.push(floor_run);
            runs.push(run);
        }
    }
    drop(hot);

    // One key with credits: every call spends from the same row.
    let mut backends = vec![("SQLite", None)];
    let schema = match &args.postgres {
        Some(base) => {
            use sqlx::Connection;
            let schema = format!("kg_bench_{}", keygate::domain::random_token(10)?.to_lowercase());
            let mut conn = sqlx::PgConnection::connect(base).await?;
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await?;
            let sep = if base.contains('?') { '&' } else { '?' };
            backends.push(("Postgres", Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))));
            Some((conn, schema))
        }
        None => None,
    };
    for (backend, url) in backends {
        let server = server(&dir.join(backend), url)?;
        let (path, secrets) = create(&server, Kind::AlsoCredits, 1).await?;
        let load = Load::new(&server, args.connections, warmup, Duration::from_secs(args.seconds)).await?;
        for c in [1, 16] {
            let run =
                load.run(&format!("one key with credits ({backend})"), c, uniform(path.clone(), secrets.clone())).await;
            run.print();
            runs.push(run);
        }
    }
    if let Some((mut conn, schema)) = schema {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
