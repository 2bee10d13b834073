//! `POST /v1/plan` plans a batch as a whole: a new network and the endpoint
//! on it, sent together, plan the endpoint's flows (each object is planned
//! against the store as it would be after the whole batch, not alone against
//! the committed store). The plan changes nothing: the switch has no agent
//! flow until the same body is applied, and then it has the flows the plan
//! named. Real Open vSwitch; `ovs-ofctl` is the witness. (TENANCY.md is
//! not at stake here: this is issue 15's "a plan of an apply body plans the
//! whole batch together".)

mod net_common;

use std::time::Duration;

use dpu_api::Kind;
use dpu_api::object::{ApplyRequest, ObjectWrite};
use net_common::*;
use net_offload::sandbox::Netns;
use serde_json::json;

fn write(kind: &str, id: &str, spec: serde_json::Value) -> ObjectWrite {
    ObjectWrite {
        kind: kind.into(),
        id: id.into(),
        tenant: Some("acme".into()),
        spec,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_network_and_its_endpoint_plan_together() {
    let Switch { dir, ovs } = private_switch("np", Netns::Private).await;
    let agent = Agent::start(&dir.path().join("state"), &ovs.db_socket(), &[]).await;
    let c = agent.client();
    // A first network makes the switch's VXLAN tunnel port, whose OpenFlow
    // port number the endpoint's flows need (a plan does not invent it).
    acme_vxlan_network(&c, "acme-first", 1000, "10.0.0.0/24").await;
    agent
        .wait_ready(Kind::Network, "acme-first", Duration::from_secs(15))
        .await;
    let before = agent_flow_lines(&ovs).len();

    let body = ApplyRequest {
        objects: vec![
            write(
                "Network",
                "acme-net",
                json!({"vni": 1001, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
            ),
            write(
                "Endpoint",
                "acme-far",
                json!({"network": "acme-net", "mac": "02:00:00:00:01:63",
                       "ips": ["10.1.0.99"], "vtep": "192.168.77.2"}),
            ),
        ],
        prune: None,
    };
    let plan = c.plan(&body).await.expect("plan");
    let endpoint = plan
        .objects
        .iter()
        .find(|p| p.id == "acme-far")
        .expect("the endpoint is planned");
    let flows: Vec<&String> = endpoint
        .actions
        .iter()
        .filter(|a| a.contains("cookie="))
        .collect();
    assert!(
        flows.len() >= 2,
        "the endpoint's flows are planned with its new network: {:?}",
        endpoint.actions
    );
    assert_eq!(
        agent_flow_lines(&ovs).len(),
        before,
        "a plan changes nothing on the switch"
    );

    c.apply(&body).await.expect("apply");
    agent
        .wait_ready(Kind::Endpoint, "acme-far", Duration::from_secs(15))
        .await;
    // Every flow the plan named for the endpoint is on the switch now: the
    // same cookie, table, priority and actions (the plan prints
    // `add flow ...`, dump-flows prints its own order).
    let installed: Vec<(String, String, String, String)> =
        agent_flow_lines(&ovs).iter().map(|l| key(l)).collect();
    for planned in flows {
        let k = key(planned);
        assert!(
            installed.contains(&k),
            "planned {planned:?} ({k:?}) is not among the installed flows {installed:#?}"
        );
    }
}

/// (cookie, table, priority, actions) of a flow line in either notation.
fn key(line: &str) -> (String, String, String, String) {
    let field = |name: &str| {
        line.split([',', ' '])
            .find_map(|p| p.trim().strip_prefix(name))
            .unwrap_or_default()
            .to_string()
    };
    let actions = line
        .split("actions=")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    (
        field("cookie="),
        field("table="),
        field("priority="),
        actions,
    )
}
