//! TLS on keygate's listeners, with rustls (no OpenSSL), certificates reloaded in place.
//!
//! Each listener has its own [`ListenerTls`]: the server certificate (the same files for
//! every listener) and, for mTLS, the CA its clients' certificates must chain to and the
//! names (SAN) they may carry. A reload reads the files again and swaps the whole rustls
//! configuration: connections already open keep theirs, the next handshake gets the new
//! one, and files that do not load (half-written, mismatched) change nothing.
//!
//! Handshakes run in tasks of their own, bounded by deadlines, so a client that connects
//! and says nothing holds up no one else's accept. Handshakes in progress are capped per
//! listener and per source; at a cap the newcomer is let in and the oldest pending
//! handshake of the busiest source is closed instead, idle ones (nothing sent yet) before
//! ones whose ClientHello has begun, so one host holding idle connections cannot keep an
//! edge that starts its handshake at once from being served, not even from its own address.

mod client_errors;
mod der;
mod refused;
mod roots;

pub use client_errors::handshake_failure;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::ServerConfig;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then (counted from the accept) is dropped.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// A client that has sent no byte by then is dropped: a real client sends its ClientHello
/// as soon as it is connected, so an idle connection costs a slot for a second, not ten.
pub const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(1);
/// Handshakes in progress at once per listener (established connections are not counted).
/// At the cap a newcomer is still let in: the busiest source's oldest pending handshake is
/// closed to make room, so a flood holds at most this many tasks and sockets, and never
/// the listener.
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one source (an IPv4 address or an IPv6 /64): past
/// it, that source's own oldest pending handshake makes room. Edges multiplex their calls
/// over a few connections, so a burst of 64 handshakes from one host is already unusual;
/// and it takes 16 sources to fill a listener.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 64;
/// At most one warning per listener this often about handshakes closed to make room (the
/// counters have every one).
const EVICTION_WARNING_EVERY: Duration = Duration::from_secs(10);

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
    /// What happened to handshakes on this listener, for the metrics.
    handshakes: HandshakeStats,
    /// Refused clients, for the rate-limited warnings.
    refusals: refused::Refusals,
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
            handshakes: HandshakeStats::default(),
            refusals: refused::Refusals::default(),
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

    /// The listener's name in logs and metrics (`grpc`, `admin`, `forward-auth`, `metrics`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Handshakes closed to make room or timed out on this listener so far, and those in
    /// progress now.
    pub fn handshakes(&self) -> HandshakeCounts {
        let stats = &self.handshakes;
        HandshakeCounts {
            in_progress: stats.in_progress.load(Relaxed),
            evicted_source_full: stats.evicted_source_full.load(Relaxed),
            evicted_listener_full: stats.evicted_listener_full.load(Relaxed),
            first_bytes_timeouts: stats.first_bytes_timeouts.load(Relaxed),
            handshake_timeouts: stats.handshake_timeouts.load(Relaxed),
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
            let roots = roots::client_roots(clients)?;
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

/// Counts kept by a listener's accept loop and its handshake tasks.
#[derive(Debug, Default)]
struct HandshakeStats {
    in_progress: AtomicU64,
    evicted_source_full: AtomicU64,
    evicted_listener_full: AtomicU64,
    first_bytes_timeouts: AtomicU64,
    handshake_timeouts: AtomicU64,
}

/// A listener's handshakes: closed to make room (by which cap), timed out (by which
/// deadline), and in progress now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    pub in_progress: u64,
    pub evicted_source_full: u64,
    pub evicted_listener_full: u64,
    pub first_bytes_timeouts: u64,
    pub handshake_timeouts: u64,
}

/// Whose handshakes count together: an IPv4 address, or an IPv6 /64 (what one host, or
/// one customer of a provider, is given; an attacker has a whole /64 as easily as one
/// address). An IPv4-mapped IPv6 address (a dual-stack listener) is its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Net(Ipv6Addr),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Net(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{net}/64"),
        }
    }
}

/// Which cap made a handshake give way to a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The newcomer's source had its share in progress.
    Source,
    /// The listener had its share in progress.
    Listener,
}

