//! Admin calls, for the CLI and for back ends that manage keys: the admin token on every
//! call, and lists followed to their last page.

use keygate_api::proto::{self as pb, admin_client::AdminClient};
use std::future::Future;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::ClientError;

/// The generated admin client with the token attached to every call.
pub type AdminRpc = AdminClient<InterceptedService<Channel, AdminToken>>;

/// Adds `authorization: Bearer <token>` (and `x-keygate-actor`, when set) to every call.
#[derive(Clone)]
pub struct AdminToken {
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    actor: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl AdminToken {
    pub fn new(token: &str) -> Result<Self, ClientError> {
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Header("the admin token has characters a header cannot carry"))?;
        Ok(Self { bearer, actor: None })
    }

    /// Names whom the calls are made for, for the audit trail.
    pub fn acting_for(mut self, actor: &str) -> Result<Self, ClientError> {
        let actor = actor.parse().map_err(|_| ClientError::Header("the actor must be printable ASCII"))?;
        self.actor = Some(actor);
        Ok(self)
    }
}

impl tonic::service::Interceptor for AdminToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.bearer.clone());
        if let Some(actor) = &self.actor {
            request.metadata_mut().insert("x-keygate-actor", actor.clone());
        }
        Ok(request)
    }
}

/// The admin API. Single calls go through [`KeygateAdmin::rpc`]; the `all_*` methods
/// follow page tokens, reporting how many items they hold after each page.
#[derive(Clone)]
pub struct KeygateAdmin {
    rpc: AdminRpc,
}

/// The page size the `all_*` methods ask for (the server's largest).
const PAGE_SIZE: u32 = 500;

impl KeygateAdmin {
    pub fn new(channel: Channel, token: AdminToken) -> Self {
        Self { rpc: AdminClient::with_interceptor(channel, token) }
    }

    /// The generated client, for one call.
    pub fn rpc(&self) -> AdminRpc {
        self.rpc.clone()
    }

    /// Every application of an account.
    pub async fn all_applications(
        &self,
        account_id: &str,
        progress: impl FnMut(usize),
    ) -> Result<Vec<pb::Application>, tonic::Status> {
        all_pages(usize::MAX, progress, |page_token| {
            let (mut rpc, account_id) = (self.rpc(), account_id.to_owned());
            async move {
                let request = pb::ListApplicationsRequest { account_id, page_size: PAGE_SIZE, page_token };
                let page = rpc.list_applications(request).await?.into_inner();
                Ok((page.applications, page.next_page_token))
            }
        })
        .await
    }

    /// Every API key of an account whose name or id matches `search` (all when `None`),
    /// of one owner if given.
    pub async fn all_api_keys(
        &self,
        account_id: &str,
        search: Option<&str>,
        owner: Option<&str>,
        progress: impl FnMut(usize),
    ) -> Result<Vec<pb::ApiKey>, tonic::Status> {
        let search_params = search.map(|s| serde_json::json!({ "searchString": s }).to_string()).unwrap_or_default();
        let owner_id = owner.unwrap_or_default().to_owned();
        all_pages(usize::MAX, progress, |page_token| {
            let (mut rpc, account_id, search_params, owner_id) =
                (self.rpc(), account_id.to_owned(), search_params.clone(), owner_id.clone());
            async move {
                let request =
                    pb::ListApiKeysRequest { account_id, page_size: PAGE_SIZE, page_token, search_params, owner_id };
                let page = rpc.list_api_keys(request).await?.into_inner();
                Ok((page.keys, page.next_page_token))
            }
        })
        .await
    }

    /// Every session of an account, or of one of its users.
    pub async fn all_sessions(
        &self,
        account_id: &str,
        user: Option<&str>,
        progress: impl FnMut(usize),
    ) -> Result<Vec<pb::Session>, tonic::Status> {
        let user_id = user.unwrap_or_default().to_owned();
        all_pages(usize::MAX, progress, |page_token| {
            let (mut rpc, account_id, user_id) = (self.rpc(), account_id.to_owned(), user_id.clone());
            async move {
                let request = pb::ListSessionsRequest { account_id, user_id, page_size: PAGE_SIZE, page_token };
                let page = rpc.list_sessions(request).await?.into_inner();
                Ok((page.sessions, page.next_page_token))
            }
        })
        .await
    }

    /// An account's audit events, newest first, up to `limit`; `search` matches the
    /// action, target, actor, on-behalf-of or request id, `categories` narrow the kind.
    pub async fn audit_events(
        &self,
        account_id: &str,
        search: Option<&str>,
        categories: &[String],
        limit: usize,
        progress: impl FnMut(usize),
    ) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
        let search_params = serde_json::json!({ "searchString": search, "categories": categories }).to_string();
        all_pages(limit, progress, |page_token| {
            let (mut rpc, account_id, search_params) = (self.rpc(), account_id.to_owned(), search_params.clone());
            async move {
                let request =
                    pb::ListAuditEventsRequest { account_id, page_size: PAGE_SIZE, page_token, search_params };
                let page = rpc.list_audit_events(request).await?.into_inner();
                Ok((page.events, page.next_page_token))
            }
        })
        .await
    }
}

/// Follows page tokens to the end (or `limit` items); `progress` hears the count after
/// every page but the last.
async fn all_pages<T, Fut>(
    limit: usize,
    mut progress: impl FnMut(usize),
    mut fetch: impl FnMut(String) -> Fut,
) -> Result<Vec<T>, tonic::Status>
where
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let (items, next) = fetch(page_token).await?;
        all.extend(items);
        if next.is_empty() || all.len() >= limit {
            break;
        }
        progress(all.len());
        page_token = next;
    }
    all.truncate(limit);
    Ok(all)
}
