//! `keygate.v1.Authorizer`: a deny is an ordinary response; only a malformed request or
//! a failure is a gRPC error.

use super::proto::{self as pb, authorizer_server};
use super::{convert, RequestId};
use crate::authz::Authorizer;
use crate::edge::{Answer, EdgeSettings};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub struct AuthorizerService {
    authorizer: Arc<Authorizer>,
    edge: EdgeSettings,
    /// [`DEADLINE_HEADER`]'s value, made once: a capped call's answer clones it (a
    /// reference count) instead of formatting the number again.
    cap_value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl AuthorizerService {
    pub fn new(authorizer: Arc<Authorizer>, edge: EdgeSettings) -> Self {
        let cap_value = tonic::metadata::MetadataValue::from(edge.decision_deadline.as_millis() as u64);
        Self { authorizer, edge, cap_value }
    }
}

/// Response metadata on a call whose `grpc-timeout` keygate capped: the milliseconds it
/// decides within (`--decision-deadline-ms`), on the answer and on a failure alike.
pub const DEADLINE_HEADER: &str = "x-keygate-decision-deadline-ms";

#[tonic::async_trait]
impl authorizer_server::Authorizer for AuthorizerService {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let caller_deadline = super::caller_deadline(request.metadata());
        let budget = self.edge.budget(caller_deadline);
        let capped = self.edge.capped(caller_deadline);
        let span = tracing::debug_span!("authorize", request_id = tracing::field::Empty);
        // The caller's id is echoed. One is made only for a call that brings none while
        // this span is on (debug level): only then does a log line carry it, and an id
        // nobody can find costs every call an allocation and both ends a header to code.
        let request_id = match RequestId::given(request.metadata()) {
            None if span.is_disabled() => None,
            given => Some(given.unwrap_or_else(RequestId::generate)),
        };
        if let Some(id) = &request_id {
            span.record("request_id", tracing::field::display(id));
        }
        let message = request.into_inner();
        let query = convert::authorize_query(&message)?;
        let result = self.authorizer.authorize_within(&query, budget).instrument(span.clone()).await;
        let verdict = match Answer::of(result) {
            Answer::Decided(verdict) => verdict,
            Answer::Failed(failure) => {
                return Err(match capped {
                    Some(deadline) if failure.deadline => {
                        let mut status = super::status::past_cap(failure, &self.edge.cap_note(deadline));
                        status.metadata_mut().insert(DEADLINE_HEADER, self.cap_value.clone());
                        status
                    }
                    _ => failure.into(),
                })
            }
        };
        span.in_scope(|| {
            tracing::debug!(
                route = verdict.route.as_deref().unwrap_or("-"),
                code = verdict.decision.denial().map_or("allowed", |d| d.code.as_str()),
                principal = verdict.principal.as_ref().map_or("-", |p| p.kind().as_str()),
                "decided"
            )
        });
        let mut response = Response::new(convert::authorize_response(verdict));
        if capped.is_some() {
            response.metadata_mut().insert(DEADLINE_HEADER, self.cap_value.clone());
        }
        Ok(match request_id {
            Some(id) => id.attach(response),
            None => response,
        })
    }
}
