//! What `keygate serve` tells an operator (issue 30's output and configuration items): the
//! real binary, its stderr captured as a file or a pipe captures it, and its help text.

use crate::helpers::{eventually, ADMIN_TOKEN, DIGEST_KEY};
use crate::tls::{Files, Issued, TestCa};
use rcgen::ExtendedKeyUsagePurpose;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::rustls;

/// `keygate serve ARGS` in a directory of its own, on a free port, stderr piped (the
/// default filter: no `RUST_LOG`), every line kept.
struct Served {
    child: Child,
    address: String,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["serve", "--listen", &address])
            .args(args)
            .current_dir(dir.path())
            .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KEYGATE_DIGEST_KEY", DIGEST_KEY)
            .env_remove("RUST_LOG")
            .env_remove("KEYGATE_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the keygate binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for output in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(output).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, address, lines, _dir: dir }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    async fn logged(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        eventually(what, || async { self.lines.lock().unwrap().iter().any(|l| wanted(l)) }).await
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 30 item 8: a log captured in a pipe (as in a file, or journald) holds no ANSI
/// escape codes, in the default format and in `text`; `json` stays JSON. guards: before
/// the fix every pretty line began with `\x1b[2m`, and `--log-format text` was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_log_has_no_colour_codes() {
    for args in [&[][..], &["--log-format", "text"], &["--log-format", "pretty"]] {
        let served = Served::start(args);
        served.logged("keygate is serving", |l| l.contains("keygate is serving")).await;
        let log = served.log();
        assert!(!log.contains('\x1b'), "{args:?}: colour codes in a captured log:\n{log:?}");
        assert!(log.contains(" INFO "), "{args:?}: plain text lines:\n{log}");
    }
    let served = Served::start(&["--log-format", "json"]);
    served.logged("keygate is serving", |l| l.contains("keygate is serving")).await;
    for line in served.lines.lock().unwrap().iter() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

/// `keygate serve --help`, as one string.
fn serve_help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keygate")).args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// A flag's paragraph of `serve --help`, up to the next flag.
fn paragraph<'a>(help: &'a str, flag: &str) -> &'a str {
    let start = help.find(&format!("      {flag} ")).unwrap_or_else(|| panic!("{flag} in --help"));
    let rest = &help[start + flag.len() + 6..];
    &rest[..rest.find("\n      --").unwrap_or(rest.len())]
}

/// Issue 30 item 10: `--http-listen` and `--metrics-listen` say, where an operator reads
/// them, that they serve https under `--tls-cert` (and what `--tls-client-ca` does there).
/// guards: before the fix both said `http://ADDRESS` and nothing more.
#[test]
fn the_help_says_which_listeners_serve_https() {
    let help = serve_help();
    let http = paragraph(&help, "--http-listen");
    assert!(http.contains("https://") && http.contains("--tls-cert"), "{http}");
    assert!(http.contains("--tls-client-ca") && http.contains("client certificates"), "{http}");
    let metrics = paragraph(&help, "--metrics-listen");
    assert!(metrics.contains("https://") && metrics.contains("--tls-cert"), "{metrics}");
    assert!(metrics.contains("no client certificate"), "{metrics}");
}

/// Issue 30 item 14: `--tls-client-names` (and the admin one) are read at start-up only,
/// unlike the certificate files; the help and docs/configuration.md say so beside the
/// flag. guards: before the fix only docs/deployment.md's rotation section said it.
#[test]
fn the_client_names_say_they_need_a_restart() {
    let help = serve_help();
    for flag in ["--tls-client-names", "--admin-tls-client-names"] {
        let said = paragraph(&help, flag);
        assert!(said.contains("needs a restart"), "{flag}: {said}");
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    for flag in ["`--tls-client-names`", "`--admin-tls-client-names`"] {
        let row = docs.lines().find(|l| l.starts_with(&format!("| {flag} "))).unwrap();
        assert!(row.contains("start-up only"), "{row}");
    }
}

/// A TLS handshake with keygate from the loopback address `from`, trusting `ca`,
/// presenting `identity`, then one read: Err when keygate refused the client.
async fn connect_from(from: &str, address: &str, ca: &TestCa, identity: Option<&Issued>) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = crate::tls::client_config(ca, identity);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(address.parse().unwrap()).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    // TLS 1.3: the server judges the client's certificate after the client's Finished.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match tls.read(&mut byte).await {
        Ok(0) | Err(_) => Err("closed".into()),
        Ok(_) => Ok(()),
    }
}

