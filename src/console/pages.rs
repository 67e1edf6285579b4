//! The console's pages (GET): each checked by the gate for the read RPC it stands for,
//! read through the [`Manager`](crate::manage::Manager) as that RPC reads.

use super::html::{self, bad_request, csrf_field, esc, key_id, url, Viewer};
use super::{manage_refusal, signed, Console, Peer, Signed, St};
use crate::audit::AuditQuery;
use crate::domain::{AccountId, ApplicationId, KeyId, OwnerId, Timestamp};
use crate::manage::usage::{UsageRange, UsageSubject};
use crate::store::usage::Granularity;
use crate::store::{KeyFilter, KeyKind, KeyRecord, PageRequest};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::fmt::Write;

/// Keys shown on one page of the list, and the most records scanned to fill it when a
/// status or application filter skips some (the rest is on the next page).
pub const KEYS_PER_PAGE: u32 = 50;
const KEYS_SCANNED_PER_PAGE: u32 = 1_000;
/// Store pages read for one page of the list (a search is the store's own: one read).
const STORE_PAGES_PER_PAGE: u32 = 5;
const AUDIT_PER_PAGE: u32 = 50;

type Params = Query<HashMap<String, String>>;

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn viewer(signed: &Signed) -> Viewer<'_> {
    let grant = &signed.caller.grant;
    Viewer {
        credential: &grant.credential,
        role: grant.role.as_str(),
        account: grant.account.as_ref().map(|a| a.as_str()),
        csrf: &signed.session.csrf,
        admin: signed.may("ListAdminTokens"),
    }
}

pub async fn home(State(console): St, headers: HeaderMap, Peer(peer): Peer) -> Response {
    match signed(&console, &headers, peer, "ListApplications").await {
        Ok(s) => match &s.caller.grant.account {
            Some(account) => Redirect::to(&format!("/accounts/{}", url(account.as_str()))).into_response(),
            None => Redirect::to("/accounts").into_response(),
        },
        Err(answer) => answer,
    }
}

pub async fn sign_in_form(State(console): St) -> Response {
    let Ok(nonce) = crate::domain::random_token(32) else {
        return html::error_page(StatusCode::SERVICE_UNAVAILABLE, "the OS random source failed; retry");
    };
    let body = format!(
        "<form method=\"post\" action=\"/sign-in\" class=\"card\">{}\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required>\
         <p class=\"hint\">The bootstrap token or a named admin token (keygate admin-token create). \
         It stays on the server; this browser gets a session cookie.</p>\
         <button type=\"submit\">Sign in</button></form>",
        csrf_field(&nonce)
    );
    let mut response = html::page("Sign in", None, &body);
    response.headers_mut().append(header::SET_COOKIE, console.cookie(super::SIGN_IN_COOKIE, &nonce, Some(600)));
    response
}

pub async fn stylesheet() -> Response {
    static_file("text/css; charset=utf-8", include_str!("assets/console.css"))
}

pub async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", include_str!("assets/console.js"))
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

pub async fn not_found() -> Response {
    html::error_page(StatusCode::NOT_FOUND, "no such page")
}

/// Accounts: a confined token goes to its own; others name one.
pub async fn accounts(State(console): St, headers: HeaderMap, Peer(peer): Peer, Query(params): Params) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "ListApplications").await);
    if let Some(account) = s.caller.grant.account.as_ref().map(|a| a.as_str()).or(param(&params, "account")) {
        return Redirect::to(&format!("/accounts/{}", url(account))).into_response();
    }
    let body = "<form method=\"get\" action=\"/accounts\" class=\"card\"><label for=\"account\">Account id</label>\
                <input id=\"account\" name=\"account\" required><button type=\"submit\">Open</button></form>";
    html::page("Accounts", Some(&viewer(&s)), body)
}

fn account_id(raw: &str) -> Result<AccountId, Response> {
    AccountId::parse(raw).map_err(|e| bad_request(&e.to_string()))
}

