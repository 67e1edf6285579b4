//! The example axum edge (examples/edge.rs, compiled in here as it is) in front of a real
//! keygate, over real HTTP.

use crate::example;
use crate::helpers::{Db, TestApp};
use crate::sessions::create_session;
use keygate_client::{FailureMode, KeygateClient, KeygateLayer};
use serde_json::Value;

/// Serves the example edge on a random port; returns its base URL.
async fn spawn_edge(layer: KeygateLayer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { example::serve(listener, layer).await.unwrap() });
    format!("http://{address}")
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
    send(reqwest::Client::new().get(url), headers).await
}

async fn send(mut request: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_edge_passes_principals_and_answers_denies_with_envelopes() {
    let mut keygate = TestApp::spawn(Db::Sqlite).await.unwrap();
    let application = keygate.create_app("acct_edge").await;
    let (key, secret) = keygate.create_key("acct_edge", &["applications:read"], &[]).await;
    let (session, token) = create_session(&mut keygate, "acct_edge", 3600).await;
    let edge = spawn_edge(KeygateLayer::new(KeygateClient::connect_lazy(&keygate.address).unwrap())).await;

    // Allowed: the handler runs and sees who called.
    let (status, _, body) =
        get(&format!("{edge}/api/v1/panel/applications/{}", application.id), &[("x-api-key", &secret)]).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"]["id"], application.id.as_str());
    assert_eq!(
        (body["caller"]["kind"].as_str(), body["caller"]["key_id"].as_str()),
        (Some("api_key"), Some(key.id.as_str()))
    );
    let cookie = format!("keygate_session={token}");
    let (status, _, body) =
        send(reqwest::Client::new().post(format!("{edge}/api/v1/panel/api-keys")), &[("cookie", &cookie)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["caller"]["session_id"], session.id.as_str());

    // Denied: the page's status and exact envelope, and the handler never runs.
    let json = Some("application/json".to_owned());
    let (status, content_type, body) = get(&format!("{edge}/api/v1/panel/applications"), &[]).await;
    assert_eq!((status, content_type.clone()), (401, json.clone()));
    assert_eq!(body, r#"{"success":false,"code":"api_key_invalid","message":"no credential was presented"}"#);
    let bearer = format!("Bearer {secret}");
    let (status, content_type, body) =
        send(reqwest::Client::new().post(format!("{edge}/api/v1/panel/api-keys")), &[("authorization", &bearer)]).await;
    assert_eq!((status, content_type), (403, json.clone()));
    assert_eq!(
        body,
        r#"{"success":false,"code":"session_required","message":"The route accepts only dashboard session authentication"}"#
    );
    let (status, _, body) = get(&format!("{edge}/api/v1/panel/applications/app_nope"), &[("x-api-key", &secret)]).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        r#"{"success":false,"code":"not_found","message":"the application was not found for the account"}"#
    );

    // keygate down: fail closed, the page's 500 with an envelope whose message holds an
    // error id (the layer's own, logged, since keygate could not give one).
    keygate.stop().await;
    let (status, content_type, body) =
        get(&format!("{edge}/api/v1/panel/applications"), &[("x-api-key", &secret)]).await;
    assert_eq!((status, content_type), (500, json));
    let envelope: keygate::code::Envelope = serde_json::from_str(&body).unwrap();
    assert_eq!(envelope.code, "INTERNAL_ERROR");
    let id = envelope.message.split("(error id ").nth(1).and_then(|rest| rest.strip_suffix(')'));
    assert!(id.is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())), "{body}");
    assert!(!body.contains(&secret), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_is_a_choice_and_rate_limits_carry_retry_after() {
    let mut keygate = TestApp::spawn(Db::Sqlite).await.unwrap();
    let (_, token) = create_session(&mut keygate, "acct_fo", 3600).await;
    let client = KeygateClient::connect_lazy(&keygate.address).unwrap();
    let edge = spawn_edge(KeygateLayer::new(client.clone()).failure_mode(FailureMode::Open)).await;
    let cookie = format!("keygate_session={token}");
    for _ in 0..10 {
        let (status, _, _) =
            send(reqwest::Client::new().post(format!("{edge}/api/v1/panel/api-keys")), &[("cookie", &cookie)]).await;
        assert_eq!(status, 200);
    }
    let response = reqwest::Client::new()
        .post(format!("{edge}/api/v1/panel/api-keys"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers().get("retry-after").unwrap(), "3600");

    keygate.stop().await;
    let (status, _, body) = get(&format!("{edge}/api/v1/panel/applications"), &[]).await;
    assert_eq!(status, 200, "fail-open passes the request on");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["caller"], Value::Null, "without a principal");
}
