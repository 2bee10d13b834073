//! The switch reconciler against a real ovsdb-server + ovs-vswitchd
//! (userspace datapath, private sandbox and network namespace per test).
//! `ovs-ofctl`/`ovs-vsctl` are the independent witnesses.

#[path = "common/openflow_rig.rs"]
mod rig;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_offload::openflow::{Flow, text::parse_dump_flows};
use net_offload::pipeline::{
    DesiredNetworking, Encap, EndpointDesc, NetworkDesc, Owner, OwnerKind, PortDesc, QosDesc,
    RuleDesc, RuleProtocol, SecurityDesc, is_agent_cookie,
};
use net_offload::sandbox::Daemon;
use net_offload::switch::{
    InputChange, Pass, Phase, SwitchConfig, SwitchHandle, SwitchInput, SwitchReport,
};
use rig::{BRIDGE, Rig};
use tokio::sync::watch;

fn input(version: u64) -> SwitchInput {
    let port = |id: &str, last: u8, ingress: Vec<RuleDesc>| {
        Arc::new(PortDesc {
            id: id.into(),
            tenant: "acme".into(),
            network: "net-a".into(),
            mac: [2, 0, 0, 0, 0, last],
            ips: vec![Ipv4Addr::new(10, 0, 0, last)],
            security: SecurityDesc {
                ingress,
                egress: None,
            },
            qos: None,
            representor: Some(format!("rep-{id}")),
            ofport: None,
        })
    };
    SwitchInput {
        version,
        networking: DesiredNetworking {
            networks: vec![NetworkDesc {
                id: "net-a".into(),
                tenant: "acme".into(),
                vni: 100,
                encap: Encap::Vxlan,
            }],
            ports: vec![
                port(
                    "web",
                    1,
                    vec![RuleDesc {
                        protocol: RuleProtocol::Tcp,
                        cidr: None,
                        ports: Some((80, 80)),
                    }],
                ),
                port("db", 2, vec![]),
            ],
            endpoints: vec![EndpointDesc {
                id: "far".into(),
                tenant: "acme".into(),
                network: "net-a".into(),
                mac: [2, 0, 0, 0, 9, 9],
                ips: vec![Ipv4Addr::new(10, 0, 0, 99)],
                vtep: Ipv4Addr::new(192, 168, 50, 2),
            }],
            tunnel_ofports: BTreeMap::new(),
        },
        by_network: None,
        by_representor: Default::default(),
        changed: None,
    }
}

/// `next`, saying which networks' inputs differ from `prev`'s (as the
/// agent says it): passes after a successful one look only at those.
fn changed_since(prev: &SwitchInput, mut next: SwitchInput) -> SwitchInput {
    let mut sorted = next.clone();
    sorted.networking.ports.sort_by(|a, b| a.id.cmp(&b.id));
    let mut before = prev.clone();
    before.networking.ports.sort_by(|a, b| a.id.cmp(&b.id));
    next.networking.ports.sort_by(|a, b| a.id.cmp(&b.id));
    next.changed = sorted
        .changed_networks(&before)
        .map(|networks| InputChange {
            since: prev.version,
            networks,
        });
    assert!(next.changed.is_some(), "ids are distinct");
    next
}

/// Representor stand-ins: internal ports `rep-web` and `rep-db` attached by
/// "someone else" (no owner), in one ovs-vsctl call with `more` after them.
fn attach_representors(rig: &Rig, more: &[&str]) {
    let mut args = vec![];
    for rep in ["rep-web", "rep-db"] {
        if !args.is_empty() {
            args.push("--");
        }
        args.extend([
            "add-port",
            BRIDGE,
            rep,
            "--",
            "set",
            "interface",
            rep,
            "type=internal",
        ]);
    }
    args.extend(more);
    rig.vsctl(&args);
}

fn agent_flows(rig: &Rig) -> Vec<Flow> {
    parse_dump_flows(&rig.ofctl("dump-flows", &[]))
        .expect("parse dump")
        .into_iter()
        .filter(|f| is_agent_cookie(f.cookie))
        .collect()
}

