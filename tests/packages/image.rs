//! The container image: built with podman from this build's binary
//! (scripts/build-image.sh), its file system exported (`podman create` + `podman export`;
//! `podman run` is refused in this sandbox) and keygate started in it as the image's
//! user, in its working directory, with its environment: `unshare --root --wd --setuid
//! --setgid`, chroot(1) with the image's WORKDIR. Image and container are removed at
//! the end, whatever happens.

use super::common::{enabled, linked_libraries, root, run, serves};
use crate::process::Keygate;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The image and its container, removed when dropped.
struct Built {
    tag: String,
    container: String,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", &self.container]).output();
        let _ = Command::new("podman").args(["rmi", "--force", &self.tag]).output();
    }
}

/// Every file (not directory) under `dir`, relative, with `/` in front.
fn files(dir: &Path, under: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files(&path, under, found);
        } else {
            found.insert(format!("/{}", path.strip_prefix(under).unwrap().display()));
        }
    }
}

/// What runs it: `unshare` into `rootfs` as the image's user, in its WORKDIR.
fn in_image(rootfs: &Path, config: &serde_json::Value) -> Command {
    let user = config["User"].as_str().expect("a USER");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let mut command = Command::new("unshare");
    command.arg("--root").arg(rootfs);
    command.args(["--wd", config["WorkingDir"].as_str().unwrap(), "--setgid", gid, "--setuid", uid]);
    command.env_clear();
    for variable in config["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()) {
        let (name, value) = variable.split_once('=').unwrap();
        command.env(name, value);
    }
    command
}

/// guards: the Containerfile and build script (only the binary, its libraries, CA
/// certificates, passwd/group and the policy; a non-root USER; the HEALTHCHECK), and
/// that keygate serves from the image's own file system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_holds_only_keygate_and_serves_from_its_exported_file_system() {
    if !enabled("the_image_holds_only_keygate_and_serves_from_its_exported_file_system") {
        return;
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_keygate"));
    let id = format!("{}-{}", std::process::id(), keygate::domain::random_token(6).unwrap().to_lowercase());
    let built = Built { tag: format!("localhost/keygate-test:{id}"), container: format!("keygate-test-{id}") };
    run(Command::new(root().join("scripts/build-image.sh")).arg(binary).arg(&built.tag));

    let inspect: serde_json::Value =
        serde_json::from_str(&run(Command::new("podman").args(["image", "inspect", &built.tag]))).unwrap();
    let config = &inspect[0]["Config"];
    let user = config["User"].as_str().unwrap_or_default();
    assert!(!user.is_empty() && !user.starts_with("0:") && user != "root", "USER {user:?}");
    let check = inspect[0]["Healthcheck"]["Test"].as_array();
    let check: Vec<&str> = check.expect("a HEALTHCHECK").iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(check[..3], ["CMD", "/usr/bin/keygate", "health"], "{check:?}");

    run(Command::new("podman").args(["create", "--name", &built.container, &built.tag]));
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    run(Command::new("podman").args(["export", "--output"]).arg(&tar).arg(&built.container));
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    run(Command::new("tar")
        .args(["--extract", "--same-owner", "--numeric-owner", "--file"])
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs));

    let mut found = BTreeSet::new();
    files(&rootfs, &rootfs, &mut found);
    let mut expected: BTreeSet<String> = [
        "/usr/bin/keygate",
        "/etc/passwd",
        "/etc/group",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/keygate/policy.toml",
    ]
    .map(str::to_owned)
    .into();
    expected.extend(linked_libraries(binary));
    assert_eq!(
        found, expected,
        "the image holds exactly the binary, its libraries, CA certificates, passwd/group and the policy"
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("keygate:") && user.starts_with(l.split(':').nth(2).unwrap())),
        "{passwd}"
    );

    let mut serve = in_image(&rootfs, config);
    serve.args(
        config["Entrypoint"]
            .as_array()
            .unwrap()
            .iter()
            .chain(config["Cmd"].as_array().unwrap())
            .map(|v| v.as_str().unwrap()),
    );
    // Ports of its own; the image's own listen on 0.0.0.0.
    for listener in ["KEYGATE_LISTEN", "KEYGATE_HTTP_LISTEN", "KEYGATE_METRICS_LISTEN"] {
        serve.env(listener, "127.0.0.1:0");
    }
    let keygate =
        Keygate::start(&mut serve).unwrap_or_else(|said| panic!("keygate did not start in the image:\n{said}"));
    let workdir = config["WorkingDir"].as_str().unwrap().trim_start_matches('/');
    let admin_token = std::fs::read_to_string(rootfs.join(workdir).join("keygate-data/admin-token"))
        .expect("the first start made the admin token in the image's state directory");
    serves(&keygate.grpc, admin_token.trim()).await;

    // The HEALTHCHECK's own command, in the image, as its user, pointed at this keygate.
    let health = in_image(&rootfs, config).args(&check[1..]).env("KEYGATE_SERVER", &keygate.grpc).output().unwrap();
    let said = String::from_utf8_lossy(&health.stdout).into_owned() + &String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success() && said.trim() == "SERVING", "the HEALTHCHECK: {said}");
    drop(keygate);
    let health = in_image(&rootfs, config).args(&check[1..]).env("KEYGATE_SERVER", keygate_gone()).output().unwrap();
    assert!(!health.status.success(), "the HEALTHCHECK passes with no keygate");
    drop(built);
}

/// An address where nothing listens.
fn keygate_gone() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}
