//! The console's changes (POST): each form carries the session's CSRF token, is checked by
//! the gate for the RPC it stands for (a `read_only` token's forged write is refused 403),
//! and is done by the [`Manager`](crate::manage::Manager) as that RPC does it, so the audit
//! trail names the console user's token.

use super::html::{self, bad_request, key_id, url};
use super::{gate_refusal, manage_refusal, signed_form, Console, Peer, St};
use crate::domain::{AccountId, AdminTokenName, ApplicationId, KeyTerms, Name, OwnerId, Scopes};
use crate::manage::NewApiKey;
use crate::store::KeyChanges;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use std::collections::HashMap;
use std::time::Duration;

type Fields = Form<HashMap<String, String>>;

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn to(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// Sign-in: the token is checked by the gate (wrong tokens count against the source's
/// budget, as on gRPC); a session is made and the token stays on the server.
pub async fn sign_in(State(console): St, headers: HeaderMap, Peer(peer): Peer, Form(form): Fields) -> Response {
    let expected = super::cookie_value(&headers, super::SIGN_IN_COOKIE).unwrap_or("");
    if !super::session::csrf_matches(expected, form.get("csrf").map(String::as_str)) {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "the sign-in form expired or was not this console's: reload it",
        );
    }
    let Some(token) = field(&form, "token") else { return bad_request("token: enter an admin token") };
    if let Err(refused) = console.check.admit(token, peer.map(|p| p.ip()), "ListApplications").await {
        return gate_refusal(&refused);
    }
    let id = match console.sessions.create(token) {
        Ok(id) => id,
        Err(e) => return html::error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut response = to("/");
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, console.cookie(console.cookie_name(), &id, None));
    headers.append(header::SET_COOKIE, console.cookie(super::SIGN_IN_COOKIE, "", Some(0)));
    response
}

pub async fn sign_out(State(console): St, headers: HeaderMap, Peer(peer): Peer, Form(form): Fields) -> Response {
    // Any role may sign out: checked as a read.
    let s = or_answer!(signed_form(&console, &headers, peer, "ListApplications", &form).await);
    console.sessions.remove(&s.session_key);
    let mut response = to("/sign-in");
    response.headers_mut().append(header::SET_COOKIE, console.cookie(console.cookie_name(), "", Some(0)));
    response
}

pub async fn create_application(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    let s = or_answer!(signed_form(&console, &headers, peer, "CreateApplication", &form).await);
    let (account, name) = match (AccountId::parse(&raw), Name::parse("name", field(&form, "name").unwrap_or(""))) {
        (Ok(account), Ok(name)) => (account, name),
        (Err(e), _) | (_, Err(e)) => return bad_request(&e.to_string()),
    };
    match console.manager.create_application(account.clone(), name, &s.caller).await {
        Ok(_) => to(&format!("/accounts/{}", url(account.as_str()))),
        Err(e) => manage_refusal(&e),
    }
}

fn words(raw: Option<&str>) -> Vec<&str> {
    raw.unwrap_or("").split([' ', ',', '\n', '\t']).filter(|w| !w.is_empty()).collect()
}

fn new_key(account: &str, form: &HashMap<String, String>) -> Result<NewApiKey, crate::domain::InvalidField> {
    let application_ids =
        words(field(form, "application_ids")).into_iter().map(ApplicationId::parse).collect::<Result<Vec<_>, _>>()?;
    Ok(NewApiKey {
        account_id: AccountId::parse(account)?,
        name: Name::parse("name", field(form, "name").unwrap_or(""))?,
        scopes: Scopes::parse_grants(&words(field(form, "scopes")))?,
        application_ids,
        expires_at: None,
        terms: KeyTerms::default(),
        credits: None,
        owner_id: field(form, "owner_id").map(OwnerId::parse).transpose()?,
    })
}

