//! A TCP proxy a test can cut, to take a database away from a running server and give it back
//! (as a network partition or a database restart would) without touching the database server
//! other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to a target until cut.
pub struct Proxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: open connections watch it and close.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding from a port on 127.0.0.1 to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(accept(listener, target, cut.clone(), generation.clone()));
        Self { address, cut, generation, task }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every open connection and refuses new ones (each is closed as soon as it is
    /// accepted) until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(listener: TcpListener, target: String, cut: Arc<AtomicBool>, generation: watch::Sender<u64>) {
    while let Ok((mut client, _)) = listener.accept().await {
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let target = target.clone();
        let mut closing = generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&target).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = closing.changed() => {}
            }
        });
    }
}

/// `url` (a `postgres://` URL) with its host and port replaced by `address`, and the host and
/// port it named.
pub fn redirect(url: &str, address: SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((credentials, host)) => (format!("{credentials}@"), host),
        None => (String::new(), authority),
    };
    let target = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    (format!("{scheme}://{credentials}{address}{tail}"), target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_replaces_the_host_and_keeps_the_rest() {
        let address: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            redirect("postgres://u:p@db.example:5433/test?options[search_path]=s", address),
            ("postgres://u:p@127.0.0.1:7000/test?options[search_path]=s".to_owned(), "db.example:5433".to_owned())
        );
        assert_eq!(
            redirect("postgresql://localhost/test", address),
            ("postgresql://127.0.0.1:7000/test".to_owned(), "localhost:5432".to_owned())
        );
    }
}
