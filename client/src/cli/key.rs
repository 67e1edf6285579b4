//! `keygate key …`: API keys, their terms, and the commands over many keys (list,
//! revoke-all, import).

use super::print::{self, explain, Progress};
use super::{expires_at, import, parse_duration, seconds, split_list, terms, Connection};
use crate::KeygateAdmin;
use clap::Subcommand;
use keygate_api::proto as pb;
use std::path::PathBuf;
use std::time::Duration;

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
        /// Whom the key belongs to, in your own terms; it shares the owner's limits and credits.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        terms: TermArgs,
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
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Replace a key with a new one that carries everything it carries; its secret is
    /// printed once. The old key keeps working for the overlap, then is denied (rolled).
    Roll {
        id: String,
        /// How long the old key keeps working, 0s (at once, for a leaked key nobody should
        /// use) up to 7d. Required: a roll without one is an outage for the key's holder.
        #[arg(long, value_parser = parse_duration)]
        overlap: Duration,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a key for good: its row, hash, credits and usage. Its audit events stay.
    Delete {
        id: String,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Import keys from another system: a JSON-lines file of hashes (see docs/lifecycle.md).
    /// Running the same file again changes nothing.
    Import {
        file: PathBuf,
        /// Names the import. Default: the file's SHA-256.
        #[arg(long)]
        import_id: Option<String>,
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
        /// Set the owner.
        #[arg(long, conflicts_with = "no_owner")]
        owner: Option<String>,
        /// Remove the owner.
        #[arg(long)]
        no_owner: bool,
        #[command(flatten)]
        terms: TermArgs,
        /// Remove the key's own limits.
        #[arg(long, conflicts_with = "limits")]
        no_limits: bool,
        /// Remove the key's credits (its calls are no longer counted).
        #[arg(long, conflicts_with = "credits")]
        no_credits: bool,
        /// With --credits: stop refilling. Without it, --credits keeps the key's refill.
        #[arg(long, requires = "credits", conflicts_with = "refill")]
        no_refill: bool,
        /// Remove the IP allowlist (the key may be used from anywhere).
        #[arg(long, conflicts_with = "allowed_networks")]
        any_ip: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Switch a key off at once on every replica (denied as api_key_revoked, reason
    /// disabled) until it is enabled again. Unlike revoke, this can be undone.
    Disable {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Switch a disabled key back on.
    Enable {
        id: String,
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

/// What a key carries besides its scopes: on create, what it starts with; on update, what
/// replaces what it had (only the flags given).
#[derive(Debug, clap::Args)]
pub struct TermArgs {
    /// A limit the key carries (repeatable): `[NAME=]LIMIT/WINDOW[@ROUTE]`, e.g. 100/min,
    /// burst=10/10s, 5/hour@"POST /api/v1/x". Tightens the policy's, never loosens them.
    #[arg(long = "limit", value_parser = terms::parse_limit)]
    limits: Vec<keygate_api::proto::KeyLimit>,
    /// Uses the key may make; each allowed call spends the route's cost (default 1).
    #[arg(long)]
    credits: Option<i64>,
    /// Refill the credits: AMOUNT/month, AMOUNT/day or AMOUNT/Ns. Needs --credits.
    #[arg(long, value_parser = terms::parse_refill, requires = "credits")]
    refill: Option<keygate_api::proto::Refill>,
    /// `to` (default): a refill sets the credits to AMOUNT; `add`: adds AMOUNT.
    #[arg(long, requires = "refill", value_parser = ["to", "add"])]
    refill_mode: Option<String>,
    /// A CIDR range the key may be used from (repeatable): 10.0.0.0/8, 2001:db8::/32.
    #[arg(long = "allow-ip")]
    allowed_networks: Vec<String>,
    /// A JSON object handed to the upstream with every allowed call (at most 4 KiB); on
    /// update, '' removes it.
    #[arg(long)]
    meta: Option<String>,
}

/// Every API key of an account, optionally searched (or one owner's), with progress past one page.
async fn all_keys(
    admin: &KeygateAdmin,
    account: &str,
    search: Option<&str>,
    owner: Option<&str>,
) -> anyhow::Result<Vec<pb::ApiKey>> {
    let progress = Progress::new();
    let all = admin.all_api_keys(account, search, owner, |n| progress.fetched(n, "keys")).await.map_err(explain);
    progress.finish();
    all
}

/// `key disable|enable`: the reversible switch.
async fn switch(id: String, enabled: bool, connection: &Connection) -> anyhow::Result<()> {
    let request = pb::UpdateApiKeyRequest { id, enabled: Some(enabled), ..Default::default() };
    let reply = connection.rpc().await?.update_api_key(request).await;
    print::reply(connection.json, reply)
}

/// `key revoke-all`: every live key of `account` (matching `search`), one at a time.
async fn revoke_all(
    account: &str,
    search: Option<&str>,
    reason: String,
    yes: bool,
    connection: &Connection,
) -> anyhow::Result<()> {
    let admin = connection.admin().await?;
    let active: Vec<_> = all_keys(&admin, account, search, None)
        .await?
        .into_iter()
        // A disabled key is live (enabling it again makes it work): it is revoked too.
        .filter(|k| [pb::ApiKeyStatus::Active as i32, pb::ApiKeyStatus::Disabled as i32].contains(&k.status))
        .collect();
    if !yes {
        anyhow::bail!("this would revoke {} active keys of {account}; run again with --yes", active.len());
    }
    let progress = Progress::new();
    let mut revoked = Vec::new();
    for (done, key) in active.iter().enumerate() {
        progress.update(format_args!("revoking {}/{}: {}", done + 1, active.len(), key.id));
        let request = pb::RevokeApiKeyRequest { id: key.id.clone(), reason: reason.clone() };
        match admin.rpc().revoke_api_key(request).await {
            Ok(key) => revoked.push(key.into_inner()),
            Err(status) => {
                progress.finish();
                let error = explain(status);
                anyhow::bail!("revoked {} of {} keys, then {}: {error}", revoked.len(), active.len(), key.id);
            }
        }
    }
    progress.finish();
    print::list(connection.json, &revoked);
    Ok(())
}

pub(super) async fn run_key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { account, name, scopes, applications, expires_in, owner, terms, connection } => {
            let request = pb::CreateApiKeyRequest {
                account_id: account,
                name,
                scopes,
                application_ids: applications,
                expires_at: expires_in.map(expires_at),
                limits: terms::named(terms.limits),
                credits: terms::credits(terms.credits, terms.refill, terms.refill_mode),
                allowed_networks: terms.allowed_networks,
                metadata_json: terms.meta.unwrap_or_default(),
                owner_id: owner.unwrap_or_default(),
            };
            let created = connection.rpc().await?.create_api_key(request).await.map_err(explain)?;
            print::key_created(connection.json, &created.into_inner());
            Ok(())
        }
        KeyCommand::Get { id, connection } => {
            let reply = connection.rpc().await?.get_api_key(pb::GetApiKeyRequest { id }).await;
            print::reply(connection.json, reply)
        }
        KeyCommand::List { account, search, owner, connection } => {
            let all = all_keys(&connection.admin().await?, &account, search.as_deref(), owner.as_deref()).await?;
            print::list(connection.json, &all);
            Ok(())
        }
        KeyCommand::Roll { id, overlap, connection } => {
            let request = pb::RerollApiKeyRequest { id, overlap_seconds: seconds(overlap) };
            let rolled = connection.rpc().await?.reroll_api_key(request).await.map_err(explain)?;
            print::rolled(connection.json, &rolled.into_inner());
            Ok(())
        }
        KeyCommand::Delete { id, yes, connection } => {
            if !yes {
                anyhow::bail!("this would delete {id} for good; run again with --yes");
            }
            let reply =
                connection.rpc().await?.delete_api_key(pb::DeleteApiKeyRequest { id }).await.map_err(explain)?;
            print::deleted(connection.json, &reply.into_inner());
            Ok(())
        }
        KeyCommand::Import { file, import_id, connection } => {
            let summary = import::run(&connection.admin().await?, &file, import_id).await?;
            summary.show(connection.json);
            Ok(())
        }
        KeyCommand::RevokeAll { account, search, reason, yes, connection } => {
            revoke_all(&account, search.as_deref(), reason, yes, &connection).await
        }
        KeyCommand::Disable { id, connection } => switch(id, false, &connection).await,
        KeyCommand::Enable { id, connection } => switch(id, true, &connection).await,
        KeyCommand::Update {
            id,
            name,
            scopes,
            apps,
            expires_in,
            no_expiry,
            owner,
            no_owner,
            terms,
            no_limits,
            no_credits,
            no_refill,
            any_ip,
            connection,
        } => {
            let mut rpc = connection.rpc().await?;
            // A top-up keeps the key's refill (the API's default); --no-refill removes it.
            let credits = terms::credits(terms.credits, terms.refill, terms.refill_mode);
            let limits = (no_limits || !terms.limits.is_empty())
                .then(|| pb::KeyLimitList { values: terms::named(terms.limits) });
            let allowed_networks = (any_ip || !terms.allowed_networks.is_empty())
                .then_some(pb::StringList { values: terms.allowed_networks });
            let request = pb::UpdateApiKeyRequest {
                id,
                name,
                scopes: scopes.map(|s| pb::StringList { values: split_list(&s) }),
                application_ids: apps.map(|a| pb::StringList { values: split_list(&a) }),
                expires_at: expires_in.map(expires_at),
                clear_expires_at: no_expiry,
                enabled: None,
                limits,
                credits,
                clear_credits: no_credits,
                allowed_networks,
                metadata_json: terms.meta,
                owner_id: if no_owner { Some(String::new()) } else { owner },
                clear_refill: no_refill,
            };
            let reply = rpc.update_api_key(request).await;
            print::reply(connection.json, reply)
        }
        KeyCommand::Revoke { id, reason, connection } => {
            let reply = connection.rpc().await?.revoke_api_key(pb::RevokeApiKeyRequest { id, reason }).await;
            print::reply(connection.json, reply)
        }
    }
}
