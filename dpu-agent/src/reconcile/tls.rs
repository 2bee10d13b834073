//! The `tls-listeners` controller: one `dpu_crypto::tls::TlsProxy` per
//! listener, started on `listen` and forwarding to `upstream`. A changed
//! spec reloads the running proxy (new certificate, key, CA, ALPN or
//! upstream for new connections; established ones stay up); a changed
//! `listen` starts a new proxy and stops the old one. Status carries the
//! proxy's counters and whether sessions really go to kernel TLS
//! (`ktls_active`, `ktls_reason`, `ktls_sessions`, `ktls_failures`).
//! The private key is opened from the store only to build the rustls
//! config and is never logged or reported.
//!
//! Every listener runs in its tenant's network context
//! ([`super::tenant_netns`]): the socket is bound inside the tenant's
//! namespace (its `listen` address is put on that namespace's `lo`), and
//! upstream connections are made from inside it, so a listener can reach
//! only what the tenant's namespace holds — never the agent's API, OVSDB or
//! SPDK sockets or anything else on the agent's loopback (TENANCY.md
//! invariant 1). The namespace is released when the tenant's last listener
//! (and tenant-scope tunnel) is gone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error_chain;
use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, Phase, Status, WriteOutcome};
use dpu_api::report::TlsListenerReport;
use dpu_api::spec::{Ktls, TlsListenerSpec};
use dpu_crypto::tls::{Limits, ListenerConfig, ProxyStats, StatsHandle, TlsProxy};

use super::spec_error::SpecError;
use super::tenant_netns::TenantContexts;
use super::{
    Context, Controller, Outcome, Reason, ReconcileError, Reconciling, condition, not_ready,
    unparsable_spec,
};
use crate::store::StoredObject;

/// Counters are refreshed in status this often.
const POLL: Duration = Duration::from_secs(15);

struct Running {
    proxy: TlsProxy,
    listen: SocketAddr,
    generation: u64,
    /// The tenant namespace it runs in (name, nsfs inode).
    netns: (String, u64),
}

#[derive(Default)]
pub struct TlsListeners {
    running: tokio::sync::Mutex<BTreeMap<String, Running>>,
    limits: Limits,
    contexts: Arc<TenantContexts>,
    /// Per listener `(tenant, id)`: its proxy's counters, read by
    /// `/metrics` without waiting on a reconcile.
    stats: std::sync::Mutex<BTreeMap<(String, String), StatsHandle>>,
}

impl std::fmt::Debug for TlsListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListeners")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TlsListeners {
    pub fn new(limits: Limits) -> Self {
        TlsListeners {
            running: Default::default(),
            limits,
            contexts: Default::default(),
            stats: Default::default(),
        }
    }

    /// Runs listeners in the namespaces of `contexts` (shared with the
    /// IPsec controller).
    pub fn with_contexts(mut self, contexts: Arc<TenantContexts>) -> Self {
        self.contexts = contexts;
        self
    }

    /// Takes `listen`'s address off the tenant namespace unless another of
    /// the tenant's listeners still uses it.
    async fn release_address(&self, ctx: &Context, obj: &StoredObject, listen: SocketAddr) {
        let in_use = ctx
            .store
            .list(Kind::TlsListener, Some(&obj.tenant))
            .iter()
            .filter(|o| o.id != obj.id && !o.deleting)
            .filter_map(|o| typed_spec(o))
            .any(|s| {
                s.listen
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip() == listen.ip())
            });
        if !in_use && let Err(e) = self.contexts.remove_address(&obj.tenant, listen.ip()).await {
            tracing::warn!(listener = %name(obj), error = %error_chain(&e), "cannot remove a listen address from the tenant namespace");
        }
    }
}

fn name(o: &StoredObject) -> String {
    format!("{}/{}", o.tenant, o.id)
}

fn typed_spec(obj: &StoredObject) -> Option<TlsListenerSpec> {
    obj.spec.as_tls_listener().cloned()
}

