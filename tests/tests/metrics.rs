//! `/metrics` end to end: a real `dpu-agent dev --no-ovs`, scripted
//! workloads (apply, break an object and a backend, recover, a host stub's
//! report, anonymous probing), and the families the on-call person relies
//! on moving as they should. The text is linted with `promtool check
//! metrics` (Debian's `prometheus` package, installed by `scripts/setup.sh`).

use std::io::Write as _;
use std::process::{Command, Stdio};

use dpu_api::Kind;
use dpu_api::client::{Client, Method};
use dpu_api::identity::Role;
use dpu_api::object::{HostDevice, HostInventory};
use dpu_tests::agent::AgentProcess;
use net_offload::sandbox::{Daemon, Netns, OvsSandbox, SandboxConfig};
use serde_json::json;

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

fn tls_identity() -> (String, String) {
    let ca = dpu_agent::pki::Ca::generate("test service CA").unwrap();
    let id = ca
        .issue("spiffe://dpu.local/svc", &["svc.example"])
        .unwrap();
    (id.cert_pem, id.key_pem)
}

/// Lints `text` with `promtool check metrics`.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool cannot run ({e}): run scripts/setup.sh (Debian's prometheus package)")
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n/metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The workload moves every new family as expected, and the text passes
/// `promtool check metrics`.
///
/// TENANCY.md invariant 5 (no metric names a tenant's objects: the ids
/// written here never appear in `/metrics`) and invariant 6 (unauthenticated
/// clients cannot grow the metrics' label sets: fifty anonymous requests to
/// made-up paths add no series beyond the closed set of route templates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_workload_and_pass_promtool() {
    let agent = AgentProcess::start();
    let admin = agent.admin();
    let started = dpu_agent::metrics::unix_now();
    let before = scrape(&admin).await;
    assert_eq!(value(&before, "dpu_agent_ready"), Some(1.0), "{before}");
    let commits_before = value0(&before, "dpu_agent_store_commit_duration_seconds_count");

    // Apply: a tenant and a network (Pending: no switch with --no-ovs).
    admin
        .put(Kind::Tenant, "tenant-secret-7", None, json!({}), None)
        .await
        .unwrap();
    admin
        .put(
            Kind::Network,
            "net-secret-7",
            Some("tenant-secret-7"),
            json!({"vni": 100, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
            None,
        )
        .await
        .unwrap();
    // Break: two TLS listeners on one address of the tenant's context; the
    // second cannot bind.
    let (cert, key) = tls_identity();
    for id in ["tls-secret-7", "tls-secret-8"] {
        admin
            .put(
                Kind::TlsListener,
                id,
                Some("tenant-secret-7"),
                json!({"listen": "10.1.0.1:443", "upstream": "10.1.0.10:80",
                       "certificate_pem": cert, "private_key_pem": key, "ktls": "auto"}),
                None,
            )
            .await
            .unwrap();
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
    for secret in ["secret-7", "probe-"] {
        assert!(
            !probed.contains(secret),
            "/metrics names {secret:?}:\n{probed}"
        );
    }

    promtool_check(&probed);
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
    admin
        .put(Kind::Tenant, "tenant-secret-8", None, json!({}), None)
        .await
        .unwrap();
    admin
        .put(
            Kind::Network,
            "net-secret-8",
            Some("tenant-secret-8"),
            json!({"vni": 10, "cidr": "10.9.0.0/24", "encap": "local"}),
            None,
        )
        .await
        .unwrap();
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
    admin
        .put(
            Kind::Network,
            "net-secret-8b",
            Some("tenant-secret-8"),
            json!({"vni": 11, "cidr": "10.8.0.0/24", "encap": "local"}),
            None,
        )
        .await
        .unwrap();
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
    promtool_check(&recovered);
    drop(agent);
    drop(ovs);
}