/// An account: its applications, its usage, and links to its keys and audit trail.
pub async fn account(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Query(params): Params,
) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "ListApplications").await);
    let account = or_answer!(account_id(&raw));
    let manager = &console.manager;
    let view = or_answer!(manager.account(&s.caller.grant, &account).map_err(|e| manage_refusal(&e)));
    let page = PageRequest { after: param(&params, "after").map(str::to_owned), limit: 100 };
    let apps = or_answer!(view.list_applications(&page).await.map_err(|e| manage_refusal(&e)));
    let a = url(account.as_str());
    let mut body = format!(
        "<p><a href=\"/accounts/{a}/keys\">Keys</a> · <a href=\"/accounts/{a}/audit\">Audit trail</a> · \
         <a href=\"/accounts/{a}/sessions\">Sessions</a></p><h2>Applications</h2>\
         <table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Id</th><th scope=\"col\">Created</th></tr></thead><tbody>"
    );
    for app in &apps.items {
        let _ = write!(
            body,
            "<tr><td><a href=\"/accounts/{a}/keys?application={id}\">{}</a></td><td><code>{}</code></td><td>{}</td></tr>",
            esc(app.name.as_str()),
            esc(app.id.as_str()),
            app.created_at,
            id = url(app.id.as_str())
        );
    }
    body.push_str("</tbody></table>");
    if let Some(next) = &apps.next_after {
        let _ = write!(body, "<p><a href=\"/accounts/{a}?after={}\">Next page</a></p>", url(next));
    }
    if s.may("CreateApplication") {
        let _ = write!(
            body,
            "<h2>Create an application</h2><form method=\"post\" action=\"/accounts/{a}/applications\" class=\"card\">{}\
             <label for=\"app-name\">Name</label><input id=\"app-name\" name=\"name\" required maxlength=\"200\">\
             <button type=\"submit\" class=\"write\">Create application</button></form>",
            csrf_field(&s.session.csrf)
        );
    }
    let range = range_of(&params);
    match usage_section(&console, &s, &UsageSubject::Account(account.clone()), range, &format!("/accounts/{a}")).await {
        Ok(chart) => body.push_str(&chart),
        Err(answer) => return answer,
    }
    html::page(&format!("Account {}", account.as_str()), Some(&viewer(&s)), &body)
}

/// A chart's range: the last hour by minute, day by hour or 30 days by day.
#[derive(Clone, Copy)]
pub struct ChartRange {
    pub name: &'static str,
    pub granularity: Granularity,
}

pub const RANGES: [ChartRange; 3] = [
    ChartRange { name: "hour", granularity: Granularity::Minute },
    ChartRange { name: "day", granularity: Granularity::Hour },
    ChartRange { name: "month", granularity: Granularity::Day },
];

fn range_of(params: &HashMap<String, String>) -> ChartRange {
    let asked = param(params, "range").unwrap_or("hour");
    RANGES.into_iter().find(|r| r.name == asked).unwrap_or(RANGES[0])
}

/// The usage chart of `subject` over `range`, with links to the other ranges (the gate
/// checks GetUsage as the RPC would).
async fn usage_section(
    console: &Console,
    s: &Signed,
    subject: &UsageSubject,
    range: ChartRange,
    here: &str,
) -> Result<String, Response> {
    if !s.may("GetUsage") {
        return Ok(String::new());
    }
    let asked = UsageRange { from: None, to: None, granularity: range.granularity };
    let series = console.manager.usage(&s.caller.grant, subject, asked).await.map_err(|e| manage_refusal(&e))?;
    let mut out = String::from("<section aria-labelledby=\"usage-h\"><h2 id=\"usage-h\">Usage by outcome</h2><nav aria-label=\"Chart range\" class=\"ranges\"><ul>");
    for r in RANGES {
        let current = if r.name == range.name { " aria-current=\"page\"" } else { "" };
        let _ = write!(out, "<li><a href=\"{here}?range={0}\"{current}>Last {0}</a></li>", r.name);
    }
    out.push_str("</ul></nav>");
    let label = format!("Decisions per {} over the last {}", range.granularity.as_str(), range.name);
    out.push_str(&html::usage_chart(
        &series.counts,
        series.from.as_millis(),
        series.to.as_millis(),
        range.granularity.millis(),
        &label,
    ));
    out.push_str("</section>");
    Ok(out)
}

/// What the list calls a key's state now.
pub fn key_status(key: &KeyRecord, now: Timestamp) -> &'static str {
    if key.revoked_at.is_some() || key.retire_at.is_some_and(|at| at <= now) {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else if key.disabled {
        "disabled"
    } else {
        "active"
    }
}

