//! Two tenants on one switch, with real packets: functions via the `veth`
//! simulator (namespaces `dpu-fn-<id>`), the agent and its OVS inside a
//! private network namespace this test creates. Ping works inside a tenant
//! network; a cross-tenant packet and a spoofed source are dropped; a
//! security rule opening tcp/80 admits exactly that (a real TCP connection,
//! while tcp/81 on the same host is refused by the switch).
//!
//! The whole test runs on one thread that entered that namespace, so the
//! agent (a child process), the sandbox and the API client all live there;
//! every packet stays between namespaces this test created.

mod net_common;

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::WatchFilter;
use dpu_tests::agent::metric;
use dpu_tests::fixtures::put_net_function_and_port;
use futures_util::StreamExt;
use net_common::*;
use net_offload::sandbox::Netns;
use serde_json::json;

/// The namespaces this test made, removed on drop (on every path).
struct Cleanup {
    netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child process killed on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> bool {
    succeeds("ip", &[&["netns", "exec", ns], args].concat())
}

/// `args` run in `ns`, which must succeed (as [`run`]): its stdout.
fn run_in(ns: &str, args: &[&str]) -> String {
    run("ip", &[&["netns", "exec", ns], args].concat())
}

fn ping(ns: &str, extra: &[&str], dst: &str) -> bool {
    in_ns(
        ns,
        &[&["ping", "-c", "1", "-W", "1", "-q"], extra, &[dst]].concat(),
    )
}

fn tcp_connects(ns: &str, dst: &str, port: u16) -> bool {
    let code =
        format!("import socket; socket.create_connection(('{dst}', {port}), timeout=2).close()");
    in_ns(ns, &["python3", "-c", &code])
}

#[test]
fn two_tenants_ping_isolation_spoofing_and_tcp80() {
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let host_ns = format!("dpu-t-{tag}");
    let mut cleanup = Cleanup { netns: Vec::new() };
    run("ip", &["netns", "add", &host_ns]);
    cleanup.netns.push(host_ns.clone());
    let ids = [format!("a1{tag}"), format!("a2{tag}"), format!("b1{tag}")];
    for id in &ids {
        cleanup.netns.push(format!("dpu-fn-{id}"));
    }
    let ns_path = format!("/run/netns/{host_ns}");
    let ids2 = ids.clone();
    let result = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns_path}");
        run("ip", &["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body(ns_path, ids2))
    })
    .join();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => panic!("{msg}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn body(ns_path: String, ids: [String; 3]) -> Result<(), String> {
    let [a1, a2, b1] = ids;
    let Switch { dir, ovs } = private_switch("nt", Netns::Path(ns_path.into())).await;
    // Ports are re-reconciled every 2 s, so their datapath status is fresh.
    let mut agent = Agent::start(
        &dir.path().join("state"),
        &ovs.db_socket(),
        &[("DPU_AGENT_RESYNC_SECONDS", "2")],
    )
    .await;
    let c = agent.client();

    put(&c, Kind::Tenant, "acme", "acme", json!({})).await;
    put(&c, Kind::Tenant, "globex", "globex", json!({})).await;
    // Same CIDR in both tenants: isolation must come from the switch.
    for (id, tenant, vni) in [("net-a", "acme", 100), ("net-b", "globex", 200)] {
        let spec = json!({"vni": vni, "cidr": "10.10.0.0/24", "encap": "local"});
        put(&c, Kind::Network, id, tenant, spec).await;
    }
    let icmp = json!({"protocol": "icmp"});
    let tcp80 = json!({"protocol": "tcp", "ports": "80"});
    let ports = [
        (
            &a1,
            "acme",
            "net-a",
            "02:00:0a:0a:00:01",
            "10.10.0.1",
            json!([icmp, tcp80]),
        ),
        (
            &a2,
            "acme",
            "net-a",
            "02:00:0a:0a:00:02",
            "10.10.0.2",
            json!([icmp]),
        ),
        (
            &b1,
            "globex",
            "net-b",
            "02:00:0a:0b:00:03",
            "10.10.0.3",
            json!([icmp]),
        ),
    ];
    for (id, tenant, network, mac, ip, ingress) in &ports {
        put_net_function_and_port(&c, tenant, network, id, mac, ip, ingress.clone()).await;
    }
    for (id, ..) in &ports {
        let p = agent
            .wait_ready(Kind::Port, id, Duration::from_secs(30))
            .await;
        assert!(p.status.fields["ofport"].as_u64().is_some(), "{p:?}");
        assert!(p.status.fields["flows"].as_u64().unwrap() > 5, "{p:?}");
    }
    let ns = |id: &str| format!("dpu-fn-{id}");

    // Inside a tenant network: ping works (ARP answered by the switch).
    let t = Instant::now();
    while !ping(&ns(&a1), &[], "10.10.0.2") {
        if t.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "ping a1 -> a2 inside acme failed\nflows:\n{}",
                agent_flow_lines(&ovs).join("\n")
            ));
        }
    }
    assert!(ping(&ns(&a2), &[], "10.10.0.1"), "ping a2 -> a1");

    // The port's status tells its datapath flows and that none is offloaded
    // (the userspace datapath offloads nothing); ovs-appctl witnesses them.
    let mut pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns(&a1),
            "ping",
            "-q",
            "-c",
            "100",
            "-i",
            "0.2",
            "10.10.0.2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let port = agent
        .wait_object(Kind::Port, &a1, Duration::from_secs(15), |p| {
            p.status
                .fields
                .get("datapath_flows")
                .and_then(|v| v.as_u64())
                > Some(0)
        })
        .await;
    let _ = pinger.kill();
    let _ = pinger.wait();
    assert_eq!(port.status.fields["offloaded"], json!(false), "{port:?}");
    assert_eq!(port.status.fields["offloaded_flows"], json!(0), "{port:?}");
    let function = c
        .get(Kind::Function, &a1)
        .await
        .map_err(|e| e.to_string())?;
    let rep = function
        .status
        .facts
        .representor
        .clone()
        .unwrap_or_default();
    let ctl = ovs.unixctl_socket(net_offload::sandbox::Daemon::Vswitchd);
    let dp = run(
        "ovs-appctl",
        &[
            "-t",
            &ctl.display().to_string(),
            "dpctl/dump-flows",
            "-m",
            "--names",
        ],
    );
    assert!(dp.contains(&format!("in_port({rep})")), "{dp}");
    assert!(!dp.contains("offloaded:yes"), "{dp}");

    // The datapath's lookups in /metrics: the pings' first packets missed
    // (upcalls to ovs-vswitchd), none lost. `ovs-appctl dpctl/show`,
    // read after the agent's read, witnesses the counters: they only grow.
    let sample = |result: &str| {
        format!(
            "dpu_agent_switch_datapath_lookups_total{{datapath=\"netdev@ovs-netdev\",result=\"{result}\"}}"
        )
    };
    let t = Instant::now();
    let metrics = loop {
        let m = c.metrics().await.map_err(|e| e.to_string())?;
        if metric(&m, &sample("missed")).is_some_and(|v| v > 0.0) {
            break m;
        }
        if t.elapsed() > Duration::from_secs(15) {
            return Err(format!("no datapath lookups in /metrics:\n{m}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let show = run(
        "ovs-appctl",
        &["-t", &ctl.display().to_string(), "dpctl/show"],
    );
    let witness = show
        .lines()
        .skip_while(|l| l.trim() != "netdev@ovs-netdev:")
        .find_map(|l| l.trim().strip_prefix("lookups: "))
        .ok_or_else(|| format!("no lookups line in dpctl/show:\n{show}"))?;
    let said: std::collections::BTreeMap<&str, f64> = witness
        .split_whitespace()
        .filter_map(|w| w.split_once(':'))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    for result in ["hit", "missed", "lost"] {
        let ours = metric(&metrics, &sample(result))
            .ok_or_else(|| format!("no {result} sample:\n{metrics}"))?;
        let theirs = said.get(result).copied().unwrap_or(-1.0);
        assert!(
            ours <= theirs,
            "{result}: agent {ours}, dpctl/show after it {theirs}\n{show}"
        );
    }
    assert_eq!(metric(&metrics, &sample("lost")), Some(0.0), "{metrics}");

    // Across tenants: no ARP answer, and not even with the MAC known.
    assert!(!ping(&ns(&a1), &[], "10.10.0.3"), "acme reached globex");
    run_in(
        &ns(&a1),
        &[
            "ip",
            "neigh",
            "replace",
            "10.10.0.3",
            "lladdr",
            "02:00:0a:0b:00:03",
            "dev",
            "eth0",
        ],
    );
    assert!(
        !ping(&ns(&a1), &[], "10.10.0.3"),
        "acme reached globex by MAC"
    );
    assert!(!ping(&ns(&b1), &[], "10.10.0.2"), "globex reached acme");

    // Spoofed source IP from a1: dropped; the real one still works.
    run_in(
        &ns(&a1),
        &["ip", "addr", "add", "10.10.0.50/24", "dev", "eth0"],
    );
    assert!(
        !ping(&ns(&a1), &["-I", "10.10.0.50"], "10.10.0.2"),
        "spoofed IP passed"
    );
    assert!(ping(&ns(&a1), &["-I", "10.10.0.1"], "10.10.0.2"));

    // tcp/80 open on a1, tcp/81 not: a real listener on both. The userspace
    // datapath's conntrack checks TCP checksums, which a veth leaves to
    // offload: the simulator has the tenants compute them (ethtool witnesses).
    for id in [&a1, &a2] {
        let features = run_in(&ns(id), &["ethtool", "-k", "eth0"]);
        assert!(
            features.lines().any(|l| l.trim() == "tx-checksumming: off"),
            "{features}"
        );
    }
    let listener = Command::new("ip")
        .args(["netns", "exec", &ns(&a1), "python3", "-c",
               "import socket,time\nss=[]\nfor p in (80,81):\n s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0',p)); s.listen(16); ss.append(s)\ntime.sleep(60)"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _listener = KillOnDrop(listener);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tcp_connects(&ns(&a2), "10.10.0.1", 80),
        "tcp/80 a2 -> a1 refused"
    );
    assert!(
        !tcp_connects(&ns(&a2), "10.10.0.1", 81),
        "tcp/81 a2 -> a1 admitted"
    );
    // Inside a1's own namespace both listen (the switch, not the host, refused 81).
    assert!(tcp_connects(&ns(&a1), "127.0.0.1", 81));

    // A restart (kill -9) changes no status: no object is reported
    // anything but Ready while the restarted agent's OVSDB client is still
    // connecting, and a port's datapath figures are not rewritten as
    // unknown before the restarted switch has read the datapath. Every
    // status written since then is Ready and a1's still has its figures
    // (the first read comes within 2 s, resyncs every 2 s after it).
    let since = c
        .list(Kind::Port, None)
        .await
        .map_err(|e| e.to_string())?
        .revision;
    agent.restart().await;
    agent
        .wait_ready(Kind::Port, &a1, Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut events = c
        .watch(
            since,
            &WatchFilter {
                follow: false,
                ..WatchFilter::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_string())?;
        let status = &event.object.status;
        assert_eq!(
            status.phase,
            dpu_api::Phase::Ready,
            "a status other than Ready after the restart: {event:?}"
        );
        if event.object.kind == Kind::Port && event.object.id == a1 {
            assert!(
                ["datapath_flows", "offloaded_flows", "offloaded"]
                    .iter()
                    .all(|f| status.fields.contains_key(*f)),
                "a1's datapath figures dropped after the restart: {event:?}"
            );
        }
    }

    drop(agent);
    drop(ovs);
    Ok(())
}
