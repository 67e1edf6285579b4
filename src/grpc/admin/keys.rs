//! API keys' RPCs: Create, Get, List, Update, Revoke, Reroll and DeleteApiKey.

use super::call::{caller_of, grant_of, respond, respond_settled};
use crate::code::Code;
use crate::domain::{AccountId, KeyId, OwnerId, SearchParams};
use crate::grpc::proto as pb;
use crate::grpc::{convert, status};
use crate::manage::{Manager, NewApiKey};
use crate::store::KeyFilter;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub(super) async fn create(
    manager: &Manager,
    request: Request<pb::CreateApiKeyRequest>,
) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
    let caller = caller_of(&request)?;
    let new: NewApiKey = request.into_inner().try_into()?;
    let (key, generated) = manager.create_api_key(new, &caller).await?;
    let response = pb::CreateApiKeyResponse {
        key: Some(convert::key_to_proto(&key, manager.now(), manager.last_used_at(&key))),
        secret: generated.into_secret_string(),
    };
    respond(&caller, "create_api_key", &key.id.to_string(), response)
}

pub(super) async fn get(
    manager: &Manager,
    request: Request<pb::GetApiKeyRequest>,
) -> Result<Response<pb::ApiKey>, Status> {
    let grant = grant_of(&request)?;
    let id = KeyId::parse(&request.get_ref().id)?;
    let key = manager.api_key(&grant, id).await?;
    Ok(Response::new(convert::key_to_proto(&key, manager.now(), manager.last_used_at(&key))))
}

pub(super) async fn list(
    manager: &Manager,
    request: Request<pb::ListApiKeysRequest>,
) -> Result<Response<pb::ListApiKeysResponse>, Status> {
    let grant = grant_of(&request)?;
    let req = request.into_inner();
    let account = AccountId::parse(&req.account_id)?;
    let account = manager.account(&grant, &account)?;
    let search = SearchParams::parse(&req.search_params)?;
    if !search.categories.is_empty() {
        return Err(status::coded(
            Code::ValidationError,
            "search_params: categories are not supported when listing API keys",
        ));
    }
    let page = convert::page_request(req.page_size, &req.page_token, |t| KeyId::parse(t).is_ok())?;
    let owner_id = Some(req.owner_id.as_str()).filter(|o| !o.is_empty()).map(OwnerId::parse).transpose()?;
    let filter = KeyFilter { search: search.search_string, owner_id };
    let page = account.list_api_keys(&filter, &page).await?;
    let now = manager.now();
    Ok(Response::new(pb::ListApiKeysResponse {
        keys: page.items.iter().map(|k| convert::key_to_proto(k, now, manager.last_used_at(k))).collect(),
        next_page_token: page.next_after.unwrap_or_default(),
    }))
}

pub(super) async fn update(
    manager: &Manager,
    request: Request<pb::UpdateApiKeyRequest>,
) -> Result<Response<pb::ApiKey>, Status> {
    let caller = caller_of(&request)?;
    let (id, changes) = convert::key_changes(request.get_ref())?;
    let key = manager.update_api_key(id, changes, &caller).await?;
    let response = convert::key_to_proto(&key, manager.now(), manager.last_used_at(&key));
    respond_settled(manager, &caller, "update_api_key", &id.to_string(), Some(&key.account_id), response).await
}

pub(super) async fn revoke(
    manager: &Manager,
    request: Request<pb::RevokeApiKeyRequest>,
) -> Result<Response<pb::ApiKey>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let id = KeyId::parse(&req.id)?;
    let key = manager.revoke_api_key(id, &req.reason, &caller).await?;
    let response = convert::key_to_proto(&key, manager.now(), manager.last_used_at(&key));
    respond_settled(manager, &caller, "revoke_api_key", &id.to_string(), Some(&key.account_id), response).await
}

pub(super) async fn reroll(
    manager: &Manager,
    request: Request<pb::RerollApiKeyRequest>,
) -> Result<Response<pb::RerollApiKeyResponse>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let id = KeyId::parse(&req.id)?;
    let overlap = Duration::from_secs(req.overlap_seconds.into());
    let roll = manager.roll_api_key(id, overlap, &caller).await?;
    let now = manager.now();
    let account = roll.key.account_id.clone();
    let response = pb::RerollApiKeyResponse {
        key: Some(convert::key_to_proto(&roll.key, now, None)),
        secret: roll.credential.into_secret_string(),
        previous: Some(convert::key_to_proto(&roll.previous, now, manager.last_used_at(&roll.previous))),
        previous_retires_at: Some(convert::timestamp_to_proto(roll.retires_at)),
    };
    respond_settled(manager, &caller, "reroll_api_key", &id.to_string(), Some(&account), response).await
}

pub(super) async fn delete(
    manager: &Manager,
    request: Request<pb::DeleteApiKeyRequest>,
) -> Result<Response<pb::DeleteResponse>, Status> {
    let caller = caller_of(&request)?;
    let id = KeyId::parse(&request.get_ref().id)?;
    let (deleted, account) = manager.delete_api_key(id, &caller).await?;
    let response = convert::deleted_to_proto(&deleted);
    respond_settled(manager, &caller, "delete_api_key", &id.to_string(), Some(&account), response).await
}
