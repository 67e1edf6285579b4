//! `keygate.v1.Admin`, behind an admin-token check. A call passes, in order: the span
//! layer ([`crate::grpc::spans`]: its request id, given or made, and echoed), the
//! [`gate`] (who calls; the RPC within the token's role; the token's budget), then a thin
//! handler in the file of its resource, which converts the request, asks the
//! [`Manager`](crate::manage::Manager) (told who calls, it checks confinement) and converts
//! the answer.
//! - [`bootstrap`]: the bootstrap token. [`roles`]: what each RPC needs of a role.
//! - [`call`]: what every handler shares: the caller, the answer to a change.
//! - [`applications`], [`keys`], [`import`], [`owners`], [`sessions`], [`admin_tokens`],
//!   [`accounts`], [`usage`]: the handlers, a file per resource.

pub mod accounts;
pub mod admin_tokens;
pub mod applications;
pub mod bootstrap;
pub mod call;
pub mod gate;
pub mod import;
pub mod keys;
pub mod owners;
pub mod roles;
pub mod sessions;
pub mod usage;

pub use bootstrap::{entropy_bits, BootstrapToken, MIN_BOOTSTRAP_BITS};
pub use call::{
    ACKNOWLEDGED_HEADER, ACTOR_HEADER, FENCED_HEADER, SUBSCRIBERS_ACKNOWLEDGED_HEADER, SUBSCRIBERS_FENCED_HEADER,
};
pub use gate::{AdminCheck, AdminGate, AdminGateMetrics, AdminGateSettings, RefusalLabels};
pub use roles::ADMIN_RPCS;

use super::proto::{self as pb, admin_server};
use crate::manage::Manager;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Admin service: each RPC is answered by its resource's handler.
pub struct AdminService {
    manager: Arc<Manager>,
}

impl AdminService {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn create_application(
        &self,
        request: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        applications::create(&self.manager, request).await
    }

    async fn get_application(
        &self,
        request: Request<pb::GetApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        applications::get(&self.manager, request).await
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        applications::list(&self.manager, request).await
    }

    async fn update_application(
        &self,
        request: Request<pb::UpdateApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        applications::update(&self.manager, request).await
    }

    async fn delete_application(
        &self,
        request: Request<pb::DeleteApplicationRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        applications::delete(&self.manager, request).await
    }

    async fn rotate_application_key(
        &self,
        request: Request<pb::RotateApplicationKeyRequest>,
    ) -> Result<Response<pb::RotateApplicationKeyResponse>, Status> {
        applications::rotate_key(&self.manager, request).await
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        keys::create(&self.manager, request).await
    }

    async fn get_api_key(&self, request: Request<pb::GetApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        keys::get(&self.manager, request).await
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        keys::list(&self.manager, request).await
    }

    async fn update_api_key(&self, request: Request<pb::UpdateApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        keys::update(&self.manager, request).await
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        keys::revoke(&self.manager, request).await
    }

    async fn reroll_api_key(
        &self,
        request: Request<pb::RerollApiKeyRequest>,
    ) -> Result<Response<pb::RerollApiKeyResponse>, Status> {
        keys::reroll(&self.manager, request).await
    }

    async fn delete_api_key(
        &self,
        request: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        keys::delete(&self.manager, request).await
    }

    async fn import_api_keys(
        &self,
        request: Request<pb::ImportApiKeysRequest>,
    ) -> Result<Response<pb::ImportApiKeysResponse>, Status> {
        import::import(&self.manager, request).await
    }

    async fn update_owner(&self, request: Request<pb::UpdateOwnerRequest>) -> Result<Response<pb::Owner>, Status> {
        owners::update(&self.manager, request).await
    }

    async fn get_owner(&self, request: Request<pb::GetOwnerRequest>) -> Result<Response<pb::Owner>, Status> {
        owners::get(&self.manager, request).await
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        sessions::create(&self.manager, request).await
    }

    async fn get_session(&self, request: Request<pb::GetSessionRequest>) -> Result<Response<pb::Session>, Status> {
        sessions::get(&self.manager, request).await
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        sessions::revoke(&self.manager, request).await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        sessions::list(&self.manager, request).await
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        accounts::delete(&self.manager, request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        accounts::list_audit_events(&self.manager, request).await
    }

    async fn create_admin_token(
        &self,
        request: Request<pb::CreateAdminTokenRequest>,
    ) -> Result<Response<pb::CreateAdminTokenResponse>, Status> {
        admin_tokens::create(&self.manager, request).await
    }

    async fn list_admin_tokens(
        &self,
        request: Request<pb::ListAdminTokensRequest>,
    ) -> Result<Response<pb::ListAdminTokensResponse>, Status> {
        admin_tokens::list(&self.manager, request).await
    }

    async fn revoke_admin_token(
        &self,
        request: Request<pb::RevokeAdminTokenRequest>,
    ) -> Result<Response<pb::AdminToken>, Status> {
        admin_tokens::revoke(&self.manager, request).await
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        usage::get(&self.manager, request).await
    }

    async fn top_keys(&self, request: Request<pb::TopKeysRequest>) -> Result<Response<pb::TopKeysResponse>, Status> {
        usage::top(&self.manager, request).await
    }
}
