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
//! Kernel TLS: with [`ListenerConfig::ktls`] set, the listener probes the
//! kernel (the `tls` ULP and, per TLS version and AEAD, a `TLS_TX` state on a
//! loopback socket) when it starts or reloads. After each handshake whose
//! negotiated suite the kernel supports, the session's traffic secrets are
//! extracted from rustls (`dangerous_extract_secrets`) and installed as the
//! socket's `TLS_TX`/`TLS_RX` state: from then on the
//! kernel (or a NIC with TLS offload under it) encrypts and decrypts the
//! records and the proxy only copies plaintext. The hand-off itself is in
//! [`ktls`]. Sessions the kernel cannot
//! take stay in rustls. [`ProxyStats::ktls_active`] is true only while new
//! sessions really go to the kernel.
//!
//! Network context: [`TlsProxy::start_in`] binds the listener and makes
//! every upstream connection inside another network namespace (through a
//! [`NetnsThread`]): the agent runs a tenant's listeners in the tenant's
//! namespace, where loopback is the tenant's own and no infrastructure
//! socket exists. [`TlsProxy::start`] uses the caller's namespace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::netns::NetnsThread;

pub mod ktls;

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
    /// Hand sessions to kernel TLS when the kernel supports their suite
    /// (`ktls: auto`); false keeps every session in rustls (`ktls: off`).
    pub ktls: bool,
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
            .field("ktls", &self.ktls)
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
    // Needed for the kernel TLS hand-off; the secrets are only ever copied
    // into the socket's TLS_TX/TLS_RX state.
    config.enable_secret_extraction = cfg.ktls;
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
    ktls_sessions: AtomicU64,
    ktls_failures: AtomicU64,
    ktls_fallbacks: AtomicU64,
    /// 1 when the last hand-off attempt failed.
    ktls_last_failed: AtomicU64,
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
    /// Sessions handed to kernel TLS since start.
    pub ktls_sessions: u64,
    /// Hand-offs the kernel refused after the handshake (those connections
    /// are closed: the rustls state is gone once the secrets are extracted).
    pub ktls_failures: u64,
    /// Sessions that stayed in rustls (userspace) although the listener
    /// asked for kernel TLS: the kernel has no TLS ULP, or not for the
    /// negotiated suite.
    pub ktls_fallbacks: u64,
    /// New sessions go to kernel TLS: the listener wants it, the kernel
    /// probe passed, and the last hand-off (if any) succeeded.
    pub ktls_active: bool,
    /// Why `ktls_active` is what it is, in words.
    pub ktls_reason: String,
}

/// What the running kernel's TLS ULP accepts, per TLS version and AEAD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KtlsSupport {
    /// `setsockopt(TCP_ULP, "tls")` works (the `tls` module is there).
    pub ulp: bool,
    /// `[aes-128-gcm, aes-256-gcm, chacha20-poly1305]` for TLS 1.2.
    pub tls12: [bool; 3],
    /// The same for TLS 1.3.
    pub tls13: [bool; 3],
}

impl KtlsSupport {
    /// Probes the kernel on a loopback TCP pair: attaches the `tls` ULP and
    /// installs an all-zero `TLS_TX` state for each version and AEAD. Takes a
    /// few syscalls; sends nothing.
    pub fn probe() -> KtlsSupport {
        let mut s = KtlsSupport {
            ulp: ktls_probe::ulp_works(),
            ..Default::default()
        };
        if s.ulp {
            for (i, cipher) in ktls_probe::CIPHERS.iter().enumerate() {
                s.tls12[i] = ktls_probe::tx_works(libc::TLS_1_2_VERSION, *cipher);
                s.tls13[i] = ktls_probe::tx_works(libc::TLS_1_3_VERSION, *cipher);
            }
        }
        s
    }

    pub fn any(&self) -> bool {
        self.ulp && (self.tls12.iter().chain(&self.tls13).any(|b| *b))
    }

    /// Whether a session with `suite` can be handed to the kernel.
    pub fn supports(&self, suite: rustls::SupportedCipherSuite) -> bool {
        use rustls::CipherSuite as C;
        let idx = match suite.suite() {
            C::TLS13_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            C::TLS13_AES_256_GCM_SHA384
            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            C::TLS13_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 2,
            _ => return false,
        };
        match suite.version().version {
            rustls::ProtocolVersion::TLSv1_2 => self.ulp && self.tls12[idx],
            rustls::ProtocolVersion::TLSv1_3 => self.ulp && self.tls13[idx],
            _ => false,
        }
    }
}

mod ktls_probe {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    pub const CIPHERS: [u16; 3] = [
        libc::TLS_CIPHER_AES_GCM_128,
        libc::TLS_CIPHER_AES_GCM_256,
        libc::TLS_CIPHER_CHACHA20_POLY1305,
    ];

