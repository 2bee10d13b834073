//! The host stub against a real `dpu-agent` process (dev mode, real mTLS;
//! the stub's certificate is issued by the agent's CA for
//! `spiffe://dpu.local/host-stub/node-1`), with a BlueField-shaped sysfs tree
//! in a tempdir:
//!
//! - the stub reports; the agent records for the assigned function the
//!   host-side address and netdev the stub discovered
//!   (`status.host_pci_address`, `status.host_device`), and the stub writes
//!   the function's CDI spec from the watched assignment;
//! - the agent killed: the functions turn unhealthy within the lease;
//!   restarted: healthy again and the inventory reported again;
//! - the stub's certificate cannot read or write tenants' objects, see the
//!   fleet inventory, or report for another host.
//!
//! The agent runs with the veth functions simulator (the function must be
//! made for its status to be written), which needs root for its network
//! namespace; the test deletes the function and removes the namespace on
//! every path.

mod common;

use std::path::Path;
use std::time::Duration;

use common::bluefield3_pf;
use dpu_api::Kind;
use dpu_api::identity::Role;
use dpu_api::object::{HostDevice, HostInventory, Object};
use dpu_tests::agent::AgentProcess;
use host_stub::cdi::{self, CdiOptions, CdiSpec};
use host_stub::daemon::{Daemon, DaemonSettings};
use host_stub::fixture::SysfsTree;
use host_stub::report::Health;
use host_stub::selectors;
use serde_json::json;

const FUNCTION: &str = "hs-web";

/// Removes the function's namespace if the test stops before the agent did.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A BlueField-3 PF with 4 VFs on mlx5_core, each with a netdev.
fn tree(root: &Path) -> SysfsTree {
    let tree = SysfsTree::new(root).unwrap();
    bluefield3_pf(&tree, "ens1f0np0", 4, "ens1f0v");
    tree
}