const STATUSES: [&str; 4] = ["active", "disabled", "expired", "revoked"];

/// An account's keys: search (name or id), owner, status and application, paged.
pub async fn keys(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Query(params): Params,
) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "ListApiKeys").await);
    let account = or_answer!(account_id(&raw));
    let status = param(&params, "status");
    if status.is_some_and(|st| !STATUSES.contains(&st)) {
        return bad_request("status: must be active, disabled, expired or revoked");
    }
    let application = match param(&params, "application").map(ApplicationId::parse).transpose() {
        Ok(a) => a,
        Err(e) => return bad_request(&e.to_string()),
    };
    let owner_id = match param(&params, "owner").map(OwnerId::parse).transpose() {
        Ok(o) => o,
        Err(e) => return bad_request(&e.to_string()),
    };
    let after = param(&params, "after");
    if after.is_some_and(|a| KeyId::parse(a).is_err()) {
        return bad_request("after: not a key id of a page of this list");
    }
    let search = param(&params, "search").map(str::to_owned);
    if search.as_ref().is_some_and(|q| q.chars().count() > 200) {
        return bad_request("search: at most 200 characters");
    }
    let filter = KeyFilter { search, owner_id };
    let view = or_answer!(console.manager.account(&s.caller.grant, &account).map_err(|e| manage_refusal(&e)));
    // Store pages until a page of keys passes the status and application filters, or a
    // scan's worth was read: the next page starts after the last key read.
    let now = console.manager.now();
    let mut shown = Vec::new();
    let mut next = after.map(str::to_owned);
    let mut scanned = 0;
    let mut reads = 0;
    let filtered_here = status.is_some() || application.is_some();
    loop {
        let want = KEYS_PER_PAGE.saturating_sub(shown.len() as u32).max(1);
        let limit = if status.is_none() && application.is_none() { want } else { 200 };
        let page = or_answer!(view
            .list_api_keys(&filter, &PageRequest { after: next.clone(), limit })
            .await
            .map_err(|e| manage_refusal(&e)));
        scanned += page.items.len() as u32;
        reads += 1;
        let mut whole_page = true;
        for key in page.items {
            if shown.len() as u32 >= KEYS_PER_PAGE {
                whole_page = false;
                break;
            }
            next = Some(key.id.to_string());
            let status_ok = status.is_none_or(|st| key_status(&key, now) == st);
            let app_ok = application
                .as_ref()
                .is_none_or(|app| key.application_ids.is_empty() || key.application_ids.contains(app));
            if status_ok && app_ok && key.kind == KeyKind::ApiKey {
                shown.push(key);
            }
        }
        // The store's own continuation once its page was read whole (a search may have
        // scanned past its last match); none: the list ends here.
        if whole_page {
            next = page.next_after;
        }
        let enough = !filtered_here || reads >= STORE_PAGES_PER_PAGE || scanned >= KEYS_SCANNED_PER_PAGE;
        if next.is_none() || shown.len() as u32 >= KEYS_PER_PAGE || enough {
            break;
        }
    }
    let body = keys_body(&s, &account, &params, &shown, next.as_deref(), now);
    html::page(&format!("Keys of {}", account.as_str()), Some(&viewer(&s)), &body)
}

