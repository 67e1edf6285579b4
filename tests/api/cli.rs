//! The `keygate` binary as an operator uses it: every command against a real server,
//! JSON output parsed, table output read, errors as one line with the page's code.

use crate::helpers::{Db, TestApp, ADMIN_TOKEN};
use serde_json::Value;

/// Runs `keygate ARGS` against `app`; returns (success, stdout, stderr).
pub(crate) fn keygate(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env("KEYGATE_SERVER", &app.address)
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYGATE_ACTOR", "ops@example.com")
        .env_remove("KEYGATE_CREDENTIAL")
        .output()
        .expect("the keygate binary runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (output.status.success(), text(output.stdout), text(output.stderr))
}

fn json(app: &TestApp, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, stdout, stderr) = keygate(app, &all);
    assert!(ok, "keygate {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("keygate {args:?} printed no JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_every_admin_call() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let application = json(&app, &["app", "create", "--account", "acct_cli", "--name", "Shop"]);
    let app_id = application["id"].as_str().unwrap().to_owned();
    assert_eq!(json(&app, &["app", "get", &app_id])["name"], "Shop");
    assert_eq!(json(&app, &["app", "list", "--account", "acct_cli"]).as_array().unwrap().len(), 1);

    let created = json(
        &app,
        &[
            "key",
            "create",
            "--account",
            "acct_cli",
            "--name",
            "deploy",
            "--scope",
            "applications:read",
            "--app",
            &app_id,
        ],
    );
    let (key_id, secret) = (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned());
    let (ok, decided, _) = keygate(
        &app,
        &["authorize", "--credential", &secret, "--path", &format!("/api/v1/panel/applications/{app_id}")],
    );
    assert!(ok && decided.starts_with("allowed"), "{decided}");
    let updated = json(&app, &["key", "update", &key_id, "--name", "deploy (old)"]);
    assert_eq!(updated["name"], "deploy (old)");
    assert_eq!(json(&app, &["key", "get", &key_id])["status"], "active");

    // Tables: a header and one line per key, the secret nowhere.
    let (ok, table, _) = keygate(&app, &["key", "list", "--account", "acct_cli"]);
    assert!(ok);
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATUS"), "{table}");
    assert!(lines[1].starts_with(&key_id) && lines[1].contains("active"), "{table}");
    assert!(!table.contains(&secret));

    let rotated = json(&app, &["app", "rotate-key", &app_id]);
    assert!(rotated["secret"].as_str().unwrap().starts_with("kgr_"));
    let session = json(&app, &["session", "create", "--account", "acct_cli", "--user", "user_1"]);
    let session_id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(json(&app, &["session", "get", &session_id])["status"], "active");
    assert_eq!(json(&app, &["session", "revoke", &session_id])["status"], "revoked");

    // revoke-all asks before it acts, then revokes every active key.
    json(&app, &["key", "create", "--account", "acct_cli", "--name", "second"]);
    let (ok, _, refusal) = keygate(&app, &["key", "revoke-all", "--account", "acct_cli", "--reason", "leak"]);
    assert!(!ok && refusal.contains("would revoke 2 active keys") && refusal.contains("--yes"), "{refusal}");
    let revoked = json(&app, &["key", "revoke-all", "--account", "acct_cli", "--reason", "leak", "--yes"]);
    assert!(revoked.as_array().unwrap().iter().all(|k| k["status"] == "revoked"));
    assert_eq!(revoked.as_array().unwrap().len(), 2);
    let (_, decided, _) = keygate(
        &app,
        &["authorize", "--credential", &secret, "--path", &format!("/api/v1/panel/applications/{app_id}")],
    );
    assert!(decided.contains("api_key_revoked"), "{decided}");

    // The audit trail saw all of it, with the CLI's actor.
    let events = json(&app, &["audit", "list", "--account", "acct_cli"]);
    let actions: Vec<_> = events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "api_key.revoke",
            "api_key.revoke",
            "api_key.create",
            "session.revoke",
            "session.create",
            "application.rotate_key",
            "api_key.update",
            "api_key.create",
            "application.create",
        ]
    );
    assert!(events.as_array().unwrap().iter().all(|e| e["on_behalf_of"] == "ops@example.com"));
    let logins = json(&app, &["audit", "list", "--account", "acct_cli", "--category", "Login"]);
    assert_eq!(logins.as_array().unwrap().len(), 1);
    let (ok, table, _) = keygate(&app, &["audit", "list", "--account", "acct_cli", "--limit", "2"]);
    assert!(ok && table.lines().count() == 3 && table.contains("ops@example.com (via admin:"), "{table}");

    // Errors: one line with the page's code, exit status 1.
    let (ok, _, error) = keygate(&app, &["key", "get", "key_0000000000000000"]);
    assert!(!ok);
    assert!(error.trim().starts_with("error: not_found:") && error.trim().lines().count() == 1, "{error}");
    let (ok, _, error) = keygate(&app, &["audit", "list", "--account", "acct_cli", "--category", "Logins"]);
    assert!(!ok && error.contains("VALIDATION_ERROR") && error.contains("unknown category"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_what_a_key_carries_and_switches_it_off_and_on() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let created = json(
        &app,
        &[
            "key",
            "create",
            "--account",
            "acct_terms",
            "--name",
            "pro",
            "--scope",
            "applications:read",
            "--limit",
            "100/min",
            "--limit",
            "burst=5/10s@GET /api/v1/panel/applications",
            "--credits",
            "1000",
            "--refill",
            "1000/month",
            "--allow-ip",
            "10.0.0.0/8",
            "--meta",
            r#"{"plan": "pro"}"#,
        ],
    );
    let (id, secret) = (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned());
    assert_eq!(
        created["limits"][0],
        serde_json::json!({ "name": "limit1", "limit": 100, "window_seconds": 60, "route": null })
    );
    assert_eq!(created["limits"][1]["route"], "GET /api/v1/panel/applications");
    assert_eq!(created["credits"]["refill"]["interval"], "monthly");
    assert_eq!(created["allowed_networks"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(created["metadata"], serde_json::json!({ "plan": "pro" }));

    let ask = |ip: &str| {
        keygate(
            &app,
            &["authorize", "--credential", &secret, "--path", "/api/v1/panel/applications", "--client-ip", ip],
        )
    };
    let (_, allowed, _) = ask("10.1.1.1");
    assert!(allowed.starts_with("allowed") && allowed.contains("credits_remaining=999"), "{allowed}");
    let (_, outside, _) = ask("192.0.2.1");
    assert!(outside.contains("application_forbidden") && outside.contains("reason=ip_not_allowed"), "{outside}");

    assert_eq!(json(&app, &["key", "disable", &id])["enabled"], false);
    let (ok, line, _) = keygate(&app, &["key", "get", &id]);
    assert!(ok && line.contains(" disabled ") && line.contains("credits=999"), "{line}");
    let (_, off, _) = ask("10.1.1.1");
    assert!(off.contains("api_key_revoked") && off.contains("reason=disabled"), "{off}");
    assert_eq!(json(&app, &["key", "enable", &id])["enabled"], true);

    let updated = json(&app, &["key", "update", &id, "--no-limits", "--any-ip", "--meta", "", "--no-credits"]);
    assert_eq!(
        (&updated["limits"], &updated["allowed_networks"], &updated["metadata"], &updated["credits"]),
        (&serde_json::json!([]), &serde_json::json!([]), &Value::Null, &Value::Null)
    );
    let (ok, _, error) = keygate(&app, &["key", "create", "--account", "a", "--name", "n", "--limit", "10/week"]);
    assert!(!ok && error.contains("the window must be"), "{error}");
}

#[test]
fn policy_check_refuses_a_per_application_limit_on_a_route_without_an_application_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["policy", "check", path.to_str().unwrap()])
            .output()
            .expect("the keygate binary runs");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), said)
    };
    let route = "[[routes]]\nroute = \"PATCH /api/v1/panel/update-api-keys\"\n";
    let limit = "[[routes.limits]]\nlimit = 2\nwindow = \"hour\"\nper = \"application\"\n";
    let (ok, said) = check(&format!("{route}{limit}"));
    assert!(!ok, "accepted: {said}");
    assert!(said.contains("counts per application") && said.contains("no application source"), "{said}");
    let (ok, said) = check(&format!("{route}application = \"header:x-application-id\"\n{limit}"));
    assert!(ok, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_rolls_imports_owns_and_deletes() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    // An import file: two keys from the fixtures (one bcrypt, one sha256) and a broken line.
    let fixture = |kind: &str| -> Value {
        let path = format!("{}/tests/fixtures/import/{kind}.jsonl", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(std::fs::read_to_string(path).unwrap().lines().next().unwrap()).unwrap()
    };
    let (bcrypt, sha256) = (fixture("bcrypt"), fixture("sha256"));
    let line = |f: &Value| {
        let mut line = serde_json::json!({
            "account_id": "acct_life", "name": "from elsewhere", "scopes": ["applications:read"],
            "owner_id": "cus_1", "algorithm": f["algorithm"], "hash": f["hash"], "metadata": {"plan": "pro"},
            "expires_at": "2099-01-01T00:00:00Z",
        });
        if let Some(start) = f.get("start") {
            line["start"] = start.clone();
        }
        line.to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    std::fs::write(&file, format!("{}\n{{not json\n{}\n", line(&bcrypt), line(&sha256))).unwrap();
    let file = file.to_str().unwrap();
    let (ok, summary, stderr) = keygate(&app, &["key", "import", file]);
    assert!(ok, "{stderr}");
    assert!(summary.contains("2 imported, 0 already imported, 0 conflicting, 1 invalid"), "{summary}");
    assert!(summary.contains("line 2:"), "the broken line is named: {summary}");
    let again = json(&app, &["key", "import", file]);
    assert_eq!((again["imported"].as_u64(), again["already_imported"].as_u64()), (Some(0), Some(2)));
    let credential = bcrypt["credential"].as_str().unwrap();
    let (ok, decided, _) =
        keygate(&app, &["authorize", "--credential", credential, "--path", "/api/v1/panel/applications"]);
    assert!(ok && decided.starts_with("allowed"), "{decided}");

    // Owners: shared credits, and keys listed by owner.
    let owner =
        json(&app, &["owner", "set", "cus_1", "--account", "acct_life", "--credits", "10", "--limit", "50/min"]);
    assert_eq!((owner["credits"]["remaining"].as_i64(), owner["limits"][0]["limit"].as_u64()), (Some(10), Some(50)));
    assert_eq!(json(&app, &["owner", "get", "cus_1", "--account", "acct_life"])["owner_id"], "cus_1");
    let owned = json(&app, &["key", "list", "--account", "acct_life", "--owner", "cus_1"]);
    assert_eq!(owned.as_array().unwrap().len(), 2);
    let key_id = owned[0]["id"].as_str().unwrap().to_owned();

    // Roll: a new secret, the old key on until the overlap ends.
    let rolled = json(&app, &["key", "roll", &key_id, "--overlap", "1h"]);
    assert!(rolled["secret"].as_str().unwrap().starts_with("kg_"));
    assert_eq!((rolled["rolled_from"].as_str(), rolled["owner_id"].as_str()), (Some(key_id.as_str()), Some("cus_1")));
    assert_eq!(rolled["previous"]["rolled_to"], rolled["id"]);
    let (ok, text, _) = keygate(&app, &["key", "roll", rolled["id"].as_str().unwrap(), "--overlap", "30d"]);
    assert!(!ok, "{text}");

    // Deletes ask first, then act.
    let new_id = rolled["id"].as_str().unwrap().to_owned();
    let (ok, _, refusal) = keygate(&app, &["key", "delete", &new_id]);
    assert!(!ok && refusal.contains("--yes"), "{refusal}");
    let deleted = json(&app, &["key", "delete", &new_id, "--yes"]);
    assert_eq!(deleted["deleted_key_ids"][0], new_id.as_str());
    let application = json(&app, &["app", "create", "--account", "acct_life", "--name", "Shop"]);
    let app_id = application["id"].as_str().unwrap().to_owned();
    assert_eq!(json(&app, &["app", "update", &app_id, "--name", "Store"])["name"], "Store");
    json(&app, &["session", "create", "--account", "acct_life", "--user", "u1"]);
    let sessions = json(&app, &["session", "list", "--account", "acct_life", "--user", "u1"]);
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    assert_eq!(json(&app, &["app", "delete", &app_id, "--yes"])["deleted_application_ids"][0], app_id.as_str());
    let (ok, _, refusal) = keygate(&app, &["account", "delete", "acct_life"]);
    assert!(!ok && refusal.contains("--yes"), "{refusal}");
    let (ok, erased, _) = keygate(&app, &["account", "delete", "acct_life", "--yes"]);
    assert!(ok && erased.contains("deleted 2 keys, 0 applications, 1 sessions, 1 owners"), "{erased}");
    let (_, decided, _) =
        keygate(&app, &["authorize", "--credential", credential, "--path", "/api/v1/panel/applications"]);
    assert!(decided.contains("api_key_invalid"), "{decided}");
}

/// Issue 30 item 9: `key create`, `key get` and `key list` print a key's limits as
/// `--limit` takes them (`limit1: 100/min`, `burst: 5/10s@ROUTE`) and its refill as
/// `--refill` takes it. guards: before the fix the line read `limit=limit1:100/60s`, with
/// no route and no refill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_limits_as_they_were_written() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let create = [
        "key",
        "create",
        "--account",
        "acct_shown",
        "--name",
        "pro",
        "--scope",
        "applications:read",
        "--limit",
        "100/min",
        "--limit",
        "burst=5/10s@GET /api/v1/panel/applications",
        "--credits",
        "1000",
        "--refill",
        "1000/month",
    ];
    let (ok, created, stderr) = keygate(&app, &create);
    assert!(ok, "{stderr}");
    let id = created.split_whitespace().next().unwrap().to_owned();
    let (ok, got, _) = keygate(&app, &["key", "get", &id]);
    assert!(ok);
    let (ok, listed, _) = keygate(&app, &["key", "list", "--account", "acct_shown"]);
    assert!(ok);
    for (what, out) in [("create", &created), ("get", &got), ("list", &listed)] {
        let terms = " limit1: 100/min burst: 5/10s@GET /api/v1/panel/applications credits=1000 refill=1000/month";
        assert!(out.contains(terms), "key {what}: {out}");
        assert!(!out.contains("60s") && !out.contains("limit="), "key {what}: {out}");
    }
}