async fn wait_report(
    handle: &SwitchHandle,
    within: Duration,
    what: &str,
    pred: impl Fn(&SwitchReport) -> bool,
) -> std::sync::Arc<SwitchReport> {
    let deadline = Instant::now() + within;
    loop {
        let r = handle.report();
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: last report {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_flows(rig: &Rig, want: usize, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let n = agent_flows(rig).len();
        if n == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: {n} of {want} flows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_is_idempotent_and_repairs_drift() {
    let rig = Rig::start().await;
    attach_representors(&rig, &[]);
    let (stop_tx, stop) = watch::channel(false);
    let config = SwitchConfig {
        db: rig.sandbox.db_endpoint(),
        bridge: BRIDGE.into(),
        datapath_type: "netdev".into(),
        hw_offload: false,
        mgmt_socket: rig.mgmt(),
        period: Duration::from_millis(300),
        rundir: Some(rig.sandbox.dir().to_path_buf()),
    };
    let handle = SwitchHandle::spawn(config.clone(), stop);
    handle.set_input(input(1));
    let r = wait_report(&handle, Duration::from_secs(10), "programmed", |r| {
        r.version == 1
            && r.programmed
            && r.ports["web"].ofport.is_some()
            && r.openflow_connected
            && r.flows_of(net_offload::pipeline::OwnerKind::Endpoint, "far") > 0
    })
    .await;
    let total: usize = r.flows.values().sum();
    assert_eq!(agent_flows(&rig).len(), total, "ovs-ofctl sees every flow");
    assert!(r.ports["web"].flows > 0);
    // The passes' time is split into phases: this one created the bridge
    // and the tunnel port, dumped the fresh connection's flows, compiled,
    // diffed and sent one bundle.
    for phase in [
        Phase::Ovsdb,
        Phase::Dump,
        Phase::Compile,
        Phase::Diff,
        Phase::Bundle,
    ] {
        assert!(
            r.phase(Pass::Change, phase).count() > 0,
            "{}: {:?}",
            phase.as_str(),
            r.phases
        );
    }
    assert_eq!(
        r.phase(Pass::Change, Phase::Bundle).count(),
        r.bundle_durations.count()
    );
    // Bridge as the agent wants it; tunnel port created with its owner.
    assert_eq!(
        rig.vsctl(&["get", "bridge", BRIDGE, "fail_mode"]).trim(),
        "secure"
    );
    assert!(
        rig.vsctl(&["get", "interface", "dpu-vxlan", "external_ids"])
            .contains("tunnel/vxlan")
    );
    // An operator's flow in another cookie space is left alone.
    rig.ofctl(
        "add-flow",
        &["table=99,priority=1,cookie=0x77,actions=drop"],
    );

    // A new input version with the same content: nothing is sent.
    let sent = r.flow_mods_sent;
    handle.set_input(input(2));
    let r = wait_report(&handle, Duration::from_secs(5), "v2", |r| {
        r.version == 2 && r.programmed
    })
    .await;
    assert_eq!(r.flow_mods_sent, sent, "unchanged flows were re-sent");
    // An OVSDB change that moves none of the bridge's ports or ofports
    // wakes the reconciler, which reads the replica and plans nothing.
    let diffs = r.phase(Pass::Change, Phase::Diff).count();
    let reads = r.phase(Pass::Change, Phase::Replica).count();
    rig.vsctl(&["set", "Open_vSwitch", ".", "external_ids:pass-test=1"]);
    let r = wait_report(&handle, Duration::from_secs(5), "replica pass", |r| {
        r.phase(Pass::Change, Phase::Replica).count() > reads
    })
    .await;
    assert_eq!(r.phase(Pass::Change, Phase::Diff).count(), diffs);
    assert!(r.programmed && r.version == 2);
    assert!(
        handle.plan(&input(3)).is_empty(),
        "{:?}",
        handle.plan(&input(3))
    );
    assert!(
        rig.ofctl("dump-flows", &["table=99"])
            .contains("cookie=0x77")
    );

    // A second reconciler (the agent restarted): while it has no input it
    // changes nothing, and with the same input it sends no flow_mod.
    let tunnel_ofport = rig.vsctl(&["get", "interface", "dpu-vxlan", "ofport"]);
    let (stop2_tx, stop2) = watch::channel(false);
    let second = SwitchHandle::spawn(config.clone(), stop2);
    // It connects (so the agent's /readyz can say the switch is up)...
    wait_report(
        &second,
        Duration::from_secs(5),
        "second reconciler connects",
        |r| r.version == 0 && r.ovsdb_connected && r.openflow_connected,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(agent_flows(&rig).len(), total);
    second.set_input(input(1));
    let r2 = wait_report(&second, Duration::from_secs(5), "second reconciler", |r| {
        r.version == 1 && r.programmed
    })
    .await;
    assert_eq!(r2.flow_mods_sent, 0, "a restarted reconciler re-sent flows");
    assert_eq!(
        r2.ovsdb_transaction_durations.count(),
        0,
        "a restarted reconciler wrote to OVSDB"
    );
    assert_eq!(r2.phase(Pass::Change, Phase::Bundle).count(), 0);
    assert!(r2.phase(Pass::Change, Phase::Dump).count() > 0);
    assert_eq!(
        rig.vsctl(&["get", "interface", "dpu-vxlan", "ofport"]),
        tunnel_ofport
    );
    let _ = stop2_tx.send(true);

    // Drift: a flow deleted by hand comes back within 1 s.
    // (The repair can land before a dump here could see the hole, so the
    // witness is the reconciler sending the flow again, not a dump.)
    let sent_before = handle.report().flow_mods_sent;
    rig.ofctl("del-flows", &["--strict", "table=60,priority=100,reg7=1"]);
    let took = wait_flows(&rig, total, Duration::from_secs(1), "drift repair").await;
    wait_report(&handle, Duration::from_secs(1), "drift repair sent", |r| {
        r.flow_mods_sent > sent_before
    })
    .await;
    eprintln!("drift repaired in {took:?}");

    // ovs-vswitchd killed and restarted: flows back within 2 s.
    rig.sandbox.kill_daemon(Daemon::Vswitchd).await.unwrap();
    rig.sandbox.start_daemon(Daemon::Vswitchd).await.unwrap();
    let took = wait_flows(
        &rig,
        total,
        Duration::from_secs(2),
        "after vswitchd restart",
    )
    .await;
    eprintln!("reprogrammed after ovs-vswitchd restart in {took:?}");

    // ovsdb-server restarted: the client resyncs and a removed port is seen.
    rig.sandbox
        .restart_daemon(Daemon::OvsdbServer)
        .await
        .unwrap();
    let mut v3 = input(3);
    v3.networking.ports.retain(|p| p.id != "db");
    handle.set_input(v3);
    let r = wait_report(
        &handle,
        Duration::from_secs(10),
        "v3 after ovsdb restart",
        |r| r.version == 3 && r.programmed && !r.ports.contains_key("db"),
    )
    .await;
    let left: usize = r.flows.values().sum();
    wait_flows(&rig, left, Duration::from_secs(2), "db's flows deleted").await;
    let _ = stop_tx.send(true);

    // An agent started while ovsdb-server is not answering yet (its first
    // session is being set up, as on a restart beside a slow one): its
    // input gets no failed report within the first-session grace, only the
    // programmed one once OVSDB answers. (A failed report would turn every
    // network Degraded and back: a status write per object.)
    rig.sandbox.stop_daemon(Daemon::OvsdbServer).await.unwrap();
    let (stop3_tx, stop3) = watch::channel(false);
    let third = SwitchHandle::spawn(config.clone(), stop3);
    let mut reports = third.subscribe();
    let mut v3 = input(3);
    v3.networking.ports.retain(|p| p.id != "db");
    third.set_input(v3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.sandbox.start_daemon(Daemon::OvsdbServer).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = reports.borrow_and_update().clone();
        assert!(
            r.version == 0 || r.programmed,
            "a failed report during the first-session grace: {:?}",
            r.error
        );
        if r.version == 3 {
            break;
        }
        tokio::time::timeout_at(deadline, reports.changed())
            .await
            .expect("the third reconciler programmed v3 within 10 s")
            .unwrap();
    }
    assert_eq!(third.report().flow_mods_sent, 0);
    let _ = stop3_tx.send(true);
}

/// The plan shown is what a pass executes: for each change, the lines
/// `SwitchHandle::plan` gives beforehand (computed from what the reconciler
/// last observed) equal, line for line, what the next pass sent and had
/// acknowledged (`SwitchReport::applied`, written by the executor as each
/// OVSDB transaction, meter mod and bundle is accepted) — bridge and
/// `hw-offload`, meters, flows. ovs-vsctl and ovs-ofctl witness the result.
/// (Isolation invariant 1 of TENANCY.md rests on this: what an operator
/// reviews with `/v1/plan` is what reaches the switch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_is_what_the_pass_executes() {
    let rig = Rig::start().await;
    // And the operator set the bridge standalone.
    attach_representors(
        &rig,
        &["--", "set", "bridge", BRIDGE, "fail_mode=standalone"],
    );
    let (_stop_tx, stop) = watch::channel(false);
    let config = SwitchConfig {
        db: rig.sandbox.db_endpoint(),
        bridge: BRIDGE.into(),
        datapath_type: "netdev".into(),
        hw_offload: true,
        mgmt_socket: rig.mgmt(),
        period: Duration::from_millis(300),
        rundir: Some(rig.sandbox.dir().to_path_buf()),
    };
    let handle = SwitchHandle::spawn(config, stop);
    // Before any input the reconciler only makes the bridge right: the
    // operator's `standalone` goes back to `secure`, hw-offload is set.
    let r = wait_report(&handle, Duration::from_secs(10), "bridge", |r| {
        r.applied.len() == 2
    })
    .await;
    assert_eq!(
        *r.applied,
        [
            format!(
                "ovsdb: ensure Bridge {BRIDGE} datapath_type=netdev fail_mode=secure protocols=OpenFlow13,OpenFlow14 external_ids:dpu-agent/owner=bridge/{BRIDGE}"
            ),
            "ovsdb: set Open_vSwitch other_config:hw-offload=true".to_string(),
        ]
    );
    assert_eq!(
        rig.vsctl(&["get", "bridge", BRIDGE, "fail_mode"]).trim(),
        "secure"
    );
    assert_eq!(
        rig.vsctl(&["get", "Open_vSwitch", ".", "other_config:hw-offload"])
            .trim(),
        "\"true\""
    );
    // Once the replica has the change, no plan touches the bridge.
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle
        .plan(&input(1))
        .iter()
        .any(|l| l.starts_with("ovsdb: ensure Bridge"))
    {
        assert!(
            Instant::now() < deadline,
            "the bridge stays in the plan: {:#?}",
            handle.plan(&input(1))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    handle.set_input(input(1));
    // Converged in full: the endpoint's flows need the tunnel port's
    // ofport, which may come a pass after the ports' (a plan made before
    // would lack them, and the next pass would add them).
    let far = Owner::new(OwnerKind::Endpoint, "far");
    let r = wait_report(&handle, Duration::from_secs(10), "v1", |r| {
        r.version == 1
            && r.programmed
            && r.ports.values().all(|p| p.flows > 0)
            && r.flows.get(&far).is_some_and(|n| *n > 0)
    })
    .await;
    let ofport = r.ports["web"].ofport.expect("web has an ofport");

    let with_qos = |version, rate: Option<u32>| {
        let mut i = input(version);
        Arc::make_mut(&mut i.networking.ports[0]).qos = rate.map(|r| QosDesc {
            max_rate_kbps: r,
            burst_kbits: r / 10,
        });
        i
    };
    let mut prev = None;
    for (version, rate, meter) in [
        (
            2,
            Some(1000),
            format!("set meter meter={ofport},kbps,burst,band=type=drop,rate=1000,burst_size=100"),
        ),
        (
            3,
            Some(2000),
            format!("set meter meter={ofport},kbps,burst,band=type=drop,rate=2000,burst_size=200"),
        ),
        (4, None, format!("delete meter meter={ofport}")),
    ] {
        let next = changed_since(&with_qos(version - 1, prev), with_qos(version, rate));
        prev = rate;
        let plan = handle.plan(&next);
        assert!(
            plan.contains(&meter),
            "v{version}: {meter} not in {plan:#?}"
        );
        // Adding or removing the meter changes the port's flows (they jump
        // through it); changing its rate changes the meter alone.
        let flows_change = plan.iter().any(|l| {
            l.starts_with("add flow")
                || l.starts_with("delete flow")
                || l.starts_with("modify flow")
        });
        assert_eq!(flows_change, version != 3, "v{version}: {plan:#?}");
        handle.set_input(next);
        let r = wait_report(&handle, Duration::from_secs(10), "converged", |r| {
            r.version == version && r.programmed
        })
        .await;
        assert_eq!(*r.applied, plan, "v{version}: executed differs from plan");
        let meters = rig.ofctl("dump-meters", &[]);
        match rate {
            Some(rate) => assert!(
                meters.contains(&format!("meter={ofport} kbps burst"))
                    && meters.contains(&format!("rate={rate}")),
                "v{version}: ovs-ofctl dump-meters:\n{meters}"
            ),
            None => assert!(
                !meters.contains(&format!("meter={ofport} ")),
                "v{version}: meter left behind:\n{meters}"
            ),
        }
        assert!(
            handle.plan(&with_qos(version, rate)).is_empty(),
            "converged, yet the plan is not empty"
        );
    }
}
