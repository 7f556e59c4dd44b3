//! Accept loop: plain HTTP/1.1 or HTTPS (rustls), with header and connection timeouts and a
//! cap on connections served at once, and the session garbage collector.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::api::Broker;

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection may live.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the TLS certificate chain")]
    Cert(#[source] rustls::pki_types::pem::Error),
    #[error("cannot read the TLS private key")]
    Key(#[source] rustls::pki_types::pem::Error),
    #[error("TLS certificate and key are not usable")]
    Tls(#[source] rustls::Error),
}

/// A rustls server configuration from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(ServeError::Cert)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServeError::Cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(ServeError::Key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServeError::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ServeError::Tls)?;
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until the process ends, at most `max_connections`
/// connections at once: when all slots are taken the loop stops accepting, and further
/// clients wait in the kernel's listen backlog until a connection ends.
pub async fn run(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut warned_full = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !warned_full {
                    tracing::warn!(
                        max_connections,
                        "connection limit reached; new clients wait"
                    );
                    warned_full = true;
                }
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    // Never closed; stop serving rather than spin if it were.
                    Err(_) => return,
                }
            }
        };
        if slots.available_permits() > max_connections / 2 {
            warned_full = false;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            // Keep-alive: a client may send its /auth, /attest and key requests on one
            // connection (each connection still ends after CONNECTION_TIMEOUT).
            http.timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(HEADER_TIMEOUT);
            let served = match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            _ => {
                                tracing::warn!(%peer, "TLS handshake failed");
                                return;
                            }
                        };
                    let conn = http.serve_connection(TokioIo::new(tls), service);
                    tokio::time::timeout(CONNECTION_TIMEOUT, conn).await
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::time::timeout(CONNECTION_TIMEOUT, conn).await
                }
            };
            if let Ok(Err(e)) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Drops expired sessions periodically.
pub async fn collect_sessions(broker: Arc<Broker>) {
    let period =
        (broker.config.session_ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        // Every replica collects; deleting what another already deleted is harmless.
        let b = broker.clone();
        match tokio::task::spawn_blocking(move || b.sessions.collect_garbage()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::debug!(removed, "expired sessions collected"),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot collect expired sessions")
            }
            Err(e) => tracing::warn!(error = %e, "session collection failed"),
        }
    }
}
