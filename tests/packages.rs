//! The packages people install, built and tried as an operator would: the Debian package
//! (built with cargo-deb from this build's binary, installed with dpkg, its unit checked by
//! systemd-analyze, the binary started the way the unit starts it), the container image
//! (built with podman, its file system exported and keygate started in it as its user),
//! the Kubernetes manifests (kubernetes-validate) and the compose file.
//!
//! They install and remove packages and users on this machine, as root: skipped unless
//! KEYGATE_TEST_PACKAGES is set (.ci/run sets it, and installs cargo-deb, podman and
//! kubernetes-validate).

mod packages {
    pub mod common;
    mod compose;
    mod debian;
    mod image;
    mod kubernetes;
}

/// `keygate serve` in a process of its own, its addresses read from its JSON log.
#[path = "api/process.rs"]
#[allow(dead_code)]
mod process;
