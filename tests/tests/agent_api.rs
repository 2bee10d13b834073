//! The v1 API end to end: a real `dpu-agent dev` process, real mutual TLS,
//! the project's client. Covers CRUD of every kind, the generation rules,
//! If-Match, 404/409/412/413/422, apply atomicity, watch order and resume,
//! durability across `kill -9`, and the role matrix with real certificates.

use std::time::Duration;

use dpu_api::client::{Client, Method, WatchFilter};
use dpu_api::identity::Role;
use dpu_api::object::{
    ApplyRequest, EventType, HostDevice, HostInventory, ObjectWrite, Prune, WriteOutcome,
};
use dpu_api::{Kind, Phase};
use dpu_tests::agent::AgentProcess;
use dpu_tests::fixtures::{
    IPSEC_KEY_A, IPSEC_KEY_B, history, history_since, ipsec_tunnel_spec, put_ok, put_refused,
    status_of,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A valid spec of every kind, all in tenant `acme`, in dependency order.
fn specs(tls_cert: &str, tls_key: &str) -> Vec<(Kind, &'static str, Value)> {
    vec![
        (
            Kind::Tenant,
            "acme",
            json!({"description": "demo", "quotas": {"functions": 10}}),
        ),
        (
            Kind::Function,
            "web-fn",
            json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"}),
        ),
        (
            Kind::Function,
            "disk-fn",
            json!({"type": "nvme", "pf": "pf0"}),
        ),
        (
            Kind::Network,
            "net1",
            json!({"vni": 100, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
        ),
        (
            Kind::Port,
            "web-1",
            json!({"network": "net1", "function": "web-fn", "mac": "02:00:00:00:00:01", "ips": ["10.1.0.10"],
                   "security": {"ingress": [{"protocol": "tcp", "ports": "80"}]}}),
        ),
        (
            Kind::Endpoint,
            "remote-1",
            json!({"network": "net1", "mac": "02:00:00:00:00:02", "ips": ["10.1.0.20"], "vtep": "192.0.2.2"}),
        ),
        (
            Kind::Volume,
            "vol1",
            json!({"function": "disk-fn", "source": {"nvmeof": {"transport": "tcp", "address": "192.0.2.10", "port": 4420,
                   "subnqn": "nqn.2014-08.org.example:vol1"}}}),
        ),
        (
            Kind::IpsecTunnel,
            "tun1",
            ipsec_tunnel_spec("10.1.0.0/24", "10.2.0.0/24", 4096, 4097),
        ),
        (
            Kind::TlsListener,
            "tls1",
            json!({"listen": "10.1.0.1:443", "upstream": "10.1.0.10:80", "certificate_pem": tls_cert,
                   "private_key_pem": tls_key, "ktls": "auto"}),
        ),
    ]
}

fn tls_identity() -> (String, String) {
    let ca = dpu_pki::Ca::generate("test service CA").unwrap();
    let id = ca
        .issue("spiffe://dpu.local/svc", &["svc.example"])
        .unwrap();
    (id.cert_pem, id.key_pem)
}

fn tenant_of(kind: Kind, id: &str) -> Option<&str> {
    if kind == Kind::Tenant {
        Some(id)
    } else {
        Some("acme")
    }
}

async fn create_all(c: &Client) -> Vec<(Kind, &'static str, Value)> {
    let (cert, key) = tls_identity();
    let all = specs(&cert, &key);
    for (kind, id, spec) in &all {
        let r = c
            .put(*kind, id, tenant_of(*kind, id), spec.clone(), None)
            .await
            .unwrap();
        assert!(r.created, "{kind} {id} should be created");
        assert_eq!(r.object.generation, 1);
    }
    all
}

async fn wait_for<F: Fn() -> Fut, Fut: std::future::Future<Output = bool>>(what: &str, f: F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_of_every_kind_with_generation_rules() {
    let agent = AgentProcess::start();
    let c = agent.admin();
    let all = create_all(&c).await;

    for (kind, id, spec) in &all {
        let obj = c.get(*kind, id).await.unwrap();
        assert_eq!(obj.kind, *kind);
        assert_eq!(obj.tenant, "acme");
        // Unchanged PUT: same generation, 200.
        let again = c
            .put(*kind, id, tenant_of(*kind, id), spec.clone(), None)
            .await
            .unwrap();
        assert!(!again.created);
        assert_eq!(
            again.object.generation, 1,
            "{kind} {id}: unchanged PUT must keep the generation"
        );
        let list = c.list(*kind, Some("acme")).await.unwrap();
        assert!(list.items.iter().any(|o| o.id == *id));
    }

    // Secrets are write-only: never returned, only `_set`.
    let tun = c.get(Kind::IpsecTunnel, "tun1").await.unwrap();
    assert_eq!(tun.spec["key_in_set"], json!(true));
    let text = tun.spec.to_string();
    assert!(
        !text.contains(IPSEC_KEY_A) && !text.contains(IPSEC_KEY_B),
        "{text}"
    );
    let tls = c.get(Kind::TlsListener, "tls1").await.unwrap();
    assert_eq!(tls.spec["private_key_pem_set"], json!(true));
    assert!(!tls.spec.to_string().contains("PRIVATE KEY"));
    // A PUT without the secrets keeps them (and is unchanged).
    let mut spec = tun.spec.clone();
    spec.as_object_mut()
        .unwrap()
        .retain(|k, _| !k.ends_with("_set"));
    let r = put_ok(&c, Kind::IpsecTunnel, "tun1", Some("acme"), spec.clone()).await;
    assert_eq!(r.object.generation, 1);
    // Changing a secret is a change.
    spec["key_in"] = json!(IPSEC_KEY_B);
    let r = put_ok(&c, Kind::IpsecTunnel, "tun1", Some("acme"), spec).await;
    assert_eq!(r.object.generation, 2);

    // A real change bumps the generation; If-Match with a stale one is 412.
    let r = c
        .put(
            Kind::Network,
            "net1",
            Some("acme"),
            json!({"vni": 100, "cidr": "10.1.0.0/24", "encap": "vxlan", "mtu": 1400}),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(r.object.generation, 2);
    let err = c
        .put(
            Kind::Network,
            "net1",
            Some("acme"),
            json!({"vni": 100, "cidr": "10.1.0.0/24", "encap": "geneve"}),
            Some(1),
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(err).0, 412);
    assert_eq!(
        c.get(Kind::Network, "net1").await.unwrap().spec["encap"],
        json!("vxlan")
    );

    // Controllers wrote status; kinds without a backend stay Pending with a reason.
    wait_for("tenant Ready", || async {
        c.get(Kind::Tenant, "acme").await.unwrap().status.phase == Phase::Ready
    })
    .await;
    let t = c.get(Kind::Tenant, "acme").await.unwrap();
    assert_eq!(t.status.fields["usage"]["functions"], json!(2));
    wait_for("volume condition", || async {
        c.get(Kind::Volume, "vol1")
            .await
            .unwrap()
            .status
            .condition("BackendUnavailable")
            .is_some()
    })
    .await;
    let v = c.get(Kind::Volume, "vol1").await.unwrap();
    assert_eq!(v.status.phase, Phase::Pending);
    assert!(
        v.status
            .condition("BackendUnavailable")
            .unwrap()
            .message
            .contains("storage")
    );

    // Delete in reverse order: 202, then gone.
    for (kind, id, _) in all.iter().rev() {
        c.delete(*kind, id).await.unwrap();
        wait_for("deletion", || async {
            matches!(c.get(*kind, id).await, Err(e) if e.status() == Some(404))
        })
        .await;
    }
    let err = c.delete(Kind::Port, "web-1").await.unwrap_err();
    assert_eq!(status_of(err).0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_field_and_change_nothing() {
    let agent = AgentProcess::start();
    let c = agent.admin();
    create_all(&c).await;
    let rev = c.list(Kind::Tenant, None).await.unwrap().revision;

    let cases: Vec<(Kind, &str, Value, u16, &str)> = vec![
        (
            Kind::Network,
            "n2",
            json!({"vni": 0, "cidr": "10.9.0.0/24", "encap": "vxlan"}),
            422,
            "spec.vni",
        ),
        (
            Kind::Network,
            "n2",
            json!({"vni": 7, "cidr": "10.9.0.1/24", "encap": "vxlan"}),
            422,
            "spec.cidr",
        ),
        (
            Kind::Network,
            "n2",
            json!({"vni": 100, "cidr": "10.9.0.0/24", "encap": "vxlan"}),
            422,
            "spec.vni",
        ),
        (
            Kind::Network,
            "n2",
            json!({"vni": 7, "cidr": "10.9.0.0/24", "encap": "vxlan", "color": "red"}),
            422,
            "spec.color",
        ),
        (
            Kind::Port,
            "p2",
            json!({"network": "nope", "function": "web-fn", "mac": "02:00:00:00:00:09"}),
            422,
            "spec.network",
        ),
        (
            Kind::Port,
            "p2",
            json!({"network": "net1", "function": "web-fn", "mac": "02:00:00:00:00:09", "ips": ["10.9.9.9"]}),
            422,
            "spec.ips[0]",
        ),
        (
            Kind::Endpoint,
            "e2",
            json!({"network": "net1", "mac": "02:00:00:00:00:01", "vtep": "192.0.2.9"}),
            422,
            "spec.mac",
        ),
        (
            Kind::Function,
            "f2",
            json!({"type": "net", "pf": "pf0", "mac": "01:00:00:00:00:01"}),
            422,
            "spec.mac",
        ),
        (
            Kind::Volume,
            "v2",
            json!({"function": "web-fn", "source": {"local": {"size_mib": 10}}}),
            422,
            "spec.function",
        ),
        (
            Kind::Volume,
            "v2",
            json!({"function": "no-such-fn", "source": {"local": {"size_mib": 10}}}),
            422,
            "spec.function",
        ),
        (
            Kind::Volume,
            "v2",
            json!({"function": "disk-fn", "nsid": 0, "source": {"local": {"size_mib": 10}}}),
            422,
            "spec.nsid",
        ),
        // vol1 holds nsid 1 (no nsid) on disk-fn.
        (
            Kind::Volume,
            "v2",
            json!({"function": "disk-fn", "source": {"local": {"size_mib": 10}}}),
            422,
            "spec.nsid",
        ),
        (
            Kind::IpsecTunnel,
            "t2",
            json!({"local": "192.0.2.1", "remote": "192.0.2.3", "local_subnets": ["10.1.0.0/24"], "remote_subnets": ["10.3.0.0/24"],
                   "mode": "tunnel", "cipher": "aes-gcm-256", "spi_in": 5000, "spi_out": 5001, "key_in": IPSEC_KEY_A, "key_out": IPSEC_KEY_A, "offload": "none"}),
            422,
            "spec.key_in",
        ),
        (
            Kind::TlsListener,
            "l2",
            json!({"listen": "10.1.0.1:443", "upstream": "10.1.0.10:80", "certificate_pem": "junk", "private_key_pem": "junk", "ktls": "off"}),
            422,
            "spec.certificate_pem",
        ),
        (Kind::Tenant, "Bad_Name", json!({}), 422, "id"),
    ];
    for (kind, id, spec, status, field) in cases {
        let refused = put_refused(&c, kind, id, tenant_of(kind, id), spec.clone()).await;
        assert_eq!(
            refused,
            (status, Some(field.to_string())),
            "{kind} {id} {spec}"
        );
    }
    // Missing tenant on a non-tenant object.
    let refused = put_refused(
        &c,
        Kind::Network,
        "n3",
        None,
        json!({"vni": 8, "cidr": "10.8.0.0/24", "encap": "local"}),
    )
    .await;
    assert_eq!(refused, (422, Some("tenant".into())));
    // Unknown top-level field.
    let r = c
        .raw(
            Method::PUT,
            "/v1/tenants/x",
            Some(br#"{"spec": {}, "extra": 1}"#.to_vec()),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.json::<Value>().unwrap()["field"], json!("extra"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // Malformed JSON.
    let r = c
        .raw(Method::PUT, "/v1/tenants/x", Some(b"{".to_vec()), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // Over 1 MiB.
    let big = format!(
        r#"{{"spec": {{"description": "{}"}}}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    let r = c
        .raw(Method::PUT, "/v1/tenants/x", Some(big.into_bytes()), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    // Unknown kind and object.
    let r = c
        .raw(Method::GET, "/v1/widgets/x", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        status_of(c.get(Kind::Port, "nope").await.unwrap_err()).0,
        404
    );
    // 409: references and tenant ownership; quota.
    assert_eq!(
        status_of(c.delete(Kind::Network, "net1").await.unwrap_err()).0,
        409
    );
    let err = c.delete(Kind::Tenant, "acme").await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("ports/web-1"), "{err}");
    put_ok(
        &c,
        Kind::Tenant,
        "small",
        None,
        json!({"quotas": {"functions": 1}}),
    )
    .await;
    put_ok(
        &c,
        Kind::Function,
        "s1",
        Some("small"),
        json!({"type": "nvme", "pf": "pf0"}),
    )
    .await;
    let err = c
        .put(
            Kind::Function,
            "s2",
            Some("small"),
            json!({"type": "nvme", "pf": "pf0"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(
        c.list(Kind::Function, Some("small"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // Moving an object to another tenant is refused.
    let err = c
        .put(
            Kind::Function,
            "s1",
            Some("acme"),
            json!({"type": "nvme", "pf": "pf0"}),
            None,
        )
        .await
        .unwrap_err();
    // The refusal names neither tenant (TENANCY.md invariant 5).
    assert_eq!(status_of(err), (409, Some("id".into())));

    // None of the refused writes changed anything beyond the two accepted ones.
    let after = c.list(Kind::Tenant, None).await.unwrap();
    assert!(
        after
            .items
            .iter()
            .all(|t| t.id == "acme" || t.id == "small")
    );
    assert!(c.get(Kind::Network, "n2").await.is_err());
    assert!(after.revision >= rev + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_all_or_nothing_and_prunes() {
    let agent = AgentProcess::start();
    let c = agent.admin();
    put_ok(&c, Kind::Tenant, "acme", None, json!({})).await;
    // The tenants controller writes the tenant's status (a revision of its
    // own); measure after it, so only the apply could move the revision.
    wait_for("tenant Ready", || async {
        c.get(Kind::Tenant, "acme").await.unwrap().status.phase == Phase::Ready
    })
    .await;
    let rev0 = c.list(Kind::Tenant, None).await.unwrap().revision;

    let mut objects: Vec<ObjectWrite> = (0..10)
        .map(|i| ObjectWrite {
            kind: "Network".into(),
            id: format!("n{i}"),
            tenant: Some("acme".into()),
            spec: json!({"vni": 1000 + i, "cidr": format!("10.{i}.0.0/24"), "encap": "local"}),
        })
        .collect();
    objects[7].spec["vni"] = json!(0);
    let err = c
        .apply(&ApplyRequest {
            objects: objects.clone(),
            prune: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(err), (422, Some("objects[7].spec.vni".into())));
    assert!(
        c.list(Kind::Network, Some("acme"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        c.list(Kind::Tenant, None).await.unwrap().revision,
        rev0,
        "a refused apply must not move the revision"
    );

    // Valid: all ten, with a port referencing a network listed *before* it.
    objects[7].spec["vni"] = json!(1007);
    objects.insert(
        0,
        ObjectWrite {
            kind: "ports".into(),
            id: "p0".into(),
            tenant: Some("acme".into()),
            spec: json!({"network": "n0", "function": "f0", "mac": "02:00:00:00:00:10", "ips": ["10.0.0.5"]}),
        },
    );
    objects.push(ObjectWrite {
        kind: "Function".into(),
        id: "f0".into(),
        tenant: Some("acme".into()),
        spec: json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:10"}),
    });
    let resp = c
        .apply(&ApplyRequest {
            objects: objects.clone(),
            prune: None,
        })
        .await
        .unwrap();
    assert_eq!(resp.results.len(), 12);
    assert!(
        resp.results
            .iter()
            .all(|r| r.outcome == WriteOutcome::Created)
    );
    assert_eq!(resp.revision, rev0 + 12);
    // Plan changes nothing and says what would happen.
    let mut fewer = objects.clone();
    fewer.retain(|o| o.id != "n9");
    let plan = c
        .plan(&ApplyRequest {
            objects: fewer.clone(),
            prune: Some(Prune {
                tenant: "acme".into(),
            }),
        })
        .await
        .unwrap();
    assert!(
        plan.objects
            .iter()
            .any(|p| p.id == "n9" && p.outcome == WriteOutcome::Deleted)
    );
    assert!(
        plan.objects
            .iter()
            .filter(|p| p.id != "n9")
            .all(|p| p.outcome == WriteOutcome::Unchanged)
    );
    assert!(c.get(Kind::Network, "n9").await.unwrap().status.phase != Phase::Deleting);
    // Apply with prune deletes what is not listed.
    let resp = c
        .apply(&ApplyRequest {
            objects: fewer,
            prune: Some(Prune {
                tenant: "acme".into(),
            }),
        })
        .await
        .unwrap();
    assert!(
        resp.results
            .iter()
            .any(|r| r.id == "n9" && r.outcome == WriteOutcome::Deleted)
    );
    wait_for("n9 pruned", || async {
        c.get(Kind::Network, "n9").await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_in_order_and_resumes_without_loss() {
    let agent = AgentProcess::start();
    let c = agent.admin();
    put_ok(&c, Kind::Tenant, "acme", None, json!({})).await;
    let start = c.list(Kind::Tenant, None).await.unwrap().revision;
    let mut live = c
        .watch(
            start,
            &WatchFilter {
                kind: Some(Kind::Network),
                ..WatchFilter::default()
            },
        )
        .await
        .unwrap();
    for i in 0..20 {
        c.put(
            Kind::Network,
            &format!("n{i}"),
            Some("acme"),
            json!({"vni": 10 + i, "cidr": "10.0.0.0/24", "encap": "local"}),
            None,
        )
        .await
        .unwrap();
    }
    // The first ten live, then drop the stream and resume from the last seen.
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let ev = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("event")
            .unwrap()
            .unwrap();
        if ev.type_ == EventType::Added {
            seen.push((ev.revision, ev.object.id.clone()));
        }
    }
    drop(live);
    let last = seen.last().unwrap().0;
    let networks = WatchFilter {
        kind: Some(Kind::Network),
        ..WatchFilter::default()
    };
    for ev in history_since(&c, last, networks).await {
        if ev.type_ == EventType::Added {
            seen.push((ev.revision, ev.object.id.clone()));
        }
    }
    let ids: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    let want: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    assert_eq!(ids, want, "every network exactly once, in order");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions strictly increase"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_201_loses_nothing() {
    let mut agent = AgentProcess::start();
    let c = agent.admin();
    put_ok(&c, Kind::Tenant, "acme", None, json!({})).await;
    let r = put_ok(
        &c,
        Kind::Network,
        "n1",
        Some("acme"),
        json!({"vni": 5, "cidr": "10.5.0.0/24", "encap": "local"}),
    )
    .await;
    assert!(r.created);
    agent.kill9();
    agent.restart();
    let c = agent.admin();
    let obj = c.get(Kind::Network, "n1").await.unwrap();
    assert_eq!(obj.generation, 1);
    let list = c.list(Kind::Network, None).await.unwrap();
    assert!(
        list.revision >= r.revision,
        "revision {} went back below {}",
        list.revision,
        r.revision
    );
    // And the revision keeps counting from there.
    let r2 = put_ok(
        &c,
        Kind::Network,
        "n2",
        Some("acme"),
        json!({"vni": 6, "cidr": "10.6.0.0/24", "encap": "local"}),
    )
    .await;
    assert!(r2.revision > list.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    let mut agent = AgentProcess::start();
    let status = agent.terminate();
    assert!(
        status.success(),
        "dpu-agent exited with {status}; log:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_with_real_certificates() {
    let agent = AgentProcess::start();
    let admin = agent.admin();
    for t in ["a", "b"] {
        put_ok(
            &admin,
            Kind::Tenant,
            t,
            None,
            json!({"grants": {"functions": {"pfs": ["pf0"]}}}),
        )
        .await;
        admin
            .put(
                Kind::Function,
                &format!("{t}-fn"),
                Some(t),
                json!({"type": "nvme", "pf": "pf0", "host": "h1"}),
                None,
            )
            .await
            .unwrap();
    }

    // No certificate: 401 everywhere but the probes.
    let anon = agent.anonymous();
    assert_eq!(
        status_of(anon.get(Kind::Tenant, "a").await.unwrap_err()).0,
        401
    );
    assert_eq!(
        status_of(anon.list(Kind::Port, None).await.unwrap_err()).0,
        401
    );
    assert_eq!(anon.healthz().await.unwrap().0, 200);

    // A certificate from our CA with no role: 403.
    let stranger = agent.client_for_spiffe("spiffe://dpu.local/somebody/else");
    assert_eq!(
        status_of(stranger.get(Kind::Tenant, "a").await.unwrap_err()).0,
        403
    );
    let other_td = agent.client_for_spiffe("spiffe://evil.example/fleet-controller");
    assert_eq!(
        status_of(other_td.list(Kind::Tenant, None).await.unwrap_err()).0,
        403
    );

    // Tenant a: its own objects only.
    let a = agent.client_for(&Role::Tenant("a".into()));
    assert_eq!(a.get(Kind::Function, "a-fn").await.unwrap().tenant, "a");
    // Another tenant's object answers as a missing one (TENANCY.md
    // invariant 5).
    assert_eq!(
        status_of(a.get(Kind::Function, "b-fn").await.unwrap_err()).0,
        404
    );
    assert_eq!(
        status_of(a.list(Kind::Function, Some("b")).await.unwrap_err()).0,
        403
    );
    let own = a.list(Kind::Function, None).await.unwrap();
    assert!(
        own.items.iter().all(|o| o.tenant == "a"),
        "a tenant's unfiltered list is its own"
    );
    put_ok(
        &a,
        Kind::Function,
        "a-fn2",
        Some("a"),
        json!({"type": "nvme", "pf": "pf0"}),
    )
    .await;
    let err = a
        .put(
            Kind::Function,
            "x",
            Some("b"),
            json!({"type": "nvme", "pf": "pf0"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(err).0, 403);
    // Not even by naming its own tenant on b's object: refused as an id
    // already taken, without naming b.
    let err = a
        .put(
            Kind::Function,
            "b-fn",
            Some("a"),
            json!({"type": "nvme", "pf": "pf0"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(err).0, 409);
    assert_eq!(
        status_of(a.delete(Kind::Function, "b-fn").await.unwrap_err()).0,
        404
    );
    assert_eq!(
        status_of(
            a.put(
                Kind::Tenant,
                "a",
                None,
                json!({"quotas": {"functions": 99}}),
                None
            )
            .await
            .unwrap_err()
        )
        .0,
        403
    );
    let apply = ApplyRequest {
        objects: vec![ObjectWrite {
            kind: "Function".into(),
            id: "sneaky".into(),
            tenant: Some("b".into()),
            spec: json!({"type": "nvme", "pf": "pf0"}),
        }],
        prune: None,
    };
    assert_eq!(status_of(a.apply(&apply).await.unwrap_err()).0, 403);
    assert_eq!(status_of(a.inventory().await.unwrap_err()).0, 403);
    assert_eq!(status_of(a.metrics().await.unwrap_err()).0, 403);
    assert_eq!(status_of(a.host_assignments().await.unwrap_err()).0, 403);
    for ev in history(&a).await {
        assert_eq!(
            ev.object.tenant, "a",
            "a tenant's watch shows only its own objects"
        );
    }

    // Host stub: report inventory, read its assignments, nothing else.
    let host = agent.client_for(&Role::HostStub("h1".into()));
    let report = HostInventory {
        host: None,
        devices: vec![HostDevice {
            pci_address: "0000:03:00.2".into(),
            class: "vf".into(),
            ..HostDevice::default()
        }],
    };
    host.put_host_inventory(&report).await.unwrap();
    let assigned = host.host_assignments().await.unwrap();
    let mut ids: Vec<&str> = assigned.items.iter().map(|o| o.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a-fn", "b-fn"]);
    assert_eq!(
        status_of(host.get(Kind::Function, "a-fn").await.unwrap_err()).0,
        403
    );
    assert_eq!(
        status_of(host.list(Kind::Function, None).await.unwrap_err()).0,
        403
    );
    assert_eq!(
        status_of(
            host.put(
                Kind::Function,
                "h",
                Some("a"),
                json!({"type": "nvme", "pf": "pf0"}),
                None
            )
            .await
            .unwrap_err()
        )
        .0,
        403
    );
    assert_eq!(status_of(host.inventory().await.unwrap_err()).0, 403);
    assert_eq!(
        status_of(
            host.watch(0, &WatchFilter::default())
                .await
                .err()
                .expect("refused")
        )
        .0,
        403
    );
    // Another host sees nothing of h1's.
    let h2 = agent.client_for(&Role::HostStub("h2".into()));
    assert!(h2.host_assignments().await.unwrap().items.is_empty());

    // The fleet controller sees the host's report.
    let inv = admin.inventory().await.unwrap();
    assert_eq!(inv.hosts.len(), 1);
    assert_eq!(inv.hosts[0].host, "h1");
    assert_eq!(inv.hosts[0].devices[0].pci_address, "0000:03:00.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints() {
    let agent = AgentProcess::start();
    let c = agent.admin();
    put_ok(&c, Kind::Tenant, "acme", None, json!({})).await;
    let (status, body) = c.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let metrics = c.metrics().await.unwrap();
    assert!(metrics.contains("dpu_agent_store_revision"), "{metrics}");
    assert!(
        metrics.contains("dpu_agent_http_requests_total{method=\"PUT\",status=\"201\"}"),
        "{metrics}"
    );
    // Every served route is documented; the document names the write-only secrets.
    let doc = c.openapi().await.unwrap();
    for path in [
        "/v1/ports/{id}",
        "/v1/ports",
        "/v1/apply",
        "/v1/plan",
        "/v1/watch",
        "/v1/host/assignments",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let r = c
        .raw(Method::PATCH, "/v1/tenants/acme", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}