fn keys_body(
    s: &Signed,
    account: &AccountId,
    params: &HashMap<String, String>,
    keys: &[KeyRecord],
    next: Option<&str>,
    now: Timestamp,
) -> String {
    let a = url(account.as_str());
    let value = |name: &str| esc(param(params, name).unwrap_or(""));
    let mut body = format!(
        "<form method=\"get\" action=\"/accounts/{a}/keys\" class=\"filters\" role=\"search\">\
         <label for=\"search\">Search</label><input id=\"search\" name=\"search\" value=\"{}\">\
         <label for=\"status\">Status</label><select id=\"status\" name=\"status\"><option value=\"\">any</option>",
        value("search")
    );
    for st in STATUSES {
        let selected = if param(params, "status") == Some(st) { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{st}</option>");
    }
    let _ = write!(
        body,
        "</select><label for=\"owner\">Owner</label><input id=\"owner\" name=\"owner\" value=\"{}\">\
         <label for=\"application\">Application</label><input id=\"application\" name=\"application\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>\
         <table id=\"keys\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Id</th><th scope=\"col\">Status</th>\
         <th scope=\"col\">Owner</th><th scope=\"col\">Scopes</th><th scope=\"col\">Created</th></tr></thead><tbody>",
        value("owner"),
        value("application")
    );
    for key in keys {
        let scopes: Vec<&str> = key.scopes.iter().map(|sc| sc.as_str()).collect();
        let _ = write!(
            body,
            "<tr><td><a href=\"/keys/{id}\">{}</a></td><td><code>{}</code></td><td class=\"status\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(key.name.as_str()),
            key.id,
            key_status(key, now),
            esc(key.owner_id.as_ref().map_or("", |o| o.as_str())),
            esc(&scopes.join(" ")),
            key.created_at,
            id = key.id
        );
    }
    if keys.is_empty() {
        body.push_str("<tr><td colspan=\"6\">No keys match</td></tr>");
    }
    body.push_str("</tbody></table>");
    if let Some(next) = next {
        let mut query: Vec<String> = ["search", "status", "owner", "application"]
            .iter()
            .filter_map(|n| param(params, n).map(|v| format!("{n}={}", url(v))))
            .collect();
        query.push(format!("after={}", url(next)));
        let _ =
            write!(body, "<p><a href=\"/accounts/{a}/keys?{}\" rel=\"next\">Next page</a></p>", esc(&query.join("&")));
    }
    if s.may("CreateApiKey") {
        let _ = write!(
            body,
            "<h2>Create a key</h2><form method=\"post\" action=\"/accounts/{a}/keys\" class=\"card\">{}\
             <label for=\"key-name\">Name</label><input id=\"key-name\" name=\"name\" required maxlength=\"200\">\
             <label for=\"key-scopes\">Scopes (space-separated)</label><input id=\"key-scopes\" name=\"scopes\" required>\
             <label for=\"key-apps\">Applications (ids, space-separated; none: all)</label><input id=\"key-apps\" name=\"application_ids\">\
             <label for=\"key-owner\">Owner (optional)</label><input id=\"key-owner\" name=\"owner_id\">\
             <button type=\"submit\" class=\"write\">Create key</button></form>",
            csrf_field(&s.session.csrf)
        );
    }
    body
}

/// A key: its terms, state, rolls, usage, audit events and (by role) its actions.
pub async fn key(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Query(params): Params,
) -> Response {
    let id = or_answer!(key_id(&raw));
    let s = or_answer!(signed(&console, &headers, peer, "GetApiKey").await);
    let manager = &console.manager;
    let key = or_answer!(manager.api_key(&s.caller.grant, id).await.map_err(|e| manage_refusal(&e)));
    let mut body = String::new();
    if let Some(secret) = console.sessions.take_flash(&s.session_key, &id.to_string()) {
        let _ = write!(
            body,
            "<section class=\"secret card\" aria-labelledby=\"secret-h\"><h2 id=\"secret-h\">The key's secret</h2>\
             <p>Shown this once: copy it now. keygate keeps only its hash.</p>\
             <p><code id=\"secret\">{}</code> <button type=\"button\" class=\"copy\" data-copy=\"secret\">Copy</button></p></section>",
            esc(&secret)
        );
    }
    body.push_str(&key_facts(&key, manager.now(), manager.last_used_at(&key)));
    if key.kind == KeyKind::ApiKey {
        body.push_str(&key_actions(&s, &key, manager.now()));
    }
    let here = format!("/keys/{id}");
    match usage_section(&console, &s, &UsageSubject::Key(id), range_of(&params), &here).await {
        Ok(chart) => body.push_str(&chart),
        Err(answer) => return answer,
    }
    if s.may("ListAuditEvents") {
        if let Ok(view) = manager.account(&s.caller.grant, &key.account_id) {
            let query = AuditQuery { search: Some(id.to_string()), categories: Vec::new() };
            match view.list_audit_events(&query, &PageRequest { after: None, limit: AUDIT_PER_PAGE }).await {
                Ok(events) => body.push_str(&audit_table(&events.items)),
                Err(e) => return manage_refusal(&e),
            }
        }
    }
    html::page(&format!("Key {}", key.name.as_str()), Some(&viewer(&s)), &body)
}

fn key_facts(key: &KeyRecord, now: Timestamp, last_used: Option<Timestamp>) -> String {
    let scopes: Vec<&str> = key.scopes.iter().map(|sc| sc.as_str()).collect();
    let apps: Vec<&str> = key.application_ids.iter().map(|a| a.as_str()).collect();
    let when = |t: Option<Timestamp>| t.map_or_else(|| "—".to_owned(), |t| t.to_string());
    let link =
        |k: Option<KeyId>| k.map_or_else(|| "—".to_owned(), |k| format!("<a href=\"/keys/{k}\"><code>{k}</code></a>"));
    let limits: Vec<String> = key
        .terms
        .limits
        .iter()
        .map(|l| {
            format!(
                "{} {} per {} s{}",
                esc(&l.name),
                l.limit,
                l.window.as_secs(),
                l.route.as_deref().map(|r| format!(" on {}", esc(r))).unwrap_or_default()
            )
        })
        .collect();
    let networks: Vec<String> = key.terms.allowed_networks.iter().map(ToString::to_string).collect();
    format!(
        "<dl class=\"facts\"><dt>Id</dt><dd><code id=\"key-id\">{}</code></dd><dt>Account</dt><dd><a href=\"/accounts/{}/keys\">{}</a></dd>\
         <dt>Status</dt><dd id=\"key-status\">{}</dd><dt>Scopes</dt><dd>{}</dd><dt>Applications</dt><dd>{}</dd>\
         <dt>Owner</dt><dd>{}</dd><dt>Limits</dt><dd>{}</dd><dt>Allowed networks</dt><dd>{}</dd>\
         <dt>Credits</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd><dt>Expires</dt><dd>{}</dd><dt>Revoked</dt><dd>{}{}</dd>\
         <dt>Last used</dt><dd>{}</dd><dt>Rolled from</dt><dd>{}</dd><dt>Rolled to</dt><dd>{}</dd></dl>",
        key.id,
        url(key.account_id.as_str()),
        esc(key.account_id.as_str()),
        key_status(key, now),
        esc(&scopes.join(" ")),
        if apps.is_empty() { "all of the account's".to_owned() } else { esc(&apps.join(" ")) },
        key.owner_id.as_ref().map_or_else(|| "—".to_owned(), |o| format!("<a href=\"/accounts/{}/owners/{}\">{}</a>", url(key.account_id.as_str()), url(o.as_str()), esc(o.as_str()))),
        if limits.is_empty() { "none".to_owned() } else { limits.join("; ") },
        if networks.is_empty() { "anywhere".to_owned() } else { esc(&networks.join(" ")) },
        key.credits.as_ref().map_or_else(|| "not counted".to_owned(), |c| c.remaining.to_string()),
        key.created_at,
        when(key.expires_at),
        when(key.revoked_at.or(key.retire_at)),
        key.revoked_reason.as_deref().filter(|r| !r.is_empty()).map(|r| format!(" ({})", esc(r))).unwrap_or_default(),
        when(last_used),
        link(key.rolled_from),
        link(key.rolled_to),
    )
}

/// The forms a role may use on a key; none for a read-only token.
fn key_actions(s: &Signed, key: &KeyRecord, now: Timestamp) -> String {
    let csrf = csrf_field(&s.session.csrf);
    let id = key.id;
    let mut out = String::new();
    let live = key_status(key, now) != "revoked";
    if live && s.may("UpdateApiKey") {
        let (action, label) = if key.disabled { ("enable", "Enable") } else { ("disable", "Disable") };
        let _ = write!(out, "<form method=\"post\" action=\"/keys/{id}/{action}\" class=\"inline\">{csrf}<button type=\"submit\" class=\"write\">{label}</button></form>");
    }
    if live && key.rolled_to.is_none() && s.may("RerollApiKey") {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/keys/{id}/roll\" class=\"inline\">{csrf}<label for=\"overlap\">Overlap (seconds)</label>\
             <input id=\"overlap\" name=\"overlap_seconds\" type=\"number\" min=\"0\" max=\"604800\" value=\"3600\">\
             <button type=\"submit\" class=\"write\">Roll</button></form>"
        );
    }
    if live && s.may("RevokeApiKey") {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/keys/{id}/revoke\" class=\"inline\">{csrf}<label for=\"reason\">Reason</label>\
             <input id=\"reason\" name=\"reason\" maxlength=\"500\"><button type=\"submit\" class=\"write danger\" id=\"revoke\">Revoke</button></form>"
        );
    }
    if s.may("DeleteApiKey") {
        let _ = write!(out, "<p><a href=\"/keys/{id}/delete\" class=\"write danger\">Delete…</a></p>");
    }
    match out.is_empty() {
        true => out,
        false => format!("<section aria-label=\"Actions\" class=\"actions\">{out}</section>"),
    }
}

