//! Secrets from files (`--…-file`, `KEYGATE_…_FILE`), as systemd's `LoadCredential=` and
//! Kubernetes' Secret volumes hand them over: the `keygate` binary started with every
//! secret from a file serves, and its arguments, environment and logs hold none of them.

use crate::helpers::{ask, Db, TestDb};
use crate::process::{refused, serve, Keygate};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use keygate_client::AdminToken;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A secret in `dir` with `mode` and a trailing newline, as `echo secret > file` writes it.
fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// A `$CREDENTIALS_DIRECTORY` as systemd makes it: 0700, each credential 0400.
fn credentials_directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Every secret from a file: the database URL with a password, the Redis URL with a
/// password, the admin token and the digest key; half as flags, half as `KEYGATE_*_FILE`
/// pointing into `$CREDENTIALS_DIRECTORY` (what `%d/admin-token` expands to in a unit).
/// guards: the `--…-file` twins (without them keygate does not start), and that no
/// secret reaches /proc/PID/cmdline, /proc/PID/environ or a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_secret_from_a_file_serves_and_shows_in_no_argument_variable_or_log() {
    let marker = keygate::domain::random_token(16).unwrap();
    let (admin_token, digest_key) =
        (format!("adm-{marker}-0123456789"), format!("dk-{marker}-0123456789abcdefghijklmnop"));
    let db = match TestDb::new(Db::Postgres).await {
        Some(db) => db,
        None => TestDb::new(Db::Sqlite).await.unwrap(),
    };
    // Postgres (trust on this machine) and Redis (the default user, nopass) accept any
    // password: the URLs carry one so that it can be looked for.
    let (db_password, redis_password) = (format!("pgpw{marker}"), format!("rdpw{marker}"));
    let database_url = db.url.replacen("postgres://postgres@", &format!("postgres://postgres:{db_password}@"), 1);
    let redis = std::env::var("KEYGATE_TEST_REDIS_URL").ok();
    let redis_url =
        redis.as_ref().map(|url| url.replacen("redis://", &format!("redis://default:{redis_password}@"), 1));
    let prefix = crate::helpers::fresh_prefix();

    let dir = credentials_directory();
    let mut command = serve();
    command
        .env("CREDENTIALS_DIRECTORY", dir.path())
        .env("KEYGATE_ADMIN_TOKEN_FILE", secret_file(dir.path(), "admin-token", &admin_token, 0o400))
        .env("KEYGATE_DIGEST_KEY_FILE", secret_file(dir.path(), "digest-key", &digest_key, 0o400))
        .args(["--database-url-file", &arg(&secret_file(dir.path(), "database-url", &database_url, 0o400))])
        .args(["--rate-limit-key-prefix", &prefix])
        .env("RUST_LOG", "info,keygate=debug");
    if let Some(redis_url) = &redis_url {
        command.env("KEYGATE_RATE_LIMIT_STORE_FILE", secret_file(dir.path(), "redis-url", redis_url, 0o600));
    }
    let keygate = Keygate::start(&mut command).unwrap_or_else(|said| panic!("keygate did not start:\n{said}"));

    // It serves with those secrets: an admin call with the token, a decision with a key.
    let channel = tonic::transport::Channel::from_shared(keygate.grpc.clone()).unwrap().connect().await.unwrap();
    let mut admin = AdminClient::with_interceptor(channel.clone(), AdminToken::new(&admin_token).unwrap());
    let created = admin
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: "acct_files".into(),
            name: "k".into(),
            scopes: vec!["*".into()],
            ..Default::default()
        })
        .await
        .expect("the admin token from its file is accepted")
        .into_inner();
    let decision = AuthorizerClient::new(channel.clone()).authorize(ask(&created.secret)).await.unwrap().into_inner();
    assert!(decision.allowed, "{decision:?}");
    if let Some(redis) = &redis {
        // The decision's limits were counted in Redis, which the URL from its file reached.
        let mut conn = redis::Client::open(redis.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
        assert!(!keys.is_empty(), "nothing counted under {prefix} in Redis");
    }

    let proc = |what: &str| std::fs::read(format!("/proc/{}/{what}", keygate.pid())).unwrap();
    let (cmdline, environ) = (proc("cmdline"), proc("environ"));
    let log = keygate.log().join("\n");
    assert!(log.contains("keygate is serving"), "{log}");
    for secret in [&admin_token, &digest_key, &db_password, &redis_password, &marker] {
        let shown = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!shown(&cmdline), "a secret in /proc/PID/cmdline: {}", String::from_utf8_lossy(&cmdline));
        assert!(!shown(&environ), "a secret in /proc/PID/environ");
        assert!(!log.contains(secret.as_str()), "a secret in the log:\n{log}");
    }
    drop(db);
}

