//! An axum edge that serves three of the management API's routes behind keygate.
//!
//! ```sh
//! cargo run --release -- serve &                      # keygate on 127.0.0.1:50051
//! KEYGATE_SERVER=http://127.0.0.1:50051 EDGE_LISTEN=127.0.0.1:8080 cargo run --example edge
//! curl -H "x-api-key: kg_…" http://127.0.0.1:8080/api/v1/panel/applications
//! ```
//!
//! Handlers see only allowed requests, with the caller's [`Principal`] in the request's
//! extensions; every deny was already answered by the layer with the error page's envelope.

use axum::extract::Path;
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use keygate_client::{KeygateClient, KeygateLayer, Principal};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The edge's routes, guarded by `keygate`.
pub fn app(keygate: KeygateLayer) -> Router {
    Router::new()
        .route("/api/v1/panel/applications", get(list_applications))
        .route("/api/v1/panel/applications/{application_id}", get(get_application))
        .route("/api/v1/panel/api-keys", post(create_api_key))
        .route("/api/v1/panel/update-api-keys", patch(rotate_runtime_key))
        .layer(keygate)
}

/// Serves the edge with each connection's peer address, which the layer counts per-IP
/// limits and failed-verification budgets by.
pub async fn serve(listener: tokio::net::TcpListener, keygate: KeygateLayer) -> std::io::Result<()> {
    axum::serve(listener, app(keygate).into_make_service_with_connect_info::<SocketAddr>()).await
}

fn caller(principal: &Option<Extension<Principal>>) -> Value {
    match principal {
        Some(Extension(p)) => json!({
            "kind": p.kind, "account_id": p.account_id, "key_id": p.key_id, "session_id": p.session_id,
            "metadata": p.metadata(),
        }),
        // Only when the layer was told to fail open and keygate was down.
        None => Value::Null,
    }
}

async fn list_applications(principal: Option<Extension<Principal>>) -> Json<Value> {
    Json(json!({ "success": true, "data": [], "caller": caller(&principal) }))
}

async fn get_application(Path(id): Path<String>, principal: Option<Extension<Principal>>) -> Json<Value> {
    Json(json!({ "success": true, "data": { "id": id }, "caller": caller(&principal) }))
}

async fn create_api_key(principal: Option<Extension<Principal>>) -> Json<Value> {
    Json(json!({ "success": true, "data": { "created": true }, "caller": caller(&principal) }))
}

/// The application to rotate comes in the `x-application-id` header (or the query's
/// `application_id`): the layer reads no bodies, and keygate decided on exactly that.
async fn rotate_runtime_key(headers: axum::http::HeaderMap, principal: Option<Extension<Principal>>) -> Json<Value> {
    let application = headers.get("x-application-id").and_then(|v| v.to_str().ok());
    Json(json!({ "success": true, "data": { "rotated": application }, "caller": caller(&principal) }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("KEYGATE_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let listen = std::env::var("EDGE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let keygate = KeygateLayer::new(KeygateClient::connect_lazy(&server)?);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("edge on http://{listen}, asking keygate at {server}");
    serve(listener, keygate).await?;
    Ok(())
}
