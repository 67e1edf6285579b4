//! What every admin handler shares: who calls (the gate's grant, and for a change the actor
//! its audit record names), and the answer to a change (logged; for one that narrows what a
//! credential may do, held until the other replicas applied it). The request id is not
//! here: the span layer ([`crate::grpc::spans`]) gives every call one and echoes it.

use crate::audit::Actor;
use crate::code::Code;
use crate::domain::{AccountId, AdminGrant};
use crate::grpc::{status, RequestId};
use crate::manage::{Caller, Manager};
use tonic::{Request, Response, Status};

/// Whom the caller acts for, when it says (the dashboard back end names its user).
pub const ACTOR_HEADER: &str = "x-keygate-actor";

/// The response's metadata: how many replicas applied the change before it was answered,
/// and how many were fenced instead (they no longer trust their caches).
pub const ACKNOWLEDGED_HEADER: &str = "x-keygate-acknowledged";
pub const FENCED_HEADER: &str = "x-keygate-fenced";
/// The same for this replica's change-feed subscribers (`keygate.v1.Watch`) that see the
/// change: how many acknowledged its revision, how many were fenced instead.
pub const SUBSCRIBERS_ACKNOWLEDGED_HEADER: &str = "x-keygate-subscribers-acknowledged";
pub const SUBSCRIBERS_FENCED_HEADER: &str = "x-keygate-subscribers-fenced";

/// The gate's grant for this call.
pub(crate) fn grant_of<T>(request: &Request<T>) -> Result<AdminGrant, Status> {
    // Every admin call passes the gate; a call that did not is refused, not trusted.
    request.extensions().get::<AdminGrant>().cloned().ok_or_else(|| status::coded(Code::Unauth, "no admin token"))
}

/// Who makes a change: the gate's grant, and the actor of its audit record (the call's
/// request id, and whom the caller says it acts for).
pub(super) fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    let request_id = RequestId::from_metadata(request.metadata());
    let grant = grant_of(request)?;
    let on_behalf_of = match request.metadata().get(ACTOR_HEADER) {
        None => None,
        Some(value) => {
            let raw = value.to_str().map_err(|_| {
                status::coded(Code::ValidationError, format!("{ACTOR_HEADER}: must be printable ASCII"))
            })?;
            Some(Actor::parse_on_behalf_of(raw)?)
        }
    };
    let actor =
        Actor { credential: grant.credential.clone(), on_behalf_of, request_id: request_id.as_str().to_owned() };
    Ok(Caller { grant, actor })
}

/// Logs an admin action with its request id.
pub(super) fn respond<T>(caller: &Caller, action: &str, target: &str, message: T) -> Result<Response<T>, Status> {
    tracing::info!(request_id = %caller.actor.request_id, action, target, "admin action");
    Ok(Response::new(message))
}

/// [`respond`], for a change that narrows what a credential may do: answered once every
/// live replica and every change-feed subscriber that sees `account` (`None`: unknown
/// here; the caller's own if its token is confined, else every account) has applied it
/// (or was fenced), saying how many of each.
pub(super) async fn respond_settled<T>(
    manager: &Manager,
    caller: &Caller,
    action: &str,
    target: &str,
    account: Option<&AccountId>,
    message: T,
) -> Result<Response<T>, Status> {
    let settlement = manager.settle(account.or(caller.grant.account.as_ref())).await;
    let mut response = respond(caller, action, target, message)?;
    let metadata = response.metadata_mut();
    if let Some(settled) = settlement.replicas {
        metadata.insert(ACKNOWLEDGED_HEADER, settled.acknowledged.into());
        metadata.insert(FENCED_HEADER, settled.fenced.into());
    }
    if let Some(settled) = settlement.subscribers {
        metadata.insert(SUBSCRIBERS_ACKNOWLEDGED_HEADER, settled.acknowledged.into());
        metadata.insert(SUBSCRIBERS_FENCED_HEADER, settled.fenced.into());
    }
    Ok(response)
}
