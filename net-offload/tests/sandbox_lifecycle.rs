//! OvsSandbox against the real Open vSwitch daemons: files, readiness,
//! kill -9 and restart of each daemon, reuse of an existing database, and
//! cleanup on drop. Without Open vSwitch installed these tests fail, naming
//! the package to install.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use net_offload::ovsdb::{BridgeSpec, OvsdbClient, PortSpec, vswitch_monitor};
use net_offload::sandbox::{Daemon, Netns, OvsSandbox, SandboxConfig};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ovs-sandbox")
        .tempdir()
        .expect("create tempdir")
}

async fn start(config: SandboxConfig) -> OvsSandbox {
    OvsSandbox::start(config)
        .await
        .unwrap_or_else(|e| panic!("cannot start the OVS sandbox: {e} ({e:?})"))
}

/// Each test's ovs-vswitchd in its own network namespace: tap names
/// (`ovs-netdev`, `br-int`) would collide between parallel sandboxes.
fn private(dir: &Path) -> SandboxConfig {
    let mut config = SandboxConfig::new(dir);
    config.netns = Netns::Private;
    config
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn vsctl(db_socket: &Path, args: &[&str]) -> String {
    let out = Command::new("ovs-vsctl")
        .arg(format!("--db=unix:{}", db_socket.display()))
        .arg("--timeout=30")
        .args(args)
        .output()
        .expect("run ovs-vsctl; install Open vSwitch: apt-get install openvswitch-switch");
    assert!(
        out.status.success(),
        "ovs-vsctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn bridge() -> BridgeSpec {
    BridgeSpec {
        name: "br-int".into(),
        datapath_type: "netdev".into(),
        fail_mode: Some("secure".into()),
        protocols: vec!["OpenFlow14".into()],
        owner: "network/test".into(),
    }
}

#[tokio::test]
async fn starts_ready_and_stops_on_drop() {
    let dir = tempdir();
    let sandbox = start(private(dir.path())).await;
    for file in [
        "conf.db",
        "db.sock",
        "ovsdb.pid",
        "vswitchd.pid",
        "ovsdb.log",
        "vswitchd.log",
        "ovsdb.ctl",
        "vswitchd.ctl",
    ] {
        assert!(sandbox.dir().join(file).exists(), "{file} missing");
    }
    let pids = [
        sandbox
            .pid(Daemon::OvsdbServer)
            .expect("ovsdb-server running"),
        sandbox.pid(Daemon::Vswitchd).expect("ovs-vswitchd running"),
    ];
    // The root row was created (by our client) and ovs-vswitchd uses it.
    assert!(!vsctl(&sandbox.db_socket(), &["get", "Open_vSwitch", ".", "_uuid"]).is_empty());
    vsctl(
        &sandbox.db_socket(),
        &[
            "add-br",
            "br0",
            "--",
            "set",
            "Bridge",
            "br0",
            "datapath_type=netdev",
        ],
    );
    assert!(
        sandbox.mgmt_socket("br0").exists(),
        "ovs-vswitchd made the bridge's mgmt socket"
    );
    drop(sandbox);
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} still alive after drop");
    }
}

#[tokio::test]
async fn vswitchd_kill_9_and_restart_keeps_configuration() {
    let dir = tempdir();
    let sandbox = start(private(dir.path())).await;
    let client = OvsdbClient::connect(sandbox.client_config().with_monitor(vswitch_monitor()))
        .await
        .unwrap();
    client.ensure_bridge(&bridge()).await.unwrap();
    client
        .add_ports("br-int", &[PortSpec::internal("tap0", "port/tap0")])
        .await
        .unwrap();
    let ofport_of_tap0 = |client: &OvsdbClient| {
        client.read_replica(|r| {
            r.interfaces()
                .unwrap()
                .into_iter()
                .find(|i| i.name == "tap0")
                .and_then(|i| i.ofport)
        })
    };
    client
        .wait_for_replica(Duration::from_secs(30), |_| {
            ofport_of_tap0(&client).is_some_and(|p| p > 0)
        })
        .await
        .unwrap();

    let old = sandbox.pid(Daemon::Vswitchd).unwrap();
    sandbox.kill_daemon(Daemon::Vswitchd).await.unwrap();
    assert!(!process_alive(old));
    assert_eq!(sandbox.pid(Daemon::Vswitchd), None);

    sandbox.start_daemon(Daemon::Vswitchd).await.unwrap();
    let new = sandbox.pid(Daemon::Vswitchd).unwrap();
    assert_ne!(old, new);
    assert_eq!(
        vsctl(&sandbox.db_socket(), &["list-ports", "br-int"]),
        "tap0"
    );
    // The restarted switch opens the bridge again.
    let mgmt = sandbox.mgmt_socket("br-int");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !mgmt.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} not recreated",
            mgmt.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ovsdb_server_restart_and_database_reuse() {
    let dir = tempdir();
    {
        let sandbox = start(private(dir.path())).await;
        let client = OvsdbClient::connect(sandbox.client_config()).await.unwrap();
        client.ensure_bridge(&bridge()).await.unwrap();
        sandbox.restart_daemon(Daemon::OvsdbServer).await.unwrap();
        assert_eq!(vsctl(&sandbox.db_socket(), &["list-br"]), "br-int");
        sandbox.stop().await.unwrap();
        assert_eq!(sandbox.pid(Daemon::OvsdbServer), None);
    }
    // A second sandbox in the same directory keeps the database.
    let sandbox = start(private(dir.path())).await;
    assert_eq!(vsctl(&sandbox.db_socket(), &["list-br"]), "br-int");
}

#[tokio::test]
async fn vswitchd_in_a_network_namespace() {
    let name = format!("ovsdb-sbx-{}", std::process::id());
    let netns = NamedNetns::add(&name);
    let dir = tempdir();
    let mut config = SandboxConfig::new(dir.path());
    config.netns = Netns::Path(Path::new("/run/netns").join(&netns.0));
    let sandbox = start(config).await;
    let client = OvsdbClient::connect(sandbox.client_config()).await.unwrap();
    client.ensure_bridge(&bridge()).await.unwrap();
    client
        .add_ports("br-int", &[PortSpec::internal("nstap", "port/nstap")])
        .await
        .unwrap();
    // The tap of the internal port appears inside the namespace, not here.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let inside = Command::new("ip")
            .args(["netns", "exec", &netns.0, "ip", "link", "show", "nstap"])
            .output()
            .expect("run ip (iproute2)");
        if inside.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nstap never appeared in {}",
            netns.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !Path::new("/sys/class/net/nstap").exists(),
        "nstap leaked into the host namespace"
    );
}

/// A named network namespace, deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: &str) -> Self {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip netns add");
        assert!(status.success(), "ip netns add {name} failed (needs root)");
        NamedNetns(name.to_owned())
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
