//! Owners' RPCs: UpdateOwner and GetOwner.

use super::call::{caller_of, grant_of, respond_settled};
use crate::domain::{AccountId, OwnerId};
use crate::grpc::convert;
use crate::grpc::proto as pb;
use crate::manage::Manager;
use tonic::{Request, Response, Status};

pub(super) async fn update(
    manager: &Manager,
    request: Request<pb::UpdateOwnerRequest>,
) -> Result<Response<pb::Owner>, Status> {
    let caller = caller_of(&request)?;
    let (account, id, changes) = convert::owner_changes(request.get_ref())?;
    let owner = manager.update_owner(&account, &id, changes, &caller).await?;
    let response = convert::owner_to_proto(&owner);
    respond_settled(manager, &caller, "update_owner", id.as_str(), Some(&account), response).await
}

pub(super) async fn get(
    manager: &Manager,
    request: Request<pb::GetOwnerRequest>,
) -> Result<Response<pb::Owner>, Status> {
    let grant = grant_of(&request)?;
    let req = request.get_ref();
    let (account, id) = (AccountId::parse(&req.account_id)?, OwnerId::parse(&req.owner_id)?);
    let owner = manager.owner(&grant, &account, &id).await?;
    Ok(Response::new(convert::owner_to_proto(&owner)))
}
