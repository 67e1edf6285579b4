//! TLS and mTLS to keygate: an `https://` address, the CA that signed keygate's
//! certificate (or the system's roots), and this client's own certificate for mTLS.

use crate::ClientError;
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How to reach keygate over TLS. Empty: the system's roots, no client certificate.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Trust this CA (PEM) for keygate's certificate, instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// mTLS: present this certificate (PEM chain) and its key (PEM).
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name keygate's certificate must carry, when it is not the address' host.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// From files, as the CLI's `--ca`, `--cert` and `--key` name them (any may be absent;
    /// a certificate needs its key).
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, ClientError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| ClientError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
        };
        let mut tls = ClientTls::default();
        if let Some(ca) = ca {
            tls = tls.ca_pem(read(ca, "CA certificate")?);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity_pem(read(cert, "client certificate")?, read(key, "client key")?);
            }
            (None, None) => {}
            _ => return Err(ClientError::Tls("a client certificate needs its key, and a key its certificate".into())),
        }
        Ok(tls)
    }

    fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.identity.is_none() && self.domain.is_none()
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// An endpoint for `address`: TLS when it is `https://` (with `tls`, or the system's
/// roots), plaintext when it is `http://`. TLS settings with an `http://` address are an
/// error rather than a silent plaintext connection.
pub fn endpoint(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::from_shared(address.to_owned()).map_err(|e| ClientError::Address(e.to_string()))?;
    let https = endpoint.uri().scheme_str() == Some("https");
    match (https, tls) {
        (true, tls) => {
            let config = tls.cloned().unwrap_or_default().config();
            endpoint.tls_config(config).map_err(|e| ClientError::Tls(e.to_string()))
        }
        (false, Some(tls)) if !tls.is_empty() => Err(ClientError::Tls(format!(
            "TLS settings (a CA or a client certificate) were given but {address} is not https://"
        ))),
        (false, _) => Ok(endpoint),
    }
}