/// The `TLS client refused` warnings that name `from`.
fn refusals(served: &Served, from: &str) -> Vec<String> {
    let peer = format!("peer={from}:");
    served
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("TLS client refused") && l.contains(&peer))
        .cloned()
        .collect()
}

/// Issue 30 item 11: a client refused at the handshake (no client certificate) and one
/// whose certificate names no allowed client are each logged at `warn` at the default
/// level, with the peer and the reason, once per source however often it retries.
/// guards: before the fix the handshake failure was logged at debug only (nothing at the
/// default level), and the refused name was logged on every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_are_warned_about_once_per_source() {
    let (ca, edges, files) = (TestCa::new("server CA"), TestCa::new("edge CA"), Files::new());
    let server = files.server_certificate(&ca);
    let edge_ca = files.write("edges.pem", &edges.pem);
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let (cert, key, client_ca) = (path(&server.cert), path(&server.key), path(&edge_ca));
    let served = Served::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &client_ca,
        "--tls-client-names",
        "edge-1.example",
    ]);
    served.logged("keygate is serving", |l| l.contains("keygate is serving")).await;
    let allowed = edges.issue(&["edge-1.example"], ExtendedKeyUsagePurpose::ClientAuth);
    connect_from("127.0.0.1", &served.address, &ca, Some(&allowed)).await.expect("an allowed edge is served");

    let stranger = edges.issue(&["edge-9.example"], ExtendedKeyUsagePurpose::ClientAuth);
    for _ in 0..3 {
        assert!(connect_from("127.0.0.2", &served.address, &ca, None).await.is_err(), "no certificate");
        assert!(connect_from("127.0.0.3", &served.address, &ca, Some(&stranger)).await.is_err(), "a wrong name");
    }
    // A later refusal from a third source: once it is logged, the others were too.
    assert!(connect_from("127.0.0.4", &served.address, &ca, None).await.is_err());
    served
        .logged("the third source's refusal", |l| l.contains("TLS client refused") && l.contains("peer=127.0.0.4:"))
        .await;

    let log = served.log();
    let no_certificate = refusals(&served, "127.0.0.2");
    assert_eq!(no_certificate.len(), 1, "one line for three refusals:\n{log}");
    assert!(no_certificate[0].contains(" WARN ") && no_certificate[0].contains("TLS handshake failed"), "{log}");
    let wrong_name = refusals(&served, "127.0.0.3");
    assert_eq!(wrong_name.len(), 1, "one line for three refusals:\n{log}");
    assert!(wrong_name[0].contains(" WARN ") && wrong_name[0].contains("names no allowed client"), "{log}");
    assert!(refusals(&served, "127.0.0.1").is_empty(), "the allowed edge is not refused:\n{log}");
}

/// `keygate serve ARGS` until it exits (a start-up that goes on is killed after 30 s):
/// whether it succeeded, and everything it printed.
fn serve_until_exit(args: &[&str]) -> (bool, String) {
    let served = Served::start(args);
    let mut child = served;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(100));
    (status.is_some_and(|s| s.success()), child.log())
}

/// Issue 30 item 12: a leaf certificate given as `--tls-client-ca` stops start-up with an
/// error naming the flag and the file (so does a file whose second certificate is a leaf).
/// guards: before the fix keygate started, and every edge was then refused.
#[test]
fn a_leaf_certificate_as_the_client_ca_stops_start_up() {
    let (ca, files) = (TestCa::new("server CA"), Files::new());
    let server = files.server_certificate(&ca);
    let edge = ca.client("edge-1.example");
    let leaf = files.write("edge-as-ca.pem", &edge.cert);
    let mixed = files.write("ca-and-leaf.pem", &format!("{}{}", ca.pem, edge.cert));
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let (cert, key) = (path(&server.cert), path(&server.key));
    for (file, which) in [(path(&leaf), "certificate 1"), (path(&mixed), "certificate 2")] {
        let (ok, said) = serve_until_exit(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &file]);
        assert!(!ok, "started with a leaf as the client CA:\n{said}");
        assert!(said.contains(&format!("--tls-client-ca {file}")), "names the file:\n{said}");
        assert!(said.contains(which) && said.contains("is not a CA"), "{said}");
    }
}
