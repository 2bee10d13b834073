//! The OVSDB client against a real ovsdb-server and ovs-vswitchd, each test in
//! its own OvsSandbox and tempdir (parallel-safe). `ovs-vsctl` and
//! `ovsdb-tool` serve as independent witnesses. Without Open vSwitch
//! installed these tests fail, naming the package to install.

use std::process::Command;
use std::time::Duration;

use net_offload::ovsdb::{
    BridgeSpec, Condition, Datum, OWNER_KEY, OvsdbClient, OvsdbError, PortSpec, Row, TransactError,
    Transaction, WaitUntil, owner_value, vswitch_monitor,
};
use net_offload::sandbox::{Daemon, Netns, OvsSandbox, SandboxConfig};

/// A sandbox and its directory; the sandbox (daemons) drops first.
struct Rig {
    sandbox: OvsSandbox,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::Builder::new()
        .prefix("ovsdb-test")
        .tempdir()
        .expect("create tempdir");
    // ovs-vswitchd in its own network namespace: tap names (`ovs-netdev`,
    // `br-int`, ports) would collide between parallel sandboxes.
    let mut config = SandboxConfig::new(dir.path());
    config.netns = Netns::Private;
    let sandbox = OvsSandbox::start(config)
        .await
        .unwrap_or_else(|e| panic!("cannot start the OVS sandbox: {}", chain(&e)));
    Rig { sandbox, _dir: dir }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs a witness program and returns its stdout; panics with stderr.
fn witness(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install Open vSwitch: apt-get install openvswitch-switch")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn vsctl(rig: &Rig, args: &[&str]) -> String {
    let db = format!("--db=unix:{}", rig.sandbox.db_socket().display());
    let mut all = vec![db.as_str(), "--timeout=30"];
    all.extend_from_slice(args);
    witness("ovs-vsctl", &all)
}

async fn monitored_client(rig: &Rig) -> OvsdbClient {
    OvsdbClient::connect(rig.sandbox.client_config().with_monitor(vswitch_monitor()))
        .await
        .unwrap_or_else(|e| panic!("connect: {}", chain(&e)))
}

fn br_int() -> BridgeSpec {
    BridgeSpec {
        name: "br-int".into(),
        datapath_type: "netdev".into(),
        fail_mode: Some("secure".into()),
        protocols: vec!["OpenFlow13".into(), "OpenFlow14".into()],
        owner: owner_value("network", "br-int"),
    }
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn list_dbs_and_schema() {
    let rig = rig().await;
    let client = OvsdbClient::connect(rig.sandbox.client_config())
        .await
        .unwrap();
    assert!(
        client
            .list_dbs()
            .await
            .unwrap()
            .contains(&"Open_vSwitch".to_owned())
    );
    let schema = client.get_schema("Open_vSwitch").await.unwrap();
    let fail_mode = schema.column("Bridge", "fail_mode").unwrap();
    assert!(!fail_mode.is_scalar() && !fail_mode.is_map());
    client.echo().await.unwrap();
    let err = client.get_schema("Nope").await.unwrap_err();
    assert!(matches!(err, OvsdbError::Rpc { .. }), "{err}");
}

#[tokio::test]
async fn bridge_and_100_internal_ports_in_one_transaction() {
    let rig = rig().await;
    let client = monitored_client(&rig).await;

    let uuid = client.ensure_bridge(&br_int()).await.unwrap();
    assert_eq!(
        client.ensure_bridge(&br_int()).await.unwrap(),
        uuid,
        "idempotent"
    );
    assert_eq!(
        vsctl(&rig, &["get", "Bridge", "br-int", "datapath_type"]),
        "netdev"
    );
    assert_eq!(
        vsctl(&rig, &["get", "Bridge", "br-int", "fail_mode"]),
        "secure"
    );
    assert_eq!(
        vsctl(&rig, &["get", "Bridge", "br-int", "protocols"]),
        "[OpenFlow13, OpenFlow14]"
    );
    assert_eq!(
        vsctl(
            &rig,
            &[
                "get",
                "Bridge",
                "br-int",
                &format!("external_ids:\"{OWNER_KEY}\"")
            ]
        ),
        "\"network/br-int\""
    );

    let ports: Vec<PortSpec> = (0..100)
        .map(|i| PortSpec::internal(&format!("p{i}"), &owner_value("port", &format!("p{i}"))))
        .collect();
    let uuids = client.add_ports("br-int", &ports).await.unwrap();
    assert_eq!(uuids.len(), 100);

    let listed = vsctl(&rig, &["list-ports", "br-int"]);
    assert_eq!(listed.lines().count(), 100, "{listed}");
    assert_eq!(
        vsctl(
            &rig,
            &[
                "get",
                "Port",
                "p42",
                &format!("external_ids:\"{OWNER_KEY}\"")
            ]
        ),
        "\"port/p42\""
    );
    assert_eq!(
        vsctl(&rig, &["get", "Interface", "p42", "type"]),
        "internal"
    );
    // One transaction: the database log holds our comment exactly once.
    let log = witness(
        "ovsdb-tool",
        &["show-log", &rig.sandbox.db_path().display().to_string()],
    );
    assert_eq!(
        log.matches("dpu-agent: add 100 ports to br-int").count(),
        1,
        "{log}"
    );

    // ovs-vswitchd really created the 100 tap devices (ofport assigned).
    client
        .wait_for_replica(WAIT, |r| {
            let ifaces = r.interfaces().unwrap();
            ifaces.iter().filter(|i| i.name.starts_with('p')).count() == 100
                && ifaces.iter().all(|i| i.ofport.is_some_and(|p| p > 0))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}; interfaces: {:?}",
                client.read_replica(|r| r.interfaces())
            )
        });
    assert!(rig.sandbox.mgmt_socket("br-int").exists());

