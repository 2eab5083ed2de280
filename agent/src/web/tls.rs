//! HTTPS for the status page: rustls (aws-lc-rs, as the MQTT uplink), TLS 1.2 and 1.3.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and runs
//! their handshakes concurrently (each within [`HANDSHAKE_TIMEOUT`], at most
//! [`MAX_HANDSHAKES`] at once), so a slow or silent client does not hold up the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::config::TlsFiles;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HANDSHAKES: usize = 64;

/// Why `[web.tls]` cannot be used; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("web.tls.{key} = {file:?}: {message}")]
pub struct TlsError {
    key: &'static str,
    file: String,
    message: String,
}

/// The server config for `files` (blocking: reads them).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let err = |key: &'static str, path: &std::path::Path, message: String| TlsError { key, file: path.display().to_string(), message };
    let cert_bytes =
        std::fs::read(&files.cert_file).map_err(|e| err("cert_file", &files.cert_file, format!("cannot read the file: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("cert_file", &files.cert_file, format!("not a valid PEM file: {e}")))?;
    if chain.is_empty() {
        return Err(err("cert_file", &files.cert_file, "no certificate in the file (expected PEM \"BEGIN CERTIFICATE\")".into()));
    }
    let key_bytes = std::fs::read(&files.key_file).map_err(|e| err("key_file", &files.key_file, format!("cannot read the file: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| err("key_file", &files.key_file, format!("no private key in the file (PKCS#8, PKCS#1 or SEC1 PEM): {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert_file", &files.cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err("key_file", &files.key_file, format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TCP listener plus TLS handshakes, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "status page: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(address = %peer, error = %e, "status page: TLS handshake failed"),
                        Err(_) => debug!(address = %peer, "status page: TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        });
        Ok(TlsListener { ready, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The accept task owns the socket: stop it, so the port is free for a restart.
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task is gone (only when the listener is being dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
