//! Two "DPUs" carry one tenant network over VXLAN: each DPU is an agent with
//! its own Open vSwitch in its own network namespace (created here), the two
//! joined by a veth underlay on a `br-phy` bridge (the userspace datapath's
//! tunnel uplink, set up with ovs-vsctl/ip as test scaffolding). Each agent
//! knows the other's port as an `endpoint`; a ping crosses the tunnel.

mod net_common;

use std::sync::mpsc;
use std::time::Duration;

use net_common::*;
use serde_json::json;

#[test]
fn two_dpus_ping_over_vxlan() {
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let (ns1, ns2) = (format!("dpu-v1-{tag}"), format!("dpu-v2-{tag}"));
    let (f1, f2) = (format!("x1{tag}"), format!("x2{tag}"));
    let _cleanup = NetnsCleanup(vec![
        format!("dpu-fn-{f1}"),
        format!("dpu-fn-{f2}"),
        ns1.clone(),
        ns2.clone(),
    ]);
    run("ip", &["netns", "add", &ns1]);
    run("ip", &["netns", "add", &ns2]);
    let (u1, u2) = (
        format!("u-{}", &ns1[ns1.len() - 5..]),
        format!("u-{}", &ns2[ns2.len() - 5..]),
    );
    run(
        "ip",
        &[
            "link", "add", &u1, "netns", &ns1, "type", "veth", "peer", "name", &u2, "netns", &ns2,
        ],
    );
    run("ip", &["-n", &ns1, "link", "set", &u1, "up"]);
    run("ip", &["-n", &ns2, "link", "set", &u2, "up"]);

    // Build first, so a build failure fails here with everything cleaned up.
    agent_bin();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done1_tx, done1_rx) = mpsc::channel();
    let (done2_tx, done2_rx) = mpsc::channel::<()>();
    let (m1, m2) = ("02:00:0a:1e:00:01", "02:00:0a:1e:00:02");
    let t1 = vxlan_dpu_thread(
        VxlanDpu {
            ns: ns1.clone(),
            vtep: "192.168.99.1",
            uplink: u1.clone(),
            function: f1.clone(),
            mac: m1,
            ip: "10.30.0.1",
            tenant: json!({}),
            vni: 300,
            ingress: json!([{"protocol": "icmp"}]),
        },
        (m2, "10.30.0.2", "192.168.99.2"),
        ready_tx.clone(),
        done1_rx,
    );
    let t2 = vxlan_dpu_thread(
        VxlanDpu {
            ns: ns2.clone(),
            vtep: "192.168.99.2",
            uplink: u2.clone(),
            function: f2.clone(),
            mac: m2,
            ip: "10.30.0.2",
            tenant: json!({}),
            vni: 300,
            ingress: json!([{"protocol": "icmp"}]),
        },
        (m1, "10.30.0.1", "192.168.99.1"),
        ready_tx,
        done2_rx,
    );
    let both_ready = (0..2).all(|_| ready_rx.recv_timeout(Duration::from_secs(90)).is_ok());
    let (fn1, fn2) = (format!("dpu-fn-{f1}"), format!("dpu-fn-{f2}"));
    let ok = both_ready && ping_within(&fn1, "10.30.0.2", Duration::from_secs(10));
    let back = ok
        && succeeds(
            "ip",
            &[
                "netns",
                "exec",
                &fn2,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "10.30.0.1",
            ],
        );
    drop(done1_tx);
    drop(done2_tx);
    let j1 = t1.join();
    let j2 = t2.join();
    if let Err(p) = j1.and(j2) {
        std::panic::resume_unwind(p);
    }
    assert!(both_ready, "the DPUs did not get ready");
    assert!(ok, "ping DPU1 -> DPU2 over VXLAN failed");
    assert!(back, "ping DPU2 -> DPU1 over VXLAN failed");
}
