//! Secret hygiene: a full scenario with debug logging on, then a search of every log line
//! and every response for every secret, token and stored hash. The only place a secret may
//! appear is the one response that created it.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::{Db, TestApp, ADMIN_TOKEN};
use keygate::grpc::proto as pb;
use std::sync::{Arc, Mutex};

/// Every log line of the process, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_an_error_or_a_later_response() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let mut seen = Vec::<String>::new(); // Debug text of every response that must hold no secret.
    let application = app.create_app("acct_h").await;
    let (key, secret) = app.create_key("acct_h", &["*"], &[]).await;
    let path = format!("/api/v1/panel/applications/{}", application.id);
    let wrong = keygate::domain::GeneratedKey::impostor_of(&keygate::domain::Credential::parse(&secret).unwrap())
        .unwrap()
        .into_secret_string();
    for credential in [&secret, &wrong, &"kg_not_even_close".to_owned()] {
        seen.push(format!("{:?}", app.authorize(credential, "GET", &path).await));
    }
    let session = app
        .admin
        .create_session(pb::CreateSessionRequest { account_id: "acct_h".into(), user_id: "u".into(), ttl_seconds: 60 })
        .await
        .unwrap()
        .into_inner();
    seen.push(format!("{:?}", app.authorize(&session.token, "POST", "/api/v1/panel/api-keys").await));
    let rotate = pb::RotateApplicationKeyRequest { application_id: application.id.clone(), grace_period_seconds: None };
    let first = app.admin.rotate_application_key(rotate.clone()).await.unwrap().into_inner();
    let second = app.admin.rotate_application_key(rotate).await.unwrap().into_inner();
    seen.push(format!("{second:?}").replace(&second.secret, "<the one response that shows it>"));
    seen.push(format!("{:?}", app.authorize(&first.secret, "GET", &path).await));
    seen.push(format!("{:?}", app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id.clone() }).await.unwrap()));
    let list = pb::ListApiKeysRequest { account_id: "acct_h".into(), ..Default::default() };
    seen.push(format!("{:?}", app.admin.list_api_keys(list).await.unwrap()));
    let revoke = pb::RevokeApiKeyRequest { id: key.id.clone(), reason: String::new() };
    seen.push(format!("{:?}", app.admin.revoke_api_key(revoke).await.unwrap()));
    seen.push(format!("{:?}", app.authorize(&secret, "GET", &path).await));
    let revoke = pb::RevokeSessionRequest { id: session.session.as_ref().unwrap().id.clone() };
    seen.push(format!("{:?}", app.admin.revoke_session(revoke).await.unwrap()));
    // Errors: a wrong admin token, a malformed request carrying a secret.
    let impostor = keygate_client::AdminToken::new(&format!("{ADMIN_TOKEN}x")).unwrap();
    let mut wrong_admin = pb::admin_client::AdminClient::with_interceptor(app.channel.clone(), impostor);
    seen.push(format!("{:?}", wrong_admin.get_api_key(pb::GetApiKeyRequest { id: key.id.clone() }).await));
    let malformed = pb::AuthorizeRequest { credential: secret.clone(), method: "".into(), ..Default::default() };
    seen.push(format!("{:?}", app.authorizer.authorize(malformed).await));
    // With the Authorize span on (debug), a call without an id gets one, and its decision's
    // log line carries it.
    let call = pb::AuthorizeRequest { method: "GET".into(), path: path.clone(), ..Default::default() };
    let answered = app.authorizer.authorize(call).await.unwrap();
    let made = answered.metadata().get("x-request-id").expect("an id is made").to_str().unwrap().to_owned();
    assert!(made.starts_with("kg-"), "{made}");

    // What must never show: the secrets, the admin token and the stored hashes.
    let stored = app.handles.store.key(keygate::domain::KeyId::parse(&key.id).unwrap()).await.unwrap().unwrap();
    let phc = stored.secret_hash.expose_phc().to_owned();
    let hash_part = phc.rsplit('$').next().unwrap().to_owned();
    let mut secrets = vec![
        ("API key", secret.clone()),
        ("API key's secret part", secret[19..63].to_owned()),
        ("wrong secret", wrong[19..63].to_owned()),
        ("session token", session.token[20..64].to_owned()),
        ("runtime key", first.secret[20..64].to_owned()),
        ("rotated runtime key", second.secret[20..64].to_owned()),
        ("admin token", ADMIN_TOKEN.to_owned()),
        ("argon2 hash (PHC)", phc),
        ("argon2 hash (digest part)", hash_part),
    ];
    secrets.retain(|(_, s)| !s.is_empty());
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.lines().count() > 20, "debug logging was on:\n{logged}");
    assert!(logged.contains("admin action"), "the scenario was logged");
    // Every admin call runs in a span naming the call and its request id.
    assert!(
        logged.lines().any(|l| l.contains(r#"admin{rpc="RevokeApiKey" request_id=kg-"#) && l.contains("admin action")),
        "no admin span around the revoke:\n{logged}"
    );
    assert!(
        logged.lines().any(|l| l.contains(&format!("authorize{{request_id={made}}}")) && l.contains("decided")),
        "no decision logged under the id {made}:\n{logged}"
    );
    for (what, value) in &secrets {
        assert!(!logged.contains(value.as_str()), "the {what} appears in the logs");
        for response in &seen {
            assert!(!response.contains(value.as_str()), "the {what} appears in a response: {response}");
        }
    }
}