    let removed: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = removed.iter().map(String::as_str).collect();
    assert_eq!(client.remove_ports("br-int", &names).await.unwrap(), 50);
    assert_eq!(client.remove_ports("br-int", &names).await.unwrap(), 0);
    assert_eq!(vsctl(&rig, &["list-ports", "br-int"]).lines().count(), 50);
    client
        .wait_for_replica(WAIT, |r| r.ports().unwrap().len() == 51)
        .await
        .unwrap();

    // Flow-based tunnels with options.
    let tunnels = [
        PortSpec::flow_tunnel("vx0", "vxlan", "tunnel/vx0"),
        PortSpec::flow_tunnel("gnv0", "geneve", "tunnel/gnv0"),
    ];
    client.add_ports("br-int", &tunnels).await.unwrap();
    assert_eq!(
        vsctl(&rig, &["get", "Interface", "vx0", "options"]),
        "{key=flow, remote_ip=flow}"
    );
    assert_eq!(vsctl(&rig, &["get", "Interface", "gnv0", "type"]), "geneve");

    let err = client
        .add_ports("br-missing", &tunnels[..1])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bridge br-missing does not exist in the Open_vSwitch database"
    );
    assert!(client.delete_bridge("br-int").await.unwrap());
    assert_eq!(vsctl(&rig, &["list-br"]), "");
}

#[tokio::test]
async fn monitor_sees_changes_made_by_ovs_vsctl() {
    let rig = rig().await;
    let client = monitored_client(&rig).await;
    let mut changes = client.replica_changes();
    changes.borrow_and_update();

    vsctl(
        &rig,
        &[
            "add-br",
            "br-x",
            "--",
            "set",
            "Bridge",
            "br-x",
            "datapath_type=netdev",
        ],
    );
    changes.changed().await.unwrap();
    client
        .wait_for_replica(WAIT, |r| r.bridge_by_name("br-x").unwrap().is_some())
        .await
        .unwrap();

    vsctl(
        &rig,
        &["set", "Port", "br-x", "tag=5", "external_ids:team=blue"],
    );
    client
        .wait_for_replica(WAIT, |r| {
            r.ports().unwrap().iter().any(|p| {
                p.name == "br-x"
                    && p.tag == Some(5)
                    && p.external_ids.get("team").is_some_and(|t| t == "blue")
            })
        })
        .await
        .unwrap();

    // Optional column back to empty, map key removed: update2 diffs.
    vsctl(
        &rig,
        &[
            "clear",
            "Port",
            "br-x",
            "tag",
            "--",
            "remove",
            "Port",
            "br-x",
            "external_ids",
            "team",
        ],
    );
    client
        .wait_for_replica(WAIT, |r| {
            r.ports()
                .unwrap()
                .iter()
                .any(|p| p.name == "br-x" && p.tag.is_none() && p.external_ids.is_empty())
        })
        .await
        .unwrap();

    vsctl(&rig, &["del-br", "br-x"]);
    client
        .wait_for_replica(WAIT, |r| {
            r.bridges().unwrap().is_empty() && r.ports().unwrap().is_empty()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn reconnects_and_resyncs_after_ovsdb_server_restart() {
    let rig = rig().await;
    let client = monitored_client(&rig).await;
    let mut session = client.session();
    assert_eq!(session.borrow_and_update().epoch, 1);
    client.ensure_bridge(&br_int()).await.unwrap();
    client
        .add_ports("br-int", &[PortSpec::internal("keep", "port/keep")])
        .await
        .unwrap();

    rig.sandbox.kill_daemon(Daemon::OvsdbServer).await.unwrap();
    session.wait_for(|s| !s.connected).await.unwrap();
    let err = client.list_dbs().await.unwrap_err();
    assert!(matches!(err, OvsdbError::NotConnected { .. }), "{err}");

    // Change the database while the server is down: only a full resync can
    // show this to the client.
    let db = rig.sandbox.db_path().display().to_string();
    witness(
        "ovsdb-tool",
        &[
            "transact",
            &db,
            r#"["Open_vSwitch",{"op":"update","table":"Bridge","where":[["name","==","br-int"]],
               "row":{"external_ids":["map",[["changed","offline"]]]}}]"#,
        ],
    );

    rig.sandbox.start_daemon(Daemon::OvsdbServer).await.unwrap();
    tokio::time::timeout(WAIT, session.wait_for(|s| s.connected && s.epoch == 2))
        .await
        .expect("reconnect within a minute")
        .unwrap();
    client
        .wait_for_replica(WAIT, |r| {
            r.bridge_by_name("br-int").unwrap().is_some_and(|b| {
                b.external_ids
                    .get("changed")
                    .is_some_and(|v| v == "offline")
            }) && r.ports().unwrap().iter().any(|p| p.name == "keep")
        })
        .await
        .unwrap();

    // And the live monitor works on the new session.
    vsctl(
        &rig,
        &[
            "add-port",
            "br-int",
            "late",
            "--",
            "set",
            "Interface",
            "late",
            "type=internal",
        ],
    );
    client
        .wait_for_replica(WAIT, |r| {
            r.ports().unwrap().iter().any(|p| p.name == "late")
        })
        .await
        .unwrap();

    // A graceful restart too.
    rig.sandbox
        .restart_daemon(Daemon::OvsdbServer)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, session.wait_for(|s| s.connected && s.epoch == 3))
        .await
        .expect("reconnect after restart")
        .unwrap();
    assert_eq!(
        client.list_dbs().await.unwrap().first().map(String::as_str),
        Some("Open_vSwitch")
    );
}

