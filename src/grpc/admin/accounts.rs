//! Accounts' RPCs: ListAuditEvents and DeleteAccount.

use super::call::{caller_of, grant_of, respond_settled};
use crate::audit::{AuditCategory, AuditQuery};
use crate::domain::{AccountId, SearchParams};
use crate::grpc::convert;
use crate::grpc::proto as pb;
use crate::manage::Manager;
use tonic::{Request, Response, Status};

pub(super) async fn list_audit_events(
    manager: &Manager,
    request: Request<pb::ListAuditEventsRequest>,
) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
    let grant = grant_of(&request)?;
    let req = request.into_inner();
    let account = AccountId::parse(&req.account_id)?;
    let account = manager.account(&grant, &account)?;
    let search = SearchParams::parse(&req.search_params)?;
    let categories = search.categories.iter().map(|c| AuditCategory::parse(c)).collect::<Result<_, _>>()?;
    let query = AuditQuery { search: search.search_string, categories };
    let page = convert::page_request(req.page_size, &req.page_token, crate::audit::is_event_id)?;
    let page = account.list_audit_events(&query, &page).await?;
    Ok(Response::new(pb::ListAuditEventsResponse {
        events: page.items.iter().map(convert::audit_event_to_proto).collect(),
        next_page_token: page.next_after.unwrap_or_default(),
    }))
}

pub(super) async fn delete(
    manager: &Manager,
    request: Request<pb::DeleteAccountRequest>,
) -> Result<Response<pb::DeleteResponse>, Status> {
    let caller = caller_of(&request)?;
    let account = AccountId::parse(&request.get_ref().account_id)?;
    let deleted = manager.delete_account(&account, &caller).await?;
    let response = convert::deleted_to_proto(&deleted);
    respond_settled(manager, &caller, "delete_account", account.as_str(), Some(&account), response).await
}
