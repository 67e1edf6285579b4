//! The operator console in a real browser: Debian's Chromium driven through ChromeDriver
//! (WebDriver, the fantoccini crate), against the real server, with axe-core's
//! accessibility check on every page. Runs when KEYGATE_TEST_BROWSER is set (.ci/run sets
//! it and installs chromium, chromium-driver and axe-core); says so and passes otherwise.

use crate::console::{admin_token, with_console};
use crate::helpers::TestApp;
use fantoccini::{Client, ClientBuilder, Locator};
use keygate::grpc::proto as pb;
use std::path::PathBuf;
use std::time::Duration;

/// A ChromeDriver of the test's own, on a free port, and its headless Chromium.
struct Browser {
    driver: std::process::Child,
    client: Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn enabled(test: &str) -> bool {
    let on = std::env::var_os("KEYGATE_TEST_BROWSER").is_some_and(|v| !v.is_empty());
    if !on {
        eprintln!(
            "{test}: skipped (set KEYGATE_TEST_BROWSER=1 with chromium and chromium-driver installed; .ci/run does)"
        );
    }
    on
}

/// axe-core's script: KEYGATE_TEST_AXE, or where .ci/run puts it.
fn axe_source() -> String {
    let path = std::env::var_os("KEYGATE_TEST_AXE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-fixtures/axe-core/package/axe.min.js")
    });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("axe-core's axe.min.js at {} ({e}): .ci/run fetches it (npm pack axe-core)", path.display())
    })
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let program = std::env::var("KEYGATE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = std::process::Command::new(&program)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}): install chromium-driver"));
        let mut caps = serde_json::Map::new();
        let mut chrome = serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"]
        });
        if let Ok(binary) = std::env::var("KEYGATE_CHROMIUM") {
            chrome["binary"] = binary.into();
        }
        caps.insert("goog:chromeOptions".into(), chrome);
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        // ChromeDriver takes a moment to listen: retried a few times.
        for _ in 0..50 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => return Self { driver, client },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("ChromeDriver on {url} did not start a browser: {last:?}");
    }
}

