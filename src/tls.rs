//! TLS on keygate's listeners, with rustls (no OpenSSL), certificates reloaded in place.
//!
//! Each listener has its own [`ListenerTls`]: the server certificate (the same files for
//! every listener) and, for mTLS, the CA its clients' certificates must chain to and the
//! names (SAN) they may carry. A reload reads the files again and swaps the whole rustls
//! configuration: connections already open keep theirs, the next handshake gets the new
//! one, and files that do not load (half-written, mismatched) change nothing.
//!
//! Handshakes run in tasks of their own, bounded by a deadline, so a client that connects
//! and says nothing holds up no one else's accept.

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener: beyond them a new connection is closed at
/// once, so a flood of connections that never finish their handshake holds at most this
/// many tasks and sockets for at most the deadline (established connections are not
/// counted).
const MAX_HANDSHAKES: usize = 1024;

/// The server's certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// mTLS: a listener that requires client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificates {
    /// PEM file of the CA (or CAs) a client certificate must chain to.
    pub ca: PathBuf,
    /// When not empty: a client certificate must name one of these (a DNS or IP SAN).
    pub names: Vec<String>,
    /// The flag that gave `ca`, for errors.
    pub flag: &'static str,
}

/// What a listener speaks: its protocols for ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2 only (tonic clients insist on `h2`).
    Grpc,
    /// The forward-auth and metrics listeners: HTTP/1.1.
    Http1,
}

/// One listener's TLS: what it was built from, and the rustls configuration in force.
pub struct ListenerTls {
    name: &'static str,
    files: CertificateFiles,
    clients: Option<ClientCertificates>,
    protocol: Protocol,
    config: ArcSwap<ServerConfig>,
    /// The files' sizes and times at the last load: a change reloads them.
    loaded: Mutex<Vec<Option<(u64, SystemTime)>>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls").field("name", &self.name).field("clients", &self.clients).finish()
    }
}

impl ListenerTls {
    /// Loads the files; any that is missing or wrong is a start-up error naming it.
    pub fn load(
        name: &'static str,
        files: CertificateFiles,
        clients: Option<ClientCertificates>,
        protocol: Protocol,
    ) -> anyhow::Result<Arc<Self>> {
        let stamps = stamps(&files, clients.as_ref());
        let config = server_config(&files, clients.as_ref(), protocol)?;
        Ok(Arc::new(Self {
            name,
            files,
            clients,
            protocol,
            config: ArcSwap::from_pointee(config),
            loaded: Mutex::new(stamps),
        }))
    }

    /// Reads the files again and puts them in force for the next connection. A file that
    /// does not load leaves the last good configuration serving (and says why).
    pub fn reload(&self) -> anyhow::Result<()> {
        let stamps = stamps(&self.files, self.clients.as_ref());
        match server_config(&self.files, self.clients.as_ref(), self.protocol) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
                tracing::info!(listener = self.name, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                // Remember the broken files' stamps: they are not tried again until they change.
                *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
                tracing::error!(listener = self.name, error = %format!("{e:#}"), "TLS certificates not reloaded; the last good ones stay");
                Err(e)
            }
        }
    }

    /// Reloads when a file's size or modification time changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.files, self.clients.as_ref());
        let changed = *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            let _ = self.reload();
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// After the handshake verified the chain: does the client certificate carry an
    /// allowed name? (No names configured: any certificate of the CA is enough.)
    fn admits(&self, stream: &TlsStream<TcpStream>) -> bool {
        let Some(clients) = &self.clients else { return true };
        if clients.names.is_empty() {
            return true;
        }
        let (_, connection) = stream.get_ref();
        let Some(leaf) = connection.peer_certificates().and_then(|chain| chain.first()) else {
            return false;
        };
        let Ok(parsed) = ParsedCertificate::try_from(leaf) else { return false };
        clients.names.iter().any(|name| {
            ServerName::try_from(name.as_str())
                .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
        })
    }
}

/// Size and modification time of each file (None: unreadable), in a fixed order.
fn stamps(files: &CertificateFiles, clients: Option<&ClientCertificates>) -> Vec<Option<(u64, SystemTime)>> {
    let stamp = |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
    let mut all = vec![stamp(&files.cert), stamp(&files.key)];
    if let Some(clients) = clients {
        all.push(stamp(&clients.ca));
    }
    all
}

fn server_config(
    files: &CertificateFiles,
    clients: Option<&ClientCertificates>,
    protocol: Protocol,
) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--tls-cert {}: not a readable PEM certificate chain", files.cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "--tls-cert {}: no certificate in the file", files.cert.display());
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("--tls-key {}: not a readable PEM private key", files.key.display()))?;
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider).with_context(|| {
        format!("--tls-key {} does not go with --tls-cert {}", files.key.display(), files.cert.display())
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&clients.ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!("{} {}: not a readable PEM certificate", clients.flag, clients.ca.display())
                })?;
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!("{} {}: a certificate that is not a CA", clients.flag, clients.ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("{} {}: no usable CA certificate", clients.flag, clients.ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = match protocol {
        Protocol::Grpc => vec![b"h2".to_vec()],
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// The certificate of one configuration (a reload builds a new configuration).
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Accepts TCP connections and hands on those whose handshake succeeds (and whose client
/// certificate, under mTLS, is admitted), each handshake in a task of its own.
fn accept(
    listener: TcpListener,
    tls: Arc<ListenerTls>,
) -> tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (sender, receiver) = tokio::sync::mpsc::channel(128);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                // The server stopped serving: stop accepting.
                _ = sender.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(listener = tls.name, error = %e, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(turn) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(listener = tls.name, %peer, "too many TLS handshakes in progress; connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender, tls) = (tls.acceptor(), sender.clone(), tls.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await;
                drop(turn);
                match handshake {
                    Ok(Ok(stream)) if tls.admits(&stream) => {
                        let _ = sender.send((stream, peer)).await;
                    }
                    Ok(Ok(_)) => {
                        tracing::warn!(listener = tls.name, %peer, "client certificate names no allowed client; connection closed")
                    }
                    Ok(Err(e)) => tracing::debug!(listener = tls.name, %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(listener = tls.name, %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    receiver
}

/// The TLS connections of a gRPC listener, for tonic's `serve_with_incoming`.
pub fn grpc_incoming(
    listener: TcpListener,
    tls: Arc<ListenerTls>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(accept(listener, tls)).map(|(stream, _)| Ok(stream))
}

/// An HTTP listener, plain or TLS, for axum.
pub enum HttpListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl HttpListener {
    pub fn new(listener: TcpListener, tls: Option<Arc<ListenerTls>>) -> std::io::Result<Self> {
        Ok(match tls {
            None => HttpListener::Plain(listener),
            Some(tls) => {
                let local = listener.local_addr()?;
                HttpListener::Tls(TlsListener { accepted: accept(listener, tls), local })
            }
        })
    }
}

/// TLS connections for `axum::serve`.
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task only stops once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Reloads every listener's certificates when their files change (checked every
/// `every`), and on [`reload_all`].
pub fn spawn_watcher(listeners: Vec<Arc<ListenerTls>>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for listener in &listeners {
                listener.reload_if_changed();
            }
        }
    })
}

/// Reloads every listener's certificates now (SIGHUP). The first error, if any.
pub fn reload_all(listeners: &[Arc<ListenerTls>]) -> anyhow::Result<()> {
    let mut first = Ok(());
    for listener in listeners {
        if let Err(e) = listener.reload() {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Is this an address only this machine can reach?
pub fn is_loopback(address: &SocketAddr) -> bool {
    address.ip().is_loopback()
}
