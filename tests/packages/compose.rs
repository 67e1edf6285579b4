//! deploy/compose.yaml (not run here: no container runs in this sandbox): it parses, its
//! two keygate replicas share one Postgres and one Redis over TLS that keygate verifies,
//! and every file it mounts is one scripts/compose-secrets.sh makes, with certificates
//! that verify for the services' names.

use super::common::{enabled, root, run, yaml_documents};
use std::process::Command;

/// guards: the compose file's references (secrets, variables), the secrets script, and
/// TLS on both stores.
#[test]
fn the_compose_file_mounts_what_its_script_makes_and_speaks_tls_to_both_stores() {
    if !enabled("the_compose_file_mounts_what_its_script_makes_and_speaks_tls_to_both_stores") {
        return;
    }
    let compose = yaml_documents(&root().join("deploy/compose.yaml")).remove(0);
    let scratch = tempfile::tempdir().unwrap();
    let secrets_dir = scratch.path().join("compose-secrets");
    run(Command::new(root().join("scripts/compose-secrets.sh")).arg(&secrets_dir));

    let declared = compose["secrets"].as_object().unwrap();
    for (name, secret) in declared {
        let file = secret["file"].as_str().unwrap();
        let made = scratch.path().join(file.strip_prefix("./").unwrap());
        assert!(made.is_file(), "secret {name}: {file} is not made by scripts/compose-secrets.sh");
    }
    let services = compose["services"].as_object().unwrap();
    let replicas: Vec<_> = services.iter().filter(|(name, _)| name.starts_with("keygate")).collect();
    assert_eq!(replicas.len(), 2);
    for (name, service) in &replicas {
        let mounted: Vec<_> = service["secrets"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        for (variable, value) in service["environment"].as_object().unwrap() {
            let secret = value.as_str().unwrap().strip_prefix("/run/secrets/").unwrap();
            assert!(mounted.contains(&secret) && declared.contains_key(secret), "{name}: {variable} names {secret}");
        }
        assert_eq!(service["image"], replicas[0].1["image"]);
    }

    let read = |file: &str| std::fs::read_to_string(secrets_dir.join(file)).unwrap();
    let database = read("database-url");
    assert!(database.starts_with("postgres://keygate:") && database.contains("@postgres:5432/"), "{database}");
    assert!(database.contains("sslmode=verify-full") && database.contains("sslrootcert=/run/secrets/ca.pem"));
    assert!(read("redis-url").starts_with("rediss://") && read("redis-url").contains("@redis:6379"));
    for service in ["postgres", "redis"] {
        let pem = secrets_dir.join(format!("{service}.pem"));
        let said = run(Command::new("openssl")
            .args(["verify", "-verify_hostname", service, "-CAfile"])
            .arg(secrets_dir.join("ca.pem"))
            .arg(&pem));
        assert!(said.contains(": OK"), "{said}");
    }
    let entrypoint =
        |name: &str| services[name]["entrypoint"].as_array().unwrap().last().unwrap().as_str().unwrap().to_owned();
    let postgres = entrypoint("postgres");
    assert!(postgres.contains("-c ssl=on") && postgres.contains("hostssl all all all"), "{postgres}");
    assert!(!postgres.contains("\nhost "), "{postgres}");
    let redis = entrypoint("redis");
    assert!(redis.contains("--port 0 --tls-port 6379"), "{redis}");
}
