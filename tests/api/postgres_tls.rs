//! The key store over TLS, against this machine's real Postgres as
//! scripts/postgres-tls.sh sets it up (.ci/run runs it first): the database `test_tls`
//! answers only over TLS (`hostssl`, and `hostnossl … reject`), its server certificate
//! names `localhost` only, and the role `keygate_tls_cert` logs in by client certificate.
//! Skipped, saying so, when the script's files are not there.

use crate::helpers::{TestApp, ADMIN_TOKEN, DIGEST_KEY};
use keygate::config::Settings;
use std::path::PathBuf;
use std::sync::Arc;

/// The script's CA and client certificate, or `None` (and a line saying the test is
/// skipped) when it has not run here.
fn files() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("KEYGATE_TEST_POSTGRES_TLS_DIR").unwrap_or_else(|_| "/var/tmp/keygate-postgres-tls".to_owned()),
    );
    let there = ["ca.pem", "other-ca.pem", "client.pem", "client.key"].iter().all(|f| dir.join(f).is_file());
    if !there {
        eprintln!("skipped: {} has no CA and client certificate (run scripts/postgres-tls.sh)", dir.display());
        return None;
    }
    Some(dir)
}

/// `postgres://USER@HOST:5432/test_tls?PARAMS`.
fn url(user: &str, host: &str, params: &str) -> String {
    format!("postgres://{user}@{host}:5432/test_tls?{params}")
}

/// `url` with a schema of the test's own (made over `url` itself, so as its user).
async fn own_schema(url: &str) -> String {
    use sqlx::Connection;
    let schema = format!("kg_tls_{}", keygate::domain::random_token(12).unwrap().to_lowercase());
    let mut conn = sqlx::PgConnection::connect(url).await.expect("test_tls reachable over TLS");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
    format!("{url}&options=-c%20search_path%3D{schema}")
}

/// The start-up error of a server on `url`, as `keygate serve` prints it.
async fn start_error(url: &str) -> String {
    let mut settings = Settings::with_database(url);
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_token = keygate::config::AdminTokenSource::Given(ADMIN_TOKEN.into());
    settings.digest_key = keygate::config::DigestKeySource::Given(DIGEST_KEY.into());
    let clock = Arc::new(keygate::clock::ManualClock::starting_now());
    match keygate::startup::Application::build(settings, clock).await {
        Ok(_) => panic!("started on {url}"),
        Err(e) => format!("{e:#}"),
    }
}

/// A key made and used through a server whose store is `url`.
async fn serves_a_key(url: &str) {
    let mut app = TestApp::spawn_url(url, |_| {}).await;
    let (_, secret) = app.create_key("acct_tls", &["applications:read"], &[]).await;
    let answer = app.authorize(&secret, "GET", "/api/v1/panel/applications").await;
    assert!(answer.allowed, "{answer:?}");
}

/// guards: keygate's sqlx built without TLS (the feature this adds), where
/// `sslmode=verify-full` stopped start-up.
#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_and_serves_a_key() {
    let Some(dir) = files() else { return };
    let ca = dir.join("ca.pem");
    let url =
        own_schema(&url("postgres", "localhost", &format!("sslmode=verify-full&sslrootcert={}", ca.display()))).await;
    serves_a_key(&url).await;
}

/// guards: the client certificate (sslcert, sslkey) reaching Postgres's `cert` rule.
#[tokio::test]
async fn a_client_certificate_logs_in_as_its_role() {
    let Some(dir) = files() else { return };
    let params = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        dir.join("ca.pem").display(),
        dir.join("client.pem").display(),
        dir.join("client.key").display()
    );
    let with_certificate = own_schema(&url("keygate_tls_cert", "localhost", &params)).await;
    serves_a_key(&with_certificate).await;
    // Without the certificate, the same role is refused by the `cert` rule.
    let without = url(
        "keygate_tls_cert",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", dir.join("ca.pem").display()),
    );
    let error = start_error(&without).await;
    assert!(error.contains("wants a valid client certificate for this user: give sslcert="), "{error}");
}

/// guards: connect_error's naming of the cause; without it the error is sqlx's
/// `invalid peer certificate: UnknownIssuer`.
#[tokio::test]
async fn a_wrong_ca_fails_naming_the_unknown_ca() {
    let Some(dir) = files() else { return };
    let params = format!("sslmode=verify-full&sslrootcert={}", dir.join("other-ca.pem").display());
    let error = start_error(&url("postgres", "localhost", &params)).await;
    assert!(error.contains("cannot open the database"), "{error}");
    assert!(error.contains("TLS: the server's certificate is signed by an unknown CA"), "{error}");
}

/// guards: connect_error's naming of the cause; without it the error is sqlx's
/// `invalid peer certificate: NotValidForName`. The certificate names `localhost` only.
#[tokio::test]
async fn a_host_name_the_certificate_lacks_fails_naming_the_mismatch() {
    let Some(dir) = files() else { return };
    let params = format!("sslmode=verify-full&sslrootcert={}", dir.join("ca.pem").display());
    let error = start_error(&url("postgres", "127.0.0.1", &params)).await;
    assert!(
        error.contains("TLS: the server's certificate does not name the host keygate connects to (name mismatch)"),
        "{error}"
    );
}

/// guards: connect_error's naming of the cause; without it the error is the server's
/// `pg_hba.conf rejects connection … no encryption` alone.
#[tokio::test]
async fn plaintext_against_a_tls_only_rule_fails_naming_the_refusal() {
    if files().is_none() {
        return;
    }
    let error = start_error(&url("postgres", "127.0.0.1", "sslmode=disable")).await;
    assert!(error.contains("pg_hba.conf refuses connections without TLS"), "{error}");
}

/// guards: the replicas' LISTEN/NOTIFY connection over the same TLS URL (a listener
/// that connected without TLS is refused by the `hostnossl … reject` rule and never
/// connects); a revoke on one replica reaches the other's cache through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_replica_reaches_the_other_over_tls() {
    use crate::helpers::eventually;
    use crate::replicas::code_on;
    let Some(dir) = files() else { return };
    let ca = dir.join("ca.pem");
    let url =
        own_schema(&url("postgres", "localhost", &format!("sslmode=verify-full&sslrootcert={}", ca.display()))).await;
    let (mut a, b) = tokio::join!(TestApp::spawn_url(&url, |_| {}), TestApp::spawn_url(&url, |_| {}));
    crate::replicas::listeners_connected(&[&a, &b]).await;
    let (key, secret) = a.create_key("acct_tls_r", &["applications:read"], &[]).await;
    eventually("B serves the key from its cache", || async {
        code_on(&b, &secret).await == "allowed" && b.handles.cache.stats().keys.entries > 0
    })
    .await;
    a.admin
        .revoke_api_key(keygate::grpc::proto::RevokeApiKeyRequest { id: key.id, reason: "test".into() })
        .await
        .unwrap();
    eventually("B denies the revoked key", || async { code_on(&b, &secret).await == "api_key_revoked" }).await;
}
