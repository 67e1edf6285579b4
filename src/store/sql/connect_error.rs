//! Why a connection to the database failed, said in the terms an operator configures:
//! which certificate check failed, or that the server wants TLS (or has none). sqlx's own
//! errors say `invalid peer certificate: UnknownIssuer` or an SQLSTATE; the start-up
//! error leads with the cause and keeps sqlx's text after it.

/// What an unknown CA asks of the URL.
const SSLROOTCERT: &str = "give the server's CA as sslrootcert= in the database URL";

/// `e` with its cause in front, when the cause is one of TLS's or the server's rules.
pub(super) fn explained(e: sqlx::Error) -> anyhow::Error {
    match cause(&e) {
        Some(cause) => anyhow::Error::new(e).context(cause),
        None => e.into(),
    }
}

/// The cause of a failed connection, when TLS or `pg_hba.conf` decided it.
pub(super) fn cause(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Tls(inner) if inner.to_string() == "server does not support TLS" => Some(
            "TLS: the server does not support TLS (Postgres `ssl = off`), and the URL's sslmode requires it".to_owned(),
        ),
        sqlx::Error::Tls(inner) => crate::tls::handshake_failure(inner.as_ref(), SSLROOTCERT),
        sqlx::Error::Io(io) => crate::tls::handshake_failure(io, SSLROOTCERT),
        sqlx::Error::Database(db) if db.code().as_deref() == Some("28000") => {
            let message = db.message();
            if message.contains("no encryption") {
                Some(
                    "the server's pg_hba.conf refuses connections without TLS (a hostssl-only rule): set \
                     sslmode=verify-full in the database URL"
                        .to_owned(),
                )
            } else if message.contains("certificate") {
                Some(
                    "the server wants a valid client certificate for this user: give sslcert= and sslkey= (the \
                     certificate's CN is the user)"
                        .to_owned(),
                )
            } else {
                None
            }
        }
        _ => None,
    }
}
