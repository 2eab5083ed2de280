//! A TCP proxy on loopback that can cut the network path: while cut, bytes stop flowing
//! in both directions (no RST, like a dead link) and new connections hang; when restored,
//! the stalled connections are closed and new ones flow again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    cut: watch::Sender<bool>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (cut, cut_rx) = watch::channel(false);
        let generation = Arc::new(AtomicU64::new(0));
        let g = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (cut_rx, g) = (cut_rx.clone(), g.clone());
                tokio::spawn(async move { pipe(client, upstream, cut_rx, g).await });
            }
        });
        Proxy { port, cut, generation, task }
    }

    /// Stops all traffic, silently.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    /// Closes the stalled connections and lets new ones through.
    pub fn restore(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.cut.send(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>, generation: Arc<AtomicU64>) {
    let born = generation.load(Ordering::SeqCst);
    // A new connection during a cut hangs until the path is restored, then is closed.
    while *cut.borrow() {
        if cut.changed().await.is_err() {
            return;
        }
    }
    if generation.load(Ordering::SeqCst) != born {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut b1 = vec![0u8; 16 * 1024];
    let mut b2 = vec![0u8; 16 * 1024];
    loop {
        if *cut.borrow() {
            // Dead link: hold the sockets open, move nothing, until restored; then close.
            while *cut.borrow() {
                if cut.changed().await.is_err() {
                    return;
                }
            }
            return;
        }
        tokio::select! {
            r = cr.read(&mut b1) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if sw.write_all(&b1[..n]).await.is_err() { break },
            },
            r = sr.read(&mut b2) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if cw.write_all(&b2[..n]).await.is_err() { break },
            },
            _ = cut.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(3600)) => break,
        }
    }
}