/// The proxy's configuration; errors name the field.
fn listener_config(
    ctx: &Context,
    obj: &StoredObject,
    s: &TlsListenerSpec,
    limits: Limits,
) -> Result<ListenerConfig, SpecError> {
    let addr = |field: &'static str, v: &str| -> Result<SocketAddr, SpecError> {
        v.parse()
            .map_err(|source| SpecError::NotSocketAddr { field, source })
    };
    let field = "private_key_pem";
    let key = ctx
        .store
        .open_secret(obj, field)
        .map_err(|source| SpecError::Sealed { field, source })?
        .ok_or(SpecError::NotSet { field })?;
    Ok(ListenerConfig {
        listen: addr("listen", &s.listen)?,
        upstream: addr("upstream", &s.upstream)?,
        certificate_pem: s.certificate_pem.clone(),
        private_key_pem: key,
        client_ca_pem: s.client_ca_pem.clone(),
        alpn: s.alpn.clone().unwrap_or_default(),
        limits,
        ktls: s.ktls == Ktls::Auto,
    })
}

fn failed(status: Status, reason: Reason, message: String) -> Outcome {
    not_ready(status, Phase::Failed, "Serving", reason, message)
}

/// A reload the proxy refused (`why`): `Degraded`, the proxy still
/// serving `generation`. Pure.
fn reload_refused(status: Status, why: String, generation: u64) -> Outcome {
    let mut out = failed(
        status,
        Reason::ReloadRefused,
        format!("{why}; still serving generation {generation}"),
    );
    out.status.phase = Phase::Degraded;
    out
}

/// Where a running listener serves.
struct Serving<'a> {
    /// The address its socket is bound to.
    local: SocketAddr,
    upstream: SocketAddr,
    /// The tenant network namespace it runs in.
    netns: &'a str,
    /// The spec generation its configuration is from.
    generation: u64,
}

/// A serving listener's status, from its proxy's counters (`stats`) and
/// where it serves: `Ready`, `Serving=True` with `Listening`, the counters
/// and the kernel TLS state in the typed report. Pure.
fn serving_status(mut status: Status, stats: ProxyStats, at: Serving<'_>) -> Status {
    status.set_report(&TlsListenerReport {
        ktls_active: Some(stats.ktls_active),
        ktls_reason: Some(stats.ktls_reason),
        ktls_sessions: stats.ktls_sessions,
        ktls_failures: stats.ktls_failures,
        ktls_fallbacks: stats.ktls_fallbacks,
        connections: stats.connections,
        connections_active: stats.active,
        handshake_failures: stats.handshake_failures,
        refused_over_limit: stats.refused_over_limit,
        upstream_failures: stats.upstream_failures,
        netns: Some(at.netns.to_string()),
    });
    status.phase = Phase::Ready;
    status.set_condition(condition(
        "Serving",
        ConditionStatus::True,
        Reason::Listening,
        format!(
            "TLS on {} → {} in tenant network namespace {} (generation {})",
            at.local, at.upstream, at.netns, at.generation
        ),
    ));
    status
}

