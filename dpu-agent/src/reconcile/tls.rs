//! The `tls-listeners` controller: one `dpu_crypto::tls::TlsProxy` per
//! listener, started on `listen` and forwarding to `upstream`. A changed
//! spec reloads the running proxy (new certificate, key, CA, ALPN or
//! upstream for new connections; established ones stay up); a changed
//! `listen` starts a new proxy and stops the old one. Status carries the
//! proxy's counters and whether sessions really go to kernel TLS
//! (`ktls_active`, `ktls_reason`, `ktls_sessions`, `ktls_failures`).
//! The private key is opened from the store only to build the rustls
//! config and is never logged or reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, Phase, Status, WriteOutcome};
use dpu_api::spec::{Ktls, Spec, TlsListenerSpec};
use dpu_crypto::apply::chain;
use dpu_crypto::tls::{Limits, ListenerConfig, TlsProxy};
use serde_json::Value;

use super::{BoxFuture, Context, Controller, Outcome, ReconcileError, condition};
use crate::store::StoredObject;

/// Counters are refreshed in status this often.
const POLL: Duration = Duration::from_secs(15);

struct Running {
    proxy: TlsProxy,
    listen: SocketAddr,
    generation: u64,
}

#[derive(Default)]
pub struct TlsListeners {
    running: tokio::sync::Mutex<BTreeMap<String, Running>>,
    limits: Limits,
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
        }
    }
}

fn name(o: &StoredObject) -> String {
    format!("{}/{}", o.tenant, o.id)
}

fn typed_spec(obj: &StoredObject) -> Option<TlsListenerSpec> {
    match obj.spec_without_secrets()? {
        Spec::TlsListener(s) => Some(s),
        _ => None,
    }
}

