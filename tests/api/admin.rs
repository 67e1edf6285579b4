//! The admin API: authentication, validation, not_found, pagination, search, and the
//! secret shown once.

use crate::backend_tests;
use crate::helpers::{reason, Db, TestApp};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient};
use tonic::Code;

backend_tests!(applications_are_created_listed_and_found, keys_are_listed_searched_and_paged);

#[tokio::test]
async fn admin_calls_need_a_valid_token() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let mut anonymous = AdminClient::new(app.channel.clone());
    let request = pb::GetApplicationRequest { id: "app_x".into() };
    let err = anonymous.get_application(request.clone()).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "unauth"));

    let wrong = keygate_client::AdminToken::new("not-the-admin-token-at-all").unwrap();
    let mut impostor = AdminClient::with_interceptor(app.channel.clone(), wrong);
    let err = impostor.get_application(request).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "unauth"));
    assert!(!err.message().contains("test-admin-token"));
}

async fn applications_are_created_listed_and_found(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_app("acct_list").await.id);
    }
    app.create_app("acct_other").await;
    ids.sort();
    let got = app.admin.get_application(pb::GetApplicationRequest { id: ids[0].clone() }).await.unwrap().into_inner();
    assert_eq!((got.account_id.as_str(), got.name.as_str()), ("acct_list", "app"));

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .admin
            .list_applications(pb::ListApplicationsRequest { account_id: "acct_list".into(), page_size: 2, page_token })
            .await
            .unwrap()
            .into_inner();
        assert!(page.applications.len() <= 2);
        seen.extend(page.applications.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    let err = app.admin.get_application(pb::GetApplicationRequest { id: "app_missing".into() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "not_found"));
    for bad in [
        pb::CreateApplicationRequest { account_id: "".into(), name: "x".into() },
        pb::CreateApplicationRequest { account_id: "acct 1".into(), name: "x".into() },
        pb::CreateApplicationRequest { account_id: "acct_1".into(), name: " ".into() },
    ] {
        let err = app.admin.create_application(bad).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "VALIDATION_ERROR"));
    }
    let err = app
        .admin
        .list_applications(pb::ListApplicationsRequest {
            account_id: "acct_list".into(),
            page_size: 10_000,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
}

async fn keys_are_listed_searched_and_paged(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let mut secrets = Vec::new();
    for name in ["Billing export", "billing import", "Deploy bot", "50%_off"] {
        let created = app
            .admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: "acct_k".into(),
                name: name.into(),
                scopes: vec!["applications:read".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        secrets.push(created.secret);
    }
    let list = |search: &str, page_size: u32, page_token: String| pb::ListApiKeysRequest {
        account_id: "acct_k".into(),
        page_size,
        page_token,
        search_params: search.into(),
        ..Default::default()
    };
    let names = |keys: &[pb::ApiKey]| keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();

    let all = app.admin.list_api_keys(list("", 0, String::new())).await.unwrap().into_inner();
    assert_eq!(all.keys.len(), 4);
    // The secret is never shown again: not by get, not by list.
    let shown = format!("{:?}", all.keys);
    for secret in &secrets {
        assert!(!shown.contains(&secret[19..63]));
    }
    let one = app.admin.get_api_key(pb::GetApiKeyRequest { id: all.keys[0].id.clone() }).await.unwrap().into_inner();
    assert!(!format!("{one:?}").contains(&secrets[0][19..63]));

    let found = app.admin.list_api_keys(list(r#"{"searchString": "BILLING"}"#, 0, String::new())).await.unwrap();
    let mut found = names(&found.into_inner().keys);
    found.sort();
    assert_eq!(found, ["Billing export", "billing import"]);
    // LIKE's wildcards in the search are literal.
    let found = app.admin.list_api_keys(list(r#"{"searchString": "%_"}"#, 0, String::new())).await.unwrap();
    assert_eq!(names(&found.into_inner().keys), ["50%_off"]);
    // By key id.
    let id = all.keys[2].id.clone();
    let by_id = app
        .admin
        .list_api_keys(list(&format!(r#"{{"searchString": "{}"}}"#, &id[4..12]), 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), [id]);

    // Pages of one, in id order, covering everything once.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.admin.list_api_keys(list("", 1, token)).await.unwrap().into_inner();
        paged.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, all.keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>());

    // Malformed search params are always VALIDATION_ERROR, naming the problem.
    for bad in ["{", "[1]", r#"{"searchString": 1}"#, r#"{"unknown": "x"}"#, r#"{"categories": ["Login"]}"#] {
        let err = app.admin.list_api_keys(list(bad, 0, String::new())).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "VALIDATION_ERROR"), "{bad}");
        assert!(err.message().contains("search_params"), "{}", err.message());
    }
    let err = app.admin.list_api_keys(list("", 0, "garbage token".into())).await.unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
}

#[tokio::test]
async fn key_requests_are_validated() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let theirs = app.create_app("acct_b").await;
    let create = |f: fn(&mut pb::CreateApiKeyRequest)| {
        let mut request = pb::CreateApiKeyRequest {
            account_id: "acct_a".into(),
            name: "k".into(),
            scopes: vec!["applications:read".into()],
            ..Default::default()
        };
        f(&mut request);
        request
    };
    let cases: Vec<(pb::CreateApiKeyRequest, &str)> = vec![
        (create(|r| r.scopes = vec!["bad scope".into()]), "VALIDATION_ERROR"),
        (create(|r| r.scopes = vec!["a*".into()]), "VALIDATION_ERROR"),
        (create(|r| r.name = String::new()), "VALIDATION_ERROR"),
        (create(|r| r.account_id = "x".repeat(65)), "VALIDATION_ERROR"),
        (create(|r| r.application_ids = vec!["app_nope".into()]), "not_found"),
        (create(|r| r.expires_at = Some(prost_types::Timestamp { seconds: 1_000, nanos: 0 })), "bad_request"),
        (create(|r| r.expires_at = Some(prost_types::Timestamp { seconds: 1_000, nanos: -1 })), "VALIDATION_ERROR"),
    ];
    for (request, expected) in cases {
        let err = app.admin.create_api_key(request.clone()).await.unwrap_err();
        assert_eq!(reason(&err), expected, "{request:?}");
    }
    let mut request = create(|_| {});
    request.application_ids = vec![theirs.id];
    let err = app.admin.create_api_key(request).await.unwrap_err();
    assert_eq!(reason(&err), "not_found", "another account's application cannot be granted");

    let err = app.admin.get_api_key(pb::GetApiKeyRequest { id: "key_0000000000000000".into() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "not_found"));
    let err = app.admin.get_api_key(pb::GetApiKeyRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
    let err = app
        .admin
        .revoke_api_key(pb::RevokeApiKeyRequest { id: "key_0000000000000000".into(), reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "not_found");
    let (key, _) = app.create_key("acct_a", &["*"], &[]).await;
    let err = app
        .admin
        .update_api_key(pb::UpdateApiKeyRequest { id: key.id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR", "an update must change something");
    let err = app
        .admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: key.id,
            expires_at: Some(prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 }),
            clear_expires_at: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
}
