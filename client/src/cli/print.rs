//! How the CLI shows keygate's answers: readable lines and tables, or JSON with `--json`.
//! Output is part of the CLI's contract (scripts read both forms), so each shape is
//! written once, here.

use keygate_api::proto as pb;
use keygate_api::time::rfc3339 as time;
use serde_json::{json, Value};

/// Something the CLI shows: as JSON, as one line, and under a table header.
pub(super) trait Shown {
    const HEADER: &'static str;
    fn json(&self) -> Value;
    fn line(&self) -> String;
}

impl Shown for pb::Application {
    const HEADER: &'static str = "ID                     ACCOUNT          NAME";

    fn json(&self) -> Value {
        json!({
            "id": self.id, "account_id": self.account_id, "name": self.name,
            "created_at": time(&self.created_at),
        })
    }

    fn line(&self) -> String {
        format!("{:<22} {:<16} {}", self.id, self.account_id, self.name)
    }
}

impl Shown for pb::ApiKey {
    const HEADER: &'static str = "ID                     STATUS   NAME                     DETAILS";

    fn json(&self) -> Value {
        json!({
            "id": self.id, "account_id": self.account_id, "name": self.name, "scopes": self.scopes,
            "application_ids": self.application_ids, "status": status_name(self.status),
            "created_at": time(&self.created_at),
            "expires_at": time(&self.expires_at),
            "revoked_at": time(&self.revoked_at),
            "revoked_reason": self.revoked_reason,
            "last_used_at": time(&self.last_used_at),
            "enabled": self.enabled,
            "limits": limits_json(&self.limits),
            "credits": self.credits.as_ref().map(credits_json),
            "allowed_networks": self.allowed_networks,
            "metadata": serde_json::from_str::<Value>(&self.metadata_json).ok(),
            "owner_id": Some(&self.owner_id).filter(|o| !o.is_empty()),
            "rolled_from": Some(&self.rolled_from).filter(|r| !r.is_empty()),
            "rolled_to": Some(&self.rolled_to).filter(|r| !r.is_empty()),
            "origin": self.origin,
        })
    }

    fn line(&self) -> String {
        let status = if self.enabled || self.status != pb::ApiKeyStatus::Active as i32 {
            status_name(self.status)
        } else {
            "disabled"
        };
        let mut line = format!(
            "{:<22} {:<8} {:<24} scopes={} apps={} expires_at={} last_used_at={}",
            self.id,
            status,
            self.name,
            self.scopes.join(","),
            if self.application_ids.is_empty() { "*".to_owned() } else { self.application_ids.join(",") },
            time(&self.expires_at).unwrap_or_else(|| "never".into()),
            time(&self.last_used_at).unwrap_or_else(|| "never".into()),
        );
        // What the key carries, only when it carries it (older lines stay as they were).
        terms_line(&mut line, &self.limits, self.credits.as_ref());
        if !self.allowed_networks.is_empty() {
            line.push_str(&format!(" allow_ip={}", self.allowed_networks.join(",")));
        }
        if !self.metadata_json.is_empty() {
            line.push_str(" meta=yes");
        }
        if !self.owner_id.is_empty() {
            line.push_str(&format!(" owner={}", self.owner_id));
        }
        if !self.rolled_to.is_empty() {
            line.push_str(&format!(" rolled_to={}", self.rolled_to));
        }
        if !matches!(self.origin.as_str(), "keygate" | "") {
            line.push_str(&format!(" origin={}", self.origin));
        }
        line
    }
}

impl Shown for pb::Owner {
    const HEADER: &'static str = "OWNER                  ACCOUNT          DETAILS";

    fn json(&self) -> Value {
        json!({
            "account_id": self.account_id, "owner_id": self.owner_id,
            "limits": limits_json(&self.limits),
            "credits": self.credits.as_ref().map(credits_json),
            "updated_at": time(&self.updated_at),
        })
    }

