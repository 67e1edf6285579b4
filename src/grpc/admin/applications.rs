//! Applications' RPCs: Create, Get, List, Update and DeleteApplication, and
//! RotateApplicationKey.

use super::call::{caller_of, grant_of, respond, respond_settled};
use crate::domain::{AccountId, ApplicationId, Name};
use crate::grpc::convert;
use crate::grpc::proto as pb;
use crate::manage::Manager;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub(super) async fn create(
    manager: &Manager,
    request: Request<pb::CreateApplicationRequest>,
) -> Result<Response<pb::Application>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let account = AccountId::parse(&req.account_id)?;
    let name = Name::parse("name", &req.name)?;
    let app = manager.create_application(account, name, &caller).await?;
    respond(&caller, "create_application", app.id.as_str(), convert::application_to_proto(&app))
}

pub(super) async fn get(
    manager: &Manager,
    request: Request<pb::GetApplicationRequest>,
) -> Result<Response<pb::Application>, Status> {
    let grant = grant_of(&request)?;
    let id = ApplicationId::parse_field("id", &request.get_ref().id)?;
    let app = manager.application(&grant, &id).await?;
    Ok(Response::new(convert::application_to_proto(&app)))
}

pub(super) async fn list(
    manager: &Manager,
    request: Request<pb::ListApplicationsRequest>,
) -> Result<Response<pb::ListApplicationsResponse>, Status> {
    let grant = grant_of(&request)?;
    let req = request.into_inner();
    let account = AccountId::parse(&req.account_id)?;
    let account = manager.account(&grant, &account)?;
    let page = convert::page_request(req.page_size, &req.page_token, |t| ApplicationId::parse(t).is_ok())?;
    let page = account.list_applications(&page).await?;
    Ok(Response::new(pb::ListApplicationsResponse {
        applications: page.items.iter().map(convert::application_to_proto).collect(),
        next_page_token: page.next_after.unwrap_or_default(),
    }))
}

pub(super) async fn update(
    manager: &Manager,
    request: Request<pb::UpdateApplicationRequest>,
) -> Result<Response<pb::Application>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let id = ApplicationId::parse_field("id", &req.id)?;
    let name = Name::parse("name", &req.name)?;
    let app = manager.rename_application(&id, name, &caller).await?;
    respond(&caller, "update_application", id.as_str(), convert::application_to_proto(&app))
}

pub(super) async fn delete(
    manager: &Manager,
    request: Request<pb::DeleteApplicationRequest>,
) -> Result<Response<pb::DeleteResponse>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let id = ApplicationId::parse_field("id", &req.id)?;
    let (deleted, account) = manager.delete_application(&id, req.cascade, &caller).await?;
    let response = convert::deleted_to_proto(&deleted);
    respond_settled(manager, &caller, "delete_application", id.as_str(), Some(&account), response).await
}

pub(super) async fn rotate_key(
    manager: &Manager,
    request: Request<pb::RotateApplicationKeyRequest>,
) -> Result<Response<pb::RotateApplicationKeyResponse>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let application = ApplicationId::parse(&req.application_id)?;
    let grace = req.grace_period_seconds.map(|s| Duration::from_secs(s.into()));
    let rotation = manager.rotate_application_key(&application, grace, &caller).await?;
    let account = rotation.key.account_id.clone();
    let response = pb::RotateApplicationKeyResponse {
        key: Some(convert::key_to_proto(&rotation.key, manager.now(), None)),
        secret: rotation.credential.into_secret_string(),
        previous_key_id: rotation.previous.map(|(id, _)| id.to_string()).unwrap_or_default(),
        previous_key_retires_at: rotation.previous.map(|(_, at)| convert::timestamp_to_proto(at)),
    };
    respond_settled(manager, &caller, "rotate_application_key", application.as_str(), Some(&account), response).await
}