/// axe-core on the page now shown: no serious or critical violation.
async fn accessible(c: &Client, axe: &str, page: &str) {
    c.execute(axe, vec![]).await.expect("axe-core loads");
    let found = c
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             axe.run(document, { resultTypes: ['violations'] }).then(r => done(r.violations\
               .filter(v => v.impact === 'serious' || v.impact === 'critical')\
               .map(v => v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))\
             .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    assert_eq!(found, serde_json::json!([]), "{page}: serious or critical accessibility violations");
}

async fn text(c: &Client, css: &str) -> String {
    c.wait().for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

async fn fill(c: &Client, css: &str, value: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).send_keys(value).await.unwrap();
}

/// Clicks a form's button and waits until the next page replaced this one.
async fn click(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    for _ in 0..200 {
        if old.text().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.wait().for_element(Locator::Css("body")).await.unwrap();
}

async fn sign_in(c: &Client, base: &str, token: &str, axe: &str) {
    c.goto(&format!("{base}/sign-in")).await.unwrap();
    accessible(c, axe, "sign-in").await;
    fill(c, "#token", token).await;
    click(c, "form[action='/sign-in'] button").await;
}

/// An HTTP status from the page, of a POST the page's own script could make (a forgery).
async fn post_from_page(c: &Client, path: &str, with_csrf: bool) -> u64 {
    let status = c
        .execute_async(
            "const [path, withCsrf, done] = arguments;\
             const body = new URLSearchParams({ reason: 'forged', overlap_seconds: '0' });\
             const field = document.querySelector('input[name=csrf]');\
             if (withCsrf && field) body.set('csrf', field.value);\
             fetch(path, { method: 'POST', body, redirect: 'manual' }).then(r => done(r.status)).catch(e => done(String(e)));",
            vec![path.into(), with_csrf.into()],
        )
        .await
        .unwrap();
    status.as_u64().unwrap_or_else(|| panic!("{path}: {status}"))
}

/// `n` Authorize calls over gRPC: whether each was allowed, and its code.
async fn authorize_n(app: &mut TestApp, secret: &str, method: &str, n: usize) -> Vec<(bool, String)> {
    let mut answers = Vec::new();
    for _ in 0..n {
        let r = app.authorize(secret, method, "/api/v1/panel/applications").await;
        answers.push((r.allowed, r.code));
    }
    answers
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    if !enabled("the_console_in_a_real_browser") {
        return;
    }
    let axe = axe_source();
    let mut app = with_console(|_| {}).await;
    let base = app.console_url.clone().unwrap();
    let token = admin_token(&mut app, "console-operator", "admin", "").await;
    let browser = Browser::start().await;
    let c = &browser.client;

    sign_in(c, &base, &token, &axe).await;
    assert_eq!(text(c, "#who").await, "token:console-operator");
    c.goto(&format!("{base}/accounts?account=acct_web")).await.unwrap();
    accessible(c, &axe, "account").await;
    fill(c, "#app-name", "storefront").await;
    click(c, "form[action$='/applications'] button").await;
    assert!(c.source().await.unwrap().contains("storefront"), "the application is listed");

    // A key: its secret shown once, with a copy button, and gone after a reload.
    c.goto(&format!("{base}/accounts/acct_web/keys")).await.unwrap();
    accessible(c, &axe, "keys").await;
    fill(c, "#key-name", "checkout").await;
    fill(c, "#key-scopes", "applications:read").await;
    click(c, "form[method=post][action$='/keys'] button").await;
    let secret = text(c, "#secret").await;
    assert!(secret.len() > 20, "{secret}");
    c.find(Locator::Css("button.copy[data-copy=secret]")).await.expect("a copy button");
    let key_id = text(c, "#key-id").await;
    accessible(c, &axe, "key with its secret").await;
    c.refresh().await.unwrap();
    assert!(!c.source().await.unwrap().contains(&secret), "the secret is gone after a reload");

    // 20 allowed and 10 refused (a scope the key lacks), in the chart's current minute.
    let allowed = authorize_n(&mut app, &secret, "GET", 20).await;
    let refused = authorize_n(&mut app, &secret, "POST", 10).await;
    assert!(allowed.iter().all(|(ok, _)| *ok), "{allowed:?}");
    assert!(refused.iter().all(|(ok, code)| !ok && code == "insufficient_scope"), "{refused:?}");
    c.refresh().await.unwrap();
    assert_eq!(text(c, "#usage-totals tr[data-outcome='allowed'] td.n").await, "20");
    let denied = text(c, "#usage-totals tr[data-outcome^='insufficient_scope'] td.n").await;
    assert_eq!(denied, "10");
    let title = text(c, "#chart-title").await;
    assert!(title.contains("20 allowed, 10 denied"), "{title}");
    accessible(c, &axe, "key usage").await;
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
    c.execute("document.querySelector('section[aria-labelledby=usage-h]').scrollIntoView();", vec![]).await.unwrap();
    let usage = c.find(Locator::Css("section[aria-labelledby=usage-h]")).await.unwrap();
    std::fs::write(docs.join("console-usage.png"), usage.screenshot().await.unwrap()).unwrap();
    c.goto(&format!("{base}/keys/{key_id}?range=day")).await.unwrap();
    assert_eq!(text(c, "#usage-totals tr[data-outcome='allowed'] td.n").await, "20", "by hour");
    // A few more keys, so that the key list's screenshot shows what a list shows.
    for (name, owner) in [("billing-service", "team-billing"), ("mobile-app", "team-mobile"), ("nightly-export", "")] {
        let fields = pb::CreateApiKeyRequest { name: name.into(), owner_id: owner.into(), ..Default::default() };
        let (made, _) = app.key_with("acct_web", fields).await;
        if name == "nightly-export" {
            let revoke = pb::RevokeApiKeyRequest { id: made.id, reason: "replaced".into() };
            app.admin.revoke_api_key(revoke).await.unwrap();
        }
    }
    c.goto(&format!("{base}/accounts/acct_web/keys")).await.unwrap();
    let list = c.find(Locator::Css("main")).await.unwrap();
    std::fs::write(docs.join("console-keys.png"), list.screenshot().await.unwrap()).unwrap();

    // The session cookie as the browser holds it.
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|k| k.name() == "kg_console").expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    let inline: u64 = c
        .execute("return document.querySelectorAll('script:not([src]), [style], [onclick]').length;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert_eq!(inline, 0, "no inline script or style for the CSP to allow");

    // Revoked in the console: the next Authorize is refused as revoked.
    c.goto(&format!("{base}/keys/{key_id}")).await.unwrap();
    fill(c, "#reason", "leaked in a demo").await;
    click(c, "#revoke").await;
    assert_eq!(text(c, "#key-status").await, "revoked");
    assert_eq!(app.authorize(&secret, "GET", "/api/v1/panel/applications").await.code, "api_key_revoked");

    // The audit trail names the console user's token for both changes.
    c.goto(&format!("{base}/accounts/acct_web/audit?search={key_id}")).await.unwrap();
    accessible(c, &axe, "audit").await;
    let rows = c.find_all(Locator::Css("#audit tbody tr")).await.unwrap();
    let mut seen = Vec::new();
    for row in rows {
        seen.push(row.text().await.unwrap());
    }
    for action in ["api_key.create", "api_key.revoke"] {
        assert!(
            seen.iter().any(|r| r.contains(action) && r.contains("token:console-operator")),
            "{action} by token:console-operator in {seen:?}"
        );
    }
    // A POST without the CSRF token is refused, from the page itself.
    assert_eq!(post_from_page(c, &format!("/keys/{key_id}/disable"), false).await, 403);

    // read_only: no write control on any page, and its forged POST is 403.
    let (other, _) = app.create_key("acct_web", &["applications:read"], &[]).await;
    click(c, "form[action='/sign-out'] button").await;
    let reader = admin_token(&mut app, "console-reader", "read_only", "").await;
    sign_in(c, &base, &reader, &axe).await;
    for path in ["/accounts/acct_web".to_owned(), "/accounts/acct_web/keys".to_owned(), format!("/keys/{}", other.id)] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let writes = c
            .find_all(Locator::Css(".write, form[method=post][action^='/keys'], form[action$='/keys'][method=post]"))
            .await
            .unwrap();
        assert!(writes.is_empty(), "{path}: {} write controls shown to read_only", writes.len());
        accessible(c, &axe, &path).await;
    }
    assert_eq!(post_from_page(c, &format!("/keys/{}/revoke", other.id), true).await, 403);
    let still = app.admin.get_api_key(pb::GetApiKeyRequest { id: other.id.clone() }).await.unwrap().into_inner();
    assert_eq!(still.status, pb::ApiKeyStatus::Active as i32);
    browser.client.clone().close().await.unwrap();
}
