//! Two "DPUs" carry one tenant network over VXLAN: each DPU is an agent with
//! its own Open vSwitch in its own network namespace (created here), the two
//! joined by a veth underlay on a `br-phy` bridge (the userspace datapath's
//! tunnel uplink, set up with ovs-vsctl/ip as test scaffolding). Each agent
//! knows the other's port as an `endpoint`; a ping crosses the tunnel.

mod net_common;

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dpu_api::Kind;
use net_common::*;
use net_offload::sandbox::Netns;
use serde_json::json;

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Dpu {
    ns: String,
    vtep: &'static str,
    function: String,
    mac: &'static str,
    ip: &'static str,
}

fn dpu_thread(
    me: Dpu,
    peer: (&'static str, &'static str, &'static str),
    ready: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ns_path = format!("/run/netns/{}", me.ns);
        let f = std::fs::File::open(&ns_path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        run("ip", &["link", "set", "lo", "up"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dir = tempfile::Builder::new()
                .prefix("nv")
                .tempdir_in("/tmp")
                .unwrap();
            let ovs = start_ovs(&dir.path().join("ovs"), Netns::Path(ns_path.into())).await;
            let db = format!("--db=unix:{}", ovs.db_socket().display());
            let uplink = format!("u-{}", &me.ns[me.ns.len() - 5..]);
            run(
                "ovs-vsctl",
                &[
                    &db,
                    "add-br",
                    "br-phy",
                    "--",
                    "set",
                    "bridge",
                    "br-phy",
                    "datapath_type=netdev",
                    "--",
                    "add-port",
                    "br-phy",
                    &uplink,
                ],
            );
            run(
                "ip",
                &["addr", "add", &format!("{}/24", me.vtep), "dev", "br-phy"],
            );
            run("ip", &["link", "set", "br-phy", "up"]);
            let agent = Agent::start(&dir.path().join("state"), &ovs.db_socket(), &[]).await;
            let c = agent.client();
            put(&c, Kind::Tenant, "acme", "acme", json!({})).await;
            put(
                &c,
                Kind::Network,
                "net-x",
                "acme",
                json!({"vni": 300, "cidr": "10.30.0.0/24", "encap": "vxlan"}),
            )
            .await;
            put(
                &c,
                Kind::Function,
                &me.function,
                "acme",
                json!({"type": "net", "pf": "pf0", "mac": me.mac}),
            )
            .await;
            put(
                &c,
                Kind::Port,
                &me.function,
                "acme",
                json!({"network": "net-x", "function": me.function, "mac": me.mac,
                       "ips": [me.ip], "security": {"ingress": [{"protocol": "icmp"}]}}),
            )
            .await;
            put(
                &c,
                Kind::Endpoint,
                "peer",
                "acme",
                json!({"network": "net-x", "mac": peer.0, "ips": [peer.1], "vtep": peer.2}),
            )
            .await;
            agent
                .wait_object(Kind::Port, &me.function, Duration::from_secs(30), is_ready)
                .await;
            agent
                .wait_object(Kind::Endpoint, "peer", Duration::from_secs(10), is_ready)
                .await;
            let _ = ready.send(());
            // Until the test is done (or gave up and dropped the sender).
            let _ = done.recv();
            drop(agent);
            drop(ovs);
        });
    })
}

#[test]
fn two_dpus_ping_over_vxlan() {
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let (ns1, ns2) = (format!("dpu-v1-{tag}"), format!("dpu-v2-{tag}"));
    let (f1, f2) = (format!("x1{tag}"), format!("x2{tag}"));
    let _cleanup = Cleanup(vec![
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
    let t1 = dpu_thread(
        Dpu {
            ns: ns1.clone(),
            vtep: "192.168.99.1",
            function: f1.clone(),
            mac: m1,
            ip: "10.30.0.1",
        },
        (m2, "10.30.0.2", "192.168.99.2"),
        ready_tx.clone(),
        done1_rx,
    );
    let t2 = dpu_thread(
        Dpu {
            ns: ns2.clone(),
            vtep: "192.168.99.2",
            function: f2.clone(),
            mac: m2,
            ip: "10.30.0.2",
        },
        (m1, "10.30.0.1", "192.168.99.1"),
        ready_tx,
        done2_rx,
    );
    let both_ready = (0..2).all(|_| ready_rx.recv_timeout(Duration::from_secs(90)).is_ok());
    let (mut ok, mut back) = (false, false);
    if both_ready {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if succeeds(
                "ip",
                &[
                    "netns",
                    "exec",
                    &format!("dpu-fn-{f1}"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "10.30.0.2",
                ],
            ) {
                ok = true;
                break;
            }
        }
        back = ok
            && succeeds(
                "ip",
                &[
                    "netns",
                    "exec",
                    &format!("dpu-fn-{f2}"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "10.30.0.1",
                ],
            );
    }
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
