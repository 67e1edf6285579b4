//! The admin command line, built on this crate: `keygate app|key|session|authorize|audit|usage`.
//! The `keygate` binary adds `serve` and `policy`; commands live here, how their answers
//! look lives in [`print`].

mod import;
mod key;
mod print;
mod terms;
mod usage;

use crate::{AdminRpc, AdminToken, KeygateAdmin};
use anyhow::Context;
use clap::Subcommand;
use keygate_api::proto::{self as pb, authorizer_client::AuthorizerClient};
use keygate_api::DEFAULT_ADMIN_TOKEN_FILE;
use print::{explain, Progress};

pub use key::{KeyCommand, TermArgs};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// Every command that talks to a running keygate.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage dashboard sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Owners of keys: limits and credits shared by all of an owner's keys.
    #[command(subcommand)]
    Owner(OwnerCommand),
    /// Erase a whole account.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Ask for a decision, as an edge would.
    Authorize(AuthorizeArgs),
    /// Read the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Named admin tokens with a role (admin, read_only, keys_write).
    #[command(subcommand)]
    AdminToken(AdminTokenCommand),
    /// Decisions by outcome over time, per key, owner or account; an account's top keys.
    #[command(subcommand)]
    Usage(usage::UsageCommand),
    /// Ask keygate's gRPC health service: prints SERVING and exits 0, or exits 1
    /// (NOT_SERVING, unknown service, no answer). For container and probe health checks.
    Health(HealthArgs),
}

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The service to ask about, e.g. keygate.v1.Authorizer. Default: the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this many seconds (connecting and asking).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout: u64,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create a token; it is shown once.
    Create {
        /// 1 to 64 of a-z, 0-9, '.', '_', '-'; never reused (the audit trail names it).
        #[arg(long)]
        name: String,
        /// admin, read_only or keys_write.
        #[arg(long, value_parser = ["admin", "read_only", "keys_write"])]
        role: String,
        /// Confine it to one account (read_only and keys_write).
        #[arg(long)]
        account: Option<String>,
        /// It stops working after this long: 12h, 30d. Default: never.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Every token, revoked ones too.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a token, on every replica at its next call.
    Revoke {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// An account's audit events, newest first.
    List {
        #[arg(long)]
        account: String,
        /// Matches the action, target, actor, on-behalf-of or request id.
        #[arg(long)]
        search: Option<String>,
        /// ApiKey, Application, Session or Login (repeatable).
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Stop after this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum OwnerCommand {
    /// Create an owner or change its shared limits and credits (only what is given).
    Set {
        #[arg(long)]
        account: String,
        /// The owner's id, in your own terms (e.g. your customer id).
        owner: String,
        /// A limit shared by all the owner's keys (repeatable): `[NAME=]LIMIT/WINDOW[@ROUTE]`.
        #[arg(long = "limit", value_parser = terms::parse_limit)]
        limits: Vec<keygate_api::proto::KeyLimit>,
        /// Remove the owner's limits.
        #[arg(long, conflicts_with = "limits")]
        no_limits: bool,
        /// Credits shared by the owner's keys that have none of their own.
        #[arg(long)]
        credits: Option<i64>,
        /// Refill the credits: AMOUNT/month, AMOUNT/day or AMOUNT/Ns. Needs --credits.
        #[arg(long, value_parser = terms::parse_refill, requires = "credits")]
        refill: Option<keygate_api::proto::Refill>,
        #[arg(long, requires = "refill", value_parser = ["to", "add"])]
        refill_mode: Option<String>,
        /// Remove the owner's credits.
        #[arg(long, conflicts_with = "credits")]
        no_credits: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show an owner's shared limits and credits.
    Get {
        #[arg(long)]
        account: String,
        owner: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Delete every key, application, session and owner of an account, in one
    /// transaction (GDPR erasure). Its audit events stay.
    Delete {
        account: String,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, clap::Args)]
pub struct Connection {
    /// keygate's gRPC address.
    #[arg(long, env = "KEYGATE_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    pub server: String,
    /// Admin token; when unset, read from the token file.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN_FILE", default_value = DEFAULT_ADMIN_TOKEN_FILE, global = true)]
    pub admin_token_file: PathBuf,
    /// Who the audit trail records as acting (sent as x-keygate-actor). Default: $USER.
    #[arg(long, env = "KEYGATE_ACTOR", global = true)]
    pub actor: Option<String>,
    /// Print responses as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// With an https:// --server: the CA (PEM) that signed keygate's certificate. Default:
    /// the system's roots.
    #[arg(long, env = "KEYGATE_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// mTLS: this client's certificate (PEM), with --key.
    #[arg(long, env = "KEYGATE_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// mTLS: the private key (PEM) of --cert.
    #[arg(long, env = "KEYGATE_KEY", global = true)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an application for an account.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one application.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List an account's applications (every page).
    List {
        #[arg(long)]
        account: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Rename an application.
    Update {
        id: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete an application for good. Refused while keys are restricted to it, unless
    /// --cascade (they lose it; a key restricted to it alone is deleted).
    Delete {
        id: String,
        #[arg(long)]
        cascade: bool,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Make a new runtime key for the application; its secret is printed once.
    RotateKey {
        id: String,
        /// How long the replaced key keeps working: 90s, 30m, 12h, 1d. Default: the server's.
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a session; its token is printed once.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: String,
        /// Lifetime: 30m, 12h, 7d. Default: the server's.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one session and its status.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// End a session at once (idempotent).
    Revoke {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List an account's sessions (every page), optionally one user's.
    List {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, clap::Args)]
pub struct AuthorizeArgs {
    /// The credential (or set KEYGATE_CREDENTIAL).
    #[arg(long, env = "KEYGATE_CREDENTIAL", hide_env_values = true, default_value = "")]
    pub credential: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    #[arg(long)]
    pub path: String,
    #[arg(long = "app", default_value = "")]
    pub application: String,
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// The client's address, as an edge would pass it (for keys with an IP allowlist).
    #[arg(long)]
    pub client_ip: Option<String>,
    /// Credits this call spends on a key that carries credits. Default: the route's cost.
    #[arg(long)]
    pub cost: Option<u32>,
    #[command(flatten)]
    pub connection: Connection,
}

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{raw:?} is not a duration like 30d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

impl Connection {
    async fn channel(&self) -> anyhow::Result<Channel> {
        let tls = crate::ClientTls::from_files(self.ca.as_deref(), self.cert.as_deref(), self.key.as_deref())?;
        let endpoint = match crate::endpoint(&self.server, Some(&tls)) {
            Err(crate::ClientError::Address(_)) => anyhow::bail!(
                "--server {:?} is not a URL like http://127.0.0.1:50051 or https://keygate.internal:50051",
                self.server
            ),
            other => other?,
        };
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach keygate at {}", self.server))
    }

    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.admin_token {
            return Ok(token.clone());
        }
        std::fs::read_to_string(&self.admin_token_file).map(|t| t.trim().to_owned()).with_context(|| {
            format!(
                "no admin token: set KEYGATE_ADMIN_TOKEN or run from the folder holding {}",
                self.admin_token_file.display()
            )
        })
    }

    async fn admin(&self) -> anyhow::Result<KeygateAdmin> {
        let mut token = AdminToken::new(&self.token()?)?;
        if let Some(actor) = self.actor.clone().or_else(|| std::env::var("USER").ok()).filter(|a| !a.is_empty()) {
            token = token.acting_for(&actor).map_err(|_| anyhow::anyhow!("--actor must be printable ASCII"))?;
        }
        Ok(KeygateAdmin::new(self.channel().await?, token))
    }

    /// The admin client for one call.
    async fn rpc(&self) -> anyhow::Result<AdminRpc> {
        Ok(self.admin().await?.rpc())
    }
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn expires_at(after: Duration) -> prost_types::Timestamp {
    let at = std::time::SystemTime::now() + after;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: 0 }
}

/// Seconds for a gRPC field, saturating.
fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Runs one command and prints its answer (`--json` or text).
/// [`run`] on a runtime of its own. Not `async`, so the binary that calls it does not
/// compile every command's body again (an async function's body is compiled in each crate
/// that polls it).
pub fn run_blocking(command: Command) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(command))
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::App(command) => run_app(command).await,
        Command::Key(command) => key::run_key(command).await,
        Command::Session(command) => run_session(command).await,
        Command::Owner(command) => run_owner(command).await,
        Command::Usage(command) => usage::run_usage(command).await,
        Command::Account(AccountCommand::Delete { account, yes, connection }) => {
            if !yes {
                anyhow::bail!(
                    "this would delete every key, application, session and owner of {account}; run again with --yes"
                );
            }
            let request = pb::DeleteAccountRequest { account_id: account };
            let reply = connection.rpc().await?.delete_account(request).await.map_err(explain)?;
            print::deleted(connection.json, &reply.into_inner());
            Ok(())
        }
        Command::Authorize(args) => {
            let mut client = AuthorizerClient::new(args.connection.channel().await?);
            let request = pb::AuthorizeRequest {
                credential: args.credential,
                method: args.method,
                path: args.path,
                application_id: args.application,
                required_scopes: args.scopes,
                client_ip: args.client_ip.unwrap_or_default(),
                cost: args.cost.unwrap_or(0),
                ..Default::default()
            };
            let response = client.authorize(request).await.map_err(explain)?.into_inner();
            print::decision(args.connection.json, &response);
            Ok(())
        }
        Command::Health(args) => health(args).await,
        Command::AdminToken(AdminTokenCommand::Create { name, role, account, expires_in, connection }) => {
            // 0 on the wire means "never": a zero duration asked for here is a mistake.
            anyhow::ensure!(expires_in.is_none_or(|d| d.as_secs() > 0), "--expires-in must be at least 1s");
            let request = pb::CreateAdminTokenRequest {
                name,
                role,
                account_id: account.unwrap_or_default(),
                expires_in_seconds: expires_in.map_or(0, |d| d.as_secs()),
            };
            let created = connection.rpc().await?.create_admin_token(request).await.map_err(explain)?;
            print::admin_token_created(connection.json, &created.into_inner());
            Ok(())
        }
        Command::AdminToken(AdminTokenCommand::List { connection }) => {
            let listed = connection.rpc().await?.list_admin_tokens(pb::ListAdminTokensRequest {}).await;
            print::list(connection.json, &listed.map_err(explain)?.into_inner().tokens);
            Ok(())
        }
        Command::AdminToken(AdminTokenCommand::Revoke { name, connection }) => {
            let reply = connection.rpc().await?.revoke_admin_token(pb::RevokeAdminTokenRequest { name }).await;
            print::reply(connection.json, reply)
        }
        Command::Audit(AuditCommand::List { account, search, categories, limit, connection }) => {
            let admin = connection.admin().await?;
            let progress = Progress::new();
            let events = admin
                .audit_events(&account, search.as_deref(), &categories, limit, |n| progress.fetched(n, "events"))
                .await
                .map_err(explain);
            progress.finish();
            print::list(connection.json, &events?);
            Ok(())
        }
    }
}

/// One health check: `Ok` only for SERVING.
async fn health(args: HealthArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let limit = Duration::from_secs(args.timeout);
    let channel = tokio::time::timeout(limit, args.connection.channel())
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {}s", args.connection.server, args.timeout))??;
    let mut request = tonic::Request::new(HealthCheckRequest { service: args.service.clone() });
    request.set_timeout(limit);
    let status = HealthClient::new(channel)
        .check(request)
        .await
        .with_context(|| format!("health of {:?} at {}", args.service, args.connection.server))?
        .into_inner()
        .status();
    let name = status.as_str_name();
    anyhow::ensure!(status == ServingStatus::Serving, "keygate at {} is {name}", args.connection.server);
    println!("{name}");
    Ok(())
}

async fn run_app(command: AppCommand) -> anyhow::Result<()> {
    match command {
        AppCommand::Create { account, name, connection } => {
            let request = pb::CreateApplicationRequest { account_id: account, name };
            let reply = connection.rpc().await?.create_application(request).await;
            print::reply(connection.json, reply)
        }
        AppCommand::Get { id, connection } => {
            let reply = connection.rpc().await?.get_application(pb::GetApplicationRequest { id }).await;
            print::reply(connection.json, reply)
        }
        AppCommand::List { account, connection } => {
            let admin = connection.admin().await?;
            let progress = Progress::new();
            let all = admin.all_applications(&account, |n| progress.fetched(n, "applications")).await.map_err(explain);
            progress.finish();
            print::list(connection.json, &all?);
            Ok(())
        }
        AppCommand::Update { id, name, connection } => {
            let reply = connection.rpc().await?.update_application(pb::UpdateApplicationRequest { id, name }).await;
            print::reply(connection.json, reply)
        }
        AppCommand::Delete { id, cascade, yes, connection } => {
            if !yes {
                anyhow::bail!("this would delete application {id} for good; run again with --yes");
            }
            let request = pb::DeleteApplicationRequest { id, cascade };
            let reply = connection.rpc().await?.delete_application(request).await.map_err(explain)?;
            print::deleted(connection.json, &reply.into_inner());
            Ok(())
        }
        AppCommand::RotateKey { id, grace, connection } => {
            let request =
                pb::RotateApplicationKeyRequest { application_id: id, grace_period_seconds: grace.map(seconds) };
            let rotated = connection.rpc().await?.rotate_application_key(request).await.map_err(explain)?;
            print::rotated(connection.json, &rotated.into_inner());
            Ok(())
        }
    }
}

async fn run_session(command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::Create { account, user, ttl, connection } => {
            let ttl_seconds = ttl.map_or(0, seconds);
            let request = pb::CreateSessionRequest { account_id: account, user_id: user, ttl_seconds };
            let created = connection.rpc().await?.create_session(request).await.map_err(explain)?;
            print::session_created(connection.json, &created.into_inner());
            Ok(())
        }
        SessionCommand::Get { id, connection } => {
            let reply = connection.rpc().await?.get_session(pb::GetSessionRequest { id }).await;
            print::reply(connection.json, reply)
        }
        SessionCommand::Revoke { id, connection } => {
            let reply = connection.rpc().await?.revoke_session(pb::RevokeSessionRequest { id }).await;
            print::reply(connection.json, reply)
        }
        SessionCommand::List { account, user, connection } => {
            let admin = connection.admin().await?;
            let progress = Progress::new();
            let all = admin
                .all_sessions(&account, user.as_deref(), |n| progress.fetched(n, "sessions"))
                .await
                .map_err(explain);
            progress.finish();
            print::list(connection.json, &all?);
            Ok(())
        }
    }
}

async fn run_owner(command: OwnerCommand) -> anyhow::Result<()> {
    match command {
        OwnerCommand::Set {
            account,
            owner,
            limits,
            no_limits,
            credits,
            refill,
            refill_mode,
            no_credits,
            connection,
        } => {
            let request = pb::UpdateOwnerRequest {
                account_id: account,
                owner_id: owner,
                limits: (no_limits || !limits.is_empty()).then(|| pb::KeyLimitList { values: terms::named(limits) }),
                credits: terms::credits(credits, refill, refill_mode),
                clear_credits: no_credits,
            };
            let reply = connection.rpc().await?.update_owner(request).await;
            print::reply(connection.json, reply)
        }
        OwnerCommand::Get { account, owner, connection } => {
            let request = pb::GetOwnerRequest { account_id: account, owner_id: owner };
            let reply = connection.rpc().await?.get_owner(request).await;
            print::reply(connection.json, reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
