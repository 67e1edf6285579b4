//! ImportApiKeys: keys made by another system, by their hashes.

use super::call::{caller_of, respond};
use crate::grpc::convert;
use crate::grpc::proto as pb;
use crate::manage::{ImportEntry, Manager};
use tonic::{Request, Response, Status};

pub(super) async fn import(
    manager: &Manager,
    request: Request<pb::ImportApiKeysRequest>,
) -> Result<Response<pb::ImportApiKeysResponse>, Status> {
    let caller = caller_of(&request)?;
    let req = request.into_inner();
    let keys =
        req.keys.iter().map(|k| ImportEntry { account_id: &k.account_id, key: convert::key_to_import(k) }).collect();
    let results = manager.import_api_keys(&req.import_id, keys, &caller).await?;
    let response = pb::ImportApiKeysResponse { results: results.iter().map(convert::import_result_to_proto).collect() };
    respond(&caller, "import_api_keys", &req.import_id, response)
}