/// `keygate health`: SERVING and exit 0 for the server and a service it serves; exit 1
/// with one error line for a service it does not know and for an address where nothing
/// listens. guards: the exit status the image's HEALTHCHECK relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygate_health_exits_0_only_when_serving() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    for service in ["", "keygate.v1.Authorizer"] {
        let (ok, stdout, stderr) = keygate(&app, &["health", "--service", service]);
        assert!(ok && stdout == "SERVING\n", "{service:?}: {stdout}{stderr}");
    }
    let (ok, stdout, stderr) = keygate(&app, &["health", "--service", "keygate.v1.Nothing"]);
    assert!(!ok && stdout.is_empty() && stderr.starts_with("error: health of \"keygate.v1.Nothing\""), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let nothing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ok, _, stderr) = keygate(&app, &["health", "--server", &format!("http://{nothing}"), "--timeout", "2"]);
    assert!(!ok && stderr.starts_with(&format!("error: cannot reach keygate at http://{nothing}")), "{stderr}");

    // A keygate draining on SIGTERM answers NOT_SERVING: exit 1.
    let dir = tempfile::tempdir().unwrap();
    let draining = crate::process::Keygate::start(
        crate::process::serve().current_dir(dir.path()).args(["--drain-delay-ms", "600000"]),
    )
    .unwrap();
    let health = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["health", "--server", &draining.grpc])
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    assert!(health().0);
    draining.terminate();
    crate::helpers::eventually("keygate health says NOT_SERVING", || async {
        let (ok, stderr) = health();
        !ok && stderr == format!("error: keygate at {} is NOT_SERVING\n", draining.grpc)
    })
    .await;
}
