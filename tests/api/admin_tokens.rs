//! Named admin tokens: each role's allowed and refused RPCs (docs/deployment.md's table, row by
//! row), a token confined to one account, expiry, revocation on another replica, and the
//! audit trail naming the token.

use crate::backend_tests;
use crate::helpers::{Db, TestApp, ADMIN_TOKEN};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient};
use keygate_client::AdminToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub(crate) type Admin = AdminClient<InterceptedService<Channel, AdminToken>>;

pub(crate) fn admin_with(app: &TestApp, token: &str) -> Admin {
    let channel = tonic::transport::Channel::from_shared(app.admin_address.clone().unwrap_or(app.address.clone()))
        .unwrap()
        .connect_lazy();
    AdminClient::with_interceptor(channel, AdminToken::new(token).unwrap())
}

/// A new token through the bootstrap token; returns its secret.
pub(crate) async fn token(app: &mut TestApp, name: &str, role: &str, account: &str, expires_in_seconds: u64) -> String {
    let request = pb::CreateAdminTokenRequest {
        name: name.into(),
        role: role.into(),
        account_id: account.into(),
        expires_in_seconds,
    };
    let created = app.admin.create_admin_token(request).await.expect("the bootstrap token creates tokens");
    let created = created.into_inner();
    assert_eq!(created.token.as_ref().unwrap().status, "active");
    assert!(created.secret.starts_with("kgat_"), "{}", created.secret);
    created.secret
}

/// The error page's code a refused call carries.
fn code(status: &tonic::Status) -> String {
    crate::helpers::reason(status)
}

/// What each call acts on: one account with an application, a key and a session.
struct Fixture {
    account: String,
    app: String,
    key: String,
    session: String,
}

async fn fixture(app: &mut TestApp) -> Fixture {
    let account = "acct_roles".to_owned();
    let application = app.create_app(&account).await;
    let (key, _) = app.create_key(&account, &["applications:read"], &[]).await;
    let session = app
        .admin
        .create_session(pb::CreateSessionRequest { account_id: account.clone(), user_id: "u1".into(), ttl_seconds: 0 })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    Fixture { account, app: application.id, key: key.id, session: session.id }
}

