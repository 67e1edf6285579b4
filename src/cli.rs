//! The `keygate` command line: `serve`, and a client for every admin call.

use crate::config::{ServeArgs, DEFAULT_ADMIN_TOKEN_FILE};
use crate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use crate::policy::Policy;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "Auth and policy service for API keys, over gRPC")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage dashboard sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Ask for a decision, as an edge would.
    Authorize(AuthorizeArgs),
    /// Route policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
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
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
        /// A scope to grant (repeatable): `applications:read`, `applications:*`, `*`.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Restrict the key to this application (repeatable). Default: all of the account's.
        #[arg(long = "app")]
        applications: Vec<String>,
        /// Expire after this long: 90s, 30m, 12h, 30d.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one key, with its status and last use.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List an account's API keys (every page), optionally searched.
    List {
        #[arg(long)]
        account: String,
        /// Matches name or key id.
        #[arg(long)]
        search: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Change a key's name, scopes, applications or expiry (only what is given).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Replace the scopes (comma-separated; empty string for none).
        #[arg(long)]
        scopes: Option<String>,
        /// Replace the application restriction (comma-separated; empty string for all).
        #[arg(long)]
        apps: Option<String>,
        #[arg(long, value_parser = parse_duration, conflicts_with = "no_expiry")]
        expires_in: Option<Duration>,
        #[arg(long)]
        no_expiry: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a key at once (idempotent); every replica denies it on its next call.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke every active API key of an account (or those matching --search), e.g. after
    /// a leak. Shows progress; each revoke is its own audited call.
    RevokeAll {
        #[arg(long)]
        account: String,
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes: bool,
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
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and list its routes.
    Check { file: PathBuf },
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
        Channel::from_shared(self.server.clone())
            .context("--server is not a URL like http://127.0.0.1:50051")?
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

    async fn admin(&self) -> anyhow::Result<Admin> {
        let mut token = BearerToken::new(&self.token()?)?;
        if let Some(actor) = self.actor.clone().or_else(|| std::env::var("USER").ok()).filter(|a| !a.is_empty()) {
            token = token.acting_for(&actor)?;
        }
        Ok(AdminClient::with_interceptor(self.channel().await?, token))
    }
}

type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` (and `x-keygate-actor`, when set) to every call.
#[derive(Clone)]
pub struct BearerToken {
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    actor: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl BearerToken {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let bearer =
            format!("Bearer {token}").parse().context("the admin token has characters a header cannot carry")?;
        Ok(Self { bearer, actor: None })
    }

    /// Names whom the calls are made for, for the audit trail.
    pub fn acting_for(mut self, actor: &str) -> anyhow::Result<Self> {
        self.actor = Some(actor.parse().context("--actor must be printable ASCII")?);
        Ok(self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.bearer.clone());
        if let Some(actor) = &self.actor {
            request.metadata_mut().insert("x-keygate-actor", actor.clone());
        }
        Ok(request)
    }
}

/// Progress on stderr for operations that take many calls; silent when stderr is not a
/// terminal (scripts, `--json` piped into jq), so output stays clean.
struct Progress {
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        Self { shown: std::io::stderr().is_terminal() }
    }

    fn update(&self, text: std::fmt::Arguments<'_>) {
        if self.shown {
            eprint!("\r\x1b[2K{text}");
        }
    }

    fn finish(&self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Follows page tokens to the end (or `limit` items), showing progress past one page.
async fn all_pages<T, Fut>(what: &str, limit: usize, mut fetch: impl FnMut(String) -> Fut) -> anyhow::Result<Vec<T>>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let progress = Progress::new();
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let (items, next) = fetch(page_token).await.map_err(explain)?;
        all.extend(items);
        if next.is_empty() || all.len() >= limit {
            break;
        }
        progress.update(format_args!("fetched {} {what}…", all.len()));
        page_token = next;
    }
    progress.finish();
    all.truncate(limit);
    Ok(all)
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn expires_at(after: Duration) -> prost_types::Timestamp {
    let at = std::time::SystemTime::now() + after;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: 0 }
}

fn time(ts: &Option<prost_types::Timestamp>) -> Option<String> {
    ts.as_ref().and_then(|t| crate::grpc::convert::timestamp_from_proto("time", t).ok()).map(|t| t.to_string())
}

/// Writes a line to stdout; a closed pipe (`keygate ... | head`) ends output quietly.
fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Readable text, or JSON with `--json`.
fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        emit(format_args!("{value:#}"));
    } else {
        emit(format_args!("{text}"));
    }
}

fn app_json(app: &pb::Application) -> serde_json::Value {
    serde_json::json!({
        "id": app.id, "account_id": app.account_id, "name": app.name,
        "created_at": time(&app.created_at),
    })
}

fn key_json(key: &pb::ApiKey) -> serde_json::Value {
    serde_json::json!({
        "id": key.id, "account_id": key.account_id, "name": key.name, "scopes": key.scopes,
        "application_ids": key.application_ids, "status": status_name(key.status),
        "created_at": time(&key.created_at),
        "expires_at": time(&key.expires_at),
        "revoked_at": time(&key.revoked_at),
        "revoked_reason": key.revoked_reason,
        "last_used_at": time(&key.last_used_at),
    })
}

fn audit_json(event: &pb::AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "id": event.id, "account_id": event.account_id, "category": event.category, "action": event.action,
        "actor": event.actor, "on_behalf_of": event.on_behalf_of, "target": event.target,
        "request_id": event.request_id, "occurred_at": time(&event.occurred_at),
        "detail": serde_json::from_str::<serde_json::Value>(&event.detail_json).unwrap_or_default(),
    })
}

const AUDIT_HEADER: &str =
    "OCCURRED_AT               CATEGORY     ACTION                   TARGET                 ACTOR";

fn audit_line(event: &pb::AuditEvent) -> String {
    let actor = if event.on_behalf_of.is_empty() {
        event.actor.clone()
    } else {
        format!("{} (via {})", event.on_behalf_of, event.actor)
    };
    format!(
        "{:<25} {:<12} {:<24} {:<22} {actor}  request_id={}",
        time(&event.occurred_at).unwrap_or_default(),
        event.category,
        event.action,
        event.target,
        event.request_id,
    )
}

fn status_name(status: i32) -> &'static str {
    match pb::ApiKeyStatus::try_from(status) {
        Ok(pb::ApiKeyStatus::Active) => "active",
        Ok(pb::ApiKeyStatus::Expired) => "expired",
        Ok(pb::ApiKeyStatus::Revoked) => "revoked",
        _ => "unknown",
    }
}

const KEY_HEADER: &str = "ID                     STATUS   NAME                     DETAILS";

fn key_line(key: &pb::ApiKey) -> String {
    format!(
        "{:<22} {:<8} {:<24} scopes={} apps={} expires_at={} last_used_at={}",
        key.id,
        status_name(key.status),
        key.name,
        key.scopes.join(","),
        if key.application_ids.is_empty() { "*".to_owned() } else { key.application_ids.join(",") },
        time(&key.expires_at).unwrap_or_else(|| "never".into()),
        time(&key.last_used_at).unwrap_or_else(|| "never".into()),
    )
}

/// A table: a header line, then one line per row (or a note that there are none).
fn table<T>(header: &str, rows: &[T], line: impl Fn(&T) -> String) -> String {
    if rows.is_empty() {
        return "(none)".to_owned();
    }
    std::iter::once(header.to_owned()).chain(rows.iter().map(line)).collect::<Vec<_>>().join("\n")
}

const APP_HEADER: &str = "ID                     ACCOUNT          NAME";

fn app_line(app: &pb::Application) -> String {
    format!("{:<22} {:<16} {}", app.id, app.account_id, app.name)
}

/// Turns a gRPC error into one readable line (code, message), never a debug dump.
fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let reason =
        status.get_details_error_info().map(|info| info.reason).unwrap_or_else(|| format!("{:?}", status.code()));
    anyhow::anyhow!("{reason}: {}", status.message())
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => unreachable!("main runs the server"),
        Command::Policy(PolicyCommand::Check { file }) => {
            let policy = Policy::load(&file)?;
            emit(format_args!("{}: {} routes, valid", file.display(), policy.routes().len()));
            for route in policy.routes() {
                let scopes: Vec<_> = route.scopes.iter().map(|s| s.as_str()).collect();
                emit(format_args!("  {:<60} {}", route.template, scopes.join(",")));
            }
            Ok(())
        }
        Command::App(command) => run_app(command).await,
        Command::Audit(AuditCommand::List { account, search, categories, limit, connection }) => {
            let search_params = serde_json::json!({ "searchString": search, "categories": categories }).to_string();
            let admin = connection.admin().await?;
            let events = all_pages("events", limit, |page_token| {
                let (mut admin, account_id, search_params) = (admin.clone(), account.clone(), search_params.clone());
                async move {
                    let request = pb::ListAuditEventsRequest { account_id, page_size: 500, page_token, search_params };
                    let page = admin.list_audit_events(request).await?.into_inner();
                    Ok((page.events, page.next_page_token))
                }
            })
            .await?;
            print(connection.json, events.iter().map(audit_json).collect(), table(AUDIT_HEADER, &events, audit_line));
            Ok(())
        }
        Command::Session(command) => run_session(command).await,
        Command::Key(command) => run_key(command).await,
        Command::Authorize(args) => {
            let mut client = AuthorizerClient::new(args.connection.channel().await?);
            let response = client
                .authorize(pb::AuthorizeRequest {
                    credential: args.credential,
                    method: args.method,
                    path: args.path,
                    application_id: args.application,
                    required_scopes: args.scopes,
                    ..Default::default()
                })
                .await
                .map_err(explain)?
                .into_inner();
            let principal = response.principal.as_ref();
            print(
                args.connection.json,
                serde_json::json!({
                    "allowed": response.allowed, "code": response.code, "http_status": response.http_status,
                    "message": response.message, "route": response.route, "application_id": response.application_id,
                    "key_id": principal.map(|p| &p.key_id), "account_id": principal.map(|p| &p.account_id),
                    "principal_kind": principal.map(|p| &p.kind), "session_id": principal.map(|p| &p.session_id),
                    "limit": response.limit, "remaining": response.remaining,
                    "retry_after_seconds": response.retry_after_seconds,
                }),
                if response.allowed {
                    let who = principal.map_or("-", |p| if p.key_id.is_empty() { &p.session_id } else { &p.key_id });
                    format!("allowed  route={} principal={who}", response.route)
                } else if response.retry_after_seconds > 0 {
                    format!(
                        "denied   {} {} ({}; retry after {} s)",
                        response.http_status, response.code, response.message, response.retry_after_seconds
                    )
                } else {
                    format!("denied   {} {} ({})", response.http_status, response.code, response.message)
                },
            );
            Ok(())
        }
    }
}

async fn run_app(command: AppCommand) -> anyhow::Result<()> {
    match command {
        AppCommand::Create { account, name, connection } => {
            let request = pb::CreateApplicationRequest { account_id: account, name };
            let app = connection.admin().await?.create_application(request).await.map_err(explain)?.into_inner();
            print(connection.json, app_json(&app), app_line(&app));
        }
        AppCommand::Get { id, connection } => {
            let request = pb::GetApplicationRequest { id };
            let app = connection.admin().await?.get_application(request).await.map_err(explain)?.into_inner();
            print(connection.json, app_json(&app), app_line(&app));
        }
        AppCommand::List { account, connection } => {
            let admin = connection.admin().await?;
            let all = all_pages("applications", usize::MAX, |page_token| {
                let (mut admin, account_id) = (admin.clone(), account.clone());
                async move {
                    let request = pb::ListApplicationsRequest { account_id, page_size: 500, page_token };
                    let page = admin.list_applications(request).await?.into_inner();
                    Ok((page.applications, page.next_page_token))
                }
            })
            .await?;
            print(connection.json, all.iter().map(app_json).collect(), table(APP_HEADER, &all, app_line));
        }
        AppCommand::RotateKey { id, grace, connection } => {
            let request = pb::RotateApplicationKeyRequest {
                application_id: id,
                grace_period_seconds: grace.map(|g| u32::try_from(g.as_secs()).unwrap_or(u32::MAX)),
            };
            let rotated =
                connection.admin().await?.rotate_application_key(request).await.map_err(explain)?.into_inner();
            let key = rotated.key.unwrap_or_default();
            let mut json = key_json(&key);
            json["secret"] = rotated.secret.clone().into();
            json["previous_key_id"] = rotated.previous_key_id.clone().into();
            json["previous_key_retires_at"] = time(&rotated.previous_key_retires_at).into();
            let previous = if rotated.previous_key_id.is_empty() {
                "no previous runtime key".to_owned()
            } else {
                format!(
                    "{} keeps working until {}",
                    rotated.previous_key_id,
                    time(&rotated.previous_key_retires_at).unwrap_or_default()
                )
            };
            print(
                connection.json,
                json,
                format!("{}\n{previous}\nsecret (shown once, store it now): {}", key_line(&key), rotated.secret),
            );
        }
    }
    Ok(())
}

fn session_json(session: &pb::Session) -> serde_json::Value {
    serde_json::json!({
        "id": session.id, "account_id": session.account_id, "user_id": session.user_id, "status": session.status,
        "created_at": time(&session.created_at), "expires_at": time(&session.expires_at),
        "revoked_at": time(&session.revoked_at),
    })
}

fn session_line(session: &pb::Session) -> String {
    format!(
        "{:<22} {:<8} account={} user={} expires_at={}",
        session.id,
        session.status,
        session.account_id,
        session.user_id,
        time(&session.expires_at).unwrap_or_default()
    )
}

async fn run_session(command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::Create { account, user, ttl, connection } => {
            let ttl_seconds = ttl.map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX));
            let request = pb::CreateSessionRequest { account_id: account, user_id: user, ttl_seconds };
            let created = connection.admin().await?.create_session(request).await.map_err(explain)?.into_inner();
            let session = created.session.unwrap_or_default();
            let mut json = session_json(&session);
            json["token"] = created.token.clone().into();
            print(
                connection.json,
                json,
                format!("{}\ntoken (shown once, store it now): {}", session_line(&session), created.token),
            );
        }
        SessionCommand::Get { id, connection } => {
            let request = pb::GetSessionRequest { id };
            let session = connection.admin().await?.get_session(request).await.map_err(explain)?.into_inner();
            print(connection.json, session_json(&session), session_line(&session));
        }
        SessionCommand::Revoke { id, connection } => {
            let request = pb::RevokeSessionRequest { id };
            let session = connection.admin().await?.revoke_session(request).await.map_err(explain)?.into_inner();
            print(connection.json, session_json(&session), session_line(&session));
        }
    }
    Ok(())
}

/// Every API key of an account, optionally searched.
async fn list_keys(admin: &Admin, account: &str, search: Option<String>) -> anyhow::Result<Vec<pb::ApiKey>> {
    let search_params = search.map(|s| serde_json::json!({ "searchString": s }).to_string()).unwrap_or_default();
    all_pages("keys", usize::MAX, |page_token| {
        let (mut admin, account_id, search_params) = (admin.clone(), account.to_owned(), search_params.clone());
        async move {
            let request = pb::ListApiKeysRequest { account_id, page_size: 500, page_token, search_params };
            let page = admin.list_api_keys(request).await?.into_inner();
            Ok((page.keys, page.next_page_token))
        }
    })
    .await
}

async fn run_key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { account, name, scopes, applications, expires_in, connection } => {
            let request = pb::CreateApiKeyRequest {
                account_id: account,
                name,
                scopes,
                application_ids: applications,
                expires_at: expires_in.map(expires_at),
            };
            let created = connection.admin().await?.create_api_key(request).await.map_err(explain)?.into_inner();
            let key = created.key.unwrap_or_default();
            let mut json = key_json(&key);
            json["secret"] = created.secret.clone().into();
            print(
                connection.json,
                json,
                format!("{}\nsecret (shown once, store it now): {}", key_line(&key), created.secret),
            );
        }
        KeyCommand::Get { id, connection } => {
            let key =
                connection.admin().await?.get_api_key(pb::GetApiKeyRequest { id }).await.map_err(explain)?.into_inner();
            print(connection.json, key_json(&key), key_line(&key));
        }
        KeyCommand::List { account, search, connection } => {
            let all = list_keys(&connection.admin().await?, &account, search).await?;
            print(connection.json, all.iter().map(key_json).collect(), table(KEY_HEADER, &all, key_line));
        }
        KeyCommand::RevokeAll { account, search, reason, yes, connection } => {
            let admin = connection.admin().await?;
            let active: Vec<_> = list_keys(&admin, &account, search)
                .await?
                .into_iter()
                .filter(|k| k.status == pb::ApiKeyStatus::Active as i32)
                .collect();
            if !yes {
                anyhow::bail!("this would revoke {} active keys of {account}; run again with --yes", active.len());
            }
            let progress = Progress::new();
            let mut revoked = Vec::new();
            for (done, key) in active.iter().enumerate() {
                progress.update(format_args!("revoking {}/{}: {}", done + 1, active.len(), key.id));
                let request = pb::RevokeApiKeyRequest { id: key.id.clone(), reason: reason.clone() };
                match admin.clone().revoke_api_key(request).await {
                    Ok(key) => revoked.push(key.into_inner()),
                    Err(status) => {
                        progress.finish();
                        let error = explain(status);
                        anyhow::bail!("revoked {} of {} keys, then {}: {error}", revoked.len(), active.len(), key.id);
                    }
                }
            }
            progress.finish();
            print(connection.json, revoked.iter().map(key_json).collect(), table(KEY_HEADER, &revoked, key_line));
        }
        KeyCommand::Update { id, name, scopes, apps, expires_in, no_expiry, connection } => {
            let request = pb::UpdateApiKeyRequest {
                id,
                name,
                scopes: scopes.map(|s| pb::StringList { values: split_list(&s) }),
                application_ids: apps.map(|a| pb::StringList { values: split_list(&a) }),
                expires_at: expires_in.map(expires_at),
                clear_expires_at: no_expiry,
            };
            let key = connection.admin().await?.update_api_key(request).await.map_err(explain)?.into_inner();
            print(connection.json, key_json(&key), key_line(&key));
        }
        KeyCommand::Revoke { id, reason, connection } => {
            let request = pb::RevokeApiKeyRequest { id, reason };
            let key = connection.admin().await?.revoke_api_key(request).await.map_err(explain)?.into_inner();
            print(connection.json, key_json(&key), key_line(&key));
        }
    }
    Ok(())
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
