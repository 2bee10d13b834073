//! `/metrics` end to end: a real `dpu-agent dev --no-ovs`, scripted
//! workloads (apply, break an object and a backend, recover, a host stub's
//! report, anonymous probing), and the families the on-call person relies
//! on moving as they should. The text is linted with `promtool check
//! metrics` (Debian's `prometheus` package, installed by `scripts/setup.sh`).

use std::process::Command;

use dpu_api::Kind;
use dpu_api::client::{Client, Method};
use dpu_api::identity::Role;
use dpu_api::object::{HostDevice, HostInventory, Phase};
use dpu_crypto::netns::NetnsThread;
use dpu_tests::agent::AgentProcess;
use dpu_tests::fixtures::{ipsec_tunnel_spec, put_ok, tls_connector};
use dpu_tests::promtool::check_metrics;
use net_offload::sandbox::{Daemon, Netns, OvsSandbox, SandboxConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the sample written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `series`, or 0 when the agent does not write it (yet).
fn value0(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

async fn scrape(c: &Client) -> String {
    c.metrics().await.expect("GET /metrics")
}

/// Waits (up to 30 s) until the scraped text satisfies `ok`.
async fn scrape_until(c: &Client, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = scrape(c).await;
        if ok(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 30 s; /metrics:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A service certificate for `svc.example`: (CA, certificate, key).
fn tls_identity() -> (String, String, String) {
    let ca = dpu_pki::Ca::generate("test service CA").unwrap();
    let id = ca
        .issue("spiffe://dpu.local/svc", &["svc.example"])
        .unwrap();
    (ca.cert_pem.clone(), id.cert_pem, id.key_pem)
}

/// A TLS handshake with the listener at `addr`, from inside `ns`; whether
/// it completed.
async fn handshake(ns: &NetnsThread, addr: std::net::SocketAddr, ca_pem: &str) -> bool {
    let tcp = ns.tcp_connect(addr).await.unwrap();
    tls_connector(ca_pem)
        .connect(
            rustls::pki_types::ServerName::try_from("svc.example").unwrap(),
            tcp,
        )
        .await
        .is_ok()
}

/// Plain text where a TLS ClientHello belongs, from inside `ns`: a failed
/// handshake for the listener.
async fn not_tls(ns: &NetnsThread, addr: std::net::SocketAddr) {
    let mut tcp = ns.tcp_connect(addr).await.unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut sink),
    )
    .await;
}

/// Deletes the named network namespace on drop (the agent removes it when
/// the tenant's last listener and tunnel go; this covers the other paths).
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The workload moves every new family as expected, and the text passes
/// `promtool check metrics`.
///
/// The per-object families (TLS listener and IPsec tunnel counters, backend
/// operation durations) are present and move: a completed and a failed
/// handshake on the tenant's listener, reached inside the tenant's network
/// namespace, are counted; the tunnel's counters and the XFRM operations it
/// cost appear.
///
/// TENANCY.md invariant 5 (only the fleet controller reads `/metrics`; a
/// tenant's object ids appear only on the per-object series of kinds with a
/// quota, and leave with the object: none is left once they are deleted,
/// and a network's id never appears) and invariant 6 (unauthenticated
/// clients cannot grow the metrics' label sets: fifty anonymous requests to
/// made-up paths add no series beyond the closed set of route templates,
/// and a client's failed handshakes move a counter, not a label set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_workload_and_pass_promtool() {
    // Tenant namespaces named under /run/netns (the test reaches the
    // listener inside it); removed on every path by the guard.
    let prefix = format!("dmet{}-", std::process::id());
    let _netns = NetnsGuard(format!("{prefix}tenant-secret-7"));
    let agent = AgentProcess::start_with_env(
        &["--no-ovs"],
        &[("DPU_TENANT_NETNS_PREFIX", prefix.as_str())],
    );
    let admin = agent.admin();
    let started = dpu_agent::metrics::unix_now();
    let before = scrape(&admin).await;
    assert_eq!(value(&before, "dpu_agent_ready"), Some(1.0), "{before}");
    let commits_before = value0(&before, "dpu_agent_store_commit_duration_seconds_count");

    // Apply: a tenant and a network (Pending: no switch with --no-ovs).
    put_ok(&admin, Kind::Tenant, "tenant-secret-7", None, json!({})).await;
    put_ok(
        &admin,
        Kind::Network,
        "net-secret-7",
        Some("tenant-secret-7"),
        json!({"vni": 100, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
    )
    .await;
    // Break: two TLS listeners on one address of the tenant's context; the
    // second cannot bind.
    let (ca, cert, key) = tls_identity();
    for id in ["tls-secret-7", "tls-secret-8"] {
        put_ok(
            &admin,
            Kind::TlsListener,
            id,
            Some("tenant-secret-7"),
            json!({"listen": "10.1.0.1:443", "upstream": "10.1.0.10:80",
                       "certificate_pem": cert, "private_key_pem": key, "ktls": "auto"}),
        )
        .await;
    }
    let failing =
        "dpu_agent_reconcile_failing_objects{kind=\"tls-listeners\",reason=\"StartFailed\"}";
    let broken = scrape_until(&admin, "the listener failing", |t| {
        value(t, failing) == Some(1.0)
    })
    .await;

    // Reconciles were timed, by kind and outcome, and the last success noted.
    assert!(
        value0(
            &broken,
            "dpu_agent_reconcile_duration_seconds_count{kind=\"tenants\",outcome=\"ok\"}"
        ) >= 1.0,
        "{broken}"
    );
    assert!(
        value(
            &broken,
            "dpu_agent_reconcile_duration_seconds_bucket{kind=\"tls-listeners\",outcome=\"ok\",le=\"+Inf\"}"
        )
        .is_some(),
        "{broken}"
    );
    let last = value(
        &broken,
        "dpu_agent_reconcile_last_success_timestamp_seconds{kind=\"tenants\"}",
    )
    .expect("last success of tenants");
    assert!(last >= started - 1.0, "{last} < {started}");
    // Every write was committed and counted in exactly one group.
    let commits = value0(&broken, "dpu_agent_store_commit_duration_seconds_count");
    assert!(commits >= commits_before + 4.0, "{broken}");
    assert_eq!(
        value(&broken, "dpu_agent_store_commit_group_size_count"),
        Some(commits),
        "{broken}"
    );
    assert!(value0(&broken, "dpu_agent_store_commit_group_size_sum") >= 3.0);
    // The API writes were timed under their route template.
    assert!(
        value0(
            &broken,
            "dpu_agent_http_request_duration_seconds_count{method=\"PUT\",route=\"/v1/{kind}/{id}\",status_class=\"2xx\"}"
        ) >= 3.0,
        "{broken}"
    );

    // The listener that bound: a handshake that completes and one that
    // fails, from inside the tenant's namespace, move its counters.
    let mut serving = None;
    for id in ["tls-secret-7", "tls-secret-8"] {
        let o = admin.get(Kind::TlsListener, id).await.unwrap();
        if o.status.phase == Phase::Ready {
            serving = Some((id, o.status.fields["netns"].as_str().unwrap().to_string()));
        }
    }
    let (listener, netns) = serving.expect("one listener serves");
    let inside = NetnsThread::spawn(
        &netns,
        std::fs::File::open(format!("/run/netns/{netns}")).unwrap(),
    )
    .unwrap();
    let addr: std::net::SocketAddr = "10.1.0.1:443".parse().unwrap();
    assert!(handshake(&inside, addr, &ca).await, "the handshake failed");
    not_tls(&inside, addr).await;
    let series =
        |name: &str| format!("{name}{{tenant=\"tenant-secret-7\",listener=\"{listener}\"}}");
    // Both connections are closed by the client: the counters move and the
    // active gauge falls back to 0 once the proxy has seen each close (it
    // may lag the handshake count; a gauge that never falls fails here).
    let tls = scrape_until(
        &admin,
        "the listener's counters move and no connection stays active",
        |t| {
            value0(t, &series("dpu_agent_tls_connections_total")) >= 1.0
                && value0(t, &series("dpu_agent_tls_handshake_failures_total")) >= 1.0
                && value(t, &series("dpu_agent_tls_connections_active")) == Some(0.0)
        },
    )
    .await;
    // kTLS was asked for: the session went to the kernel or is counted as a
    // fallback to userspace (this kernel may have no TLS ULP).
    let handed = value0(
        &tls,
        &format!(
            "dpu_agent_tls_ktls_handoffs_total{{tenant=\"tenant-secret-7\",listener=\"{listener}\",outcome=\"ok\"}}"
        ),
    );
    let fell_back = value0(&tls, &series("dpu_agent_tls_ktls_fallbacks_total"));
    assert!(handed + fell_back >= 1.0, "{tls}");
    drop(inside);

    // An IPsec tunnel (dev mode: a private XFRM namespace; its SAs may be
    // refused where the kernel has no ESP): its counters and the XFRM
    // operations it cost appear.
    put_ok(
        &admin,
        Kind::IpsecTunnel,
        "tun-secret-7",
        Some("tenant-secret-7"),
        ipsec_tunnel_spec("10.1.0.0/24", "10.2.0.0/24", 4096, 4097),
    )
    .await;
    let tunnel = "{tenant=\"tenant-secret-7\",tunnel=\"tun-secret-7\"}";
    let ipsec = scrape_until(&admin, "the tunnel's counters", |t| {
        value(t, &format!("dpu_agent_ipsec_tunnel_established{tunnel}")).is_some()
    })
    .await;
    for name in [
        "dpu_agent_ipsec_bytes_total{tenant=\"tenant-secret-7\",tunnel=\"tun-secret-7\",direction=\"in\"}",
        "dpu_agent_ipsec_packets_total{tenant=\"tenant-secret-7\",tunnel=\"tun-secret-7\",direction=\"out\"}",
        "dpu_agent_ipsec_dropped_packets_total{tenant=\"tenant-secret-7\",tunnel=\"tun-secret-7\",reason=\"integrity\"}",
        "dpu_agent_ipsec_rekeys_total{tenant=\"tenant-secret-7\",tunnel=\"tun-secret-7\"}",
    ] {
        assert!(value(&ipsec, name).is_some(), "{name} missing:\n{ipsec}");
    }
    for op in ["dump_sa", "dump_policy", "newsa"] {
        let count = format!(
            "dpu_agent_backend_operation_duration_seconds_count{{backend=\"xfrm\",operation=\"{op}\"}}"
        );
        assert!(value0(&ipsec, &count) >= 1.0, "{count}:\n{ipsec}");
    }
    admin
        .delete(Kind::IpsecTunnel, "tun-secret-7")
        .await
        .unwrap();
    scrape_until(&admin, "the tunnel's series gone", |t| {
        !t.contains("tun-secret-7")
    })
    .await;

    // Recover: the listeners deleted, the gauge clears.
    for id in ["tls-secret-7", "tls-secret-8"] {
        admin.delete(Kind::TlsListener, id).await.unwrap();
    }
    let recovered = scrape_until(&admin, "the failing listener gone", |t| {
        value(t, failing).is_none()
    })
    .await;
    assert!(
        value0(
            &recovered,
            "dpu_agent_http_request_duration_seconds_count{method=\"DELETE\",route=\"/v1/{kind}/{id}\",status_class=\"2xx\"}"
        ) >= 1.0,
        "{recovered}"
    );

    // A host stub's report holds its lease.
    assert_eq!(
        value(&recovered, "dpu_agent_host_stub_leases{state=\"held\"}"),
        Some(0.0)
    );
    let host = agent.client_for(&Role::HostStub("stub-secret-7".into()));
    host.put_host_inventory(&HostInventory {
        host: None,
        devices: vec![HostDevice {
            pci_address: "0000:03:00.2".into(),
            class: "vf".into(),
            ..HostDevice::default()
        }],
    })
    .await
    .unwrap();
    let leased = scrape(&admin).await;
    assert_eq!(
        value(&leased, "dpu_agent_host_stub_leases{state=\"held\"}"),
        Some(1.0),
        "{leased}"
    );
    assert_eq!(
        value(&leased, "dpu_agent_host_stub_leases{state=\"expired\"}"),
        Some(0.0)
    );

    // Anonymous callers probing made-up paths and methods.
    let anon = agent.anonymous();
    for i in 0..50 {
        let path = format!("/probe-{i}/x{i}");
        let r = anon.raw(Method::GET, &path, None, &[]).await.unwrap();
        assert!((400..500).contains(&r.status), "{path}: {}", r.status);
        let r = anon
            .raw(Method::GET, &format!("/v1/probe-kind-{i}"), None, &[])
            .await
            .unwrap();
        assert!((400..500).contains(&r.status), "{}", r.status);
    }
    let probed = scrape(&admin).await;
    assert!(
        value0(
            &probed,
            "dpu_agent_http_request_duration_seconds_count{method=\"GET\",route=\"unmatched\",status_class=\"4xx\"}"
        ) >= 50.0,
        "{probed}"
    );
    assert!(
        value0(
            &probed,
            "dpu_agent_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/{kind}\",status_class=\"4xx\"}"
        ) >= 50.0,
        "{probed}"
    );
    for line in probed.lines().filter(|l| l.contains("route=\"")) {
        let route = line
            .split("route=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            route == "unmatched" || dpu_agent::server::ROUTES.iter().any(|(_, p)| *p == route),
            "route label {route:?} is not a route template: {line}"
        );
    }
    // Deleted objects left no series; the network never had one.
    for secret in ["secret-7", "probe-"] {
        assert!(
            !probed.contains(secret),
            "/metrics names {secret:?}:\n{probed}"
        );
    }
    for family in [
        "# TYPE dpu_agent_tls_handshake_failures_total counter",
        "# TYPE dpu_agent_ipsec_packets_total counter",
        "# TYPE dpu_agent_backend_operation_duration_seconds histogram",
    ] {
        assert!(probed.contains(family), "{family} missing:\n{probed}");
    }

    check_metrics(&probed);
}

/// Apply, break the switch backend (ovsdb-server stopped), recover (started
/// again): readiness, backend reachability, reconcile errors and failing
/// objects by reason, convergence, and the OpenFlow bundle and OVSDB
/// transaction histograms follow. Open vSwitch runs in a private network
/// namespace; the sandbox and the agent are stopped on every path (drop).
///
/// TENANCY.md invariant 5: no metric names the tenant or its network, even
/// while they fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_outage_moves_readiness_errors_and_durations() {
    if !std::path::Path::new(net_offload::sandbox::DEFAULT_SCHEMA).exists() {
        panic!("Open vSwitch is not installed: run scripts/setup.sh");
    }
    let dir = tempfile::Builder::new()
        .prefix("dpu-metrics")
        .tempdir_in("/tmp")
        .unwrap();
    let ovs = OvsSandbox::start(SandboxConfig {
        netns: Netns::Private,
        ..SandboxConfig::new(dir.path().join("ovs"))
    })
    .await
    .expect("Open vSwitch sandbox");
    let db = format!("unix:{}", ovs.db_socket().display());
    let agent = AgentProcess::start_with_env(&["--no-ovs"], &[("DPU_AGENT_OVS_DB", &db)]);
    let admin = agent.admin();
    let up = "dpu_agent_backend_up{backend=\"ovs\"}";

    // Apply.
    put_ok(&admin, Kind::Tenant, "tenant-secret-8", None, json!({})).await;
    put_ok(
        &admin,
        Kind::Network,
        "net-secret-8",
        Some("tenant-secret-8"),
        json!({"vni": 10, "cidr": "10.9.0.0/24", "encap": "local"}),
    )
    .await;
    let converged = scrape_until(&admin, "the switch converged", |t| {
        value(t, "dpu_agent_switch_converged") == Some(1.0)
    })
    .await;
    assert_eq!(value(&converged, up), Some(1.0), "{converged}");
    assert_eq!(value(&converged, "dpu_agent_ready"), Some(1.0));
    assert!(
        value0(&converged, "dpu_agent_switch_bundle_duration_seconds_count") >= 1.0,
        "{converged}"
    );
    assert!(
        value0(
            &converged,
            "dpu_agent_switch_ovsdb_transaction_duration_seconds_count"
        ) >= 1.0,
        "{converged}"
    );
    assert!(
        value(
            &converged,
            "dpu_agent_switch_bundle_duration_seconds_bucket{le=\"+Inf\"}"
        )
        .is_some()
    );

    // Break: the switch's database goes away; a change made meanwhile fails.
    ovs.stop_daemon(Daemon::OvsdbServer).await.unwrap();
    put_ok(
        &admin,
        Kind::Network,
        "net-secret-8b",
        Some("tenant-secret-8"),
        json!({"vni": 11, "cidr": "10.8.0.0/24", "encap": "local"}),
    )
    .await;
    let failing =
        "dpu_agent_reconcile_failing_objects{kind=\"networks\",reason=\"SwitchUnavailable\"}";
    let broken = scrape_until(&admin, "the outage seen", |t| {
        value(t, up) == Some(0.0) && value0(t, failing) >= 1.0
    })
    .await;
    assert_eq!(value(&broken, "dpu_agent_ready"), Some(0.0), "{broken}");
    assert!(
        value0(
            &broken,
            "dpu_agent_reconcile_errors_total{kind=\"networks\",reason=\"SwitchUnavailable\"}"
        ) >= 1.0,
        "{broken}"
    );
    assert!(
        value0(
            &broken,
            "dpu_agent_reconcile_duration_seconds_count{kind=\"networks\",outcome=\"error\"}"
        ) >= 1.0,
        "{broken}"
    );

    // Recover.
    ovs.start_daemon(Daemon::OvsdbServer).await.unwrap();
    let recovered = scrape_until(&admin, "the recovery seen", |t| {
        value(t, up) == Some(1.0)
            && value(t, "dpu_agent_ready") == Some(1.0)
            && value(t, "dpu_agent_switch_converged") == Some(1.0)
            && t.lines()
                .all(|l| !l.starts_with("dpu_agent_reconcile_failing_objects{"))
    })
    .await;
    assert!(
        !recovered.contains("secret-8"),
        "/metrics names the tenant's objects:\n{recovered}"
    );
    check_metrics(&recovered);
    drop(agent);
    drop(ovs);
}