/// Calls `rpc` with harmless arguments (ids that do not exist where the call would destroy
/// the fixture): the answer says only whether the token's role reached the handler.
async fn call(admin: &mut Admin, rpc: &str, fx: &Fixture, n: usize) -> Result<(), tonic::Status> {
    let account = fx.account.clone();
    let missing_key = "key_0000000000000000".to_owned();
    let missing_session = "ses_0000000000000000".to_owned();
    match rpc {
        "CreateApplication" => admin
            .create_application(pb::CreateApplicationRequest { account_id: account, name: "x".into() })
            .await
            .map(drop),
        "GetApplication" => admin.get_application(pb::GetApplicationRequest { id: fx.app.clone() }).await.map(drop),
        "ListApplications" => admin
            .list_applications(pb::ListApplicationsRequest { account_id: account, ..Default::default() })
            .await
            .map(drop),
        "UpdateApplication" => admin
            .update_application(pb::UpdateApplicationRequest { id: fx.app.clone(), name: "renamed".into() })
            .await
            .map(drop),
        "DeleteApplication" => admin
            .delete_application(pb::DeleteApplicationRequest { id: "app_missing".into(), cascade: false })
            .await
            .map(drop),
        "CreateApiKey" => admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: account,
                name: format!("k{n}"),
                scopes: vec!["applications:read".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        "GetApiKey" => admin.get_api_key(pb::GetApiKeyRequest { id: fx.key.clone() }).await.map(drop),
        "ListApiKeys" => {
            admin.list_api_keys(pb::ListApiKeysRequest { account_id: account, ..Default::default() }).await.map(drop)
        }
        "UpdateApiKey" => admin
            .update_api_key(pb::UpdateApiKeyRequest {
                id: fx.key.clone(),
                name: Some(format!("n{n}")),
                ..Default::default()
            })
            .await
            .map(drop),
        "RevokeApiKey" => {
            admin.revoke_api_key(pb::RevokeApiKeyRequest { id: missing_key, reason: String::new() }).await.map(drop)
        }
        "RerollApiKey" => {
            admin.reroll_api_key(pb::RerollApiKeyRequest { id: missing_key, ..Default::default() }).await.map(drop)
        }
        "DeleteApiKey" => admin.delete_api_key(pb::DeleteApiKeyRequest { id: missing_key }).await.map(drop),
        "ImportApiKeys" => admin
            .import_api_keys(pb::ImportApiKeysRequest { import_id: format!("imp{n}"), keys: vec![] })
            .await
            .map(drop),
        "UpdateOwner" => admin
            .update_owner(pb::UpdateOwnerRequest { account_id: account, owner_id: "o1".into(), ..Default::default() })
            .await
            .map(drop),
        "GetOwner" => {
            admin.get_owner(pb::GetOwnerRequest { account_id: account, owner_id: "o1".into() }).await.map(drop)
        }
        "RotateApplicationKey" => admin
            .rotate_application_key(pb::RotateApplicationKeyRequest {
                application_id: "app_missing".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "CreateSession" => admin
            .create_session(pb::CreateSessionRequest { account_id: account, user_id: "u2".into(), ttl_seconds: 0 })
            .await
            .map(drop),
        "GetSession" => admin.get_session(pb::GetSessionRequest { id: fx.session.clone() }).await.map(drop),
        "RevokeSession" => admin.revoke_session(pb::RevokeSessionRequest { id: missing_session }).await.map(drop),
        "ListSessions" => {
            admin.list_sessions(pb::ListSessionsRequest { account_id: account, ..Default::default() }).await.map(drop)
        }
        "DeleteAccount" => {
            admin.delete_account(pb::DeleteAccountRequest { account_id: "acct_missing".into() }).await.map(drop)
        }
        "ListAuditEvents" => admin
            .list_audit_events(pb::ListAuditEventsRequest { account_id: account, ..Default::default() })
            .await
            .map(drop),
        "GetUsage" => admin
            .get_usage(pb::GetUsageRequest { subject: "key".into(), id: fx.key.clone(), ..Default::default() })
            .await
            .map(drop),
        "TopKeys" => admin.top_keys(pb::TopKeysRequest { account_id: account, ..Default::default() }).await.map(drop),
        "CreateAdminToken" => admin
            .create_admin_token(pb::CreateAdminTokenRequest {
                name: format!("made-{n}"),
                role: "read_only".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListAdminTokens" => admin.list_admin_tokens(pb::ListAdminTokensRequest {}).await.map(drop),
        "RevokeAdminToken" => {
            admin.revoke_admin_token(pb::RevokeAdminTokenRequest { name: "nobody".into() }).await.map(drop)
        }
        other => panic!("no call written for {other}: add one"),
    }
}

/// The roles table of docs/deployment.md: (RPC, [admin, keys_write, read_only]) from its
/// "Admin token roles" section, ✓ allowed and – refused.
fn roles_table() -> Vec<(String, [bool; 3])> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deployment.md")).unwrap();
    let section =
        doc.split("### Admin token roles").nth(1).expect("docs/deployment.md has an Admin token roles section");
    section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let allowed = |cell: &str| match cell {
                "✓" => true,
                "–" => false,
                other => panic!("roles table cell {other:?}: ✓ or –"),
            };
            (cells[0].trim_matches('`').to_owned(), [allowed(cells[1]), allowed(cells[2]), allowed(cells[3])])
        })
        .collect()
}

#[tokio::test]
async fn each_role_may_call_what_the_roles_table_says_and_no_more() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let fx = fixture(&mut app).await;
    let table = roles_table();
    let mut rpcs: Vec<&str> = keygate::grpc::admin::ADMIN_RPCS.iter().map(|(rpc, _)| *rpc).collect();
    let mut documented: Vec<&str> = table.iter().map(|(rpc, _)| rpc.as_str()).collect();
    rpcs.sort_unstable();
    documented.sort_unstable();
    assert_eq!(documented, rpcs, "the roles table lists every admin RPC");

    // keys_write confined to the fixture's account answers as keys_write does there.
    let tokens = [
        ("admin", token(&mut app, "t-admin", "admin", "", 0).await),
        ("keys_write", token(&mut app, "t-keys", "keys_write", "", 0).await),
        ("read_only", token(&mut app, "t-read", "read_only", "", 0).await),
        ("keys_write", token(&mut app, "t-keys-one", "keys_write", &fx.account, 0).await),
    ];
    // keys_write confined to another account: every RPC its role reaches refuses the
    // fixture's account (insufficient_scope by name, not_found by id), so a handler that
    // forgets the account check fails here. An import of no keys names no account.
    let elsewhere = token(&mut app, "t-keys-elsewhere", "keys_write", "acct_elsewhere", 0).await;
    let mut n = 0;
    for (rpc, _) in table.iter().filter(|(rpc, allowed)| allowed[1] && rpc != "ImportApiKeys") {
        n += 1;
        let status = call(&mut admin_with(&app, &elsewhere), rpc, &fx, n).await.expect_err(rpc);
        let refused = (status.code(), code(&status));
        assert!(
            refused == (tonic::Code::PermissionDenied, "insufficient_scope".into())
                || refused == (tonic::Code::NotFound, "not_found".into()),
            "{rpc} reached another account: {status:?}"
        );
    }
    for (rpc, allowed) in &table {
        for (column, (role, secret)) in tokens.iter().enumerate() {
            n += 1;
            let expected = allowed[[0, 1, 2, 1][column]];
            let mut admin = admin_with(&app, secret);
            match call(&mut admin, rpc, &fx, n).await {
                Err(status) if status.code() == tonic::Code::PermissionDenied => {
                    assert!(!expected, "{role} (token {column}) was refused {rpc}: {status:?}");
                    assert_eq!(code(&status), "insufficient_scope", "{rpc}");
                }
                Err(status) if status.code() == tonic::Code::Unauthenticated => panic!("{role}: {rpc}: {status:?}"),
                // Reached the handler: answered, or refused for what it asked (not found…).
                _ => assert!(expected, "{role} (token {column}) may not call {rpc}, but did"),
            }
        }
    }
}

#[tokio::test]
async fn a_token_confined_to_an_account_acts_on_that_account_only() {
    // Many refused calls from one address: not about the per-source budget (isolation_admin.rs).
    let db = crate::helpers::TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| s.admin_gate.failures_per_source = u32::MAX).await;
    let (theirs, _) = app.create_key("acct_b", &["applications:read"], &[]).await;
    let other_app = app.create_app("acct_b").await;
    let secret = token(&mut app, "shop-a", "keys_write", "acct_a", 0).await;
    let mut admin = admin_with(&app, &secret);

    let create = |account: &str| pb::CreateApiKeyRequest {
        account_id: account.into(),
        name: "k".into(),
        scopes: vec!["applications:read".into()],
        ..Default::default()
    };
    admin.create_api_key(create("acct_a")).await.expect("its own account");
    let refused = admin.create_api_key(create("acct_b")).await.unwrap_err();
    assert_eq!((refused.code(), code(&refused)), (tonic::Code::PermissionDenied, "insufficient_scope".into()));
    assert!(refused.message().contains("acct_a"), "{refused:?}");
    let listed = admin
        .list_api_keys(pb::ListApiKeysRequest { account_id: "acct_b".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(code(&listed), "insufficient_scope");

    // Another account's records, by id, are as if they did not exist.
    for status in [
        admin.get_api_key(pb::GetApiKeyRequest { id: theirs.id.clone() }).await.unwrap_err(),
        admin.revoke_api_key(pb::RevokeApiKeyRequest { id: theirs.id.clone(), reason: "x".into() }).await.unwrap_err(),
        admin.delete_api_key(pb::DeleteApiKeyRequest { id: theirs.id.clone() }).await.unwrap_err(),
        admin.get_application(pb::GetApplicationRequest { id: other_app.id.clone() }).await.unwrap_err(),
    ] {
        assert_eq!((status.code(), code(&status)), (tonic::Code::NotFound, "not_found".into()), "{status:?}");
    }
    let still = app.admin.get_api_key(pb::GetApiKeyRequest { id: theirs.id.clone() }).await.unwrap().into_inner();
    assert!(still.revoked_at.is_none(), "acct_b's key was not touched");

    // An import that reaches into another account is refused whole.
    let imported = |account: &str, n: usize| pb::ImportedKey {
        account_id: account.into(),
        name: format!("imported {n}"),
        scopes: vec!["applications:read".into()],
        algorithm: "sha256".into(),
        hash: format!("{n:0>64}"),
        ..Default::default()
    };
    let batch = pb::ImportApiKeysRequest {
        import_id: "mixed".into(),
        keys: vec![imported("acct_a", 1), imported("acct_b", 2)],
    };
    let refused = admin.import_api_keys(batch).await.unwrap_err();
    assert_eq!(code(&refused), "insufficient_scope");
    let a_keys =
        app.admin.list_api_keys(pb::ListApiKeysRequest { account_id: "acct_a".into(), ..Default::default() }).await;
    assert_eq!(a_keys.unwrap().into_inner().keys.len(), 1, "nothing of the batch was imported");

    // An application's runtime key is an admin's to change, even in the token's account.
    let shop = app.create_app("acct_a").await;
    let rotated = app
        .admin
        .rotate_application_key(pb::RotateApplicationKeyRequest {
            application_id: shop.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let runtime = rotated.key.unwrap().id;
    let refused = admin.revoke_api_key(pb::RevokeApiKeyRequest { id: runtime.clone(), reason: "x".into() }).await;
    assert_eq!(code(&refused.unwrap_err()), "insufficient_scope");

    // An admin token cannot be confined (its role reaches beyond accounts).
    let request = pb::CreateAdminTokenRequest {
        name: "boss".into(),
        role: "admin".into(),
        account_id: "acct_a".into(),
        expires_in_seconds: 0,
    };
    assert_eq!(code(&app.admin.create_admin_token(request).await.unwrap_err()), "bad_request");
}

#[tokio::test]
async fn a_token_expires_names_itself_in_the_audit_trail_and_keeps_its_name_after_revocation() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let secret = token(&mut app, "ci", "keys_write", "", 3600).await;
    let mut ci = admin_with(&app, &secret);
    let created = ci
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: "acct_ci".into(),
            name: "deploy".into(),
            scopes: vec!["applications:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let trail = app
        .admin
        .list_audit_events(pb::ListAuditEventsRequest { account_id: "acct_ci".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].actor, "token:ci", "{:?}", trail[0]);
    assert_eq!(trail[0].target, created.key.unwrap().id);

    // An hour later (the injected clock), it no longer opens anything.
    app.clock.advance(std::time::Duration::from_secs(3600));
    let expired = ci.list_admin_tokens(pb::ListAdminTokensRequest {}).await.unwrap_err();
    assert_eq!(expired.code(), tonic::Code::Unauthenticated);
    let refused = ci
        .list_api_keys(pb::ListApiKeysRequest { account_id: "acct_ci".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((refused.code(), refused.message()), (tonic::Code::Unauthenticated, "the admin token expired"));
    let listed = app.admin.list_admin_tokens(pb::ListAdminTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].status.as_str(), listed[0].created_by.starts_with("admin:")), ("expired", true));

    // Revoked, the name stays taken: `token:ci` in the trail names one token forever.
    app.admin.revoke_admin_token(pb::RevokeAdminTokenRequest { name: "ci".into() }).await.unwrap();
    let again = pb::CreateAdminTokenRequest { name: "ci".into(), role: "read_only".into(), ..Default::default() };
    let taken = app.admin.create_admin_token(again).await.unwrap_err();
    assert_eq!(code(&taken), "bad_request", "{taken:?}");
    // Garbage and the token's own shape with a wrong secret are both unauth.
    for wrong in ["not-a-token-at-all-0123", "kgat_0000000000000000000000000000000000000000000"] {
        let status = admin_with(&app, wrong).list_admin_tokens(pb::ListAdminTokensRequest {}).await.unwrap_err();
        assert_eq!((status.code(), code(&status)), (tonic::Code::Unauthenticated, "unauth".into()));
    }
    // The bootstrap token keeps working beside the named ones.
    assert!(admin_with(&app, ADMIN_TOKEN).list_admin_tokens(pb::ListAdminTokensRequest {}).await.is_ok());
}

backend_tests!(a_revoked_token_is_refused_on_the_other_replica_at_its_next_call);
async fn a_revoked_token_is_refused_on_the_other_replica_at_its_next_call(db: Db) {
    let Some(db) = crate::helpers::TestDb::new(db).await else { return };
    // One after the other: the first runs the migrations (two at once race on SQLite).
    let mut a = TestApp::spawn_url(&db.url, |_| {}).await;
    let b = TestApp::spawn_url(&db.url, |_| {}).await;
    let secret = token(&mut a, "dashboard", "read_only", "", 0).await;
    let mut on_b = admin_with(&b, &secret);
    let list = pb::ListApplicationsRequest { account_id: "acct_r".into(), ..Default::default() };
    on_b.list_applications(list.clone()).await.expect("the token works on the other replica");

    let revoked = a.admin.revoke_admin_token(pb::RevokeAdminTokenRequest { name: "dashboard".into() }).await;
    assert_eq!(revoked.unwrap().into_inner().status, "revoked");
    // No wait: every admin call reads its token from the store.
    let status = on_b.list_applications(list).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::Unauthenticated, "the admin token was revoked"));
}

#[tokio::test]
async fn made_up_admin_tokens_cost_no_store_read_however_many() {
    let mut app = crate::helpers::TestApp::spawn_on(crate::helpers::TestDb::new(Db::Sqlite).await.unwrap(), |s| {
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // What a wrong token costs in reads, not the per-source budget (isolation_admin.rs).
        s.admin_gate.failures_per_source = u32::MAX;
    })
    .await;
    let real = token(&mut app, "dash", "read_only", "", 0).await;
    let reads = || async {
        let text = reqwest::get(app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
        keygate::metrics::sample(&text, r#"keygate_store_operation_seconds_count{operation="admin_token"}"#)
            .unwrap_or(0.0)
    };
    let before = reads().await;
    // keygate's own shape, a real token with one character changed, 200 at once.
    let mut forged = real.clone();
    let flipped = if &real[20..21] == "a" { "b" } else { "a" };
    forged.replace_range(20..21, flipped);
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let token = if i % 2 == 0 { forged.clone() } else { format!("kgat_{:0>43}", i) };
            let mut admin = admin_with(&app, &token);
            tokio::spawn(async move { admin.list_admin_tokens(pb::ListAdminTokensRequest {}).await })
        })
        .collect();
    for call in flood {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!((status.code(), code(&status)), (tonic::Code::Unauthenticated, "unauth".into()));
    }
    assert_eq!(reads().await, before, "no made-up token was looked up");
    // The real one still is (one read), and works.
    let mut dash = admin_with(&app, &real);
    dash.list_applications(pb::ListApplicationsRequest { account_id: "a".into(), ..Default::default() }).await.unwrap();
    assert_eq!(reads().await, before + 1.0);
}

/// A leaked token, revoked, sent in a loop: read once, then refused from memory, so it
/// cannot hold the few lookups that live tokens wait for.
#[tokio::test]
async fn a_dead_admin_token_in_a_loop_is_read_once() {
    let mut app = crate::helpers::TestApp::spawn_on(crate::helpers::TestDb::new(Db::Sqlite).await.unwrap(), |s| {
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // What a wrong token costs in reads, not the per-source budget (isolation_admin.rs).
        s.admin_gate.failures_per_source = u32::MAX;
    })
    .await;
    let leaked = token(&mut app, "leaked", "admin", "", 0).await;
    let live = token(&mut app, "live", "read_only", "", 0).await;
    app.admin.revoke_admin_token(pb::RevokeAdminTokenRequest { name: "leaked".into() }).await.unwrap();
    let reads = || async {
        let text = reqwest::get(app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
        keygate::metrics::sample(&text, r#"keygate_store_operation_seconds_count{operation="admin_token"}"#)
            .unwrap_or(0.0)
    };
    let before = reads().await;
    let mut first = admin_with(&app, &leaked);
    let status = first.list_admin_tokens(pb::ListAdminTokensRequest {}).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::Unauthenticated, "the admin token was revoked"));
    assert_eq!(reads().await, before + 1.0, "read once");
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let mut admin = admin_with(&app, &leaked);
            tokio::spawn(async move { admin.list_admin_tokens(pb::ListAdminTokensRequest {}).await })
        })
        .collect();
    for call in flood {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!((status.code(), status.message()), (tonic::Code::Unauthenticated, "the admin token was revoked"));
    }
    assert_eq!(reads().await, before + 1.0, "the loop cost no more reads");
    let mut dashboard = admin_with(&app, &live);
    dashboard
        .list_applications(pb::ListApplicationsRequest { account_id: "a".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(reads().await, before + 2.0, "a live token is still read at every call");
}