/// A new key: its secret is kept for the key's page, which shows it once.
pub async fn create_key(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    let s = or_answer!(signed_form(&console, &headers, peer, "CreateApiKey", &form).await);
    let new = match new_key(&raw, &form) {
        Ok(new) => new,
        Err(e) => return bad_request(&e.to_string()),
    };
    match console.manager.create_api_key(new, &s.caller).await {
        Ok((key, generated)) => {
            let id = key.id.to_string();
            console.sessions.set_flash(&s.session_key, id.clone(), generated.into_secret_string());
            to(&format!("/keys/{id}"))
        }
        Err(e) => manage_refusal(&e),
    }
}

/// A change in `account` that narrows what a key may do: answered once the other replicas
/// applied it and the change feed's subscribers that see the account acknowledged it (or
/// were fenced), as the RPC is.
async fn settled(console: &Console, account: &AccountId, path: String) -> Response {
    console.manager.settle(Some(account)).await;
    to(&path)
}

pub async fn revoke_key(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    let id = or_answer!(key_id(&raw));
    let s = or_answer!(signed_form(&console, &headers, peer, "RevokeApiKey", &form).await);
    match console.manager.revoke_api_key(id, field(&form, "reason").unwrap_or(""), &s.caller).await {
        Ok(key) => settled(&console, &key.account_id, format!("/keys/{id}")).await,
        Err(e) => manage_refusal(&e),
    }
}

pub async fn roll_key(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    let id = or_answer!(key_id(&raw));
    let s = or_answer!(signed_form(&console, &headers, peer, "RerollApiKey", &form).await);
    let Ok(overlap) = field(&form, "overlap_seconds").unwrap_or("0").parse::<u64>() else {
        return bad_request("overlap_seconds: a whole number of seconds, 0 to 604800");
    };
    match console.manager.roll_api_key(id, Duration::from_secs(overlap), &s.caller).await {
        Ok(roll) => {
            let new_id = roll.key.id.to_string();
            console.sessions.set_flash(&s.session_key, new_id.clone(), roll.credential.into_secret_string());
            settled(&console, &roll.key.account_id, format!("/keys/{new_id}")).await
        }
        Err(e) => manage_refusal(&e),
    }
}

async fn set_disabled(
    console: Console,
    headers: HeaderMap,
    peer: Peer,
    raw: String,
    form: HashMap<String, String>,
    disabled: bool,
) -> Response {
    let id = or_answer!(key_id(&raw));
    let s = or_answer!(signed_form(&console, &headers, peer.0, "UpdateApiKey", &form).await);
    let changes = KeyChanges { disabled: Some(disabled), ..KeyChanges::default() };
    match console.manager.update_api_key(id, changes, &s.caller).await {
        Ok(key) => settled(&console, &key.account_id, format!("/keys/{id}")).await,
        Err(e) => manage_refusal(&e),
    }
}

pub async fn enable_key(
    State(console): St,
    headers: HeaderMap,
    peer: Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    set_disabled(console, headers, peer, raw, form, false).await
}

pub async fn disable_key(
    State(console): St,
    headers: HeaderMap,
    peer: Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    set_disabled(console, headers, peer, raw, form, true).await
}

/// Deletes a key once its confirmation box was ticked.
pub async fn delete_key(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    let id = or_answer!(key_id(&raw));
    let s = or_answer!(signed_form(&console, &headers, peer, "DeleteApiKey", &form).await);
    if field(&form, "confirm") != Some("yes") {
        return bad_request("confirm: tick the box to delete the key for good");
    }
    match console.manager.delete_api_key(id, &s.caller).await {
        Ok((_, account)) => settled(&console, &account, format!("/accounts/{}/keys", url(account.as_str()))).await,
        Err(e) => manage_refusal(&e),
    }
}

pub async fn revoke_admin_token(
    State(console): St,
    headers: HeaderMap,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    Form(form): Fields,
) -> Response {
    let s = or_answer!(signed_form(&console, &headers, peer, "RevokeAdminToken", &form).await);
    let name = match AdminTokenName::parse(&raw) {
        Ok(name) => name,
        Err(e) => return bad_request(&e.to_string()),
    };
    match console.manager.revoke_admin_token(&name, &s.caller).await {
        Ok(_) => to("/admin-tokens"),
        Err(e) => manage_refusal(&e),
    }
}
