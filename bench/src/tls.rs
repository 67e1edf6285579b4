//! `keygate-bench certs DIR` and `load --target https://… --tls DIR`: TLS as a deployment
//! runs it (mTLS: the edges present certificates), measured against a floor that speaks
//! the same TLS, through keygate's own listener code, in a process of its own.
//!
//! DIR holds a test CA (`ca.pem`), a server certificate for localhost and 127.0.0.1
//! (`server.pem`, `server.key`) and a client certificate (`client.pem`, `client.key`).

use keygate::tls::{CertificateFiles, ClientCertificates, ListenerTls, Protocol};
use keygate_client::ClientTls;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::path::Path;
use std::sync::Arc;

/// Writes a test CA, a server and a client certificate into `dir`.
pub fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "keygate-bench test CA");
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for (stem, names, usage) in [
        ("server", vec!["localhost".to_owned(), "127.0.0.1".to_owned()], ExtendedKeyUsagePurpose::ServerAuth),
        ("client", vec!["edge.bench".to_owned()], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        std::fs::write(dir.join(format!("{stem}.pem")), params.signed_by(&key, &issuer)?.pem())?;
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// The edge's side: trust the CA, present the client certificate.
pub fn client(dir: &Path) -> anyhow::Result<ClientTls> {
    let file = |name: &str| dir.join(name);
    Ok(ClientTls::from_files(Some(&file("ca.pem")), Some(&file("client.pem")), Some(&file("client.key")))?)
}

/// The server's side, as `keygate serve --tls-cert DIR/server.pem --tls-key DIR/server.key
/// --tls-client-ca DIR/ca.pem` loads it.
pub fn server(dir: &Path) -> anyhow::Result<Arc<ListenerTls>> {
    let files = CertificateFiles { cert: dir.join("server.pem"), key: dir.join("server.key") };
    let clients = ClientCertificates { ca: dir.join("ca.pem"), names: vec![], flag: "--tls-client-ca" };
    ListenerTls::load("floor", files, Some(clients), Protocol::Grpc)
}
