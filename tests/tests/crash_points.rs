//! Crash safety with counts: a real `dpu-agent dev` (its private Open
//! vSwitch, the veth functions simulator: namespaces, veth pairs, OVS ports,
//! flows) is killed with SIGKILL at random points while applies (creates,
//! updates and prune-deletes in one request) and the reconciles they cause
//! are in flight, then restarted. After each restart no accepted object is
//! lost; at the end everything converges, and once every object is deleted
//! nothing is left: no namespace, veth, OVS port or flow of the agent's.
//! Then ovsdb-server and ovs-vswitchd are killed and restarted while a client
//! writes: no 5xx, and the flows are back. The test prints the counts.
//! `ip` and `ovs-*` are the witnesses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::Client;
use dpu_api::object::{ApplyRequest, ObjectWrite, Prune};
use dpu_tests::agent::{AgentProcess, binary, dev_switch_ports};
use dpu_tests::fixtures::put_ok;
use net_offload::sandbox::{Daemon, OvsSandbox, SandboxConfig, running_in};
use serde_json::json;

/// Crash points (SIGKILL + restart); `DPU_CRASH_POINTS` overrides.
fn crashes() -> usize {
    std::env::var("DPU_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}
/// Functions (and ports) the applies choose from.
const POOL: usize = 6;
const TENANT: &str = "crash";

/// On every path: the switch stopped, the test's namespaces and links gone.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(binary("dpu-agent"))
            .args(["dev", "--stop", "--state-dir"])
            .arg(&self.0)
            .output();
        for ns in namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        for link in links() {
            let _ = Command::new("ip").args(["link", "del", &link]).status();
        }
    }
}

