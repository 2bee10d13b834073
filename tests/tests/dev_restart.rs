//! `dpu-agent dev` restarts like production: its private Open vSwitch
//! (real ovsdb-server and ovs-vswitchd, userspace datapath) outlives the
//! agent, a restarted agent — after SIGTERM or SIGKILL — adopts it with zero
//! flow churn, `dpu-agent dev --stop` stops it, and two dev agents with two
//! state directories each get a working bridge (the second one's switch in
//! a network namespace of its own). `ovs-ofctl`, `ovs-vsctl` and `ip` are
//! the witnesses.

mod net_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::Client;
use dpu_tests::agent::{AgentProcess, binary, dev_switch_ports, metric};
use dpu_tests::fixtures::put_ok;
use net_common::{duration_of, flow_identity};
use net_offload::sandbox::{Daemon, OvsSandbox, SandboxConfig, SandboxError, running_in};
use serde_json::json;

/// The tests of this file take turns (each counts on which of its own
/// switches started first).
static ONE_SWITCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stops the private switch of a state directory on drop (declared after
/// the agent, so it runs before the agent's directory is removed).
struct SwitchGuard(PathBuf);

impl Drop for SwitchGuard {
    fn drop(&mut self) {
        let _ = stop(&self.0);
    }
}

fn stop(state: &Path) -> String {
    let out = Command::new(binary("dpu-agent"))
        .args(["dev", "--stop", "--state-dir"])
        .arg(state)
        .output()
        .expect("dpu-agent dev --stop");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The agent's flows (cookie 0xd0…) as (identity, duration).
fn flows(state: &Path) -> Vec<(String, f64)> {
    let target = format!("unix:{}", state.join("ovs").join("br-int.mgmt").display());
    let out = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "--no-names", "dump-flows", &target])
        .output()
        .expect("ovs-ofctl");
    assert!(out.status.success(), "ovs-ofctl: {out:?}");
    let mut v: Vec<(String, f64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("cookie=0xd0"))
        .map(|l| (flow_identity(l), duration_of(l)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Restarts `agent` and waits until it converged, having written no flow
/// (it adopted the switch as it was); `how` names the case in failures.
async fn restart_adopting(agent: &mut AgentProcess, how: &str) {
    agent.restart();
    let m = wait_converged(agent).await;
    assert_eq!(
        metric(&m, "dpu_agent_switch_flow_mods_total"),
        Some(0.0),
        "{how}:\n{m}"
    );
}

async fn wait_converged(agent: &AgentProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = agent.admin().metrics().await.unwrap();
        if metric(&m, "dpu_agent_switch_converged") == Some(1.0) {
            return m;
        }
        assert!(Instant::now() < deadline, "switch never converged:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_churn(before: &[(String, f64)], after: &[(String, f64)]) {
    assert!(!before.is_empty(), "no agent flows to compare");
    assert_eq!(
        before.iter().map(|f| &f.0).collect::<Vec<_>>(),
        after.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "the flow set changed"
    );
    for ((id, d0), (_, d1)) in before.iter().zip(after) {
        assert!(d1 >= d0, "flow re-added (duration {d0} → {d1}): {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_switch_outlives_the_agent_and_is_adopted_without_churn() {
    let _turn = ONE_SWITCH.lock().await;
    if !Path::new(net_offload::sandbox::DEFAULT_SCHEMA).exists() {
        panic!("Open vSwitch is not installed: run scripts/setup.sh");
    }
    let mut agent = AgentProcess::start_with(&[]);
    let state = agent.state_dir();
    let _guard = SwitchGuard(state.clone());
    let admin = agent.admin();
    tenant_and_network(&admin, 10, "10.9.0.0/24").await;
    wait_converged(&agent).await;
    let ovs = state.join("ovs");
    let pids = [
        running_in(&ovs, Daemon::OvsdbServer).expect("ovsdb-server runs"),
        running_in(&ovs, Daemon::Vswitchd).expect("ovs-vswitchd runs"),
    ];

    for (how, stop_agent) in [
        (
            "SIGTERM",
            AgentProcess::terminate as fn(&mut AgentProcess) -> _,
        ),
        ("SIGKILL", |a: &mut AgentProcess| {
            a.kill9();
            std::process::ExitStatus::default()
        }),
    ] {
        let before = flows(&state);
        stop_agent(&mut agent);
        // The switch keeps running with its flows.
        let now = [Daemon::OvsdbServer, Daemon::Vswitchd].map(|d| running_in(&ovs, d));
        assert_eq!(now, pids.map(Some), "{how}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        restart_adopting(&mut agent, how).await;
        // Adopted, not restarted.
        let now = [Daemon::OvsdbServer, Daemon::Vswitchd].map(|d| running_in(&ovs, d));
        assert_eq!(now, pids.map(Some), "{how}");
        assert_no_churn(&before, &flows(&state));
        println!(
            "{how}: {} flows kept, 0 flow_mods after restart",
            before.len()
        );
    }

    // --stop stops it.
    agent.kill9();
    let out = stop(&state);
    assert!(out.contains("ovs-vswitchd"), "{out}");
    assert_eq!(running_in(&ovs, Daemon::OvsdbServer), None);
    assert_eq!(running_in(&ovs, Daemon::Vswitchd), None);
}

fn out(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The named namespace (`ip netns identify`) a process runs in; `None`:
/// not a named one (the host's).
fn netns_of(pid: i32) -> Option<String> {
    let name = out("ip", &["netns", "identify", &pid.to_string()]);
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// `ip link` in the named namespace `ns` (or the host's).
fn ip_link(ns: Option<&str>, rest: &[&str]) -> String {
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-o", "link", "show"]);
    args.extend(rest);
    out("ip", &args)
}

fn ping(from_ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", from_ns, "ping", "-c", "1", "-W", "1", "-q", to,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// On every path: both switches stopped (`--stop`, which also removes a
/// switch's own namespace), then the test's function namespaces and any
/// representor left in the host's namespace removed.
struct TwoAgentsCleanup {
    states: Vec<PathBuf>,
    functions: Vec<String>,
}

impl Drop for TwoAgentsCleanup {
    fn drop(&mut self) {
        for state in &self.states {
            let _ = Command::new(binary("dpu-agent"))
                .args(["dev", "--stop", "--state-dir"])
                .arg(state)
                .output();
        }
        for id in &self.functions {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("dpu-fn-{id}")])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("fn-{id}")])
                .output();
        }
    }
}

/// Tenant `t` and its local network `n` with `vni` and `cidr`.
async fn tenant_and_network(admin: &Client, vni: u32, cidr: &str) {
    put_ok(admin, Kind::Tenant, "t", None, json!({})).await;
    let spec = json!({"vni": vni, "cidr": cidr, "encap": "local"});
    put_ok(admin, Kind::Network, "n", Some("t"), spec).await;
}

/// A tenant, a network, two veth functions and their ports in one agent;
/// waits until every port is Ready.
async fn two_functions(agent: &AgentProcess, ids: &[String; 2], net: u8) {
    let admin = agent.admin();
    tenant_and_network(&admin, 10 + u32::from(net), &format!("10.{net}.0.0/24")).await;
    for (i, id) in ids.iter().enumerate() {
        let mac = format!("02:00:0a:{net:02x}:00:{:02x}", i + 1);
        put_ok(
            &admin,
            Kind::Function,
            id,
            Some("t"),
            json!({"type": "net", "pf": "pf0", "mac": mac}),
        )
        .await;
        put_ok(
            &admin,
            Kind::Port,
            id,
            Some("t"),
            json!({"network": "n", "function": id, "mac": mac,
                       "ips": [format!("10.{net}.0.{}", i + 1)],
                       "security": {"ingress": [{"protocol": "icmp"}]}}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ports = admin.list(Kind::Port, Some("t")).await.unwrap().items;
        if ports.len() == 2
            && ports
                .iter()
                .all(|p| p.status.phase == dpu_api::Phase::Ready)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ports not Ready: {ports:?}\nlog:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the agent's functions and ports and waits until the store has
/// none left.
async fn delete_functions(agent: &AgentProcess, ids: &[String; 2]) {
    let admin = agent.admin();
    for id in ids {
        admin.delete(Kind::Port, id).await.unwrap();
        admin.delete(Kind::Function, id).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin
        .list(Kind::Function, Some("t"))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(Instant::now() < deadline, "functions not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two dev agents on one host (two state directories), each with its own
/// working bridge: the one started while another ovs-vswitchd holds the
/// host's datapath gets a namespace of its own, with its representors in
/// it. In each, two veth functions and their ports reach Ready, the bridge
/// has its flows (`ovs-ofctl`/`ovs-vsctl` on that switch's own sockets),
/// and the two functions ping each other; stopping one (`--stop`) leaves
/// the other's bridge, flows and traffic untouched. TENANCY.md invariant 2
/// across agents: one agent's switch never touches the packets or flows of
/// another agent's tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dev_agents_each_get_a_working_bridge() {
    let _turn = ONE_SWITCH.lock().await;
    // Function ids unique to this run: function namespaces are host-wide.
    let tag = std::process::id() % 100_000;
    let ids_a = [format!("da{tag}x"), format!("da{tag}y")];
    let ids_b = [format!("db{tag}x"), format!("db{tag}y")];
    let veth = [("DPU_AGENT_FUNCTIONS_BACKEND", "veth")];
    let mut a = AgentProcess::start_with_env(&[], &veth);
    let mut cleanup = TwoAgentsCleanup {
        states: vec![a.state_dir()],
        functions: ids_a.iter().chain(&ids_b).cloned().collect(),
    };
    let mut b = AgentProcess::start_with_env(&[], &veth);
    cleanup.states.push(b.state_dir());
    let (state_a, state_b) = (a.state_dir(), b.state_dir());

    two_functions(&a, &ids_a, 61).await;
    two_functions(&b, &ids_b, 62).await;
    wait_converged(&a).await;
    wait_converged(&b).await;

    // Two switches, two datapath namespaces; the second started while the
    // first ran, so it is in one of its own.
    let vswitchd = |state: &Path| running_in(&state.join("ovs"), Daemon::Vswitchd).unwrap();
    let (pid_a, pid_b) = (vswitchd(&state_a), vswitchd(&state_b));
    let ns_inode = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        ns_inode(pid_a),
        ns_inode(pid_b),
        "both switches in one namespace"
    );
    let (sw_a, sw_b) = (netns_of(pid_a), netns_of(pid_b));
    let sw_b_name = sw_b
        .clone()
        .expect("the second switch runs in a named namespace");
    assert!(sw_b_name.starts_with("dpu-dev-"), "{sw_b_name}");
    println!("switch namespaces: a {sw_a:?}, b {sw_b:?}");
    // A start that asks for the host's namespace explicitly is still
    // refused while a switch holds its datapath, naming the way out.
    if sw_a.is_none() {
        let dir = tempfile::tempdir().unwrap();
        let err = OvsSandbox::start(SandboxConfig::new(dir.path().join("ovs")))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SandboxError::DatapathTaken { .. }), "{text}");
        assert!(
            text.contains("ovs-netdev") && text.contains("--stop"),
            "{text}"
        );
    }

    for (state, sw, ids) in [(&state_a, &sw_a, &ids_a), (&state_b, &sw_b, &ids_b)] {
        // Each representor is in its own switch's namespace, on its bridge.
        let ports = dev_switch_ports(state);
        for id in ids {
            let rep = format!("fn-{id}");
            let link = ip_link(sw.as_deref(), &[&rep]);
            assert!(link.contains(&rep), "{rep} not in {sw:?}: {link}");
            assert!(ports.contains(&rep), "{rep} not on the bridge: {ports:?}");
        }
        assert!(flows(state).len() > 5, "{:?}", flows(state));
        // Traffic between the two functions of one agent.
        let from = format!("dpu-fn-{}", ids[0]);
        let to = if ids[1].starts_with("da") {
            "10.61.0.2"
        } else {
            "10.62.0.2"
        };
        let t = Instant::now();
        while !ping(&from, to) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "ping {from} -> {to} failed"
            );
        }
    }
    // The representors of b are not in the host's namespace.
    let host_links = ip_link(None, &[]);
    for id in &ids_b {
        assert!(!host_links.contains(&format!("fn-{id}:")), "{host_links}");
    }

    // b restarted (SIGKILL) adopts its switch in its namespace, with zero
    // flow churn, and finds its representors there.
    let before_b = flows(&state_b);
    restart_adopting(&mut b, "b").await;
    assert_eq!(
        running_in(&state_b.join("ovs"), Daemon::Vswitchd),
        Some(pid_b)
    );
    assert_eq!(netns_of(pid_b).as_deref(), Some(sw_b_name.as_str()));
    assert_no_churn(&before_b, &flows(&state_b));
    let t = Instant::now();
    while !ping(&format!("dpu-fn-{}", ids_b[1]), "10.62.0.1") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "b's traffic after its restart"
        );
    }

    // Stopping a leaves b's bridge, flows and traffic as they were.
    let before_b = flows(&state_b);
    delete_functions(&a, &ids_a).await;
    a.terminate();
    let stopped = stop(&state_a);
    assert!(stopped.contains("ovs-vswitchd"), "{stopped}");
    assert_eq!(running_in(&state_a.join("ovs"), Daemon::Vswitchd), None);
    if let Some(ns) = &sw_a {
        assert!(stopped.contains(ns.as_str()), "{stopped}");
        assert!(
            !out("ip", &["netns", "list"]).contains(ns.as_str()),
            "{ns} left"
        );
    }
    assert_eq!(
        running_in(&state_b.join("ovs"), Daemon::Vswitchd),
        Some(pid_b)
    );
    assert_no_churn(&before_b, &flows(&state_b));
    assert!(
        ping(&format!("dpu-fn-{}", ids_b[0]), "10.62.0.2"),
        "b's traffic after a stopped"
    );
    println!("a stopped; b kept {} flows and its traffic", before_b.len());

    // b removes its representors in its switch's namespace.
    delete_functions(&b, &ids_b).await;
    let t = Instant::now();
    loop {
        let left = ip_link(Some(&sw_b_name), &[]);
        let netns = out("ip", &["netns", "list"]);
        let gone = ids_b.iter().all(|id| {
            !left.contains(&format!("fn-{id}")) && !netns.contains(&format!("dpu-fn-{id}"))
        });
        if gone {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "b's functions left: {left}\n{netns}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.terminate();
    let stopped = stop(&state_b);
    assert!(stopped.contains(&sw_b_name), "{stopped}");
    assert!(
        !out("ip", &["netns", "list"]).contains(&sw_b_name),
        "{sw_b_name} left"
    );
    drop(cleanup);
}