    fn line(&self) -> String {
        let mut line = format!("{:<22} {:<16}", self.owner_id, self.account_id);
        terms_line(&mut line, &self.limits, self.credits.as_ref());
        line
    }
}

impl Shown for pb::Session {
    const HEADER: &'static str = "ID                     STATUS   DETAILS";

    fn json(&self) -> Value {
        json!({
            "id": self.id, "account_id": self.account_id, "user_id": self.user_id, "status": self.status,
            "created_at": time(&self.created_at), "expires_at": time(&self.expires_at),
            "revoked_at": time(&self.revoked_at),
        })
    }

    fn line(&self) -> String {
        format!(
            "{:<22} {:<8} account={} user={} expires_at={}",
            self.id,
            self.status,
            self.account_id,
            self.user_id,
            time(&self.expires_at).unwrap_or_default()
        )
    }
}

impl Shown for pb::AdminToken {
    const HEADER: &'static str = "NAME                 ROLE       STATUS   DETAILS";

    fn json(&self) -> Value {
        json!({
            "name": self.name, "role": self.role, "account_id": self.account_id, "status": self.status,
            "created_at": time(&self.created_at), "expires_at": time(&self.expires_at),
            "revoked_at": time(&self.revoked_at), "created_by": self.created_by, "revoked_by": self.revoked_by,
        })
    }

    fn line(&self) -> String {
        let account = if self.account_id.is_empty() { "every account" } else { &self.account_id };
        let expires = time(&self.expires_at).unwrap_or_else(|| "never".to_owned());
        format!(
            "{:<20} {:<10} {:<8} account={account} expires_at={expires} created_by={}",
            self.name, self.role, self.status, self.created_by
        )
    }
}

impl Shown for pb::AuditEvent {
    const HEADER: &'static str =
        "OCCURRED_AT               CATEGORY     ACTION                   TARGET                 ACTOR";

    fn json(&self) -> Value {
        json!({
            "id": self.id, "account_id": self.account_id, "category": self.category, "action": self.action,
            "actor": self.actor, "on_behalf_of": self.on_behalf_of, "target": self.target,
            "request_id": self.request_id, "occurred_at": time(&self.occurred_at),
            "detail": serde_json::from_str::<Value>(&self.detail_json).unwrap_or_default(),
        })
    }

    fn line(&self) -> String {
        let actor = if self.on_behalf_of.is_empty() {
            self.actor.clone()
        } else {
            format!("{} (via {})", self.on_behalf_of, self.actor)
        };
        format!(
            "{:<25} {:<12} {:<24} {:<22} {actor}  request_id={}",
            time(&self.occurred_at).unwrap_or_default(),
            self.category,
            self.action,
            self.target,
            self.request_id,
        )
    }
}

fn limits_json(limits: &[pb::KeyLimit]) -> Value {
    limits
        .iter()
        .map(|l| {
            json!({
                "name": l.name, "limit": l.limit, "window_seconds": l.window_seconds,
                "route": Some(&l.route).filter(|r| !r.is_empty()),
            })
        })
        .collect()
}

fn credits_json(credits: &pb::Credits) -> Value {
    json!({
        "remaining": credits.remaining,
        "refill": credits.refill.as_ref().map(|r| json!({ "amount": r.amount, "interval": r.interval, "mode": r.mode })),
    })
}

/// A key's (or an owner's) limits and credits, as a table line shows them: each limit as
/// `--limit` takes it (`limit1: 100/min`, `burst: 5/10s@GET /x`), the credits with their
/// refill as `--refill` takes it.
fn terms_line(line: &mut String, limits: &[pb::KeyLimit], credits: Option<&pb::Credits>) {
    for limit in limits {
        let window = super::terms::window_name(limit.window_seconds);
        line.push_str(&format!(" {}: {}/{window}", limit.name, limit.limit));
        if !limit.route.is_empty() {
            line.push_str(&format!("@{}", limit.route));
        }
    }
    if let Some(credits) = credits {
        line.push_str(&format!(" credits={}", credits.remaining));
        if let Some(refill) = &credits.refill {
            line.push_str(&format!(" refill={}/{}", refill.amount, super::terms::interval_name(&refill.interval)));
        }
    }
}