impl Controller for TlsListeners {
    fn kind(&self) -> Kind {
        Kind::TlsListener
    }

    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            let status = obj.status.clone();
            let me = name(obj);
            let mut running = self.running.lock().await;
            if obj.deleting {
                self.stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(obj.tenant.clone(), obj.id.clone()));
                if let Some(r) = running.remove(&me) {
                    r.proxy.shutdown().await;
                    self.release_address(ctx, obj, r.listen).await;
                }
                if let Err(e) = self
                    .contexts
                    .release_unless_needed(&ctx.store, &obj.tenant)
                    .await
                {
                    return Err(ReconcileError {
                        reason: Reason::TenantContextNotRemoved,
                        message: error_chain(&e),
                    });
                }
                return Ok(Outcome::finalized(status));
            }
            let Some(spec) = typed_spec(obj) else {
                return Ok(unparsable_spec(status, "Serving"));
            };
            let cfg = match listener_config(ctx, obj, &spec, self.limits) {
                Ok(c) => c,
                Err(e) => return Ok(failed(status, Reason::InvalidSpec, error_chain(&e))),
            };
            let netns = match self.contexts.ensure(&ctx.store, &obj.tenant).await {
                Ok(ns) => ns,
                Err(e) => {
                    return Ok(failed(
                        status,
                        Reason::NoTenantContext,
                        format!(
                            "{}; the listener is not started outside its tenant's network namespace",
                            error_chain(&e)
                        ),
                    ));
                }
            };
            if let Err(e) = self.contexts.add_address(&netns, cfg.listen.ip()).await {
                return Ok(failed(
                    status,
                    Reason::StartFailed,
                    format!("{} (spec.listen)", error_chain(&e)),
                ));
            }
            let here = (netns.name.clone(), netns.inode);
            match running.get_mut(&me) {
                Some(r) if r.listen == cfg.listen && r.netns == here => {
                    if r.generation != obj.generation {
                        if let Err(e) = r.proxy.reload(&cfg) {
                            // The old configuration keeps serving.
                            return Ok(reload_refused(
                                status,
                                format!("{} ({})", error_chain(&e), e.field()),
                                r.generation,
                            ));
                        }
                        r.generation = obj.generation;
                    }
                }
                _ => {
                    // Out of a namespace that was replaced (someone deleted
                    // it): the old proxy serves nobody, stop it first.
                    if running.get(&me).is_some_and(|r| r.netns != here)
                        && let Some(old) = running.remove(&me)
                    {
                        old.proxy.shutdown().await;
                    }
                    let proxy = match TlsProxy::start_in(&cfg, Some(netns.thread.clone())).await {
                        Ok(p) => p,
                        Err(e) => {
                            return Ok(failed(
                                status,
                                Reason::StartFailed,
                                format!("{} ({})", error_chain(&e), e.field()),
                            ));
                        }
                    };
                    // A changed `listen`: the new one serves, then the old
                    // one stops.
                    if let Some(old) = running.insert(
                        me.clone(),
                        Running {
                            proxy,
                            listen: cfg.listen,
                            generation: obj.generation,
                            netns: here,
                        },
                    ) {
                        let old_listen = old.listen;
                        old.proxy.shutdown().await;
                        if old_listen.ip() != cfg.listen.ip() {
                            self.release_address(ctx, obj, old_listen).await;
                        }
                    }
                }
            }
            let r = &running[&me];
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((obj.tenant.clone(), obj.id.clone()), r.proxy.stats_handle());
            let status = serving_status(
                status,
                r.proxy.stats(),
                Serving {
                    local: r.proxy.local_addr(),
                    upstream: cfg.upstream,
                    netns: &r.netns.0,
                    generation: r.generation,
                },
            );
            Ok(Outcome {
                status,
                finalized: false,
                requeue_after: Some(POLL),
            })
        })
    }

    fn metrics(&self, out: &mut String) {
        let stats: BTreeMap<(String, String), ProxyStats> = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, h)| (k.clone(), h.stats()))
            .collect();
        render_listener_metrics(out, &stats);
    }

    fn plan(&self, _ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String> {
        let Some(spec) = typed_spec(obj) else {
            return vec!["nothing: the spec does not parse".into()];
        };
        let running = self
            .running
            .try_lock()
            .ok()
            .and_then(|r| r.get(&name(obj)).map(|r| (r.listen, r.generation)));
        match (outcome, running) {
            (WriteOutcome::Deleted, Some((listen, _))) => {
                vec![format!(
                    "stop the TLS listener on {listen} and close its connections"
                )]
            }
            (WriteOutcome::Deleted, None) => vec!["nothing: the listener is not running".into()],
            (WriteOutcome::Unchanged, _) => Vec::new(),
            (_, Some((listen, _))) if listen.to_string() == spec.listen => vec![format!(
                "reload the TLS listener on {listen}: new connections use the new certificate/upstream {}, established ones stay",
                spec.upstream
            )],
            (_, Some((listen, _))) => vec![format!(
                "start a TLS listener on {} → {}, then stop the one on {listen}",
                spec.listen, spec.upstream
            )],
            (_, None) => vec![format!(
                "start a TLS listener on {} → {} in tenant network namespace {}{}{}",
                spec.listen,
                spec.upstream,
                self.contexts.name_of(&obj.tenant),
                if spec.client_ca_pem.is_some() {
                    ", client certificates required"
                } else {
                    ""
                },
                spec.alpn
                    .as_ref()
                    .map(|a| format!(", ALPN {}", a.join(",")))
                    .unwrap_or_default()
            )],
        }
    }
}