/// The proxy's configuration; errors name the field.
fn listener_config(
    ctx: &Context,
    obj: &StoredObject,
    s: &TlsListenerSpec,
    limits: Limits,
) -> Result<ListenerConfig, String> {
    let addr = |f: &str, v: &str| -> Result<SocketAddr, String> {
        v.parse().map_err(|_| format!("spec.{f} is not an ip:port"))
    };
    let key = ctx
        .store
        .open_secret(obj, "private_key_pem")
        .map_err(|e| format!("cannot open sealed spec.private_key_pem: {}", chain(&e)))?
        .ok_or("spec.private_key_pem is not set")?;
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

fn failed(mut status: Status, reason: &str, message: String) -> Outcome {
    status.phase = Phase::Failed;
    status.set_condition(condition(
        "Serving",
        ConditionStatus::False,
        reason,
        message,
    ));
    Outcome {
        status,
        finalized: false,
        requeue_after: None,
    }
}

impl Controller for TlsListeners {
    fn kind(&self) -> Kind {
        Kind::TlsListener
    }

    fn reconcile<'a>(
        &'a self,
        ctx: &'a Context,
        obj: &'a StoredObject,
    ) -> BoxFuture<'a, Result<Outcome, ReconcileError>> {
        Box::pin(async move {
            let mut status = obj.status.clone();
            let me = name(obj);
            let mut running = self.running.lock().await;
            if obj.deleting {
                if let Some(r) = running.remove(&me) {
                    r.proxy.shutdown().await;
                }
                return Ok(Outcome {
                    status,
                    finalized: true,
                    requeue_after: None,
                });
            }
            let Some(spec) = typed_spec(obj) else {
                return Ok(failed(
                    status,
                    "InvalidSpec",
                    "the stored spec does not parse; PUT a valid one".into(),
                ));
            };
            let cfg = match listener_config(ctx, obj, &spec, self.limits) {
                Ok(c) => c,
                Err(m) => return Ok(failed(status, "InvalidSpec", m)),
            };
            match running.get_mut(&me) {
                Some(r) if r.listen == cfg.listen => {
                    if r.generation != obj.generation {
                        if let Err(e) = r.proxy.reload(&cfg) {
                            // The old configuration keeps serving.
                            let mut out = failed(
                                status,
                                "ReloadRefused",
                                format!(
                                    "{} ({}); still serving generation {}",
                                    chain(&e),
                                    e.field(),
                                    r.generation
                                ),
                            );
                            out.status.phase = Phase::Degraded;
                            return Ok(out);
                        }
                        r.generation = obj.generation;
                    }
                }
                _ => {
                    let proxy = match TlsProxy::start(&cfg).await {
                        Ok(p) => p,
                        Err(e) => {
                            return Ok(failed(
                                status,
                                "StartFailed",
                                format!("{} ({})", chain(&e), e.field()),
                            ));
                        }
                    };
                    if let Some(old) = running.insert(
                        me.clone(),
                        Running {
                            proxy,
                            listen: cfg.listen,
                            generation: obj.generation,
                        },
                    ) {
                        old.proxy.shutdown().await;
                    }
                }
            }
            let r = &running[&me];
            let stats = r.proxy.stats();
            for (k, v) in [
                ("ktls_active", Value::from(stats.ktls_active)),
                ("ktls_reason", Value::from(stats.ktls_reason)),
                ("ktls_sessions", Value::from(stats.ktls_sessions)),
                ("ktls_failures", Value::from(stats.ktls_failures)),
                ("connections", Value::from(stats.connections)),
                ("connections_active", Value::from(stats.active)),
                ("handshake_failures", Value::from(stats.handshake_failures)),
                ("refused_over_limit", Value::from(stats.refused_over_limit)),
                ("upstream_failures", Value::from(stats.upstream_failures)),
            ] {
                status.fields.insert(k.into(), v);
            }
            status.phase = Phase::Ready;
            status.set_condition(condition(
                "Serving",
                ConditionStatus::True,
                "Listening",
                format!(
                    "TLS on {} → {} (generation {})",
                    r.proxy.local_addr(),
                    cfg.upstream,
                    r.generation
                ),
            ));
            Ok(Outcome {
                status,
                finalized: false,
                requeue_after: Some(POLL),
            })
        })
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
                "start a TLS listener on {} → {}{}{}",
                spec.listen,
                spec.upstream,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpu_api::object::{EventType, ObjectKey};
    use rustls::pki_types::ServerName;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::pki::{Ca, Identity};
    use crate::store::{Store, StoreError};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn put(store: &Store, spec: Value, generation: u64, deleting: bool) {
        let key = ObjectKey::new(Kind::TlsListener, "web");
        store
            .transact(|t| {
                let mut spec = spec.clone();
                Store::seal_spec(t.sealer(), &key, &mut spec)?;
                t.put(
                    StoredObject {
                        kind: Kind::TlsListener,
                        id: "web".into(),
                        tenant: "acme".into(),
                        generation,
                        spec,
                        status: Default::default(),
                        deleting,
                    },
                    EventType::Added,
                );
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

    async fn connect(port: u16, ca: &Ca) -> tokio_rustls::client::TlsStream<TcpStream> {
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
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
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

    #[tokio::test]
    async fn serves_rotates_without_dropping_and_stops() {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = up.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = up.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let ctx = Context {
            store: store.clone(),
        };
        let ctrl = TlsListeners::default();
        let ca1 = Ca::generate("ca one").unwrap();
        let ca2 = Ca::generate("ca two").unwrap();
        let id1 = ca1.issue("spiffe://dpu.local/web", &["localhost"]).unwrap();
        let id2 = ca2.issue("spiffe://dpu.local/web", &["localhost"]).unwrap();
        let port = free_port();

        put(&store, spec(port, upstream, &id1), 1, false);
        let plan = ctrl.plan(&ctx, &get(&store), WriteOutcome::Created);
        assert!(plan[0].starts_with("start a TLS listener"), "{plan:?}");
        let out = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out.status.phase, Phase::Ready, "{:?}", out.status);
        // Truthful: kernel TLS only where this kernel has the `tls` ULP.
        let kernel = dpu_crypto::tls::KtlsSupport::probe().any();
        assert_eq!(out.status.fields["ktls_active"], json!(kernel));
        let mut first = connect(port, &ca1).await;
        echo(&mut first, b"hello").await;

        // Rotation: generation 2 with another certificate.
        put(&store, spec(port, upstream, &id2), 2, false);
        let plan2 = ctrl.plan(&ctx, &get(&store), WriteOutcome::Updated);
        assert!(plan2[0].starts_with("reload"), "{plan2:?}");
        let out2 = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out2.status.phase, Phase::Ready);
        echo(&mut first, b"still here").await;
        let mut second = connect(port, &ca2).await;
        echo(&mut second, b"new cert").await;
        let out3 = ctrl.reconcile(&ctx, &get(&store)).await.unwrap();
        assert_eq!(out3.status.fields["connections"], json!(2));
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
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    }
}