/// A handshake closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Evicted {
    source: Source,
    full: Full,
    /// Nothing had been received from it yet.
    idle: bool,
}

/// The handshakes in progress on one listener, by source and age. Dropping an entry's
/// sender is what tells its task to close the connection.
#[derive(Debug)]
struct Pending {
    per_source: usize,
    total_cap: usize,
    /// The next handshake's number: a lower number is an older handshake.
    next: u64,
    total: usize,
    sources: HashMap<Source, Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Connections that have sent nothing yet, oldest first.
    idle: BTreeMap<u64, oneshot::Sender<()>>,
    /// Connections whose ClientHello has begun to arrive, oldest first.
    started: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Queue {
    fn len(&self) -> usize {
        self.idle.len() + self.started.len()
    }
}

impl Pending {
    fn new(per_source: usize, total_cap: usize) -> Self {
        Self { per_source: per_source.max(1), total_cap: total_cap.max(1), next: 0, total: 0, sources: HashMap::new() }
    }

    /// Lets a new connection from `source` in, as an idle one; at a cap, closes another
    /// pending handshake first. Its number, what tells it it was closed, and which one
    /// made room.
    fn admit(&mut self, source: Source) -> (u64, oneshot::Receiver<()>, Option<Evicted>) {
        let of_source = self.sources.get(&source).map_or(0, Queue::len);
        let evicted = if of_source >= self.per_source {
            self.evict(source, Full::Source)
        } else if self.total >= self.total_cap {
            self.busiest().and_then(|busiest| self.evict(busiest, Full::Listener))
        } else {
            None
        };
        let (id, (sender, evicted_signal)) = (self.next, oneshot::channel());
        self.next += 1;
        self.sources.entry(source).or_default().idle.insert(id, sender);
        self.total += 1;
        (id, evicted_signal, evicted)
    }

    /// The source to make room from: any source holding an idle handshake before one whose
    /// handshakes have all started (so idle sockets spread over many sources cannot push
    /// out an edge's started handshakes), then the one with the most in progress, then more
    /// idle ones, then the one holding the oldest (so the choice does not depend on the
    /// map's order).
    fn busiest(&self) -> Option<Source> {
        let oldest = |queue: &Queue| {
            let first = |m: &BTreeMap<u64, _>| m.keys().next().copied().unwrap_or(u64::MAX);
            first(&queue.idle).min(first(&queue.started))
        };
        self.sources
            .iter()
            .max_by_key(|(_, queue)| {
                (!queue.idle.is_empty(), queue.len(), queue.idle.len(), std::cmp::Reverse(oldest(queue)))
            })
            .map(|(source, _)| *source)
    }

    /// Closes `source`'s oldest idle handshake, or its oldest started one if none is idle.
    fn evict(&mut self, source: Source, full: Full) -> Option<Evicted> {
        let queue = self.sources.get_mut(&source)?;
        let idle = !queue.idle.is_empty();
        let closed = match idle {
            true => queue.idle.pop_first(),
            false => queue.started.pop_first(),
        };
        // Dropping the sender is the signal (the task may not even have started yet).
        drop(closed?);
        if queue.len() == 0 {
            self.sources.remove(&source);
        }
        self.total -= 1;
        Some(Evicted { source, full, idle })
    }

    /// Handshake `id` received its first bytes; false if it was closed meanwhile.
    fn started(&mut self, source: Source, id: u64) -> bool {
        let Some(queue) = self.sources.get_mut(&source) else { return false };
        match queue.idle.remove(&id) {
            Some(sender) => {
                queue.started.insert(id, sender);
                true
            }
            None => false,
        }
    }

    /// Handshake `id` is over (done, failed, timed out); nothing if it was closed to make
    /// room already.
    fn finish(&mut self, source: Source, id: u64) {
        let Some(queue) = self.sources.get_mut(&source) else { return };
        if queue.idle.remove(&id).or_else(|| queue.started.remove(&id)).is_some() {
            self.total -= 1;
            if queue.len() == 0 {
                self.sources.remove(&source);
            }
        }
    }
}

/// One listener's pending handshakes, shared by its accept loop and handshake tasks.
#[derive(Clone)]
struct Handshakes {
    pending: Arc<Mutex<Pending>>,
    tls: Arc<ListenerTls>,
}

impl Handshakes {
    fn with<T>(&self, change: impl FnOnce(&mut Pending) -> T) -> T {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let out = change(&mut pending);
        self.tls.handshakes.in_progress.store(pending.total as u64, Relaxed);
        out
    }
}

/// A handshake's place among the pending ones, given back however its task ends.
struct Turn {
    handshakes: Handshakes,
    source: Source,
    id: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (source, id) = (self.source, self.id);
        self.handshakes.with(|pending| pending.finish(source, id));
    }
}

