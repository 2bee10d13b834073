//! Wires the agent together: store, controllers, reconcile engine and API
//! listeners, all stopped by one shutdown signal and joined before return.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::reconcile::engine::{Controllers, Engine};
use crate::reconcile::tenants::Tenants;
use crate::reconcile::tls::TlsListeners;
use crate::reconcile::unavailable::Unavailable;
use crate::reconcile::{Context, Controller};
use crate::server::ops::Metrics;
use crate::server::{self, AgentInfo, AppState, Listener};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot open the store in {dir}")]
    Store {
        dir: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot load the API's TLS identity")]
    Tls(#[from] server::tls::TlsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
}

/// The controllers of this build: tenants and TLS listeners for real (IPsec
/// tunnels per mode in `run`, see `ipsec::with_configured`); every other kind stays
/// `Pending` with `BackendUnavailable` until its backend is wired in.
pub fn default_controllers() -> Vec<Arc<dyn Controller>> {
    let mut list: Vec<Arc<dyn Controller>> =
        vec![Arc::new(Tenants), Arc::new(TlsListeners::default())];
    let real: Vec<dpu_api::Kind> = list.iter().map(|c| c.kind()).collect();
    for kind in dpu_api::Kind::ALL.into_iter().filter(|k| !real.contains(k)) {
        list.push(Arc::new(Unavailable::for_kind(kind)));
    }
    list
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// With the veth simulator and a private switch in a named namespace
/// (`cfg.switch_netns`, dev mode), the functions controller whose backend
/// makes representors in that namespace, in place of the placeholder (so
/// `reconcile::functions::with_configured` keeps it); otherwise unchanged.
fn with_switch_netns(
    cfg: &Config,
    controllers: Vec<Arc<dyn Controller>>,
) -> Vec<Arc<dyn Controller>> {
    use net_offload::functions::{naming, veth::VethBackend};
    let Some(netns) = cfg.switch_netns.as_ref() else {
        return controllers;
    };
    if cfg.functions_backend != crate::config::FunctionsBackend::Veth {
        return controllers;
    }
    controllers
        .into_iter()
        .map(|c| {
            if c.kind() == dpu_api::Kind::Function && c.backend().is_none() {
                // Scoped by state directory, as `reconcile::functions::for_config` does.
                let backend =
                    VethBackend::scoped(naming::scope_of(&cfg.state_dir.to_string_lossy()))
                        .in_switch_netns(Some(netns.clone()));
                Arc::new(crate::reconcile::functions::Functions::new(Arc::new(
                    backend,
                ))) as Arc<dyn Controller>
            } else {
                c
            }
        })
        .collect()
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    cfg: &Config,
    controllers: Vec<Arc<dyn Controller>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    // The backends first: the switch connects to Open vSwitch and reads
    // its replica while the store is read (about as long, at thousands
    // of ports). Before its first input it changes nothing but the
    // bridge row.
    // A dev switch in a namespace of its own gets its representors there.
    let controllers = with_switch_netns(cfg, controllers);
    // The functions controller depends on the configured backend.
    let controllers = crate::reconcile::functions::with_configured(cfg, controllers);
    // IPsec programs the host's XFRM in `run`, a private namespace in `dev`.
    let controllers = crate::reconcile::ipsec::with_configured(cfg, controllers);
    // Network, Port and Endpoint go to Open vSwitch when it is reachable.
    let controllers = crate::reconcile::network::with_configured(cfg, controllers);
    // Volumes go to the configured block backend (none, nvmet or SPDK).
    let controllers = crate::reconcile::volumes::with_configured(cfg, controllers);
    let store = Arc::new(
        Store::open(&cfg.state_dir).map_err(|source| AgentError::Store {
            dir: cfg.state_dir.display().to_string(),
            source,
        })?,
    );
    tracing::info!(state_dir = %cfg.state_dir.display(), revision = store.revision(), objects = store.all().len(), "store opened");
    let ctx = Context {
        store: store.clone(),
    };
    let engine = Engine::new(ctx, Controllers::new(controllers)).with_resync(cfg.resync);
    let state = AppState {
        store: store.clone(),
        controllers: engine.controllers(),
        engine: engine.stats(),
        metrics: Arc::new(Metrics::default().with_host_lease(cfg.host_lease)),
        info: Arc::new(AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            mode: cfg.mode.name(),
            hostname: hostname(),
            trust_domain: cfg.trust_domain.clone(),
        }),
        shutdown: shutdown.clone(),
        admission: Arc::new(tokio::sync::Semaphore::new(crate::server::ADMITTING_WRITES)),
        admitters: Arc::new(crate::threads::Threads::new(
            "admission",
            crate::server::ADMITTING_WRITES,
        )),
    };
    let router = server::router(state);

    let tls = Arc::new(server::tls::server_config(&cfg.tls)?);
    let tcp = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(addr = %tcp.local_addr().unwrap_or(cfg.listen), trust_domain = %cfg.trust_domain, "API listening (mutual TLS)");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve(
        tcp,
        Listener::Tls {
            config: tls,
            trust_domain: cfg.trust_domain.clone(),
        },
        router.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = cfg.insecure_listen {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        tracing::warn!(%addr, "plain-HTTP API listening on loopback: every caller is the fleet controller");
        tasks.spawn(server::serve(
            tcp,
            Listener::InsecureLoopback,
            router,
            shutdown.clone(),
        ));
    }
    // systemd (Type=notify): READY=1 now, watchdog pings, STOPPING=1; a no-op elsewhere.
    crate::sd_notify::spawn(shutdown.clone());
    let engine_task = tokio::spawn(engine.run(shutdown));
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            result = Err(AgentError::Serve(e));
        }
    }
    let _ = engine_task.await;
    // A write staged by a client that went away still commits with its
    // group, on the store's threads, which do not hold up the runtime's
    // exit: commit whatever is staged before returning.
    let s = store.clone();
    match store.offload(move || s.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %crate::error_chain(&e), "cannot commit the last staged writes")
        }
        Err(e) => tracing::error!(error = %e, "cannot commit the last staged writes"),
    }
    result
}
