//! The TLS-terminating proxy of `tls-listeners`: accepts TLS on `listen`
//! (rustls 0.23, ring provider), optionally requires a client certificate
//! from `client_ca_pem`, negotiates ALPN, and forwards the plaintext to
//! `upstream` over TCP.
//!
//! Rotation: [`TlsProxy::reload`] swaps the `ServerConfig` (and upstream)
//! used by *new* handshakes; established connections keep their session and
//! are never dropped by a reload. Limits: at most `max_connections` open at
//! once (further ones are closed at accept) and `handshake_timeout` for a
//! handshake (counted as a failure).
//!
//! Kernel TLS is not handed off in this build: sessions are encrypted in
//! userspace and [`ProxyStats::ktls_active`] says false with the reason.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: no PEM {expect} found")]
    Pem {
        field: &'static str,
        expect: &'static str,
    },
    #[error("{field}: not a usable certificate")]
    BadCa {
        field: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("spec.client_ca_pem: cannot build the client verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("spec.certificate_pem / spec.private_key_pem: rejected by rustls")]
    Config(#[source] rustls::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl TlsError {
    /// The spec field at fault, for 422-style reporting.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Pem { field, .. } | TlsError::BadCa { field, .. } => field,
            TlsError::Verifier(_) => "spec.client_ca_pem",
            TlsError::Config(_) => "spec.private_key_pem",
            TlsError::Listen { .. } => "spec.listen",
        }
    }
}

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// How long to wait for the upstream to accept.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What a listener serves. The private key is zeroized on drop and never
/// printed.
#[derive(Clone)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub certificate_pem: String,
    pub private_key_pem: Zeroizing<String>,
    pub client_ca_pem: Option<String>,
    pub alpn: Vec<String>,
    pub limits: Limits,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("private_key_pem", &"<redacted>")
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("alpn", &self.alpn)
            .field("limits", &self.limits)
            .finish()
    }
}

fn certs(field: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            field,
            expect: "certificate",
        });
    }
    Ok(certs)
}

/// The rustls server config for `cfg`: also the validation of its PEMs.
pub fn server_config(cfg: &ListenerConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("spec.certificate_pem", &cfg.certificate_pem)?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut cfg.private_key_pem.as_bytes())
            .ok()
            .flatten()
            .ok_or(TlsError::Pem {
                field: "spec.private_key_pem",
                expect: "private key",
            })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match &cfg.client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("spec.client_ca_pem", ca)? {
                roots.add(c).map_err(|source| TlsError::BadCa {
                    field: "spec.client_ca_pem",
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(TlsError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Counters of one listener.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    active: AtomicU64,
    handshake_failures: AtomicU64,
    refused_over_limit: AtomicU64,
    upstream_failures: AtomicU64,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
}

/// A snapshot of a listener's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Handshakes completed since start.
    pub connections: u64,
    pub active: u64,
    pub handshake_failures: u64,
    pub refused_over_limit: u64,
    pub upstream_failures: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub ktls_active: bool,
    pub ktls_reason: &'static str,
}

/// Why kernel TLS is off, for status.
pub const KTLS_REASON: &str =
    "kernel TLS hand-off is not implemented in this build; TLS is terminated in userspace (rustls)";

struct Shared {
    config: RwLock<(Arc<rustls::ServerConfig>, SocketAddr)>,
    counters: Counters,
    limits: Limits,
}

/// A running listener. Dropping it stops accepting; [`TlsProxy::shutdown`]
/// also closes the open connections and waits for them.
pub struct TlsProxy {
    shared: Arc<Shared>,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TlsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProxy")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TlsProxy {
    /// Validates `cfg`, binds `cfg.listen` and starts serving.
    pub async fn start(cfg: &ListenerConfig) -> Result<TlsProxy, TlsError> {
        let config = server_config(cfg)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| TlsError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let local = listener.local_addr().unwrap_or(cfg.listen);
        let shared = Arc::new(Shared {
            config: RwLock::new((config, cfg.upstream)),
            counters: Counters::default(),
            limits: cfg.limits,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(TlsProxy {
            shared,
            local,
            stop,
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// New certificate, key, CA, ALPN or upstream for new connections;
    /// established ones are untouched. `cfg.listen` and limits are not
    /// changed by a reload.
    pub fn reload(&self, cfg: &ListenerConfig) -> Result<(), TlsError> {
        let config = server_config(cfg)?;
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = (config, cfg.upstream);
        Ok(())
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            refused_over_limit: c.refused_over_limit.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            bytes_from_clients: c.bytes_from_clients.load(Ordering::Relaxed),
            bytes_to_clients: c.bytes_to_clients.load(Ordering::Relaxed),
            ktls_active: false,
            ktls_reason: KTLS_REASON,
        }
    }

    /// Stops accepting, closes every connection and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    shared.counters.refused_over_limit.fetch_add(1, Ordering::Relaxed);
                    drop(tcp);
                    continue;
                };
                let shared = shared.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    serve(tcp, &shared, stop).await;
                    drop(permit);
                });
            }
        }
    }
    conns.shutdown().await;
}

async fn serve(tcp: TcpStream, shared: &Shared, mut stop: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let (config, upstream) = shared
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let c = &shared.counters;
    let handshake = tokio::time::timeout(
        shared.limits.handshake_timeout,
        TlsAcceptor::from(config).accept(tcp),
    )
    .await;
    let mut tls = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            c.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    c.connections.fetch_add(1, Ordering::Relaxed);
    c.active.fetch_add(1, Ordering::Relaxed);
    let up =
        tokio::time::timeout(shared.limits.connect_timeout, TcpStream::connect(upstream)).await;
    match up {
        Ok(Ok(mut up)) => {
            let _ = up.set_nodelay(true);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut tls, &mut up) => {
                    if let Ok((from_client, to_client)) = r {
                        c.bytes_from_clients.fetch_add(from_client, Ordering::Relaxed);
                        c.bytes_to_clients.fetch_add(to_client, Ordering::Relaxed);
                    }
                }
                _ = stop.changed() => {}
            }
        }
        _ => {
            c.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    c.active.fetch_sub(1, Ordering::Relaxed);
}