#[tokio::test]
async fn transaction_errors_name_the_failing_operation() {
    let rig = rig().await;
    let client = OvsdbClient::connect(rig.sandbox.client_config())
        .await
        .unwrap();
    client.ensure_bridge(&br_int()).await.unwrap();

    // wait with timeout 0 on a condition that does not hold: operation 1.
    let mut txn = Transaction::new("Open_vSwitch");
    txn.comment("first");
    txn.wait(
        "Bridge",
        vec![Condition::eq("name", "br-int")],
        &["fail_mode"],
        WaitUntil::Equal,
        vec![Row::from([(
            "fail_mode".to_owned(),
            Datum::set(["standalone"]),
        )])],
        Some(0),
    );
    txn.comment("never reached");
    let err = client.transact(&txn).await.unwrap_err();
    let OvsdbError::Transact(TransactError::Operation {
        index, op, error, ..
    }) = &err
    else {
        panic!("unexpected {err}");
    };
    assert_eq!(
        (*index, op.as_str(), error.as_str()),
        (1, "wait on Bridge", "timed out")
    );

    // Unknown table: the server's error and details are kept.
    let mut txn = Transaction::new("Open_vSwitch");
    txn.select("NoSuchTable", vec![], None);
    let err = client.transact(&txn).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("operation 0 (select from NoSuchTable) failed:"),
        "{err}"
    );

    // abort is an error by definition.
    let mut txn = Transaction::new("Open_vSwitch");
    txn.abort();
    let err = client.transact(&txn).await.unwrap_err();
    assert!(
        matches!(err, OvsdbError::Transact(TransactError::Operation { index: 0, ref error, .. }) if error == "aborted"),
        "{err}"
    );

    // A duplicate port name violates the index at commit: the extra element.
    let dup = [
        PortSpec::internal("dup", "port/dup"),
        PortSpec::internal("dup", "port/dup"),
    ];
    let err = client.add_ports("br-int", &dup).await.unwrap_err();
    assert!(err.to_string().contains("constraint violation"), "{err}");
    assert_eq!(
        vsctl(&rig, &["list-ports", "br-int"]),
        "",
        "nothing committed"
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_connection() {
    let rig = rig().await;
    let client = OvsdbClient::connect(rig.sandbox.client_config())
        .await
        .unwrap();
    client.ensure_bridge(&br_int()).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let name = format!("c{i}");
                client
                    .add_ports(
                        "br-int",
                        &[PortSpec::internal(&name, &format!("port/{name}"))],
                    )
                    .await
                    .map(|uuids| uuids.len())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1);
    }
    assert_eq!(vsctl(&rig, &["list-ports", "br-int"]).lines().count(), 20);
}
