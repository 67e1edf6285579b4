//! The TLS flags, and the [`TlsSettings`] they come to: checked together, each problem
//! named by its flag.

use crate::tls::{CertificateFiles, ClientCertificates};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// TLS on every listener: the server's certificate chain (PEM), with --tls-key. Both
    /// files are read again on SIGHUP and when they change.
    #[arg(long, env = "KEYGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KEYGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// mTLS on the decision listeners (--listen, --http-listen): a client certificate that
    /// chains to this CA (PEM) is required.
    #[arg(long, env = "KEYGATE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: the client certificate must also name one of these (a DNS or
    /// IP subject alternative name), comma-separated. Read at start-up only: a change needs
    /// a restart (SIGHUP and the file watch reload the certificate files, not this list).
    #[arg(long, env = "KEYGATE_TLS_CLIENT_NAMES", value_delimiter = ',')]
    pub tls_client_names: Vec<String>,
    /// mTLS on the admin listener (--admin-listen): a client certificate that chains to
    /// this CA (PEM) is required, besides the admin token.
    #[arg(long, env = "KEYGATE_ADMIN_TLS_CLIENT_CA")]
    pub admin_tls_client_ca: Option<PathBuf>,
    /// With --admin-tls-client-ca: the names (SAN) an admin client certificate may carry.
    /// Read at start-up only, like --tls-client-names: a change needs a restart.
    #[arg(long, env = "KEYGATE_ADMIN_TLS_CLIENT_NAMES", value_delimiter = ',')]
    pub admin_tls_client_names: Vec<String>,
}

/// TLS on keygate's listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// The server certificate of every listener.
    pub certificate: CertificateFiles,
    /// mTLS on the decision listeners (gRPC, and forward auth).
    pub clients: Option<ClientCertificates>,
    /// mTLS on the admin listener, when Admin has one of its own.
    pub admin_clients: Option<ClientCertificates>,
    /// How often the files are looked at for a change (SIGHUP reloads at once).
    pub watch_every: Duration,
}

impl TlsSettings {
    pub const WATCH_EVERY: Duration = Duration::from_secs(10);
}

impl TlsArgs {
    /// `None`: plaintext. `admin_apart`: Admin has a listener of its own.
    pub(super) fn settings(self, admin_apart: bool, problems: &mut Vec<String>) -> Option<TlsSettings> {
        let clients =
            client_certificates((self.tls_client_ca, self.tls_client_names), "tls-client", "--tls-client-ca", problems);
        let admin_clients = client_certificates(
            (self.admin_tls_client_ca, self.admin_tls_client_names),
            "admin-tls-client",
            "--admin-tls-client-ca",
            problems,
        );
        if admin_clients.is_some() && !admin_apart {
            problems.push(
                "--admin-tls-client-ca: needs --admin-listen (Admin on the decision port takes --tls-client-ca's clients)"
                    .to_owned(),
            );
        }
        match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                certificate: CertificateFiles { cert, key },
                clients,
                admin_clients,
                watch_every: TlsSettings::WATCH_EVERY,
            }),
            (None, None) => {
                if clients.is_some() || admin_clients.is_some() {
                    problems.push("--tls-client-ca / --admin-tls-client-ca: need --tls-cert and --tls-key".to_owned());
                }
                None
            }
            (Some(_), None) => {
                problems.push("--tls-cert: needs --tls-key".to_owned());
                None
            }
            (None, Some(_)) => {
                problems.push("--tls-key: needs --tls-cert".to_owned());
                None
            }
        }
    }
}

/// One listener's client certificates. `flag` is the flags' stem: `--{flag}-ca`,
/// `--{flag}-names` (`ca_flag` is the first, static, for the CA's errors).
fn client_certificates(
    (ca, names): (Option<PathBuf>, Vec<String>),
    flag: &str,
    ca_flag: &'static str,
    problems: &mut Vec<String>,
) -> Option<ClientCertificates> {
    let given = !names.is_empty();
    let names: Vec<String> = names.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    // An empty list admits every certificate of the CA: a blank value must not mean that.
    if given && names.is_empty() {
        problems.push(format!("--{flag}-names: no name given (leave the flag out to admit any certificate of the CA)"));
    }
    if ca.is_none() && !names.is_empty() {
        problems.push(format!("--{flag}-names: needs --{flag}-ca (the CA the client certificates chain to)"));
    }
    for name in &names {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            problems.push(format!("--{flag}-names: {name:?} is not a DNS name or an IP address"));
        }
    }
    ca.map(|ca| ClientCertificates { ca, names, flag: ca_flag })
}
