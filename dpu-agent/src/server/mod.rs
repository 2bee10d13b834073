//! The v1 API server: axum routes over HTTPS with mutual TLS.
//!
//! Each handler parses and authorizes the request, hands one typed write to
//! the store through admission, and answers; controllers pick the change up
//! from the store's events. Errors are problem+json ([`error`]); who may do
//! what is decided in one place ([`authz`]).

pub mod authz;
pub mod body;
pub mod error;
pub mod host;
pub mod objects;
pub mod ops;
pub mod tls;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::routing::{get, post, put};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio_rustls::TlsAcceptor;

use crate::reconcile::engine::{Controllers, EngineStats};
use crate::store::Store;
use authz::Caller;
use ops::Metrics;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// Facts about this agent shown by `/v1/inventory` and `/metrics`.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub version: &'static str,
    pub mode: &'static str,
    pub hostname: String,
    pub trust_domain: String,
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub controllers: Controllers,
    pub engine: Arc<EngineStats>,
    pub metrics: Arc<Metrics>,
    pub info: Arc<AgentInfo>,
    pub shutdown: signal::Receiver<bool>,
    /// Slots for the store half of admission (`objects::admitting`).
    pub admission: Arc<tokio::sync::Semaphore>,
    /// Where the store half of admission runs: [`ADMITTING_WRITES`]
    /// threads of their own ([`crate::threads`]).
    pub admitters: Arc<crate::threads::Threads>,
}

/// How many writes (and plans) run the part of admission that needs the
/// store at once, each on a thread of its own. That part holds the
/// store's writer lock, so more would only wait there, and every thread
/// keeps its own allocator caches (BENCHMARKS.md, "Writers wait without a
/// thread"). The checks of each spec on its own run before a slot is taken,
/// so a large body holds no slot while it is checked (TENANCY.md
/// invariant 6).
pub const ADMITTING_WRITES: usize = 2;

/// Every route, as (method, path): the router is built from this list's
/// paths and a test checks each against the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("put", "/v1/{kind}/{id}"),
    ("get", "/v1/{kind}/{id}"),
    ("delete", "/v1/{kind}/{id}"),
    ("get", "/v1/{kind}"),
    ("post", "/v1/apply"),
    ("post", "/v1/plan"),
    ("get", "/v1/watch"),
    ("get", "/v1/inventory"),
    ("put", "/v1/host/inventory"),
    ("get", "/v1/host/assignments"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

/// The API's routes.
pub fn router(state: AppState) -> Router {
    // Fixed paths first so `/v1/{kind}` does not swallow them.
    Router::new()
        .route("/v1/apply", post(objects::apply))
        .route("/v1/plan", post(objects::plan))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/inventory", get(host::inventory))
        .route("/v1/host/inventory", put(host::put_inventory))
        .route("/v1/host/assignments", get(host::assignments))
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/{kind}", get(objects::list))
        .route(
            "/v1/{kind}/{id}",
            put(objects::put).get(objects::get).delete(objects::delete),
        )
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// How a listener identifies callers.
#[derive(Debug, Clone)]
pub enum Listener {
    /// Mutual TLS: the client certificate decides the role.
    Tls {
        config: Arc<rustls::ServerConfig>,
        trust_domain: String,
    },
    /// Plain HTTP on a loopback address, every caller the fleet controller
    /// (`--insecure-listen`, never a default).
    InsecureLoopback,
}

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections without a recognized client certificate served at once.
pub const MAX_UNAUTHENTICATED: usize = 64;
/// How long a connection without a recognized certificate may stay open.
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (HTTP/1); an idle
/// keep-alive connection is closed after the same time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` turns true, then lets open
/// requests finish for up to 10 s.
pub async fn serve(
    tcp: TcpListener,
    listener: Listener,
    router: Router,
    mut shutdown: signal::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connection slots (TENANCY.md invariant 6): every connection takes one
    // of MAX_CONNECTIONS; one without a recognized certificate also takes
    // one of MAX_UNAUTHENTICATED and lives at most UNAUTHENTICATED_LIFETIME,
    // so anonymous clients cannot crowd out the fleet controller.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let anonymous_slots = Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED));
    let acceptor = match &listener {
        Listener::Tls { config, .. } => Some(TlsAcceptor::from(config.clone())),
        Listener::InsecureLoopback => None,
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break } else { continue }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: {MAX_CONNECTIONS} connections open");
            drop(stream);
            continue;
        };
        let anonymous_slots = anonymous_slots.clone();
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let listener = listener.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            match (acceptor, listener) {
                (Some(acceptor), Listener::Tls { trust_domain, .. }) => {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let caller =
                        tls::caller_from_peer(tls.get_ref().1.peer_certificates(), &trust_domain);
                    if matches!(caller, Caller::Role(_)) {
                        serve_connection(TokioIo::new(tls), router, caller, watcher).await;
                    } else {
                        // Answers 401/403 and nothing else: few, and short.
                        let Ok(_anonymous) = anonymous_slots.try_acquire_owned() else {
                            return;
                        };
                        let _ = tokio::time::timeout(
                            UNAUTHENTICATED_LIFETIME,
                            serve_connection(TokioIo::new(tls), router, caller, watcher),
                        )
                        .await;
                    }
                }
                _ => {
                    let caller = Caller::Role(dpu_api::identity::Role::FleetController);
                    serve_connection(TokioIo::new(stream), router, caller, watcher).await;
                }
            }
        });
    }
    drop(tcp);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    router: Router,
    caller: Caller,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(router.layer(Extension(caller)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that opens a connection and never finishes its request
    // headers is closed.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// An `--insecure-listen` address that is not loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "--insecure-listen {addr} is not a loopback address; plain HTTP is only allowed on 127.0.0.0/8 or ::1"
)]
pub struct NotLoopback {
    pub addr: SocketAddr,
}

/// Refuses an `--insecure-listen` address that is not loopback.
pub fn check_insecure_addr(addr: SocketAddr) -> Result<(), NotLoopback> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(NotLoopback { addr })
    }
}
