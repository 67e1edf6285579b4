//! The Kubernetes manifests (deploy/kubernetes/): valid against Kubernetes' schemas
//! offline (kubernetes-validate, strict), and consistent with one another and with what
//! keygate reads.

use super::common::{fails, root, run, yaml_documents};
use std::process::Command;

fn validate() -> Command {
    let mut command = Command::new("kubernetes-validate");
    command.arg("--strict");
    command
}

/// guards: the manifests' schema validity, and that the check refuses a broken one.
#[test]
fn the_kubernetes_manifests_validate_and_a_broken_one_is_refused() {
    if !super::common::enabled("the_kubernetes_manifests_validate_and_a_broken_one_is_refused") {
        return;
    }
    let dir = root().join("deploy/kubernetes");
    let mut manifests: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    manifests.sort();
    let said = run(validate().args(&manifests));
    for core in ["deployment.yaml", "service.yaml", "pdb.yaml", "secret.example.yaml"] {
        assert!(said.contains(&format!("{core} passed")), "{core} not validated:\n{said}");
    }

    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for (what, from, to) in [
        ("a misspelt field", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),
        ("a wrong type", "replicas: 2", "replicas: two"),
    ] {
        assert!(deployment.contains(from), "{from}");
        let broken = scratch.path().join("deployment.yaml");
        std::fs::write(&broken, deployment.replace(from, to)).unwrap();
        let said = fails(validate().arg(&broken));
        assert!(said.contains("deployment.yaml"), "{what}: {said}");
    }
}

/// guards: what the schemas cannot see: probes on the gRPC port, non-root and a
/// read-only root, each secret file keygate is pointed at is a key of the Secret, 0440
/// with fsGroup and the group-readable flag, the Service and PDB select the pods.
#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_with_keygate() {
    if !super::common::enabled("the_kubernetes_manifests_agree_with_each_other_and_with_keygate") {
        return;
    }
    let dir = root().join("deploy/kubernetes");
    let one = |file: &str| yaml_documents(&dir.join(file)).remove(0);
    let (deployment, service, pdb, secret) =
        (one("deployment.yaml"), one("service.yaml"), one("pdb.yaml"), one("secret.example.yaml"));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    let grpc = container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], grpc["containerPort"], "{probe}");
    }

    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let volume = &pod["volumes"][0]["secret"];
    assert_eq!((volume["secretName"].as_str(), volume["defaultMode"].as_u64()), (Some("keygate"), Some(0o440)));
    let env = |name: &str| {
        container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone())
    };
    assert_eq!(env("KEYGATE_ALLOW_GROUP_READABLE_SECRET_FILES"), Some("true".into()));
    assert!(pod["securityContext"]["fsGroup"].is_u64());
    let keys = secret["stringData"].as_object().unwrap();
    for variable in
        container["env"].as_array().unwrap().iter().filter(|e| e["name"].as_str().unwrap().ends_with("_FILE"))
    {
        let path = variable["value"].as_str().unwrap();
        let key = path.strip_prefix(&format!("{mount}/")).unwrap_or_else(|| panic!("{path} is not under {mount}"));
        assert!(keys.contains_key(key), "{path}: the Secret has no {key}");
    }

    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["name"] == "metrics" && p["targetPort"] == "metrics"), "{ports:?}");
}