fn status_name(status: i32) -> &'static str {
    match pb::ApiKeyStatus::try_from(status) {
        Ok(pb::ApiKeyStatus::Active) => "active",
        Ok(pb::ApiKeyStatus::Expired) => "expired",
        Ok(pb::ApiKeyStatus::Revoked) => "revoked",
        Ok(pb::ApiKeyStatus::Disabled) => "disabled",
        _ => "unknown",
    }
}

/// One item.
pub(super) fn one(json: bool, item: &impl Shown) {
    show(json, item.json(), item.line());
}

/// The item an admin call answered with, or its error as one line.
pub(super) fn reply<T: Shown>(json: bool, reply: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<()> {
    one(json, &reply.map_err(explain)?.into_inner());
    Ok(())
}

/// A list: a JSON array, or a table (a header line, then one line per item, or a note
/// that there are none).
pub(super) fn list<T: Shown>(json: bool, items: &[T]) {
    let table = if items.is_empty() {
        "(none)".to_owned()
    } else {
        std::iter::once(T::HEADER.to_owned()).chain(items.iter().map(Shown::line)).collect::<Vec<_>>().join("\n")
    };
    show(json, items.iter().map(Shown::json).collect(), table);
}

const SHOWN_ONCE: &str = "(shown once, store it now)";

pub(super) fn key_created(json: bool, created: &pb::CreateApiKeyResponse) {
    let key = created.key.clone().unwrap_or_default();
    let mut value = key.json();
    value["secret"] = created.secret.clone().into();
    show(json, value, format!("{}\nsecret {SHOWN_ONCE}: {}", key.line(), created.secret));
}

pub(super) fn session_created(json: bool, created: &pb::CreateSessionResponse) {
    let session = created.session.clone().unwrap_or_default();
    shown_once(json, session.json(), session.line(), "token", &created.token);
}

pub(super) fn admin_token_created(json: bool, created: &pb::CreateAdminTokenResponse) {
    let token = created.token.clone().unwrap_or_default();
    shown_once(json, token.json(), token.line(), "secret", &created.secret);
}

/// A record made with a token: its JSON with the token under `field`, or its line and
/// the token, said to be shown once.
fn shown_once(json: bool, mut value: Value, line: String, field: &str, token: &str) {
    value[field] = token.into();
    show(json, value, format!("{line}\ntoken {SHOWN_ONCE}: {token}"));
}

pub(super) fn rotated(json: bool, rotated: &pb::RotateApplicationKeyResponse) {
    let key = rotated.key.clone().unwrap_or_default();
    let mut value = key.json();
    value["secret"] = rotated.secret.clone().into();
    value["previous_key_id"] = rotated.previous_key_id.clone().into();
    value["previous_key_retires_at"] = time(&rotated.previous_key_retires_at).into();
    let previous = if rotated.previous_key_id.is_empty() {
        "no previous runtime key".to_owned()
    } else {
        format!(
            "{} keeps working until {}",
            rotated.previous_key_id,
            time(&rotated.previous_key_retires_at).unwrap_or_default()
        )
    };
    show(json, value, format!("{}\n{previous}\nsecret {SHOWN_ONCE}: {}", key.line(), rotated.secret));
}

pub(super) fn rolled(json: bool, rolled: &pb::RerollApiKeyResponse) {
    let key = rolled.key.clone().unwrap_or_default();
    let previous = rolled.previous.clone().unwrap_or_default();
    let retires_at = time(&rolled.previous_retires_at).unwrap_or_default();
    let mut value = key.json();
    value["secret"] = rolled.secret.clone().into();
    value["previous"] = previous.json();
    value["previous_retires_at"] = retires_at.clone().into();
    let text = format!(
        "{}\n{} keeps working until {retires_at}\nsecret {SHOWN_ONCE}: {}",
        key.line(),
        previous.id,
        rolled.secret
    );
    show(json, value, text);
}

pub(super) fn deleted(json: bool, deleted: &pb::DeleteResponse) {
    let value = json!({
        "deleted_key_ids": deleted.deleted_key_ids, "deleted_application_ids": deleted.deleted_application_ids,
        "deleted_session_ids": deleted.deleted_session_ids, "deleted_owner_ids": deleted.deleted_owner_ids,
        "changed_key_ids": deleted.changed_key_ids,
    });
    let text = format!(
        "deleted {} keys, {} applications, {} sessions, {} owners; changed {} keys",
        deleted.deleted_key_ids.len(),
        deleted.deleted_application_ids.len(),
        deleted.deleted_session_ids.len(),
        deleted.deleted_owner_ids.len(),
        deleted.changed_key_ids.len()
    );
    show(json, value, text);
}

pub(super) fn decision(json: bool, response: &pb::AuthorizeResponse) {
    let principal = response.principal.as_ref();
    let value = json!({
        "allowed": response.allowed, "code": response.code, "http_status": response.http_status,
        "message": response.message, "route": response.route, "application_id": response.application_id,
        "key_id": principal.map(|p| &p.key_id), "account_id": principal.map(|p| &p.account_id),
        "principal_kind": principal.map(|p| &p.kind), "session_id": principal.map(|p| &p.session_id),
        "limit": response.limit, "remaining": response.remaining,
        "retry_after_seconds": response.retry_after_seconds,
        "reason": Some(&response.reason).filter(|r| !r.is_empty()),
        "credits_remaining": response.credits_remaining,
        "metadata": principal.and_then(|p| serde_json::from_str::<Value>(&p.metadata_json).ok()),
    });
    let mut text = if response.allowed {
        let who = principal.map_or("-", |p| if p.key_id.is_empty() { &p.session_id } else { &p.key_id });
        format!("allowed  route={} principal={who}", response.route)
    } else if response.retry_after_seconds > 0 {
        format!(
            "denied   {} {} ({}; retry after {} s)",
            response.http_status, response.code, response.message, response.retry_after_seconds
        )
    } else {
        format!("denied   {} {} ({})", response.http_status, response.code, response.message)
    };
    if !response.reason.is_empty() {
        text.push_str(&format!(" reason={}", response.reason));
    }
    if let Some(credits) = response.credits_remaining {
        text.push_str(&format!(" credits_remaining={credits}"));
    }
    show(json, value, text);
}

/// Readable text, or JSON with `--json`.
pub(super) fn show(json: bool, value: Value, text: String) {
    if json {
        emit(format_args!("{value:#}"));
    } else {
        emit(format_args!("{text}"));
    }
}

/// Writes a line to stdout; a closed pipe (`keygate ... | head`) ends output quietly.
pub(crate) fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Turns a gRPC error into one readable line (the page's code, message), never a debug dump.
pub(super) fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let reason =
        status.get_details_error_info().map(|info| info.reason).unwrap_or_else(|| format!("{:?}", status.code()));
    anyhow::anyhow!("{reason}: {}", status.message())
}

/// Progress on stderr for operations that take many calls; silent when stderr is not a
/// terminal (scripts, `--json` piped into jq), so output stays clean.
pub(super) struct Progress {
    shown: bool,
}

impl Progress {
    pub(super) fn new() -> Self {
        use std::io::IsTerminal;
        Self { shown: std::io::stderr().is_terminal() }
    }

    pub(super) fn fetched(&self, count: usize, what: &str) {
        self.update(format_args!("fetched {count} {what}…"));
    }

    pub(super) fn update(&self, text: std::fmt::Arguments<'_>) {
        if self.shown {
            eprint!("\r\x1b[2K{text}");
        }
    }

    pub(super) fn finish(&self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}