/// The per-listener families of `/metrics`. Labels: `tenant` and
/// `listener` (an authenticated tenant's object id; listeners count against
/// its quota) and the closed set `outcome`. Nothing a TLS client sends
/// becomes a label.
pub fn render_listener_metrics(out: &mut String, stats: &BTreeMap<(String, String), ProxyStats>) {
    use crate::metrics::{header, sample};
    type Get = fn(&ProxyStats) -> u64;
    let families: [(&str, &str, &str, Get); 6] = [
        (
            "dpu_agent_tls_connections_total",
            "counter",
            "TLS handshakes a listener completed (since the listener last started).",
            |s| s.connections,
        ),
        (
            "dpu_agent_tls_connections_active",
            "gauge",
            "Connections a listener is serving now.",
            |s| s.active,
        ),
        (
            "dpu_agent_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out on a listener.",
            |s| s.handshake_failures,
        ),
        (
            "dpu_agent_tls_ktls_fallbacks_total",
            "counter",
            "Sessions kept in userspace TLS (rustls) although the listener asked for kernel TLS.",
            |s| s.ktls_fallbacks,
        ),
        (
            "dpu_agent_tls_refused_connections_total",
            "counter",
            "Connections closed at accept because the listener was at its connection limit.",
            |s| s.refused_over_limit,
        ),
        (
            "dpu_agent_tls_upstream_failures_total",
            "counter",
            "Sessions whose upstream could not be reached.",
            |s| s.upstream_failures,
        ),
    ];
    for (name, type_, help, get) in families {
        header(out, name, type_, help);
        for ((tenant, listener), s) in stats {
            sample(
                out,
                name,
                &[("tenant", tenant.as_str()), ("listener", listener.as_str())],
                get(s),
            );
        }
    }
    let name = "dpu_agent_tls_ktls_handoffs_total";
    header(
        out,
        name,
        "counter",
        "Sessions handed to kernel TLS after the handshake, by outcome: ok, or failed (the kernel refused; the connection is lost).",
    );
    for ((tenant, listener), s) in stats {
        for (outcome, n) in [("ok", s.ktls_sessions), ("failed", s.ktls_failures)] {
            sample(
                out,
                name,
                &[
                    ("tenant", tenant.as_str()),
                    ("listener", listener.as_str()),
                    ("outcome", outcome),
                ],
                n,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpu_api::object::{EventType, ObjectKey};
    use dpu_crypto::netns::NetnsThread;
    use dpu_pki::{Ca, Identity};
    use rustls::pki_types::ServerName;
    use serde_json::Value;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::reconcile::testing::{assert_root, context};
    use crate::store::{Store, StoreError};

    /// Status derivation (pure): a serving listener is Ready with
    /// `Listening` naming where it serves, and the proxy's counters and
    /// kernel TLS state in the typed report.
    #[test]
    fn status_of_a_serving_listener() {
        let stats = ProxyStats {
            connections: 5,
            active: 2,
            handshake_failures: 1,
            refused_over_limit: 3,
            upstream_failures: 4,
            ktls_sessions: 6,
            ktls_failures: 7,
            ktls_fallbacks: 8,
            ktls_active: true,
            ktls_reason: "kernel TLS for new sessions".into(),
            ..ProxyStats::default()
        };
        let status = serving_status(
            Status::default(),
            stats,
            Serving {
                local: "10.0.0.1:8443".parse().unwrap(),
                upstream: "10.0.0.2:80".parse().unwrap(),
                netns: "dpu-t-acme",
                generation: 3,
            },
        );
        assert_eq!(status.phase, Phase::Ready);
        let cond = status.condition("Serving").unwrap();
        assert_eq!(
            (cond.status, cond.reason.as_str()),
            (ConditionStatus::True, Reason::Listening.as_str())
        );
        assert_eq!(
            cond.message,
            "TLS on 10.0.0.1:8443 → 10.0.0.2:80 in tenant network namespace dpu-t-acme (generation 3)"
        );
        assert_eq!(
            status.report::<TlsListenerReport>(),
            TlsListenerReport {
                ktls_active: Some(true),
                ktls_reason: Some("kernel TLS for new sessions".into()),
                ktls_sessions: 6,
                ktls_failures: 7,
                ktls_fallbacks: 8,
                connections: 5,
                connections_active: 2,
                handshake_failures: 1,
                refused_over_limit: 3,
                upstream_failures: 4,
                netns: Some("dpu-t-acme".into()),
            }
        );
    }

    /// Status derivation (pure): a refused reload leaves the listener
    /// Degraded (still serving the old generation), a start failure Failed;
    /// both with `Serving=False` and their reason.
    #[test]
    fn status_of_a_refused_reload_and_a_failed_start() {
        let out = reload_refused(
            Status::default(),
            "bad certificate (certificate_pem)".into(),
            2,
        );
        assert_eq!(out.status.phase, Phase::Degraded);
        let cond = out.status.condition("Serving").unwrap();
        assert_eq!(
            (cond.status, cond.reason.as_str()),
            (ConditionStatus::False, Reason::ReloadRefused.as_str())
        );
        assert_eq!(
            cond.message,
            "bad certificate (certificate_pem); still serving generation 2"
        );
        let out = failed(
            Status::default(),
            Reason::StartFailed,
            "in use (listen)".into(),
        );
        assert_eq!(out.status.phase, Phase::Failed);
        assert_eq!(
            out.status.condition("Serving").unwrap().reason,
            Reason::StartFailed.as_str()
        );
        assert_eq!((out.finalized, out.requeue_after), (false, None));
    }

    fn put(store: &Store, spec: Value, generation: u64, deleting: bool) {
        let key = ObjectKey::new(Kind::TlsListener, "web");
        store
            .transact(|t| {
                let mut o =
                    StoredObject::from_json(Some(t.sealer()), key.kind, "web", "acme", &spec);
                o.generation = generation;
                o.deleting = deleting;
                t.put(o, EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    fn get(store: &Store) -> StoredObject {
        (*store
            .get(&ObjectKey::new(Kind::TlsListener, "web"))
            .unwrap())
        .clone()
    }

    fn spec(listen: u16, upstream: std::net::SocketAddr, id: &Identity) -> Value {
        json!({
            "listen": format!("127.0.0.1:{listen}"), "upstream": upstream.to_string(),
            "certificate_pem": id.cert_pem, "private_key_pem": id.key_pem,
            "alpn": ["http/1.1"], "ktls": "auto"
        })
    }

    /// A TLS client connected from inside `ns` (where the listener is).
    async fn connect(
        ns: &NetnsThread,
        port: u16,
        ca: &Ca,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = ns.tcp_connect(([127, 0, 0, 1], port).into()).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    async fn echo(s: &mut tokio_rustls::client::TlsStream<TcpStream>, m: &[u8]) {
        s.write_all(m).await.unwrap();
        let mut buf = vec![0u8; m.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, m);
    }

    /// Root only (namespaces). The listener and its upstream live in the
    /// tenant's namespace: the test reaches both from inside it.
    #[tokio::test]
    async fn serves_rotates_without_dropping_and_stops() {
        assert_root("the tenant namespace");
        let (_dir, ctx) = context();
        let store = ctx.store.clone();
        let ctrl = TlsListeners::default();
        let ns = ctrl.contexts.ensure(&store, "acme").await.unwrap();
        let up = ns
            .thread
            .tcp_listener("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let upstream = up.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = up.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let ca1 = Ca::generate("ca one").unwrap();
        let ca2 = Ca::generate("ca two").unwrap();
        let id1 = ca1.issue("spiffe://dpu.local/web", &["localhost"]).unwrap();
        let id2 = ca2.issue("spiffe://dpu.local/web", &["localhost"]).unwrap();
        let port = 8443;

        put(&store, spec(port, upstream, &id1), 1, false);
        let plan = ctrl.plan(&ctx, &get(&store), WriteOutcome::Created);
        assert!(plan[0].starts_with("start a TLS listener"), "{plan:?}");
        let out = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out.status.phase, Phase::Ready, "{:?}", out.status);
        // Truthful: kernel TLS only where this kernel has the `tls` ULP.
        let kernel = dpu_crypto::tls::KtlsSupport::probe().any();
        assert_eq!(out.status.fields["ktls_active"], json!(kernel));
        let mut first = connect(&ns.thread, port, &ca1).await;
        echo(&mut first, b"hello").await;

        // Rotation: generation 2 with another certificate.
        put(&store, spec(port, upstream, &id2), 2, false);
        let plan2 = ctrl.plan(&ctx, &get(&store), WriteOutcome::Updated);
        assert!(plan2[0].starts_with("reload"), "{plan2:?}");
        let out2 = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out2.status.phase, Phase::Ready);
        echo(&mut first, b"still here").await;
        let mut second = connect(&ns.thread, port, &ca2).await;
        echo(&mut second, b"new cert").await;
        let out3 = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out3.status.fields["connections"], json!(2));
        // `/metrics` reads the proxy's counters directly.
        let mut m = String::new();
        ctrl.metrics(&mut m);
        assert!(
            m.contains("dpu_agent_tls_connections_total{tenant=\"acme\",listener=\"web\"} 2\n"),
            "{m}"
        );
        assert_eq!(out3.status.fields["connections_active"], json!(2));

        // A key that does not match the certificate: refused, old one serves.
        let mut bad = spec(port, upstream, &id2);
        bad["private_key_pem"] = json!(id1.key_pem);
        put(&store, bad, 3, false);
        let out4 = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out4.status.phase, Phase::Degraded, "{:?}", out4.status);
        echo(&mut second, b"after bad put").await;

        // No private key anywhere it could leak.
        let text = format!(
            "{} {} {:?} {:?} {:?} {:?}",
            serde_json::to_string(&out4.status).unwrap(),
            serde_json::to_string(&out3.status).unwrap(),
            plan,
            plan2,
            ctrl,
            get(&store).to_api()
        );
        for id in [&id1, &id2] {
            let body = id.key_pem.lines().nth(1).unwrap();
            assert!(!text.contains(body), "private key leaked: {text}");
        }

        put(&store, spec(port, upstream, &id2), 3, true);
        let gone = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert!(gone.finalized);
        assert!(
            ns.thread
                .tcp_connect(([127, 0, 0, 1], port).into())
                .await
                .is_err()
        );
        // Nothing else of the tenant's: the namespace is gone.
        drop(ns);
        assert!(!ctrl.contexts.is_open("acme"));
    }

    /// TENANCY.md invariant 6: a listener's series carry only its tenant,
    /// its id (a quota'd kind) and the closed set `outcome`; nothing a TLS
    /// client sends becomes a label.
    #[test]
    fn listener_metrics_render_every_family() {
        let stats = BTreeMap::from([(
            ("acme".to_string(), "web".to_string()),
            ProxyStats {
                connections: 5,
                active: 1,
                handshake_failures: 2,
                ktls_sessions: 3,
                ktls_failures: 1,
                ktls_fallbacks: 4,
                ..ProxyStats::default()
            },
        )]);
        let mut out = String::new();
        render_listener_metrics(&mut out, &stats);
        for line in [
            "dpu_agent_tls_connections_total{tenant=\"acme\",listener=\"web\"} 5",
            "dpu_agent_tls_connections_active{tenant=\"acme\",listener=\"web\"} 1",
            "dpu_agent_tls_handshake_failures_total{tenant=\"acme\",listener=\"web\"} 2",
            "dpu_agent_tls_ktls_fallbacks_total{tenant=\"acme\",listener=\"web\"} 4",
            "dpu_agent_tls_ktls_handoffs_total{tenant=\"acme\",listener=\"web\",outcome=\"ok\"} 3",
            "dpu_agent_tls_ktls_handoffs_total{tenant=\"acme\",listener=\"web\",outcome=\"failed\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