pub async fn confirm_delete(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
) -> Response {
    let id = or_answer!(key_id(&raw));
    let s = or_answer!(signed(&console, &headers, peer, "DeleteApiKey").await);
    let key = or_answer!(console.manager.api_key(&s.caller.grant, id).await.map_err(|e| manage_refusal(&e)));
    let body = format!(
        "<form method=\"post\" action=\"/keys/{id}/delete\" class=\"card\">{}<p>Delete the key <strong>{}</strong> \
         (<code>{id}</code>) for good? Its audit events stay.</p><input type=\"checkbox\" id=\"confirm\" name=\"confirm\" value=\"yes\" required>\
         <label for=\"confirm\">Yes, delete this key</label><button type=\"submit\" class=\"write danger\">Delete key</button></form>",
        csrf_field(&s.session.csrf),
        esc(key.name.as_str())
    );
    html::page("Delete a key", Some(&viewer(&s)), &body)
}

fn audit_table(events: &[crate::audit::AuditEvent]) -> String {
    let mut out = String::from(
        "<table id=\"audit\"><caption>Audit events</caption><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Action</th>\
         <th scope=\"col\">Target</th><th scope=\"col\">By</th><th scope=\"col\">Detail</th></tr></thead><tbody>",
    );
    for e in events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"actor\">{}</td><td><code>{}</code></td></tr>",
            e.occurred_at,
            e.action.as_str(),
            esc(&e.target),
            esc(&e.actor.credential),
            esc(&e.detail.to_string())
        );
    }
    if events.is_empty() {
        out.push_str("<tr><td colspan=\"5\">No events</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// An account's audit trail, searched (action, target, actor, request id), paged.
pub async fn audit(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Query(params): Params,
) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "ListAuditEvents").await);
    let account = or_answer!(account_id(&raw));
    let search = param(&params, "search").map(str::to_owned);
    if search.as_ref().is_some_and(|q| q.chars().count() > 200) {
        return bad_request("search: at most 200 characters");
    }
    let view = or_answer!(console.manager.account(&s.caller.grant, &account).map_err(|e| manage_refusal(&e)));
    let page = PageRequest { after: param(&params, "after").map(str::to_owned), limit: AUDIT_PER_PAGE };
    let events =
        match view.list_audit_events(&AuditQuery { search: search.clone(), categories: Vec::new() }, &page).await {
            Ok(events) => events,
            Err(e) => return manage_refusal(&e),
        };
    let a = url(account.as_str());
    let mut body = format!(
        "<form method=\"get\" action=\"/accounts/{a}/audit\" role=\"search\" class=\"filters\"><label for=\"search\">Search</label>\
         <input id=\"search\" name=\"search\" value=\"{}\"><button type=\"submit\">Search</button></form>",
        esc(search.as_deref().unwrap_or(""))
    );
    body.push_str(&audit_table(&events.items));
    if let Some(next) = &events.next_after {
        let q = search.as_deref().map(|q| format!("search={}&", url(q))).unwrap_or_default();
        let _ = write!(
            body,
            "<p><a href=\"/accounts/{a}/audit?{}after={}\" rel=\"next\">Next page</a></p>",
            esc(&q),
            url(next)
        );
    }
    html::page(&format!("Audit trail of {}", account.as_str()), Some(&viewer(&s)), &body)
}

