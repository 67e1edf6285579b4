//! A TCP relay on loopback between keygate and Postgres, which a test can cut (every
//! connection dropped, new ones accepted and closed at once), close (the port refuses
//! connections, as when the database host is down), stall (connections stay open and
//! nothing passes, as when a host stops answering) and restore.

use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub address: SocketAddr,
    target: SocketAddr,
    open: watch::Sender<bool>,
    stalled: watch::Sender<bool>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let (stalled, _) = watch::channel(false);
        let relay = Self { address, target, open, stalled, accept: Mutex::new(None) };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let (target, watcher, stall) = (self.target, self.open.subscribe(), self.stalled.subscribe());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*watcher.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(pipe(client, target, watcher.clone(), stall.clone()));
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
    mut client: TcpStream,
    target: SocketAddr,
    mut open: watch::Receiver<bool>,
    mut stalled: watch::Receiver<bool>,
) {
    if *stalled.borrow() {
        let _ = stalled.wait_for(|stalled| !*stalled).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    let stall_began = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = open.wait_for(|open| !*open) => false,
        _ = stalled.wait_for(|stalled| *stalled) => true,
    };
    if stall_began {
        // Both sockets stay open, and nothing is read from either, until the stall ends.
        let _ = stalled.wait_for(|stalled| !*stalled).await;
    }
}

/// The host:port of a postgres:// URL.
pub fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_port = &rest[..end];
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().expect("a numeric host:port in KEYGATE_TEST_POSTGRES_URL")
}
