//! Tenant A: what it sets up (tokens, expensive imports, an audit trail to search) and
//! its five attacks, each paced to the rate its flag gives.

use super::{authorize, Admin, Attack, NeighboursArgs, TenantA, ACCOUNT_A};
use crate::fixture::Server;
use keygate::domain::{random_token, GeneratedKey};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use keygate_client::{AdminToken, ClientTls};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

impl TenantA {
    pub(super) async fn make(admin: &mut Admin, channel: Channel, expensive_keys: usize) -> anyhow::Result<Self> {
        let token = |role: &str, name: &str| pb::CreateAdminTokenRequest {
            name: format!("{name}-{}", random_token(6).unwrap_or_default().to_lowercase()),
            role: role.into(),
            account_id: ACCOUNT_A.into(),
            expires_in_seconds: 0,
        };
        let keys_write = admin.create_admin_token(token("keys_write", "tenant-a-writer")).await?.into_inner().secret;
        let read_only = admin.create_admin_token(token("read_only", "tenant-a-reader")).await?.into_inner().secret;
        let mut writer = AdminClient::with_interceptor(channel, AdminToken::new(&keys_write)?);
        // An audit trail for the scans to read: cheap sha256 imports, one event each.
        for batch in 0..5 {
            let keys = (0..1000)
                .map(|n| pb::ImportedKey {
                    account_id: ACCOUNT_A.into(),
                    name: format!("trail {batch}-{n}"),
                    scopes: vec!["applications:read".into()],
                    algorithm: "sha256".into(),
                    hash: sha256_hex(&format!("trail-{batch}-{n}-{}", random_token(8).unwrap_or_default())),
                    ..Default::default()
                })
                .collect();
            writer.import_api_keys(pb::ImportApiKeysRequest { import_id: format!("trail-{batch}"), keys }).await?;
        }
        // The most expensive bcrypt hash the server takes, shared by every expensive key.
        for cost in (10..=14).rev() {
            let hash = bcrypt::hash(format!("never-{}", random_token(16)?), cost)?;
            let starts: Vec<String> =
                (0..expensive_keys).map(|_| format!("legacy_{}", random_token(12).unwrap_or_default())).collect();
            let keys = starts
                .iter()
                .enumerate()
                .map(|(n, start)| pb::ImportedKey {
                    account_id: ACCOUNT_A.into(),
                    name: format!("expensive {n}"),
                    scopes: vec!["applications:read".into()],
                    algorithm: "bcrypt".into(),
                    hash: hash.clone(),
                    start: start.clone(),
                    ..Default::default()
                })
                .collect();
            let results = writer
                .import_api_keys(pb::ImportApiKeysRequest { import_id: format!("expensive-{cost}"), keys })
                .await?
                .into_inner()
                .results;
            if results.iter().all(|r| r.status == "imported") {
                return Ok(Self { read_only, starts, bcrypt_cost: cost });
            }
        }
        anyhow::bail!("the server took no bcrypt hash of cost 10 to 14")
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// At most `per_second` permits a second, handed out every 10 ms.
fn pace(per_second: u64) -> (Arc<tokio::sync::Semaphore>, tokio::task::JoinHandle<()>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let feeder = permits.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        let mut owed = 0.0_f64;
        loop {
            ticks.tick().await;
            owed += per_second as f64 / 100.0;
            let whole = owed.floor();
            owed -= whole;
            // At most a second's worth waiting: a slow server is not paid back in a burst.
            let room = (per_second as usize).saturating_sub(feeder.available_permits());
            feeder.add_permits((whole as usize).min(room));
        }
    });
    (permits, task)
}

async fn paced(permits: &tokio::sync::Semaphore) {
    if let Ok(permit) = permits.acquire().await {
        permit.forget();
    }
}

/// A channel to `server` from a local address of its own (another host, as far as keygate
/// can tell).
async fn from_address(server: &Server, tls: &ClientTls, local: [u8; 4]) -> anyhow::Result<Channel> {
    let endpoint = keygate_client::endpoint(&server.address, Some(tls))?;
    Ok(endpoint.local_address(Some(std::net::IpAddr::from(local))).connect().await?)
}

