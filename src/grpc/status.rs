//! The one map from keygate's errors to gRPC statuses. Every status carries the error
//! page's code as `google.rpc.ErrorInfo.reason`; internal failures are logged with an
//! error id ([`crate::edge::log_failure`], as every entry logs them) and the caller gets
//! only the id, never a SQL message or a secret.

use crate::authn::verifier::VerifierError;
use crate::code::Code;
use crate::domain::InvalidField;
use crate::edge::{log_failure, Failure};
use crate::manage::ManageError;
use crate::store::StoreError;
use std::collections::HashMap;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "keygate";

/// A status for `code`, with the code as ErrorInfo.reason.
pub fn coded(code: Code, message: impl Into<String>) -> Status {
    coded_with(code.grpc_code(), code, message.into(), HashMap::new())
}

fn coded_with(grpc: tonic::Code, code: Code, message: String, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(grpc, message, ErrorDetails::with_error_info(code.as_str(), ERROR_DOMAIN, metadata))
}

/// Logs `cause` under a fresh error id and returns a status that carries only the id.
pub fn internal(grpc: tonic::Code, cause: &dyn std::error::Error) -> Status {
    failed(grpc, log_failure(cause))
}

/// A status for a failure already logged under `error_id`: it carries only the id.
fn failed(grpc: tonic::Code, error_id: String) -> Status {
    let message = match grpc {
        tonic::Code::Unavailable => {
            format!("the key store is unavailable; retry later (error id {error_id})")
        }
        _ => format!("internal error (error id {error_id})"),
    };
    coded_with(grpc, Code::InternalError, message, HashMap::from([("error_id".to_owned(), error_id)]))
}

/// Too busy to take the call now, nothing went wrong: UNAVAILABLE with INTERNAL_ERROR (the
/// page has no busier code), and no error id to look up.
pub fn busy(message: impl Into<String>) -> Status {
    coded_with(tonic::Code::Unavailable, Code::InternalError, message.into(), HashMap::new())
}

/// [`busy`], with a `google.rpc.RetryInfo` saying when to come back.
pub fn busy_for(message: impl Into<String>, retry_after: std::time::Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(Code::InternalError.as_str(), ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(tonic::Code::Unavailable, message.into(), details)
}

pub fn invalid(e: InvalidField) -> Status {
    coded(Code::ValidationError, e.to_string())
}

impl From<InvalidField> for Status {
    fn from(e: InvalidField) -> Self {
        invalid(e)
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let grpc = match e {
            StoreError::Unavailable(_) => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        internal(grpc, &e)
    }
}

impl From<ManageError> for Status {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::Invalid(e) => invalid(e),
            ManageError::BadRequest(message) => coded(Code::BadRequest, message),
            ManageError::NotFound(message) => coded(Code::NotFound, message),
            ManageError::OutOfScope(message) => coded(Code::InsufficientScope, message),
            ManageError::Store(e) => e.into(),
            ManageError::Verifier(VerifierError::AdminBusy(retry_after)) => busy_for(
                format!("hashing new secrets is busy; retry in {} s", retry_after.as_secs().max(1)),
                retry_after,
            ),
            ManageError::Verifier(e) => internal(tonic::Code::Internal, &e),
            ManageError::Randomness(e) => internal(tonic::Code::Internal, &e),
        }
    }
}

/// A decision that did not come: UNAVAILABLE when retrying may succeed.
impl From<Failure> for Status {
    fn from(failure: Failure) -> Self {
        let grpc = if failure.unavailable { tonic::Code::Unavailable } else { tonic::Code::Internal };
        failed(grpc, failure.error_id)
    }
}

/// A decision that did not come within keygate's cap on the caller's longer deadline:
/// the message says so (`note` names the cap and its flag), not "the store is unavailable".
pub fn past_cap(failure: Failure, note: &str) -> Status {
    let message = format!("no decision in time: {note} (error id {})", failure.error_id);
    coded_with(
        tonic::Code::Unavailable,
        Code::InternalError,
        message,
        HashMap::from([("error_id".to_owned(), failure.error_id)]),
    )
}
