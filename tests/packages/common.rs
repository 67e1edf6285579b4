//! What the package tests share: the gate, running commands, and asking a started keygate
//! for its health and a decision.

use keygate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use keygate_client::AdminToken;
use std::path::Path;
use std::process::Command;

/// Whether the package tests run (KEYGATE_TEST_PACKAGES); says so when they do not.
pub fn enabled(test: &str) -> bool {
    let on = std::env::var_os("KEYGATE_TEST_PACKAGES").is_some_and(|v| !v.is_empty());
    if !on {
        eprintln!("{test}: skipped (set KEYGATE_TEST_PACKAGES=1; .ci/run does)");
    }
    on
}

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command`; its stdout when it succeeds, else a panic with what it said.
pub fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout.into_owned()
}

/// Runs `command`, which must fail: what it said (stdout and stderr).
pub fn fails(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{command:?} succeeded:\n{said}");
    said
}

/// The shared libraries `binary` loads, as `ldd` lists them (the loader too), by path.
pub fn linked_libraries(binary: &Path) -> Vec<String> {
    let listed = run(Command::new("ldd").arg(binary));
    listed
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            match line.split_once(" => ") {
                Some((_, target)) => target.split_whitespace().next().filter(|p| p.starts_with('/')),
                None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
            }
        })
        .map(str::to_owned)
        .collect()
}

/// The started keygate at `grpc` (http://…) serves: its gRPC health says SERVING, and with
/// `admin_token` it makes a key that Authorize then allows.
pub async fn serves(grpc: &str, admin_token: &str) {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Channel::from_shared(grpc.to_owned()).unwrap().connect().await.unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("the health service answers")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let mut admin = AdminClient::with_interceptor(channel.clone(), AdminToken::new(admin_token).unwrap());
    let created = admin
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: "acct_package".into(),
            name: "package".into(),
            scopes: vec!["*".into()],
            ..Default::default()
        })
        .await
        .expect("the shipped admin token is accepted")
        .into_inner();
    let ask = |credential: &str| pb::AuthorizeRequest {
        credential: credential.into(),
        method: "GET".into(),
        path: "/api/v1/panel/applications".into(),
        ..Default::default()
    };
    let mut authorizer = AuthorizerClient::new(channel);
    let allowed = authorizer.authorize(ask(&created.secret)).await.unwrap().into_inner();
    assert!(allowed.allowed, "{allowed:?}");
    let denied = authorizer.authorize(ask("kg_nothing")).await.unwrap().into_inner();
    assert_eq!((denied.allowed, denied.code.as_str()), (false, "api_key_invalid"), "{denied:?}");
}

/// `keygate health --server grpc` with `binary`: its exit status and what it printed.
pub fn health_command(binary: &Path, grpc: &str) -> (bool, String) {
    let output = Command::new(binary).args(["health", "--server", grpc]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// Every document of a YAML file, as JSON (PyYAML, which kubernetes-validate brings).
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let script = "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)";
    let json = run(Command::new("python3").args(["-c", script]).arg(path));
    serde_json::from_str(&json).unwrap()
}