fn out(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The function namespaces of this test's functions.
fn namespaces() -> Vec<String> {
    out("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("dpu-fn-cf"))
        .map(str::to_string)
        .collect()
}

/// The representor ends of this test's functions.
fn links() -> Vec<String> {
    out("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("fn-cf"))
        .collect()
}

/// Flows owned by an object (network, port or endpoint: cookie 0xd001…,
/// 0xd002…, 0xd003…); the pipeline's own skeleton (0xd000…) is not one.
fn object_flows(state: &Path) -> usize {
    let target = format!("unix:{}", state.join("ovs/br-int.mgmt").display());
    out(
        "ovs-ofctl",
        &["-O", "OpenFlow14", "--no-names", "dump-flows", &target],
    )
    .lines()
    .filter(|l| {
        ["cookie=0xd001", "cookie=0xd002", "cookie=0xd003"]
            .iter()
            .any(|c| l.contains(c))
    })
    .count()
}

fn agent_flows(state: &Path) -> usize {
    let target = format!("unix:{}", state.join("ovs/br-int.mgmt").display());
    out(
        "ovs-ofctl",
        &["-O", "OpenFlow14", "--no-names", "dump-flows", &target],
    )
    .lines()
    .filter(|l| l.contains("cookie=0xd0"))
    .count()
}

/// A small deterministic generator (xorshift64*): the run is repeatable
/// from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The apply body that makes the tenant hold exactly `set` (plus its
/// network), with `version` in each port's address so updates change specs.
fn desired(set: &BTreeSet<usize>, version: u64) -> ApplyRequest {
    let mut objects = vec![ObjectWrite {
        kind: "Network".into(),
        id: "cn".into(),
        tenant: Some(TENANT.into()),
        spec: json!({"vni": 77, "cidr": "10.77.0.0/16", "encap": "local"}),
    }];
    for &i in set {
        let mac = format!("02:00:00:77:00:{i:02x}");
        objects.push(ObjectWrite {
            kind: "Function".into(),
            id: format!("cf{i}"),
            tenant: Some(TENANT.into()),
            spec: json!({"type": "net", "pf": "pf0", "mac": mac}),
        });
        objects.push(ObjectWrite {
            kind: "Port".into(),
            id: format!("cp{i}"),
            tenant: Some(TENANT.into()),
            spec: json!({"network": "cn", "function": format!("cf{i}"), "mac": mac,
                         "ips": [format!("10.77.{}.{}", version % 250, i + 10)]}),
        });
    }
    ApplyRequest {
        objects,
        prune: Some(Prune {
            tenant: TENANT.into(),
        }),
    }
}

/// The ports the store holds for the tenant that are not being deleted,
/// as function indexes.
async fn stored(c: &Client) -> BTreeSet<usize> {
    c.list(Kind::Port, Some(TENANT))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|o| o.status.phase != dpu_api::Phase::Deleting)
        .filter_map(|o| o.id.strip_prefix("cp").and_then(|n| n.parse().ok()))
        .collect()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_and_leaves_nothing() {
    let mut agent = AgentProcess::start_with_env(&[], &[("DPU_AGENT_FUNCTIONS_BACKEND", "veth")]);
    let state = agent.state_dir();
    let _cleanup = Cleanup(state.clone());
    let admin = agent.admin();
    put_ok(&admin, Kind::Tenant, TENANT, None, json!({})).await;

    let seed = 0x5eed_2026_1205_u64;
    let mut rng = Rng(seed);
    // What the store must hold: the last accepted apply's set, or — when the
    // agent died with an apply in flight — that apply's set or the one
    // before it.
    let mut accepted: BTreeSet<usize> = BTreeSet::new();
    let (mut lost, mut in_flight_accepted, mut in_flight_unknown) = (0usize, 0usize, 0usize);
    let crashes = crashes();
    for crash in 0..crashes {
        let set: BTreeSet<usize> = (0..POOL).filter(|_| rng.below(2) == 1).collect();
        let body = desired(&set, crash as u64);
        let client = agent.admin();
        let request = tokio::spawn(async move { client.apply(&body).await });
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        agent.kill9();
        let outcome = request.await.unwrap();
        agent.restart();
        let admin = agent.admin();
        let now = stored(&admin).await;
        match outcome {
            Ok(_) => {
                in_flight_accepted += 1;
                if now != set {
                    lost += 1;
                    eprintln!("crash {crash}: accepted {set:?}, stored {now:?}");
                }
                accepted = set;
            }
            Err(_) => {
                in_flight_unknown += 1;
                if now != set && now != accepted {
                    lost += 1;
                    eprintln!(
                        "crash {crash}: stored {now:?} is neither the last accepted {accepted:?} \
                         nor the one in flight {set:?}"
                    );
                }
                accepted = now;
            }
        }
    }
    println!(
        "crash points: {crashes} (seed {seed:#x}); applies answered before the kill: \
         {in_flight_accepted}, cut off: {in_flight_unknown}; accepted objects lost: {lost}"
    );
    assert_eq!(lost, 0);

    // Everything converges: every function Ready with its namespace, every
    // port Ready.
    let admin = agent.admin();
    let full: BTreeSet<usize> = (0..POOL).collect();
    admin.apply(&desired(&full, 999)).await.unwrap();
    let took = wait_for("every port Ready", Duration::from_secs(60), || async {
        let ports = admin.list(Kind::Port, Some(TENANT)).await.unwrap().items;
        ports.len() == POOL
            && ports
                .iter()
                .all(|p| p.status.phase == dpu_api::Phase::Ready)
    })
    .await;
    assert_eq!(namespaces().len(), POOL, "{:?}", namespaces());
    println!("converged after the last restart in {took:?}");

    // Faults under load: the switch's daemons killed and restarted while a
    // client writes.
    let ovs = state.join("ovs");
    let flows_before = agent_flows(&state);
    let writer = {
        let c = agent.admin();
        tokio::spawn(async move {
            let (mut ok, mut server_errors) = (0usize, 0usize);
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < Duration::from_secs(8) {
                n += 1;
                let r = c
                    .put(
                        Kind::Network,
                        "load",
                        Some(TENANT),
                        json!({"vni": 78, "cidr": format!("10.{}.0.0/24", 100 + n % 100),
                               "encap": "local"}),
                        None,
                    )
                    .await;
                match r {
                    Ok(_) => ok += 1,
                    Err(e) if e.status().is_some_and(|s| s >= 500) => server_errors += 1,
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            (ok, server_errors)
        })
    };
    for daemon in [Daemon::OvsdbServer, Daemon::Vswitchd] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pid = running_in(&ovs, daemon).expect("daemon runs");
        // SAFETY: kill(2) on a pid read from the sandbox's pid file.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        while running_in(&ovs, daemon).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What an operator's supervisor does: start it again (the running
        // one is adopted, the dead one started).
        let sandbox = OvsSandbox::start(SandboxConfig::new(&ovs))
            .await
            .expect("restart the switch daemons");
        sandbox.leave_running();
    }
    // Measured from the moment ovs-vswitchd runs again, empty.
    let back = wait_for("flows back", Duration::from_secs(30), || {
        let state = state.clone();
        async move { agent_flows(&state) >= flows_before }
    })
    .await;
    let (ok, server_errors) = writer.await.unwrap();
    println!(
        "switch faults under load: {ok} writes accepted, {server_errors} 5xx; all {flows_before} \
         flows back {back:?} after ovs-vswitchd restarted"
    );
    assert_eq!(server_errors, 0);

    // Nothing left behind once everything is deleted.
    admin.delete(Kind::Network, "load").await.unwrap();
    admin.apply(&desired(&BTreeSet::new(), 0)).await.unwrap();
    admin.delete(Kind::Network, "cn").await.unwrap();
    wait_for("everything deleted", Duration::from_secs(60), || async {
        admin
            .list(Kind::Port, Some(TENANT))
            .await
            .unwrap()
            .items
            .is_empty()
            && admin
                .list(Kind::Function, Some(TENANT))
                .await
                .unwrap()
                .items
                .is_empty()
            && admin
                .list(Kind::Network, Some(TENANT))
                .await
                .unwrap()
                .items
                .is_empty()
    })
    .await;
    let cleaned = Instant::now();
    while !(dev_switch_ports(&state).is_empty() && object_flows(&state) == 0)
        && cleaned.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ns, veths, ports, flows) = (
        namespaces().len(),
        links().len(),
        dev_switch_ports(&state).len(),
        object_flows(&state),
    );
    println!(
        "orphans after delete: {ns} namespaces, {veths} veths, {ports} OVS ports, {flows} flows"
    );
    assert_eq!((ns, veths, ports, flows), (0, 0, 0, 0));
}
