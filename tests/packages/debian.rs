//! The Debian package: built by cargo-deb from this build's binary, installed with dpkg,
//! its unit accepted by systemd-analyze, and /usr/bin/keygate started the way the unit
//! starts it (no systemd runs here): as the keygate user, with the unit's environment
//! and environment file, its credentials copied into a `$CREDENTIALS_DIRECTORY` (0400,
//! the user's) and its state directory made. Purged at the end, whatever happens.

use super::common::{enabled, health_command, root, run, serves};
use crate::process::Keygate;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = "/usr/lib/systemd/system/keygate.service";

/// The package, installed for one test: purged when dropped, and the keygate user removed
/// when the test made it.
struct Installed {
    made_user: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "keygate"]).output();
        if self.made_user {
            let _ = Command::new("userdel").arg("keygate").output();
            let _ = Command::new("groupdel").arg("keygate").output();
        }
    }
}

/// The .deb of the binary this test build made (`cargo deb --no-build`), in `out`.
fn build_deb(out: &Path) -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_keygate"));
    let profile = match binary.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => "release",
    };
    run(Command::new("cargo")
        .current_dir(root())
        .args(["deb", "--no-build", "--profile", profile, "--fast", "--quiet", "--output"])
        .arg(out));
    let mut debs = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path());
    debs.find(|p| p.extension().is_some_and(|e| e == "deb")).expect("cargo deb made a .deb")
}

/// The `[Service]` settings of a unit, in order (a key may repeat).
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect("key=value");
            settings.push((key.to_owned(), value.to_owned()));
        }
    }
    settings
}

fn id(flag: &str, user: &str) -> u32 {
    run(Command::new("id").args([flag, user])).trim().parse().unwrap()
}

/// `/usr/bin/keygate serve` as the unit would run it, on a port of its own; the returned
/// directory is its `$CREDENTIALS_DIRECTORY`.
fn start_as_the_unit_would(unit: &str) -> (Keygate, tempfile::TempDir) {
    let settings = service_settings(unit);
    let one = |key: &str| settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let all = |key: &str| settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let user = one("User").expect("User=");
    let (uid, gid) = (id("-u", &user), id("-g", &user));

    let credentials = tempfile::tempdir().unwrap();
    for credential in all("LoadCredential") {
        let (name, source) = credential.split_once(':').expect("LoadCredential=ID:PATH");
        let copy = credentials.path().join(name);
        std::fs::copy(source, &copy).unwrap_or_else(|e| panic!("LoadCredential={credential}: {e}"));
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&copy, Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(credentials.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    std::os::unix::fs::chown(credentials.path(), Some(uid), Some(gid)).unwrap();

    let state = Path::new("/var/lib").join(one("StateDirectory").expect("StateDirectory="));
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    let mode = u32::from_str_radix(&one("StateDirectoryMode").unwrap_or("0755".into()), 8).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();

    let mut command = Command::new("sh");
    let umask = one("UMask").unwrap_or("0022".into());
    command
        .arg("-c")
        .arg(format!(
            "umask {umask} && exec setpriv --reuid={uid} --regid={gid} --init-groups --no-new-privs -- \"$@\""
        ))
        .arg("sh")
        .args(one("ExecStart").expect("ExecStart=").split_whitespace())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .current_dir(one("WorkingDirectory").expect("WorkingDirectory="));
    for variable in all("Environment") {
        let expanded = variable.replace("%d", &credentials.path().display().to_string());
        let (name, value) = expanded.split_once('=').unwrap();
        command.env(name, value);
    }
    for file in all("EnvironmentFile") {
        for line in std::fs::read_to_string(&file).unwrap().lines().map(str::trim) {
            if let Some((name, value)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                command.env(name, value);
            }
        }
    }
    // A port of its own, not the shipped 50051.
    command.env("KEYGATE_LISTEN", "127.0.0.1:0");
    let keygate =
        Keygate::start(&mut command).unwrap_or_else(|said| panic!("the installed keygate did not start:\n{said}"));
    (keygate, credentials)
}

/// guards: the package's contents and maintainer scripts (user, credentials), the unit
/// (systemd-analyze verify: any warning fails; security: its exposure score), and that
/// the shipped settings serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_and_serves_as_its_unit_runs_it() {
    if !enabled("the_debian_package_installs_and_serves_as_its_unit_runs_it") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let made_user = Command::new("id").arg("keygate").output().is_ok_and(|o| !o.status.success());
    let installed = Installed { made_user };
    run(Command::new("dpkg").arg("--install").arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"));

    let verify = Command::new("systemd-analyze").args(["verify", UNIT]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify {UNIT}:\n{said}");
    // The hardening, scored offline (0 to 100; 14 is systemd's "1.4 OK"): a lost line fails.
    run(Command::new("systemd-analyze").args(["security", "--offline=true", "--threshold=20", UNIT]));
    let conffiles = run(Command::new("dpkg-query").args(["--showformat=${Conffiles}", "--show", "keygate"]));
    for conffile in ["/etc/keygate/keygate.env", "/etc/keygate/policy.toml"] {
        assert!(conffiles.contains(conffile), "{conffile} is no conffile:\n{conffiles}");
    }
    for credential in ["admin-token", "digest-key", "database-url"] {
        let path = Path::new("/etc/keygate/credentials").join(credential);
        let metadata = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{}", path.display());
    }

    let unit = std::fs::read_to_string(UNIT).unwrap();
    let (keygate, _credentials) = start_as_the_unit_would(&unit);
    let status = std::fs::read_to_string(format!("/proc/{}/status", keygate.pid())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    assert_eq!(uid, id("-u", "keygate").to_string(), "keygate runs as the keygate user");
    let admin_token = std::fs::read_to_string("/etc/keygate/credentials/admin-token").unwrap();
    serves(&keygate.grpc, admin_token.trim()).await;
    let (ok, said) = health_command(Path::new("/usr/bin/keygate"), &keygate.grpc);
    assert!(ok && said.trim() == "SERVING", "keygate health: {said}");
    let database = std::fs::metadata("/var/lib/keygate/keygate.db").expect("the database in /var/lib/keygate");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&database), id("-u", "keygate"));
    let grpc = keygate.grpc.clone();
    drop(keygate);
    let (ok, said) = health_command(Path::new("/usr/bin/keygate"), &grpc);
    assert!(!ok && said.contains("cannot reach keygate"), "keygate health of a stopped keygate: {said}");

    drop(installed);
    for gone in ["/usr/bin/keygate", "/etc/keygate", "/var/lib/keygate", UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} is left after dpkg --purge");
    }
}