    fn pair() -> Option<(TcpStream, TcpStream)> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        let c = TcpStream::connect(l.local_addr().ok()?).ok()?;
        let (s, _) = l.accept().ok()?;
        Some((c, s))
    }

    fn setsockopt<T>(sock: &TcpStream, level: i32, name: i32, value: &T) -> bool {
        super::ktls::setsockopt(sock.as_raw_fd(), level, name, value).is_ok()
    }

    fn with_ulp() -> Option<(TcpStream, TcpStream)> {
        let (c, s) = pair()?;
        setsockopt(&c, libc::SOL_TCP, libc::TCP_ULP, b"tls").then_some((c, s))
    }

    pub fn ulp_works() -> bool {
        with_ulp().is_some()
    }

    pub fn tx_works(version: u16, cipher: u16) -> bool {
        let Some((c, _s)) = with_ulp() else {
            return false;
        };
        let info = libc::tls_crypto_info {
            version,
            cipher_type: cipher,
        };
        match cipher {
            libc::TLS_CIPHER_AES_GCM_128 => setsockopt(
                &c,
                libc::SOL_TLS,
                libc::TLS_TX,
                &libc::tls12_crypto_info_aes_gcm_128 {
                    info,
                    iv: [0; 8],
                    key: [0; 16],
                    salt: [0; 4],
                    rec_seq: [0; 8],
                },
            ),
            libc::TLS_CIPHER_AES_GCM_256 => setsockopt(
                &c,
                libc::SOL_TLS,
                libc::TLS_TX,
                &libc::tls12_crypto_info_aes_gcm_256 {
                    info,
                    iv: [0; 8],
                    key: [0; 32],
                    salt: [0; 4],
                    rec_seq: [0; 8],
                },
            ),
            libc::TLS_CIPHER_CHACHA20_POLY1305 => setsockopt(
                &c,
                libc::SOL_TLS,
                libc::TLS_TX,
                &libc::tls12_crypto_info_chacha20_poly1305 {
                    info,
                    iv: [0; 12],
                    key: [0; 32],
                    salt: [0; 0],
                    rec_seq: [0; 8],
                },
            ),
            _ => false,
        }
    }
}

struct Served {
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    /// `Some` when sessions may go to kernel TLS: what the kernel accepts.
    ktls: Option<KtlsSupport>,
    /// Why kernel TLS is not used, when it is not.
    ktls_off: Option<&'static str>,
    /// The listener asked for kernel TLS (`ktls: auto`).
    ktls_wanted: bool,
}

impl Served {
    fn new(cfg: &ListenerConfig) -> Result<Served, TlsError> {
        let config = server_config(cfg)?;
        let (ktls, ktls_off) = if !cfg.ktls {
            (None, Some("spec.ktls is off"))
        } else {
            let support = KtlsSupport::probe();
            if !support.ulp {
                (
                    None,
                    Some(
                        "the kernel has no TLS ULP (module `tls` missing); TLS is terminated in userspace (rustls)",
                    ),
                )
            } else if !support.any() {
                (
                    None,
                    Some("the kernel's TLS ULP accepts none of the proxy's cipher suites"),
                )
            } else {
                (Some(support), None)
            }
        };
        Ok(Served {
            config,
            upstream: cfg.upstream,
            ktls,
            ktls_off,
            ktls_wanted: cfg.ktls,
        })
    }
}

struct Shared {
    config: RwLock<Arc<Served>>,
    counters: Counters,
    limits: Limits,
    /// Where upstream connections are made; `None`: the caller's namespace.
    netns: Option<Arc<NetnsThread>>,
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
    /// Validates `cfg`, binds `cfg.listen` and starts serving, in the
    /// caller's network namespace.
    pub async fn start(cfg: &ListenerConfig) -> Result<TlsProxy, TlsError> {
        TlsProxy::start_in(cfg, None).await
    }

    /// Like [`TlsProxy::start`], but with `netns` the listening socket is
    /// bound, and every upstream connection made, inside that namespace.
    pub async fn start_in(
        cfg: &ListenerConfig,
        netns: Option<Arc<NetnsThread>>,
    ) -> Result<TlsProxy, TlsError> {
        let served = Arc::new(Served::new(cfg)?);
        let listen_err = |source| TlsError::Listen {
            addr: cfg.listen,
            source,
        };
        let listener = match &netns {
            Some(ns) => ns.tcp_listener(cfg.listen).await.map_err(listen_err)?,
            None => TcpListener::bind(cfg.listen).await.map_err(listen_err)?,
        };
        let local = listener.local_addr().unwrap_or(cfg.listen);
        let shared = Arc::new(Shared {
            config: RwLock::new(served),
            counters: Counters::default(),
            limits: cfg.limits,
            netns,
        });
        let (stop, stop_rx) = watch::channel(false);
        // In the caller's span (the agent's reconcile span: the listener's
        // kind, id and tenant), so the proxy's log lines say whose they are.
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx).in_current_span());
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
        let served = Arc::new(Served::new(cfg)?);
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = served;
        Ok(())
    }

    pub fn stats(&self) -> ProxyStats {
        self.stats_handle().stats()
    }

    /// A handle that reads this listener's counters without borrowing the
    /// proxy (for `/metrics`, which must not wait on whoever owns it). It
    /// keeps reading the last values after the proxy stopped.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
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

