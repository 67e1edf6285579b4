//! Admin tokens' RPCs: Create, List and RevokeAdminToken.

use super::call::{caller_of, respond};
use crate::domain::{AccountId, AdminRole, AdminTokenName};
use crate::grpc::convert;
use crate::grpc::proto as pb;
use crate::manage::Manager;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub(super) async fn create(
    manager: &Manager,
    request: Request<pb::CreateAdminTokenRequest>,
) -> Result<Response<pb::CreateAdminTokenResponse>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let name = AdminTokenName::parse(&req.name)?;
    let role = AdminRole::parse(&req.role)?;
    let account = Some(req.account_id.as_str()).filter(|a| !a.is_empty()).map(AccountId::parse).transpose()?;
    let lifetime = (req.expires_in_seconds > 0).then(|| Duration::from_secs(req.expires_in_seconds));
    let (token, secret) = manager.create_admin_token(name, role, account, lifetime, &caller).await?;
    let response =
        pb::CreateAdminTokenResponse { token: Some(convert::admin_token_to_proto(&token, manager.now())), secret };
    respond(&caller, "create_admin_token", token.name.as_str(), response)
}

pub(super) async fn list(
    manager: &Manager,
    _request: Request<pb::ListAdminTokensRequest>,
) -> Result<Response<pb::ListAdminTokensResponse>, Status> {
    let tokens = manager.list_admin_tokens().await?;
    let now = manager.now();
    Ok(Response::new(pb::ListAdminTokensResponse {
        tokens: tokens.iter().map(|t| convert::admin_token_to_proto(t, now)).collect(),
    }))
}

pub(super) async fn revoke(
    manager: &Manager,
    request: Request<pb::RevokeAdminTokenRequest>,
) -> Result<Response<pb::AdminToken>, Status> {
    let caller = caller_of(&request)?;
    let name = AdminTokenName::parse(&request.get_ref().name)?;
    let token = manager.revoke_admin_token(&name, &caller).await?;
    respond(&caller, "revoke_admin_token", name.as_str(), convert::admin_token_to_proto(&token, manager.now()))
}