/// How a handshake that was not closed to make room ended.
enum Handshake {
    Done(Box<TlsStream<TcpStream>>),
    /// The client hung up before sending anything (a port check, a health probe).
    Closed,
    FirstBytesTimeout,
    Timeout,
    Failed(std::io::Error),
}

/// Waits for the client's first bytes (peeked, so rustls still reads them), then for the
/// whole handshake, each under its deadline.
async fn handshake(tcp: TcpStream, acceptor: TlsAcceptor, turn: &Turn) -> Handshake {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_DEADLINE;
    // `timeout` polls the peek before its timer: bytes already there win even when this
    // task is first polled late on a busy machine.
    match tokio::time::timeout(FIRST_BYTES_DEADLINE, tcp.peek(&mut [0u8; 1])).await {
        Err(_) => return Handshake::FirstBytesTimeout,
        Ok(Ok(0)) => return Handshake::Closed,
        Ok(Err(e)) => return Handshake::Failed(e),
        Ok(Ok(_)) => {}
    }
    let (source, id) = (turn.source, turn.id);
    turn.handshakes.with(|pending| pending.started(source, id));
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Handshake::Done(Box::new(stream)),
        Ok(Err(e)) => Handshake::Failed(e),
        Err(_) => Handshake::Timeout,
    }
}

/// The warning about handshakes closed to make room: one line per
/// [`EVICTION_WARNING_EVERY`] at most, saying how many since the last.
#[derive(Default)]
struct EvictionWarnings {
    last: Option<tokio::time::Instant>,
    unreported: u64,
}

impl EvictionWarnings {
    fn note(&mut self, listener: &'static str, evicted: Evicted) {
        self.unreported += 1;
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < EVICTION_WARNING_EVERY) {
            return;
        }
        let cap = match evicted.full {
            Full::Source => "one source's",
            Full::Listener => "the listener's",
        };
        tracing::warn!(
            listener,
            closed = self.unreported,
            source = %evicted.source,
            cap,
            "TLS handshakes in progress reached a cap: older pending ones were closed to let new \
             connections in (at most one line per 10 s; keygate_tls_handshakes_evicted_total counts them all)"
        );
        self.last = Some(now);
        self.unreported = 0;
    }
}

