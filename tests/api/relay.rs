//! A TCP relay on loopback between keygate and Postgres or Redis, which a test can cut (every
//! connection dropped, new ones accepted and closed at once), close (the port refuses
//! connections, as when the database host is down), stall (connections stay open and
//! nothing passes, as when a host stops answering), hold answers (what is sent reaches the
//! server, what it answers waits, as when the way back is slow) and restore.

use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub address: SocketAddr,
    target: SocketAddr,
    open: watch::Sender<bool>,
    stalled: watch::Sender<bool>,
    held: watch::Sender<bool>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let (stalled, _) = watch::channel(false);
        let (held, _) = watch::channel(false);
        let relay = Self { address, target, open, stalled, held, accept: Mutex::new(None) };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let (target, watcher, stall, held) =
            (self.target, self.open.subscribe(), self.stalled.subscribe(), self.held.subscribe());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*watcher.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(pipe(client, target, watcher.clone(), stall.clone(), held.clone()));
            }
        });
        if let Some(old) = self.accept.lock().unwrap().replace(accept) {
            old.abort();
        }
    }

    /// Drops every connection through the relay; new ones are accepted and closed.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Drops every connection and stops listening: connecting is refused outright.
    pub async fn close(&self) {
        self.cut();
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        // The listener went with the task: the port now refuses connections.
        assert!(TcpStream::connect(self.address).await.is_err(), "the relay's port still accepts");
    }

    /// Connections stay open and nothing passes either way, until [`Relay::unstall`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Ends a stall: the stalled connections are dropped (what was sent into them is
    /// lost, as with a host that came back), new ones pass again.
    pub fn unstall(&self) {
        self.stalled.send_replace(false);
    }

    /// What clients send still reaches the server; what it answers waits in the relay
    /// until [`Relay::release_answers`], and then arrives, late and in order.
    pub fn hold_answers(&self) {
        self.held.send_replace(true);
    }

    pub fn release_answers(&self) {
        self.held.send_replace(false);
    }

    pub async fn restore(&self) {
        if self.accept.lock().unwrap().as_ref().is_none_or(|task| task.is_finished()) {
            self.serve(TcpListener::bind(self.address).await.expect("the relay's port is free again"));
        }
        self.open.send_replace(true);
    }

    /// `url` with its host:port pointed at this relay.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
        let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!("{scheme}://{userinfo}{at}{}{}", self.address, &rest[path_start..])
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
    }
}

async fn pipe(
    client: TcpStream,
    target: SocketAddr,
    mut open: watch::Receiver<bool>,
    mut stalled: watch::Receiver<bool>,
    held: watch::Receiver<bool>,
) {
    if *stalled.borrow() {
        let _ = stalled.wait_for(|stalled| !*stalled).await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else { return };
    // Two one-way copies, so answers can be held; the first to end ends both (the
    // clients here never half-close).
    let ((mut from_client, mut to_client), (mut from_server, mut to_server)) =
        (client.into_split(), server.into_split());
    let stall_began = tokio::select! {
        _ = tokio::io::copy(&mut from_client, &mut to_server) => false,
        _ = answers(&mut from_server, &mut to_client, held) => false,
        _ = open.wait_for(|open| !*open) => false,
        _ = stalled.wait_for(|stalled| *stalled) => true,
    };
    if stall_began {
        // Both sockets stay open, and nothing is read from either, until the stall ends.
        let _ = stalled.wait_for(|stalled| !*stalled).await;
    }
}

/// The server's bytes to the client, none of them passed on while answers are held.
async fn answers(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, mut held: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if held.wait_for(|held| !*held).await.is_err() {
            return;
        }
        let Ok(read @ 1..) = from.read(&mut buffer).await else { return };
        // Read just as the hold began: held too.
        if held.wait_for(|held| !*held).await.is_err() || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The host:port of a postgres:// or redis:// URL.
pub fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_port = &rest[..end];
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().expect("a numeric host:port in the test URL")
}
