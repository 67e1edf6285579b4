//! `keygate-bench load --target ADDR`: any running keygate — one replica or several, on
//! SQLite or Postgres, limits in process or on Redis, with its own policy — measured from
//! this separate process against the floor (a no-op `keygate.v1.Authorizer`), which runs in
//! a process of its own too, in alternating rounds as `load` does.

use crate::fixture::{Server, ADMIN_TOKEN};
use crate::load::{interleaved, request, Generator, Load, LoadArgs, Zipf};
use keygate::grpc::proto::authorizer_client::AuthorizerClient;
use std::sync::Arc;
use std::time::Duration;

/// What `--target` needs besides the load's own settings.
pub struct Target<'a> {
    /// The keygate (or keygates, comma-separated: calls alternate between them).
    pub addresses: Vec<String>,
    pub admin_token: &'a str,
    /// Keys, each in an account of its own (the global limit counts per account).
    pub keys: usize,
    /// The route called: the default policy's `GET /api/v1/panel/applications`, or any
    /// route of the target's policy that API keys with `applications:read` may call.
    pub path: &'a str,
    /// TLS (mTLS) with the certificates of `keygate-bench certs DIR`: the target was started
    /// with them, and the floor is too.
    pub tls: Option<&'a std::path::Path>,
    /// A floor already running (its address without scheme), instead of one started here.
    pub floor: Option<&'a str>,
    /// Keys called uniformly rather than Zipf.
    pub uniform: bool,
}

/// (Used by `load --target`.) The floor, in its own process: prints `listening on ADDR`.
pub async fn serve_floor(tls: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let tls = tls.as_deref().map(crate::tls::server).transpose()?;
    let floor = crate::fixture::floor_with(tls)?;
    println!("listening on {}", floor.address.split("://").last().unwrap_or_default());
    // Until the parent goes away (it kills this process).
    std::future::pending::<()>().await;
    drop(floor);
    Ok(())
}

/// `load --target`: the running keygate(s) the arguments name, against the floor.
pub async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let target = Target {
        addresses: args.target.clone(),
        admin_token: &args.admin_token,
        keys: args.keys,
        path: &args.path,
        tls: args.tls.as_deref(),
        floor: args.floor.as_deref(),
        uniform: args.uniform,
    };
    let (warmup, measure) = (Duration::from_secs(args.warmup_seconds), Duration::from_secs(args.seconds));
    run(target, args.connections, &args.concurrency, args.rounds, warmup, measure).await
}

pub async fn run(
    target: Target<'_>,
    connections: usize,
    concurrency: &[usize],
    rounds: u32,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<()> {
    let floor_command = {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.arg("floor");
        if let Some(dir) = target.tls {
            command.arg("--tls").arg(dir);
        }
        command
    };
    let (_floor_process, floor_address) = match target.floor {
        Some(address) => (None, address.to_owned()),
        None => {
            let (process, address) =
                crate::proxy::start(floor_command, true, |line| line.strip_prefix("listening on ").map(str::to_owned))?;
            (Some(process), address)
        }
    };
    let client_tls = target.tls.map(crate::tls::client).transpose()?;
    let reach = |address: String| match &client_tls {
        Some(tls) => Server::external_tls(address, tls.clone()),
        None => Server::external(address),
    };
    let scheme = if target.tls.is_some() { "https" } else { "http" };
    let floor = reach(format!("{scheme}://{floor_address}"));
    let servers: Vec<Server> = target.addresses.iter().map(|a| reach(a.clone())).collect();

    eprintln!("creating {} keys in {} accounts on {}…", target.keys, target.keys, target.addresses.join(", "));
    let token = if target.admin_token.is_empty() { ADMIN_TOKEN } else { target.admin_token };
    let run = keygate::domain::random_token(6)?.to_lowercase();
    let secrets = crate::fixture::keys_in_own_accounts(
        &target.addresses[0],
        client_tls.as_ref(),
        token,
        &format!("acct_load_{run}"),
        target.keys,
    )
    .await?;
    // Every key verified once on every target (argon2), so only hot keys are measured; a
    // few at once.
    let secrets = Arc::new(secrets);
    for server in &servers {
        let client = AuthorizerClient::new(server.channel().await?);
        let mut warming = tokio::task::JoinSet::new();
        for n in 0..8 {
            let (mut client, secrets, path) = (client.clone(), secrets.clone(), target.path.to_owned());
            let address = server.address.clone();
            warming.spawn(async move {
                for secret in secrets.iter().skip(n).step_by(8) {
                    // Warm-up verifies every key (argon2) on every target at once: on two
                    // cores, a store read can miss its deadline meanwhile. Such a call is
                    // asked again.
                    let mut attempts = 0;
                    let decided = loop {
                        match client.authorize(request(secret, &path)).await {
                            Err(status) if status.code() == tonic::Code::Unavailable && attempts < 5 => {
                                attempts += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            answer => break answer?.into_inner(),
                        }
                    };
                    anyhow::ensure!(
                        decided.allowed || decided.code == "rate_limit_reached",
                        "warm-up on {address} denied: {} {}",
                        decided.code,
                        decided.message
                    );
                }
                anyhow::Ok(())
            });
        }
        while let Some(warmed) = warming.join_next().await {
            warmed??;
        }
    }
    let zipf = Arc::new(Zipf::new(secrets.len()));
    let path = target.path.to_owned();
    let hot: Generator = if target.uniform {
        Arc::new(move |rng| request(&secrets[(rng.next_u64() % secrets.len() as u64) as usize], &path))
    } else {
        Arc::new(move |rng| request(&secrets[zipf.sample(rng)], &path))
    };
    let sample = keygate::domain::GeneratedKey::generate()?.into_secret_string();
    let floor_path = target.path.to_owned();
    let floor_generator: Generator = Arc::new(move |_| request(&sample, &floor_path));

    let round_measure = measure / rounds.max(1);
    let floor_load = Load::new(&floor, connections, warmup, round_measure).await?;
    // Several targets: each connection goes to one of them in turn, so calls alternate.
    let target_load = Load::spread(&servers, connections, warmup, round_measure).await?;
    println!(
        "target {} ({} hot keys in as many accounts, {}, {}{}); floor in its own process; {} rounds x {:.1} s",
        target.addresses.join(", "),
        target.keys,
        if target.uniform { "uniform" } else { "zipf" },
        target.path,
        if target.tls.is_some() { ", mTLS on both" } else { "" },
        rounds,
        round_measure.as_secs_f64()
    );
    for &c in concurrency {
        let (floor_run, target_run) =
            interleaved((&floor_load, &floor_generator), (&target_load, &hot), c, rounds).await;
        floor_run.print();
        target_run.print();
    }
    Ok(())
}
