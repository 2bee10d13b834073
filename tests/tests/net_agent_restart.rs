//! The agent programs a real Open vSwitch through the API: networks and
//! endpoints become flows; an agent kill -9 + restart sends no flow_mod for
//! unchanged flows (their duration keeps growing); a flow deleted by hand is
//! back within 1 s; invalid input is refused with 422 naming the field and
//! nothing is programmed; ovs-vswitchd killed with SIGKILL and started again
//! gets every flow back within 2 s; after an ovsdb-server restart the
//! agent's OVSDB client resyncs (a tunnel port deleted by hand comes back).

mod net_common;

use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::ClientError;
use net_common::*;
use net_offload::sandbox::{Daemon, Netns, OvsSandbox};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_drift_and_invalid_input() {
    let Switch { dir, ovs } = private_switch("na", Netns::Private).await;
    let mut agent = Agent::start(&dir.path().join("state"), &ovs.db_socket(), &[]).await;
    let c = agent.client();

    acme_vxlan_network(&c, "acme-net", 1001, "10.1.0.0/24").await;
    put(
        &c,
        Kind::Endpoint,
        "acme-far",
        "acme",
        json!({"network": "acme-net", "mac": "02:00:00:00:01:63", "ips": ["10.1.0.99"], "vtep": "192.168.77.2"}),
    )
    .await;
    let ep = agent
        .wait_ready(Kind::Endpoint, "acme-far", Duration::from_secs(15))
        .await;
    assert!(ep.status.fields["flows"].as_u64().unwrap() >= 2, "{ep:?}");
    let net = agent
        .wait_ready(Kind::Network, "acme-net", Duration::from_secs(5))
        .await;
    assert!(net.status.fields["flows"].as_u64().unwrap() >= 1, "{net:?}");
    let programmed = net
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Programmed")
        .unwrap();
    assert_eq!(programmed.status, dpu_api::ConditionStatus::True);
    // /readyz lists the switch as a connected backend (other backends of
    // this build may legitimately be down here).
    let (_, body) = c.readyz().await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["backends"]["ovs"], json!(true), "{body}");

    let before = agent_flow_lines(&ovs);
    assert!(before.len() > 10, "{before:?}");
    assert_eq!(
        run(
            "ovs-vsctl",
            &[
                &format!("--db=unix:{}", ovs.db_socket().display()),
                "get",
                "bridge",
                BRIDGE,
                "fail_mode"
            ]
        )
        .trim(),
        "secure"
    );

    // Agent kill -9 and restart: the same flows, none re-sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log_len = agent.log_text().len();
    let restarted_at = Instant::now();
    agent.restart().await;
    agent
        .wait_ready(Kind::Endpoint, "acme-far", Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = agent_flow_lines(&ovs);
    let ids = |v: &[String]| {
        let mut v: Vec<String> = v.iter().map(|l| flow_identity(l)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&before), ids(&after));
    let since = restarted_at.elapsed().as_secs_f64();
    for line in &after {
        assert!(
            duration_of(line) > since + 1.0,
            "flow re-installed by the restart: {line}"
        );
    }
    let new_log = &agent.log_text()[log_len..];
    assert!(
        !new_log.contains("applying flows in one bundle"),
        "the restarted agent sent flow_mods:\n{new_log}"
    );

    // A flow deleted by hand is back within 1 s.
    let victim = after
        .iter()
        .find(|l| l.contains("table=40") && l.contains("dl_dst=02:00:00:00:01:63"))
        .expect("the endpoint's L2 flow");
    ofctl(
        &ovs,
        "del-flows",
        &[
            "--strict",
            "table=40,priority=100,metadata=0x3e9,dl_dst=02:00:00:00:01:63",
        ],
    );
    assert_eq!(agent_flow_lines(&ovs).len(), after.len() - 1, "{victim}");
    let t = Instant::now();
    while agent_flow_lines(&ovs).len() != after.len() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "drift not repaired within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Invalid input: 422 naming the field, nothing programmed.
    let invalid = [
        (
            Kind::Endpoint,
            json!({"network": "acme-net", "mac": "02:00:00:00:01:64", "ips": ["10.9.0.5"], "vtep": "192.168.77.3"}),
            "spec.ips[0]",
        ),
        (
            Kind::Endpoint,
            json!({"network": "acme-net", "mac": "02:00:00:00:01:63", "ips": ["10.1.0.7"], "vtep": "192.168.77.3"}),
            "spec.mac",
        ),
        (
            Kind::Endpoint,
            json!({"network": "nope", "mac": "02:00:00:00:01:65", "ips": [], "vtep": "192.168.77.3"}),
            "spec.network",
        ),
        (
            Kind::Network,
            json!({"vni": 1001, "cidr": "10.2.0.0/24", "encap": "vxlan"}),
            "spec.vni",
        ),
    ];
    let flows_before = ids(&agent_flow_lines(&ovs));
    for (kind, spec, field) in invalid {
        let err = c
            .put(kind, "bad", Some("acme"), spec.clone(), None)
            .await
            .expect_err("invalid input accepted");
        match err {
            ClientError::Problem(p) => {
                assert_eq!(p.status, 422, "{p:?}");
                assert_eq!(p.field.as_deref(), Some(field), "{spec}: {p:?}");
            }
            other => panic!("{spec}: expected a 422 problem, got {other}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ids(&agent_flow_lines(&ovs)), flows_before);

    // ovs-vswitchd killed with SIGKILL and started again: it comes back with
    // an empty bridge; the agent reconnects and reprograms within 2 s.
    ovs.kill_daemon(Daemon::Vswitchd).await.unwrap();
    ovs.start_daemon(Daemon::Vswitchd).await.unwrap();
    let t = Instant::now();
    while try_flow_ids(&ovs).as_ref() != Some(&flows_before) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "flows not back within 2 s of ovs-vswitchd's restart: {:?}",
            try_flow_ids(&ovs)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!(
        "reprogrammed {:?} after ovs-vswitchd restarted",
        t.elapsed()
    );

    // ovsdb-server restarted: the agent's client reconnects and resyncs its
    // replica, so a tunnel port an operator then deletes is seen and put back.
    ovs.restart_daemon(Daemon::OvsdbServer).await.unwrap();
    let vsctl = |args: &[&str]| {
        let db = format!("--db=unix:{}", ovs.db_socket().display());
        run("ovs-vsctl", &[&[db.as_str()], args].concat())
    };
    let tunnel = "dpu-vxlan";
    assert!(
        vsctl(&["list-ports", BRIDGE]).lines().any(|l| l == tunnel),
        "{}",
        vsctl(&["show"])
    );
    vsctl(&["del-port", BRIDGE, tunnel]);
    let t = Instant::now();
    while !vsctl(&["list-ports", BRIDGE]).lines().any(|l| l == tunnel) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "tunnel port not restored after ovsdb-server restart: {}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    while try_flow_ids(&ovs).map(|f| f.len()) != Some(flows_before.len()) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "flows not converged after the tunnel port came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(agent);
    drop(ovs);
}

/// The agent's flows (identities, sorted), or None while ovs-vswitchd is not
/// answering yet.
fn try_flow_ids(ovs: &OvsSandbox) -> Option<Vec<String>> {
    let target = format!("unix:{}", ovs.mgmt_socket(BRIDGE).display());
    let out = std::process::Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "--no-names", "dump-flows", &target])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("cookie=0xd0"))
        .map(flow_identity)
        .collect();
    ids.sort();
    Some(ids)
}
