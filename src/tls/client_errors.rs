//! Why a TLS connection keygate made (to Postgres, to Redis) failed, in the words an
//! operator acts on: an unknown CA, a name the certificate lacks, an expired certificate,
//! a client certificate the server refused. The drivers say `invalid peer certificate:
//! UnknownIssuer`, or bury rustls's error inside an I/O error.

use rustls::{AlertDescription, CertificateError};
use std::error::Error;
use std::sync::Arc;

/// The TLS failure anywhere in `e`'s chain, named; `ca_hint` says how this connection is
/// given its CA (`give the server's CA as sslrootcert=`), for an unknown CA.
pub fn handshake_failure(e: &(dyn Error + 'static), ca_hint: &str) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = rustls_error(e) {
            return Some(format!("TLS: {}", describe(tls, ca_hint)));
        }
        next = match e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            // Arc's own `source` skips what it holds.
            Some(held) => Some(&**held as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// `e` itself as rustls's error, or the one an I/O error holds (whose `source` skips it).
fn rustls_error<'e>(e: &'e (dyn Error + 'static)) -> Option<&'e rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        inner.downcast_ref::<rustls::Error>()
    })
}

fn describe(e: &rustls::Error, ca_hint: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => {
                format!("the server's certificate is signed by an unknown CA (not one keygate trusts): {ca_hint}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host keygate connects to (name mismatch): connect by a \
                 name the certificate holds"
                    .to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check this machine's clock)".to_owned()
            }
            CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
            other => format!("the server's certificate was refused ({other:?})"),
        },
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown),
        ) => format!("the server refused keygate's client certificate ({alert:?})"),
        other => format!("the handshake failed ({other})"),
    }
}