/// Accepts TCP connections and hands on those whose handshake succeeds (and whose client
/// certificate, under mTLS, is admitted), each handshake in a task of its own.
fn accept(
    listener: TcpListener,
    tls: Arc<ListenerTls>,
) -> tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (sender, receiver) = tokio::sync::mpsc::channel(128);
    let pending = Arc::new(Mutex::new(Pending::new(MAX_HANDSHAKES_PER_SOURCE, MAX_HANDSHAKES)));
    let handshakes = Handshakes { pending, tls: tls.clone() };
    tokio::spawn(async move {
        let mut warnings = EvictionWarnings::default();
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
            let source = Source::from(peer.ip());
            let (id, mut evicted_signal, evicted) = handshakes.with(|pending| pending.admit(source));
            if let Some(evicted) = evicted {
                let counter = match evicted.full {
                    Full::Source => &tls.handshakes.evicted_source_full,
                    Full::Listener => &tls.handshakes.evicted_listener_full,
                };
                counter.fetch_add(1, Relaxed);
                warnings.note(tls.name, evicted);
            }
            let _ = tcp.set_nodelay(true);
            let turn = Turn { handshakes: handshakes.clone(), source, id };
            let (acceptor, sender, tls) = (tls.acceptor(), sender.clone(), tls.clone());
            tokio::spawn(async move {
                let ended = tokio::select! {
                    biased;
                    // Closed to make room (counted by the accept loop): dropping the
                    // handshake closes the socket.
                    _ = &mut evicted_signal => {
                        tracing::debug!(listener = tls.name, %peer, "TLS handshake closed to make room for a newer one");
                        return;
                    }
                    ended = handshake(tcp, acceptor, &turn) => ended,
                };
                drop(turn);
                match ended {
                    Handshake::Done(stream) if tls.admits(&stream) => {
                        let _ = sender.send((*stream, peer)).await;
                    }
                    Handshake::Done(_) => tls.refusals.note(
                        tls.name,
                        peer,
                        &"client certificate names no allowed client; connection closed",
                    ),
                    Handshake::Closed => tracing::debug!(listener = tls.name, %peer, "closed before a TLS handshake"),
                    Handshake::FirstBytesTimeout => {
                        tls.handshakes.first_bytes_timeouts.fetch_add(1, Relaxed);
                        tracing::debug!(listener = tls.name, %peer, "no TLS handshake began in time; connection closed")
                    }
                    Handshake::Timeout => {
                        tls.handshakes.handshake_timeouts.fetch_add(1, Relaxed);
                        tracing::debug!(listener = tls.name, %peer, "TLS handshake timed out")
                    }
                    Handshake::Failed(e) => {
                        tls.refusals.note(tls.name, peer, &format_args!("TLS handshake failed: {e}"))
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: &str) -> Source {
        Source::from(ip.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
        assert_eq!(source("192.0.2.7"), source("::ffff:192.0.2.7"), "an IPv4-mapped address is its IPv4 address");
        assert_ne!(source("192.0.2.7"), source("192.0.2.8"));
        assert_eq!(source("2001:db8:1:2:aaaa::1"), source("2001:db8:1:2:ffff:ffff:ffff:ffff"), "one /64");
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
    }

    /// The eviction rule that makes the flood tests in tests/api/tls.rs deterministic.
    #[test]
    fn at_a_cap_the_busiest_sources_oldest_idle_handshake_makes_room() {
        let (flood, edge, other) = (source("192.0.2.1"), source("192.0.2.1"), source("198.51.100.9"));
        let mut pending = Pending::new(3, 5);
        let (_, mut first_closed, _) = pending.admit(flood);
        let (edge_id, mut edge_closed, _) = pending.admit(edge);
        assert!(pending.started(edge, edge_id), "the edge sent its ClientHello");
        pending.admit(flood);
        // The source is full: its oldest idle one goes, not the edge (older, but started).
        let (_, _, evicted) = pending.admit(flood);
        assert_eq!(evicted, Some(Evicted { source: flood, full: Full::Source, idle: true }));
        assert!(first_closed.try_recv().is_err(), "the first idle one was told");
        for _ in 0..10 {
            let (_, _, evicted) = pending.admit(flood);
            assert!(evicted.is_some_and(|e| e.idle), "idle ones make room: {evicted:?}");
            assert!(matches!(edge_closed.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "the edge stays");
        }
        // Another source fills the listener: the busiest (the flood) makes room, idle first.
        pending.admit(other);
        pending.admit(other);
        let (_, _, evicted) = pending.admit(other);
        assert_eq!(evicted, Some(Evicted { source: flood, full: Full::Listener, idle: true }));
        assert!(matches!(edge_closed.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "the edge stays");
        assert_eq!(pending.total, 5);
        // Once only started handshakes are left in the busiest source, the oldest of them.
        let mut lone = Pending::new(2, 10);
        let (a, _a_closed, _) = lone.admit(flood);
        let (b, _b_closed, _) = lone.admit(flood);
        assert!(lone.started(flood, a) && lone.started(flood, b));
        let (_, _, evicted) = lone.admit(flood);
        assert_eq!(evicted, Some(Evicted { source: flood, full: Full::Source, idle: false }));
        let started = &lone.sources[&flood].started;
        assert!(!started.contains_key(&a) && started.contains_key(&b), "a, the older, went");
        // Finished handshakes give their place back; a closed one cannot be finished twice.
        lone.finish(flood, a);
        lone.finish(flood, b);
        assert_eq!(lone.total, 1);
    }
}