/// A random address in a random /64 of 2001:db8::/32 (documentation space).
fn fresh_ipv6() -> String {
    let r = random_token(16).unwrap_or_default();
    let n = r.bytes().fold(0u64, |acc, b| acc.wrapping_mul(131).wrapping_add(u64::from(b)));
    format!("2001:db8:{:x}:{:x}::1", (n >> 16) & 0xffff, n & 0xffff)
}

/// The tasks of one attack; each adds its attempts to `count`.
pub(super) async fn launch(
    attack: Attack,
    args: &NeighboursArgs,
    server: &Server,
    tls: &ClientTls,
    a: &Arc<TenantA>,
    count: Arc<AtomicU64>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    match attack {
        Attack::Handshakes => {
            let (permits, feeder) = pace(args.opens_per_second);
            tasks.push(feeder);
            let address = server.address.trim_start_matches("https://").to_owned();
            for _ in 0..args.idle_connections {
                let (permits, address, count) = (permits.clone(), address.clone(), count.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        paced(&permits).await;
                        count.fetch_add(1, Ordering::Relaxed);
                        // Connect and say nothing until the server closes the connection.
                        if let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await {
                            let mut buffer = [0u8; 64];
                            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
                        }
                    }
                }));
            }
        }
        Attack::ImportCost => {
            let (permits, feeder) = pace(args.guesses_per_second);
            tasks.push(feeder);
            let channel = server.channel().await?;
            for worker in 0..16 {
                let (permits, count, a) = (permits.clone(), count.clone(), a.clone());
                let mut client = AuthorizerClient::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = worker;
                    loop {
                        paced(&permits).await;
                        n += 16;
                        let start = &a.starts[n % a.starts.len()];
                        let guess = format!("{start}{}", random_token(20).unwrap_or_default());
                        let _ = client.authorize(authorize(&guess, &fresh_ipv6())).await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Attack::AdminScans => {
            let (permits, feeder) = pace(args.scans_per_second);
            tasks.push(feeder);
            // A's reader runs on a host of its own (an address of its own).
            let channel = from_address(server, tls, [127, 0, 0, 3]).await?;
            for _ in 0..args.scanners {
                let (permits, count) = (permits.clone(), count.clone());
                let mut reader = AdminClient::with_interceptor(channel.clone(), AdminToken::new(&a.read_only)?);
                tasks.push(tokio::spawn(async move {
                    loop {
                        paced(&permits).await;
                        let _ = reader
                            .list_audit_events(pb::ListAuditEventsRequest {
                                account_id: ACCOUNT_A.into(),
                                page_size: 100,
                                page_token: String::new(),
                                search_params: r#"{"searchString": "no-such-thing"}"#.into(),
                            })
                            .await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Attack::Ipv6Spread => {
            let (permits, feeder) = pace(args.forged_per_second);
            tasks.push(feeder);
            let channel = server.channel().await?;
            for _ in 0..16 {
                let (permits, count) = (permits.clone(), count.clone());
                let mut client = AuthorizerClient::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        paced(&permits).await;
                        let Ok(forged) = GeneratedKey::generate() else { continue };
                        let r = random_token(4).unwrap_or_default();
                        let n = r.bytes().fold(0u16, |acc, b| acc.wrapping_mul(31).wrapping_add(u16::from(b)));
                        let ip = format!("2001:db8:a:{n:x}::1");
                        let _ = client.authorize(authorize(&forged.into_secret_string(), &ip)).await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Attack::TokenGuessing => {
            let (permits, feeder) = pace(args.token_guesses_per_second);
            tasks.push(feeder);
            // From a host of A's own: the budget of wrong tokens is per source, and B's
            // operator calls from another.
            let channel = from_address(server, tls, [127, 0, 0, 2]).await?;
            for _ in 0..8 {
                let (permits, count) = (permits.clone(), count.clone());
                let mut client = AdminClient::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        paced(&permits).await;
                        let guess = random_token(24).unwrap_or_default();
                        let mut request = tonic::Request::new(pb::ListAdminTokensRequest {});
                        if let Ok(value) = format!("Bearer {guess}").parse() {
                            request.metadata_mut().insert("authorization", value);
                        }
                        let _ = client.list_admin_tokens(request).await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_addresses_parse_and_differ() {
        let a: std::net::Ipv6Addr = fresh_ipv6().parse().unwrap();
        let b: std::net::Ipv6Addr = fresh_ipv6().parse().unwrap();
        assert_ne!(a, b);
    }
}