/// An account's dashboard sessions.
pub async fn sessions(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Query(params): Params,
) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "ListSessions").await);
    let account = or_answer!(account_id(&raw));
    let view = or_answer!(console.manager.account(&s.caller.grant, &account).map_err(|e| manage_refusal(&e)));
    let page = PageRequest { after: param(&params, "after").map(str::to_owned), limit: 100 };
    let list = or_answer!(view.list_sessions(None, &page).await.map_err(|e| manage_refusal(&e)));
    let now = console.manager.now();
    let mut body = String::from("<table><thead><tr><th scope=\"col\">Id</th><th scope=\"col\">User</th><th scope=\"col\">Created</th><th scope=\"col\">Expires</th><th scope=\"col\">Status</th></tr></thead><tbody>");
    for session in &list.items {
        let status = if session.revoked_at.is_some() {
            "revoked"
        } else if session.is_live_at(now) {
            "active"
        } else {
            "expired"
        };
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td></tr>",
            session.id,
            esc(session.user_id.as_str()),
            session.created_at,
            session.expires_at
        );
    }
    if list.items.is_empty() {
        body.push_str("<tr><td colspan=\"5\">No sessions</td></tr>");
    }
    body.push_str("</tbody></table>");
    html::page(&format!("Sessions of {}", account.as_str()), Some(&viewer(&s)), &body)
}

