//! `dpu-agent dev` restarts like production: its private Open vSwitch
//! (real ovsdb-server and ovs-vswitchd, userspace datapath) outlives the
//! agent, a restarted agent — after SIGTERM or SIGKILL — adopts it with zero
//! flow churn, `dpu-agent dev --stop` stops it, and two dev agents with two
//! state directories each get a working bridge. `ovs-ofctl` is the witness.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_tests::agent::{AgentProcess, binary};
use net_offload::sandbox::{Daemon, running_in};
use serde_json::json;

/// One userspace datapath per network namespace: the tests of this file
/// take turns.
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
        .map(|l| {
            let duration = l
                .split("duration=")
                .nth(1)
                .and_then(|s| s.split('s').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no duration in {l}"));
            let identity = l
                .split(", ")
                .filter(|p| {
                    ![
                        "duration=",
                        "n_packets=",
                        "n_bytes=",
                        "idle_age=",
                        "hard_age=",
                    ]
                    .iter()
                    .any(|k| p.trim_start().starts_with(k))
                })
                .collect::<Vec<_>>()
                .join(", ");
            (identity, duration)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
    admin
        .put(Kind::Tenant, "t", None, json!({}), None)
        .await
        .unwrap();
    admin
        .put(
            Kind::Network,
            "n",
            Some("t"),
            json!({"vni": 10, "cidr": "10.9.0.0/24", "encap": "local"}),
            None,
        )
        .await
        .unwrap();
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
        assert_eq!(
            running_in(&ovs, Daemon::OvsdbServer),
            Some(pids[0]),
            "{how}"
        );
        assert_eq!(running_in(&ovs, Daemon::Vswitchd), Some(pids[1]), "{how}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        agent.restart();
        let m = wait_converged(&agent).await;
        assert_eq!(
            metric(&m, "dpu_agent_switch_flow_mods_total"),
            Some(0.0),
            "{how}:\n{m}"
        );
        // Adopted, not restarted.
        assert_eq!(
            running_in(&ovs, Daemon::OvsdbServer),
            Some(pids[0]),
            "{how}"
        );
        assert_eq!(running_in(&ovs, Daemon::Vswitchd), Some(pids[1]), "{how}");
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

/// One userspace datapath per network namespace: a second dev agent with
/// its own switch is refused with an error that names the running switch
/// and how to stop it; once stopped, the second one gets its bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dev_switch_is_refused_clearly_then_starts() {
    let _turn = ONE_SWITCH.lock().await;
    let mut a = AgentProcess::start_with(&[]);
    let _ga = SwitchGuard(a.state_dir());
    let dir = tempfile::tempdir().unwrap();
    let state_b = dir.path().join("state");
    let _gb = SwitchGuard(state_b.clone());
    let run_b = || {
        Command::new(binary("dpu-agent"))
            .args(["dev", "--listen"])
            .arg(format!("127.0.0.1:{}", dpu_tests::agent::free_port()))
            .arg("--state-dir")
            .arg(&state_b)
            .env("DPU_AGENT_FUNCTIONS_BACKEND", "none")
            .output()
            .expect("run dpu-agent")
    };
    let out = run_b();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ovs-netdev"), "{text}");
    assert!(text.contains("--stop"), "{text}");
    assert!(
        text.contains(&a.state_dir().display().to_string()),
        "{text}"
    );

    // After the first one's switch is stopped, the second gets its bridge.
    a.kill9();
    stop(&a.state_dir());
    let b = AgentProcess::start_with(&[]);
    let _gb2 = SwitchGuard(b.state_dir());
    let admin = b.admin();
    admin
        .put(Kind::Tenant, "t", None, json!({}), None)
        .await
        .unwrap();
    admin
        .put(
            Kind::Network,
            "n",
            Some("t"),
            json!({"vni": 10, "cidr": "10.9.0.0/24", "encap": "local"}),
            None,
        )
        .await
        .unwrap();
    wait_converged(&b).await;
    assert!(!flows(&b.state_dir()).is_empty());
}