/// Reads one listener's counters; see [`TlsProxy::stats_handle`].
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsHandle").finish_non_exhaustive()
    }
}

impl StatsHandle {
    pub fn stats(&self) -> ProxyStats {
        let c = &self.0.counters;
        let mut stats = ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            refused_over_limit: c.refused_over_limit.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            bytes_from_clients: c.bytes_from_clients.load(Ordering::Relaxed),
            bytes_to_clients: c.bytes_to_clients.load(Ordering::Relaxed),
            ktls_sessions: 0,
            ktls_failures: 0,
            ktls_fallbacks: c.ktls_fallbacks.load(Ordering::Relaxed),
            ktls_active: false,
            ktls_reason: String::new(),
        };
        stats.ktls_sessions = c.ktls_sessions.load(Ordering::Relaxed);
        stats.ktls_failures = c.ktls_failures.load(Ordering::Relaxed);
        let served = self
            .0
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let last_failed = c.ktls_last_failed.load(Ordering::Relaxed) == 1;
        (stats.ktls_active, stats.ktls_reason) = match (served.ktls_off, last_failed) {
            (Some(why), _) => (false, why.to_string()),
            (None, true) => (
                false,
                format!(
                    "the kernel refused the last kernel TLS hand-off ({} of {} failed)",
                    stats.ktls_failures,
                    stats.ktls_failures + stats.ktls_sessions
                ),
            ),
            (None, false) => (
                true,
                format!(
                    "sessions are handed to kernel TLS after the handshake ({} so far)",
                    stats.ktls_sessions
                ),
            ),
        };
        stats
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
                conns.spawn(
                    async move {
                        serve(tcp, &shared, stop).await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
        }
    }
    conns.shutdown().await;
}

async fn serve(tcp: TcpStream, shared: &Shared, stop: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let served = shared
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let c = &shared.counters;
    let acceptor = TlsAcceptor::from(served.config.clone());
    let timeout = shared.limits.handshake_timeout;
    let Some(support) = served.ktls else {
        if let Ok(Ok(tls)) = tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            if served.ktls_wanted {
                c.ktls_fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            pump(tls, shared, served.upstream, stop).await;
        } else {
            c.handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    // The cork reads the handshake record by record, so that no record
    // after it is left inside rustls when the secrets move to the kernel.
    let tls = match tokio::time::timeout(timeout, acceptor.accept(ktls::Cork::new(tcp))).await {
        Ok(Ok(tls)) => tls,
        _ => {
            c.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let suite = tls.get_ref().1.negotiated_cipher_suite();
    if !suite.is_some_and(|s| support.supports(s)) {
        c.ktls_fallbacks.fetch_add(1, Ordering::Relaxed);
        pump(tls, shared, served.upstream, stop).await;
        return;
    }
    match ktls::hand_off(tls) {
        Ok(k) => {
            c.ktls_sessions.fetch_add(1, Ordering::Relaxed);
            c.ktls_last_failed.store(0, Ordering::Relaxed);
            pump(k, shared, served.upstream, stop).await;
        }
        Err(e) => {
            // Counted and reported in status; the connection is lost (the
            // rustls state went into the failed setsockopt).
            c.ktls_failures.fetch_add(1, Ordering::Relaxed);
            c.ktls_last_failed.store(1, Ordering::Relaxed);
            c.connections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "kernel TLS hand-off failed; connection closed");
        }
    }
}

/// Copy buffer per direction: 64 KiB lets rustls fill 16 KiB records (the
/// 8 KiB default halves them) and halves the syscalls per byte.
const COPY_BUF: usize = 64 * 1024;

/// Counts an established session and copies between it and the upstream
/// until either side closes or the listener stops.
async fn pump<S>(mut tls: S, shared: &Shared, upstream: SocketAddr, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let c = &shared.counters;
    c.connections.fetch_add(1, Ordering::Relaxed);
    c.active.fetch_add(1, Ordering::Relaxed);
    let connect = async {
        match &shared.netns {
            Some(ns) => ns.tcp_connect(upstream).await,
            None => TcpStream::connect(upstream).await,
        }
    };
    let up = tokio::time::timeout(shared.limits.connect_timeout, connect).await;
    match up {
        Ok(Ok(mut up)) => {
            let _ = up.set_nodelay(true);
            tokio::select! {
                r = tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut up, COPY_BUF, COPY_BUF) => {
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
    // The session's socket is closed before it stops counting as active, so
    // a reader who sees `active` fall also sees the kernel's TLS state gone.
    drop(tls);
    c.active.fetch_sub(1, Ordering::Relaxed);
}