async fn eventually<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_str(o: &Object, field: &str) -> Option<String> {
    // Through the wire form, as any client reads it.
    serde_json::to_value(&o.status)
        .ok()?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_reports_agent_records_host_side_and_lease_follows_the_agent() {
    // The veth simulator's namespace name (net_offload::functions::naming).
    let _netns = NetnsGuard(format!("dpu-fn-{FUNCTION}"));
    let mut agent =
        AgentProcess::start_with_env(&["--no-ovs"], &[("DPU_AGENT_FUNCTIONS_BACKEND", "veth")]);
    let admin = agent.admin();
    admin
        .put(Kind::Tenant, "acme", None, json!({}), None)
        .await
        .unwrap();
    admin
        .put(
            Kind::Function,
            FUNCTION,
            Some("acme"),
            json!({"type": "net", "pf": "pf0", "vf": 2, "host": "node-1", "mac": "02:00:00:00:10:02"}),
            None,
        )
        .await
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let cdi_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let _tree = tree(root.path());
    let lease = Duration::from_secs(3);
    let settings = DaemonSettings {
        sysfs_root: root.path().to_path_buf(),
        state_dir: state.path().to_path_buf(),
        cdi_dir: cdi_dir.path().to_path_buf(),
        cdi: CdiOptions::default(),
        selectors: selectors::bluefield_defaults(),
        rescan_interval: Duration::from_secs(1),
        lease,
        retry: Duration::from_millis(500),
        resource_domain: "dpu.local".into(),
    };
    let stub_client = agent.client_for(&Role::HostStub("node-1".into()));
    let daemon = Daemon::new(stub_client, settings);
    let mut health = daemon.health();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(daemon.run(stop_rx, None));

    // The agent learns where the host sees the function from the report.
    let f = eventually(
        "host_pci_address in the function's status",
        60,
        async || {
            let o = admin.get(Kind::Function, FUNCTION).await.ok()?;
            status_str(&o, "host_pci_address").map(|_| o)
        },
    )
    .await;
    assert_eq!(status_str(&f, "host_pci_address").unwrap(), "0000:03:00.4");
    assert_eq!(status_str(&f, "host_device").unwrap(), "ens1f0v2");
    let inv = admin.inventory().await.unwrap();
    let reported_at = inv.hosts[0].reported_at.clone();
    assert_eq!(inv.hosts[0].host, "node-1");
    assert_eq!(inv.hosts[0].devices.len(), 5);

    // The stub follows the watched assignment: a CDI spec for the VF.
    let spec: CdiSpec = eventually("the CDI spec", 30, async || {
        let bytes = std::fs::read(cdi_dir.path().join(cdi::file_name(FUNCTION))).ok()?;
        serde_json::from_slice(&bytes).ok()
    })
    .await;
    let edits = &spec.devices[0].container_edits;
    assert!(
        edits
            .env
            .iter()
            .any(|e| e == "DPU_PCI_ADDRESS=0000:03:00.4"),
        "{edits:?}"
    );
    assert_eq!(edits.net_devices.len(), 1, "{edits:?}");

    // The agent goes away: unhealthy within the lease (plus one rescan).
    assert_eq!(*health.borrow(), Health::Healthy);
    agent.kill9();
    tokio::time::timeout(lease + Duration::from_secs(5), async {
        while *health.borrow_and_update() != Health::Unhealthy {
            health.changed().await.unwrap();
        }
    })
    .await
    .expect("unhealthy within the lease");

    // Back: healthy, and the inventory reported again.
    agent.restart();
    tokio::time::timeout(Duration::from_secs(30), async {
        while *health.borrow_and_update() != Health::Healthy {
            health.changed().await.unwrap();
        }
    })
    .await
    .expect("healthy once the agent is back");
    let admin = agent.admin();
    eventually("a new report", 30, async || {
        let inv = admin.inventory().await.ok()?;
        (inv.hosts[0].reported_at > reported_at).then_some(())
    })
    .await;

    // The stub's own certificate has no authority beyond its host.
    let stub = agent.client_for(&Role::HostStub("node-1".into()));
    let code = |e: dpu_api::client::ClientError| e.status();
    assert_eq!(
        code(stub.get(Kind::Tenant, "acme").await.unwrap_err()),
        Some(403)
    );
    assert_eq!(
        code(stub.get(Kind::Function, FUNCTION).await.unwrap_err()),
        Some(403)
    );
    assert_eq!(
        code(stub.list(Kind::Function, Some("acme")).await.unwrap_err()),
        Some(403)
    );
    assert_eq!(
        code(
            stub.put(
                Kind::Function,
                "hs-evil",
                Some("acme"),
                json!({"type": "net", "pf": "pf0", "host": "node-1"}),
                None
            )
            .await
            .unwrap_err()
        ),
        Some(403)
    );
    assert_eq!(
        code(stub.delete(Kind::Function, FUNCTION).await.unwrap_err()),
        Some(403)
    );
    assert_eq!(code(stub.inventory().await.unwrap_err()), Some(403));
    // Naming another host in a report does not make it that host's.
    stub.put_host_inventory(&HostInventory {
        host: Some("node-2".into()),
        devices: vec![HostDevice {
            pci_address: "0000:99:00.0".into(),
            class: "pf".into(),
            ..HostDevice::default()
        }],
    })
    .await
    .unwrap();
    let hosts: Vec<String> = admin
        .inventory()
        .await
        .unwrap()
        .hosts
        .into_iter()
        .map(|h| h.host)
        .collect();
    assert_eq!(hosts, ["node-1"]);
    // Another host's stub sees nothing of node-1's.
    let other = agent.client_for(&Role::HostStub("node-2".into()));
    assert!(other.host_assignments().await.unwrap().items.is_empty());

    stop_tx.send(true).unwrap();
    task.await.unwrap();
    admin.delete(Kind::Function, FUNCTION).await.unwrap();
    eventually("the function deleted", 30, async || {
        admin
            .get(Kind::Function, FUNCTION)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}