/// Each secret given both ways (value and file) is refused, the problem naming both
/// forms and not the secret. guards: the conflict check (without it the value wins
/// silently and keygate starts).
#[test]
fn a_secret_given_as_a_value_and_as_a_file_is_refused_naming_both() {
    let dir = credentials_directory();
    for (name, value) in [
        ("DATABASE_URL", "sqlite://nowhere-secretvalue.db"),
        ("RATE_LIMIT_STORE", "redis://default:secretvalue@127.0.0.1:6379"),
        ("ADMIN_TOKEN", "secretvalue-0123456789"),
        ("DIGEST_KEY", "secretvalue-0123456789abcdefghijklmnopqrstuv"),
    ] {
        let file = secret_file(dir.path(), name, value, 0o600);
        let said = refused(
            serve()
                .current_dir(dir.path())
                .env(format!("KEYGATE_{name}"), value)
                .env(format!("KEYGATE_{name}_FILE"), &file),
        );
        let flag = name.to_lowercase().replace('_', "-");
        assert!(said.contains(&format!("--{flag} / KEYGATE_{name} and --{flag}-file / KEYGATE_{name}_FILE")), "{said}");
        assert!(!said.contains("secretvalue"), "{said}");
    }
}

/// A secret file that others (or, without --allow-group-readable-secret-files, its
/// group) may read is refused, naming the file and its mode. guards: the mode check
/// (without it keygate starts on a world-readable password).
#[test]
fn a_secret_file_others_may_read_is_refused_naming_it_and_its_mode() {
    let dir = credentials_directory();
    let database = format!("sqlite://{}", dir.path().join("keygate.db").display());
    for (variable, mode) in [
        ("KEYGATE_DATABASE_URL_FILE", 0o644),
        ("KEYGATE_ADMIN_TOKEN_FILE", 0o604),
        ("KEYGATE_DIGEST_KEY_FILE", 0o640),
        ("KEYGATE_RATE_LIMIT_STORE_FILE", 0o620),
    ] {
        let secret =
            if variable.contains("URL") { database.clone() } else { "secretvalue-0123456789abcdefghijklmnopq".into() };
        let secret = if variable.contains("STORE") { "redis://127.0.0.1:6379".into() } else { secret };
        let file = secret_file(dir.path(), variable, &secret, mode);
        let said = refused(serve().current_dir(dir.path()).env(variable, &file));
        assert!(said.contains(&format!("{}: mode {mode:04o}", file.display())), "{said}");
        assert!(!said.contains("secretvalue"), "{said}");
    }
    // Group-readable files (Kubernetes' fsGroup) start when the operator says so.
    let group = secret_file(dir.path(), "group-url", &database, 0o640);
    let started = Keygate::start(
        serve()
            .current_dir(dir.path())
            .env("KEYGATE_DATABASE_URL_FILE", &group)
            .env("KEYGATE_ADMIN_TOKEN_FILE", secret_file(dir.path(), "token", "secretvalue-0123456789", 0o440))
            .env("KEYGATE_DIGEST_KEY", "secretvalue-0123456789abcdefghijklmnopqrstuv")
            .arg("--allow-group-readable-secret-files"),
    );
    assert!(started.is_ok(), "{}", started.err().unwrap_or_default());
}

/// A URL file that is missing or empty stops start-up, naming the file. guards: an
/// empty file taken as the default database.
#[test]
fn a_missing_or_empty_secret_file_is_refused_naming_it() {
    let dir = credentials_directory();
    let missing = dir.path().join("nowhere");
    let said = refused(serve().current_dir(dir.path()).args(["--database-url-file", &arg(&missing)]));
    assert!(said.contains(&format!("the database URL file {}: cannot be read", missing.display())), "{said}");
    let empty = secret_file(dir.path(), "empty", "", 0o600);
    let said = refused(serve().current_dir(dir.path()).env("KEYGATE_RATE_LIMIT_STORE_FILE", &empty));
    assert!(said.contains(&format!("the Redis URL file {}: is empty", empty.display())), "{said}");
}