/// An owner: its shared limits and credits, and its usage.
pub async fn owner(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path((raw, raw_owner)): Path<(String, String)>,
    Query(params): Params,
) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "GetOwner").await);
    let account = or_answer!(account_id(&raw));
    let owner = match OwnerId::parse(&raw_owner) {
        Ok(o) => o,
        Err(e) => return bad_request(&e.to_string()),
    };
    let mut body = String::new();
    match console.manager.owner(&s.caller.grant, &account, &owner).await {
        Ok(record) => {
            let limits: Vec<String> = record
                .limits
                .iter()
                .map(|l| format!("{} {} per {} s", esc(&l.name), l.limit, l.window.as_secs()))
                .collect();
            let _ = write!(
                body,
                "<dl class=\"facts\"><dt>Limits</dt><dd>{}</dd><dt>Credits</dt><dd>{}</dd></dl>",
                if limits.is_empty() { "none".to_owned() } else { limits.join("; ") },
                record.credits.as_ref().map_or_else(|| "not counted".to_owned(), |c| c.remaining.to_string())
            );
        }
        Err(crate::manage::ManageError::NotFound(_)) => body.push_str("<p>No shared limits or credits.</p>"),
        Err(e) => return manage_refusal(&e),
    }
    let here = format!("/accounts/{}/owners/{}", url(account.as_str()), url(owner.as_str()));
    let _ = write!(
        body,
        "<p><a href=\"/accounts/{}/keys?owner={}\">Its keys</a></p>",
        url(account.as_str()),
        url(owner.as_str())
    );
    match usage_section(&console, &s, &UsageSubject::Owner(account.clone(), owner.clone()), range_of(&params), &here)
        .await
    {
        Ok(chart) => body.push_str(&chart),
        Err(answer) => return answer,
    }
    html::page(&format!("Owner {}", owner.as_str()), Some(&viewer(&s)), &body)
}

/// Named admin tokens (admin only: the gate refuses other roles as ListAdminTokens).
pub async fn admin_tokens(State(console): St, headers: HeaderMap, Peer(peer): Peer) -> Response {
    let s = or_answer!(signed(&console, &headers, peer, "ListAdminTokens").await);
    let tokens = or_answer!(console.manager.list_admin_tokens().await.map_err(|e| manage_refusal(&e)));
    let now = console.manager.now();
    let csrf = csrf_field(&s.session.csrf);
    let mut body = String::from("<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Account</th><th scope=\"col\">Created</th><th scope=\"col\">Status</th><th scope=\"col\">Action</th></tr></thead><tbody>");
    for t in &tokens {
        let live = t.is_live(now);
        let status = if t.revoked_at.is_some() {
            "revoked"
        } else if live {
            "active"
        } else {
            "expired"
        };
        let revoke = match live && s.may("RevokeAdminToken") {
            true => format!("<form method=\"post\" action=\"/admin-tokens/{}/revoke\" class=\"inline\">{csrf}<button type=\"submit\" class=\"write danger\">Revoke</button></form>", url(t.name.as_str())),
            false => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td><td>{revoke}</td></tr>",
            esc(t.name.as_str()),
            t.role.as_str(),
            esc(t.account_id.as_ref().map_or("all", |a| a.as_str())),
            t.created_at
        );
    }
    body.push_str("</tbody></table>");
    html::page("Admin tokens", Some(&viewer(&s)), &body)
}
