//! The CAs a listener's client certificates must chain to, read from `--tls-client-ca`
//! (or `--admin-tls-client-ca`). rustls takes any certificate as a trust anchor, so a leaf
//! given by mistake would be accepted and every edge then refused without a word: each
//! certificate of the file must say it is a CA (basicConstraints CA:TRUE), or start-up
//! (and a reload) stops, naming the file.

use super::ClientCertificates;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

pub(super) fn client_roots(clients: &ClientCertificates) -> anyhow::Result<RootCertStore> {
    let file = || format!("{} {}", clients.flag, clients.ca.display());
    let certs = CertificateDer::pem_file_iter(&clients.ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{}: not a readable PEM certificate", file()))?;
    let mut roots = RootCertStore::empty();
    for (n, cert) in certs.into_iter().enumerate() {
        if let Some(subject) = not_a_ca(&cert) {
            anyhow::bail!(
                "{}: certificate {} ({subject}) is not a CA (no basicConstraints CA:TRUE); give the CA that \
                 signed the clients' certificates, not a client's own",
                file(),
                n + 1
            );
        }
        roots.add(cert).with_context(|| format!("{}: certificate {} is not a usable CA", file(), n + 1))?;
    }
    Ok(roots)
}

/// `Some(its subject)` when the certificate is not a CA (or cannot be read as one).
fn not_a_ca(cert: &CertificateDer<'_>) -> Option<String> {
    match super::der::outline(cert.as_ref()) {
        Ok(outline) if outline.ca => None,
        Ok(outline) => Some(format!("subject {}", outline.subject)),
        Err(_) => Some("unreadable: not a DER X.509 certificate".to_owned()),
    }
}
