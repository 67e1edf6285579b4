//! Sessions' RPCs: Create, Get, Revoke and ListSessions.

use super::call::{caller_of, grant_of, respond, respond_settled};
use crate::domain::{AccountId, SessionId, UserId};
use crate::grpc::convert;
use crate::grpc::proto as pb;
use crate::manage::Manager;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub(super) async fn create(
    manager: &Manager,
    request: Request<pb::CreateSessionRequest>,
) -> Result<Response<pb::CreateSessionResponse>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let account = AccountId::parse(&req.account_id)?;
    let user = UserId::parse(&req.user_id)?;
    let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds.into()));
    let (session, token) = manager.create_session(account, user, ttl, &caller).await?;
    let response = pb::CreateSessionResponse {
        session: Some(convert::session_to_proto(&session, manager.now())),
        token: token.into_secret_string(),
    };
    respond(&caller, "create_session", &session.id.to_string(), response)
}

pub(super) async fn get(
    manager: &Manager,
    request: Request<pb::GetSessionRequest>,
) -> Result<Response<pb::Session>, Status> {
    let grant = grant_of(&request)?;
    let id = SessionId::parse(&request.get_ref().id)?;
    let session = manager.session(&grant, id).await?;
    Ok(Response::new(convert::session_to_proto(&session, manager.now())))
}

pub(super) async fn revoke(
    manager: &Manager,
    request: Request<pb::RevokeSessionRequest>,
) -> Result<Response<pb::Session>, Status> {
    let caller = caller_of(&request)?;
    let id = SessionId::parse(&request.get_ref().id)?;
    let session = manager.revoke_session(id, &caller).await?;
    let response = convert::session_to_proto(&session, manager.now());
    respond_settled(manager, &caller, "revoke_session", &id.to_string(), Some(&session.account_id), response).await
}

pub(super) async fn list(
    manager: &Manager,
    request: Request<pb::ListSessionsRequest>,
) -> Result<Response<pb::ListSessionsResponse>, Status> {
    let grant = grant_of(&request)?;
    let req = request.into_inner();
    let account = AccountId::parse(&req.account_id)?;
    let account = manager.account(&grant, &account)?;
    let user = Some(req.user_id.as_str()).filter(|u| !u.is_empty()).map(UserId::parse).transpose()?;
    let page = convert::page_request(req.page_size, &req.page_token, |t| SessionId::parse(t).is_ok())?;
    let page = account.list_sessions(user.as_ref(), &page).await?;
    let now = manager.now();
    Ok(Response::new(pb::ListSessionsResponse {
        sessions: page.items.iter().map(|s| convert::session_to_proto(s, now)).collect(),
        next_page_token: page.next_after.unwrap_or_default(),
    }))
}
