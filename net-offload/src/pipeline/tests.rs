//! Compiler and diff tests, without I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::*;
use crate::openflow::{Action, Field, Flow, Instructions, Match, mac};

fn net(id: &str, tenant: &str, vni: u32, encap: Encap) -> NetworkDesc {
    NetworkDesc {
        id: id.into(),
        tenant: tenant.into(),
        vni,
        encap,
    }
}

fn port(id: &str, network: &str, last: u8, ofport: Option<u32>) -> PortDesc {
    PortDesc {
        id: id.into(),
        tenant: "t".into(),
        network: network.into(),
        mac: [0x02, 0, 0, 0, 0, last],
        ips: vec![Ipv4Addr::new(10, 0, 0, last)],
        security: SecurityDesc::default(),
        qos: None,
        representor: None,
        ofport,
    }
}

fn two_tenants() -> DesiredNetworking {
    let mut web = port("web", "net-a", 1, Some(1));
    web.security.ingress.push(RuleDesc {
        protocol: RuleProtocol::Tcp,
        cidr: None,
        ports: Some((80, 80)),
    });
    DesiredNetworking {
        networks: vec![
            net("net-a", "acme", 100, Encap::Vxlan),
            net("net-b", "globex", 200, Encap::Vxlan),
        ],
        ports: vec![
            Arc::new(web),
            Arc::new(port("db", "net-a", 2, Some(2))),
            Arc::new(port("other", "net-b", 3, Some(3))),
            Arc::new(port("late", "net-b", 4, None)),
        ],
        endpoints: vec![EndpointDesc {
            id: "remote".into(),
            tenant: "acme".into(),
            network: "net-a".into(),
            mac: [0x02, 0, 0, 0, 9, 9],
            ips: vec![Ipv4Addr::new(10, 0, 0, 99)],
            vtep: Ipv4Addr::new(192, 168, 0, 2),
        }],
        tunnel_ofports: BTreeMap::from([(Encap::Vxlan, 10)]),
    }
}

fn flows_of<'a>(c: &'a CompiledPipeline, owner: &Owner) -> Vec<&'a Flow> {
    c.flows
        .iter()
        .filter(|f| &f.owner == owner)
        .map(|f| &f.flow)
        .collect()
}

#[test]
fn every_flow_is_owned_and_tagged() {
    let c = compile(&two_tenants());
    assert!(!c.flows.is_empty());
    for f in &c.flows {
        assert!(is_agent_cookie(f.flow.cookie), "{}", f.flow);
        assert_eq!(f.flow.cookie, f.owner.cookie());
    }
    // Identical input, identical output (order included).
    assert_eq!(c, compile(&two_tenants()));
}

#[test]
fn port_without_representor_gets_no_flows() {
    let c = compile(&two_tenants());
    assert!(flows_of(&c, &Owner::new(OwnerKind::Port, "late")).is_empty());
    assert!(c.skipped_ports["late"].contains("representor"));
}

#[test]
fn l2_forwarding_stays_in_the_network() {
    let c = compile(&two_tenants());
    for f in c.flows.iter().filter(|f| f.flow.table == table::L2_FORWARD) {
        let Some(md) = f.flow.matches.get(Field::Metadata) else {
            assert!(f.flow.instructions.is_drop(), "unscoped L2 flow {}", f.flow);
            continue;
        };
        let dst = f.flow.matches.get(Field::EthDst).expect("dst MAC").value;
        // Never a broadcast/multicast destination: nothing floods.
        assert_eq!(dst >> 40 & 1, 0, "{}", f.flow);
        match f.owner.id.as_str() {
            "web" | "db" | "remote" => assert_eq!(md.value, 100),
            "other" => assert_eq!(md.value, 200),
            other => panic!("unexpected owner {other}"),
        }
    }
    // No flow outputs to FLOOD, ALL or NORMAL.
    for f in &c.flows {
        for a in &f.flow.instructions.apply {
            if let Action::Output { port, .. } = a {
                assert!(
                    ![
                        crate::openflow::port::FLOOD,
                        crate::openflow::port::ALL,
                        crate::openflow::port::NORMAL
                    ]
                    .contains(port),
                    "{}",
                    f.flow
                );
            }
        }
    }
}

#[test]
fn anti_spoofing_admits_only_own_addresses() {
    let c = compile(&two_tenants());
    let spoof: Vec<_> = flows_of(&c, &Owner::new(OwnerKind::Port, "db"))
        .into_iter()
        .filter(|f| f.table == table::ANTI_SPOOF)
        .collect();
    assert_eq!(spoof.len(), 2, "one IP rule and one ARP rule");
    for f in spoof {
        assert_eq!(f.matches.get(Field::InPort).unwrap().value, 2);
        assert_eq!(
            f.matches.get(Field::EthSrc).unwrap().value,
            mac([2, 0, 0, 0, 0, 2])
        );
        let ip = u64::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)));
        let src = f
            .matches
            .get(Field::Ipv4Src)
            .or(f.matches.get(Field::ArpSpa))
            .unwrap();
        assert_eq!(src.value, ip);
        assert_eq!(src.mask, None);
    }
}

#[test]
fn ingress_rule_opens_exactly_tcp_80() {
    let c = compile(&two_tenants());
    let rules: Vec<_> = c
        .flows
        .iter()
        .filter(|f| f.flow.table == table::INGRESS_RULES && f.flow.priority == 100)
        .collect();
    assert_eq!(rules.len(), 1, "only web has an ingress rule");
    let m = &rules[0].flow.matches;
    assert_eq!(m.get(Field::IpProto).unwrap().value, 6);
    assert_eq!(m.get(Field::TcpDst).unwrap().value, 80);
    assert_eq!(m.get(Field::TcpDst).unwrap().mask, None);
    assert_eq!(m.get(Field::Reg(REG_DST_PORT)).unwrap().value, 1);
    let text = rules[0].flow.to_string();
    assert!(text.contains("ct(commit"), "{text}");
}

#[test]
fn port_range_and_cidr_rules() {
    let mut d = two_tenants();
    Arc::make_mut(&mut d.ports[1])
        .security
        .ingress
        .push(RuleDesc {
            protocol: RuleProtocol::Udp,
            cidr: Some((Ipv4Addr::new(10, 0, 0, 0), 24)),
            ports: Some((1000, 2000)),
        });
    Arc::make_mut(&mut d.ports[1]).security.egress = Some(vec![RuleDesc {
        protocol: RuleProtocol::Icmp,
        cidr: None,
        ports: None,
    }]);
    let c = compile(&d);
    let db = flows_of(&c, &Owner::new(OwnerKind::Port, "db"));
    let ingress: Vec<_> = db
        .iter()
        .filter(|f| f.table == table::INGRESS_RULES)
        .collect();
    assert_eq!(ingress.len(), ranges::port_range_masks(1000, 2000).len());
    for f in &ingress {
        let src = f.matches.get(Field::Ipv4Src).unwrap();
        assert_eq!(src.mask, Some(0xffff_ff00));
    }
    let egress: Vec<_> = db
        .iter()
        .filter(|f| f.table == table::EGRESS_RULES)
        .collect();
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0].matches.get(Field::IpProto).unwrap().value, 1);
}

#[test]
fn arp_responder_for_ports_and_endpoints() {
    let c = compile(&two_tenants());
    let arp: Vec<_> = c
        .flows
        .iter()
        .filter(|f| f.flow.table == table::ARP_RESPONDER && f.flow.priority == 100)
        .collect();
    // web, db, other (late has no ofport) and the remote endpoint.
    assert_eq!(arp.len(), 4);
    let remote = arp.iter().find(|f| f.owner.id == "remote").unwrap();
    let text = remote.flow.to_string();
    assert!(text.contains("arp_tpa=10.0.0.99"), "{text}");
    assert!(
        text.contains("in_port") || text.contains("IN_PORT"),
        "{text}"
    );
}

#[test]
fn endpoints_go_through_the_tunnel() {
    let c = compile(&two_tenants());
    let l2: Vec<_> = flows_of(&c, &Owner::new(OwnerKind::Endpoint, "remote"))
        .into_iter()
        .filter(|f| f.table == table::L2_FORWARD)
        .collect();
    assert_eq!(l2.len(), 1);
    assert_eq!(
        l2[0].instructions.apply,
        vec![
            Action::set_field(Field::TunnelId, 100),
            Action::set_field(
                Field::TunIpv4Dst,
                u64::from(u32::from(Ipv4Addr::new(192, 168, 0, 2)))
            ),
            Action::output(10),
        ]
    );
    // Without a tunnel port, no endpoint flows (and no tunnel classification).
    let mut d = two_tenants();
    d.tunnel_ofports.clear();
    let c = compile(&d);
    assert!(flows_of(&c, &Owner::new(OwnerKind::Endpoint, "remote")).is_empty());
    assert!(flows_of(&c, &Owner::new(OwnerKind::Network, "net-a")).is_empty());
}

#[test]
fn qos_adds_a_meter_on_classification() {
    let mut d = two_tenants();
    Arc::make_mut(&mut d.ports[1]).qos = Some(QosDesc {
        max_rate_kbps: 10_000,
        burst_kbits: 800,
    });
    let c = compile(&d);
    assert_eq!(c.meters.len(), 1);
    let classify = flows_of(&c, &Owner::new(OwnerKind::Port, "db"))
        .into_iter()
        .find(|f| f.table == table::CLASSIFY)
        .unwrap();
    assert_eq!(classify.instructions.meter, Some(meter_id(2)));
}

fn flows(c: &CompiledPipeline) -> Vec<Flow> {
    c.flows.iter().map(|f| f.flow.clone()).collect()
}

#[test]
fn diff_of_equal_sets_is_empty_and_leaves_foreign_flows() {
    let c = compile(&two_tenants());
    let mut observed = flows(&c);
    let foreign = Flow {
        table: 99,
        priority: 5,
        cookie: 0x1234,
        matches: Match::new().with(Field::InPort, 7),
        instructions: Instructions::default(),
        ..Flow::default()
    };
    observed.push(foreign);
    let plan = plan_flows(c.flows.iter().map(|f| &f.flow), &observed);
    assert!(plan.is_empty(), "{:?}", plan.describe());
}

#[test]
fn diff_adds_modifies_and_deletes_only_what_changed() {
    let before = compile(&two_tenants());
    let mut d = two_tenants();
    d.ports.retain(|p| p.id != "db");
    Arc::make_mut(&mut d.ports[0]).ofport = Some(11); // web moved to another representor
    let after = compile(&d);
    let plan = plan_flows(after.flows.iter().map(|f| &f.flow), &flows(&before));
    assert!(!plan.delete.is_empty());
    assert!(plan.delete.iter().all(|f| is_agent_cookie(f.cookie)));
    // Unchanged owners (other, remote, the skeleton) are not touched.
    let untouched = [
        Owner::new(OwnerKind::Port, "other").cookie(),
        Owner::new(OwnerKind::Endpoint, "remote").cookie(),
        Owner::pipeline().cookie(),
    ];
    for f in plan.add.iter().chain(&plan.modify).chain(&plan.delete) {
        assert!(!untouched.contains(&f.cookie), "touched {f}");
    }
    // Applying the plan to the old set yields the new one.
    let mut state: Vec<Flow> = flows(&before);
    for del in &plan.delete {
        state.retain(|f| {
            (f.table, f.priority, &f.matches) != (del.table, del.priority, &del.matches)
        });
    }
    for f in plan.add.iter().chain(&plan.modify) {
        state.retain(|o| (o.table, o.priority, &o.matches) != (f.table, f.priority, &f.matches));
        state.push(f.clone());
    }
    let mut want = flows(&after);
    let sort = |v: &mut Vec<Flow>| v.sort_by_key(|f| f.to_string());
    sort(&mut state);
    sort(&mut want);
    assert_eq!(state, want);
}

/// A key dumped twice (a switch never does): kept when desired, both
/// deleted when not, as a diff by key set would.
#[test]
fn diff_of_a_key_dumped_twice() {
    let c = compile(&two_tenants());
    let mut observed = flows(&c);
    observed.push(observed[0].clone());
    let plan = plan_flows(c.flows.iter().map(|f| &f.flow), &observed);
    assert!(plan.is_empty(), "{:?}", plan.describe());
    let plan = plan_flows(c.flows.iter().skip(1).map(|f| &f.flow), &observed);
    assert!(plan.add.is_empty() && plan.modify.is_empty());
    assert_eq!(plan.delete, vec![observed[0].clone(), observed[0].clone()]);
}

#[test]
fn diff_modifies_changed_actions_and_replaces_foreign_cookie() {
    let c = compile(&two_tenants());
    let mut observed = flows(&c);
    observed[0].instructions.goto_table = Some(77);
    observed[1].cookie = 0x42;
    let plan = plan_flows(c.flows.iter().map(|f| &f.flow), &observed);
    assert_eq!(plan.modify, vec![c.flows[0].flow.clone()]);
    assert_eq!(plan.add, vec![c.flows[1].flow.clone()]);
    assert!(plan.delete.is_empty());
    let mods = plan.flow_mods();
    assert_eq!(mods.len(), 2);
}

#[test]
fn table_misses_drop_except_after_the_arp_responder() {
    let c = compile(&two_tenants());
    for t in table::ALL {
        let miss: Vec<_> = c
            .flows
            .iter()
            .filter(|f| f.flow.table == t && f.flow.priority == 0)
            .collect();
        assert_eq!(miss.len(), 1, "table {t}");
        let ins = &miss[0].flow.instructions;
        if t == table::ARP_RESPONDER {
            assert_eq!(ins.goto_table, Some(table::EGRESS_CT));
        } else {
            assert!(ins.is_drop(), "table {t}: {}", miss[0].flow);
        }
    }
}

/// A packet as the pipeline's first two tables see it: header fields and
/// tunnel metadata (absent = 0, as OVS has it).
type Packet = BTreeMap<Field, u64>;

fn matches_packet(m: &Match, pkt: &Packet) -> bool {
    m.fields().iter().all(|f| {
        let mask = f.mask.unwrap_or(f.field.full_mask());
        pkt.get(&f.field).copied().unwrap_or(0) & mask == f.value
    })
}

/// Runs `pkt` through tables 0 (classify) and 10 (anti-spoof) as OVS would
/// (highest priority match, write_metadata, goto) and returns the network
/// tag it carries when it reaches L2 forwarding, or `None` if it is dropped
/// (or leaves for anywhere else) before.
fn admitted_to_l2(c: &CompiledPipeline, pkt: &Packet) -> Option<u64> {
    let mut pkt = pkt.clone();
    let mut t = table::CLASSIFY;
    loop {
        let flow = c
            .flows
            .iter()
            .map(|f| &f.flow)
            .filter(|f| f.table == t && matches_packet(&f.matches, &pkt))
            .max_by_key(|f| f.priority)?;
        if let Some(md) = &flow.instructions.write_metadata {
            pkt.insert(Field::Metadata, md.value & md.mask);
        }
        match flow.instructions.goto_table {
            Some(table::L2_FORWARD) => return pkt.get(&Field::Metadata).copied(),
            Some(next) if next > t && next <= table::ANTI_SPOOF => t = next,
            _ => return None,
        }
    }
}

fn from_tunnel(vni: u32, vtep: [u8; 4], src_mac: [u8; 6], src_ip: [u8; 4]) -> Packet {
    BTreeMap::from([
        (Field::InPort, 10),
        (Field::TunnelId, u64::from(vni)),
        (
            Field::TunIpv4Src,
            u64::from(u32::from(Ipv4Addr::from(vtep))),
        ),
        (Field::EthSrc, mac(src_mac)),
        (Field::EthType, 0x0800),
        (Field::Ipv4Src, u64::from(u32::from(Ipv4Addr::from(src_ip)))),
    ])
}

/// TENANCY.md invariant 2 (overlay): the VNI alone admits nothing; a packet
/// from a tunnel enters a network only from the VTEP of one of its
/// endpoints, with that endpoint's MAC and IP.
#[test]
fn tunnel_ingress_only_from_the_networks_endpoints() {
    let mut d = two_tenants();
    // globex has an endpoint of its own behind another DPU.
    d.endpoints.push(EndpointDesc {
        id: "globex-far".into(),
        tenant: "globex".into(),
        network: "net-b".into(),
        mac: [0x02, 0, 0, 0, 8, 8],
        ips: vec![Ipv4Addr::new(10, 0, 0, 88)],
        vtep: Ipv4Addr::new(192, 168, 0, 3),
    });
    let c = compile(&d);
    let (peer_mac, peer_ip) = ([0x02, 0, 0, 0, 9, 9], [10, 0, 0, 99]);
    let vtep = [192, 168, 0, 2];

    // The legitimate peer gets in, tagged with its network.
    assert_eq!(
        admitted_to_l2(&c, &from_tunnel(100, vtep, peer_mac, peer_ip)),
        Some(100)
    );
    assert_eq!(
        admitted_to_l2(
            &c,
            &from_tunnel(200, [192, 168, 0, 3], [0x02, 0, 0, 0, 8, 8], [10, 0, 0, 88])
        ),
        Some(200)
    );
    // Right VNI, unknown VTEP, even impersonating the peer: dropped.
    for unknown in [[192, 168, 0, 66], [0, 0, 0, 0], [10, 0, 0, 99]] {
        assert_eq!(
            admitted_to_l2(&c, &from_tunnel(100, unknown, peer_mac, peer_ip)),
            None,
            "from {unknown:?}"
        );
    }
    // Another network's VTEP with this network's VNI: dropped.
    assert_eq!(
        admitted_to_l2(&c, &from_tunnel(100, [192, 168, 0, 3], peer_mac, peer_ip)),
        None
    );
    // The peer's VTEP with another network's VNI: dropped.
    assert_eq!(
        admitted_to_l2(&c, &from_tunnel(200, vtep, peer_mac, peer_ip)),
        None
    );
    // Known VTEP, but a MAC or IP that is not one of its endpoints'.
    assert_eq!(
        admitted_to_l2(&c, &from_tunnel(100, vtep, [0x02, 0, 0, 0, 0, 1], peer_ip)),
        None,
        "a local port's MAC from the tunnel"
    );
    assert_eq!(
        admitted_to_l2(&c, &from_tunnel(100, vtep, peer_mac, [10, 0, 0, 1])),
        None
    );
    // Non-IP (here ARP) from the tunnel: the remote DPU answers ARP itself.
    let mut arp = from_tunnel(100, vtep, peer_mac, peer_ip);
    arp.insert(Field::EthType, 0x0806);
    assert_eq!(admitted_to_l2(&c, &arp), None);
    // Unknown VNI.
    assert_eq!(
        admitted_to_l2(&c, &from_tunnel(999, vtep, peer_mac, peer_ip)),
        None
    );
    // A local port is unaffected.
    let local = BTreeMap::from([
        (Field::InPort, 2),
        (Field::EthSrc, mac([0x02, 0, 0, 0, 0, 2])),
        (Field::EthType, 0x0800),
        (
            Field::Ipv4Src,
            u64::from(u32::from(Ipv4Addr::new(10, 0, 0, 2))),
        ),
    ]);
    let class = c
        .flows
        .iter()
        .find(|f| f.owner.id == "db" && f.flow.table == table::CLASSIFY)
        .unwrap();
    assert!(matches_packet(&class.flow.matches, &local));
}

#[test]
fn tunnel_flows_match_the_vtep_per_endpoint_address() {
    let c = compile(&two_tenants());
    let remote = flows_of(&c, &Owner::new(OwnerKind::Endpoint, "remote"));
    let spoof: Vec<_> = remote
        .iter()
        .filter(|f| f.table == table::ANTI_SPOOF)
        .collect();
    assert_eq!(spoof.len(), 1, "one flow per endpoint IP");
    let text = spoof[0].to_string();
    for want in [
        "in_port=10",
        "dl_src=02:00:00:00:09:09",
        "nw_src=10.0.0.99",
        "tun_src=192.168.0.2",
        "metadata=0x64",
        "goto_table:40",
    ] {
        assert!(text.contains(want), "{want} missing in {text}");
    }
    // The network's own tunnel flow only classifies; it never reaches L2.
    let net = flows_of(&c, &Owner::new(OwnerKind::Network, "net-a"));
    assert_eq!(net.len(), 1);
    assert_eq!(net[0].table, table::CLASSIFY);
    assert_eq!(net[0].instructions.goto_table, Some(table::ANTI_SPOOF));
    // Every flow that admits tunnel traffic past anti-spoofing names a VTEP.
    for f in c.flows.iter().map(|f| &f.flow) {
        if f.matches.get(Field::InPort).map(|m| m.value) == Some(10)
            && f.instructions.goto_table == Some(table::L2_FORWARD)
        {
            assert!(f.matches.get(Field::TunIpv4Src).is_some(), "{f}");
        }
    }
}

#[test]
fn endpoint_of_another_tenant_or_without_vtep_admits_nothing() {
    let mut d = two_tenants();
    d.endpoints[0].tenant = "globex".into();
    let c = compile(&d);
    assert!(flows_of(&c, &Owner::new(OwnerKind::Endpoint, "remote")).is_empty());
    let mut d = two_tenants();
    d.endpoints[0].vtep = Ipv4Addr::UNSPECIFIED;
    let c = compile(&d);
    assert!(flows_of(&c, &Owner::new(OwnerKind::Endpoint, "remote")).is_empty());
    assert_eq!(
        admitted_to_l2(
            &c,
            &from_tunnel(100, [0, 0, 0, 0], [0x02, 0, 0, 0, 9, 9], [10, 0, 0, 99])
        ),
        None
    );
}

mod incremental {
    use super::*;
    use crate::switch::plan::{plan_meters, plan_meters_of};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    type NetGen = (usize, u32, u8, u8);
    type PortGen = (usize, usize, u8, Option<u32>, bool, bool);
    type EndpointGen = (usize, usize, u8, u8, u8);

    const NETS: usize = 4;

    /// A desired state built from generated parts. `valid` keeps what the
    /// API guarantees (network ids and VNIs unique, ofports unique);
    /// otherwise collisions are left in (the whole-state fallback).
    fn desired(
        valid: bool,
        nets: &[NetGen],
        ports: &[PortGen],
        endpoints: &[EndpointGen],
        tunnels: (Option<u32>, Option<u32>),
    ) -> DesiredNetworking {
        let encaps = [Encap::Vxlan, Encap::Geneve, Encap::Local];
        let tenants = ["acme", "globex"];
        let mut d = DesiredNetworking::default();
        let mut ids = std::collections::HashSet::new();
        let mut vnis = std::collections::HashSet::new();
        for &(i, vni, encap, tenant) in nets {
            if valid && (!ids.insert(i) || !vnis.insert(vni)) {
                continue;
            }
            d.networks.push(net(
                &format!("n{i}"),
                tenants[usize::from(tenant) % 2],
                vni,
                encaps[usize::from(encap) % 3],
            ));
        }
        let mut ofports = std::collections::HashSet::new();
        for &(i, n, last, ofport, qos, rule) in ports {
            // Network index NETS is one that never exists.
            let mut p = port(&format!("p{i}"), &format!("n{n}"), last, ofport);
            if valid && ofport.is_some_and(|o| !ofports.insert(o)) {
                p.ofport = None;
            }
            if qos {
                p.qos = Some(QosDesc {
                    max_rate_kbps: 1000 + u32::from(last),
                    burst_kbits: 100,
                });
            }
            if rule {
                p.security.ingress.push(RuleDesc {
                    protocol: RuleProtocol::Tcp,
                    cidr: Some((Ipv4Addr::new(10, 0, 0, 0), 24)),
                    ports: Some((80, 90)),
                });
                p.security.egress = Some(vec![]);
            }
            d.ports.push(Arc::new(p));
        }
        for &(i, n, tenant, last, vtep) in endpoints {
            d.endpoints.push(EndpointDesc {
                id: format!("e{i}"),
                tenant: tenants[usize::from(tenant) % 2].into(),
                network: format!("n{n}"),
                mac: [0x02, 0, 0, 0, 9, last],
                ips: vec![Ipv4Addr::new(10, 0, 1, last)],
                vtep: Ipv4Addr::new(192, 168, 0, vtep),
            });
        }
        if let Some(t) = tunnels.0 {
            d.tunnel_ofports.insert(Encap::Vxlan, t);
        }
        if let Some(t) = tunnels.1 {
            d.tunnel_ofports.insert(Encap::Geneve, t);
        }
        d
    }

    fn state() -> impl Strategy<Value = (bool, DesiredNetworking)> {
        (
            prop::bool::weighted(0.85),
            prop::collection::vec((0..NETS, 1u32..6, 0u8..3, 0u8..2), 0..5),
            prop::collection::vec(
                (
                    0usize..8,
                    0..=NETS,
                    1u8..5,
                    prop::option::weighted(0.8, 1u32..12),
                    any::<bool>(),
                    any::<bool>(),
                ),
                0..10,
            ),
            prop::collection::vec((0usize..4, 0..=NETS, 0u8..2, 1u8..4, 0u8..3), 0..5),
            (prop::option::of(20u32..22), prop::option::of(21u32..23)),
        )
            .prop_map(|(valid, n, p, e, t)| (valid, desired(valid, &n, &p, &e, t)))
    }

    fn sorted<'a>(flows: impl IntoIterator<Item = &'a OwnedFlow>) -> Vec<String> {
        let mut v: Vec<String> = flows.into_iter().map(|f| format!("{f:?}")).collect();
        v.sort();
        v
    }

    fn sorted_plan(p: &FlowPlan) -> [Vec<String>; 3] {
        let s = |v: &[Flow]| {
            let mut v: Vec<String> = v.iter().map(|f| format!("{f:?}")).collect();
            v.sort();
            v
        };
        [s(&p.add), s(&p.modify), s(&p.delete)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The incremental compiler gives exactly `compile(desired)` (flows
        /// with owners as a multiset, meters, skipped ports) after every
        /// step of a random sequence of desired states (networks, ports,
        /// endpoints, ofports and tunnels added, removed and changed), and
        /// when it names the changed segments, their plan against their
        /// previous flows is the whole diff against the previous flow set.
        #[test]
        fn incremental_equals_whole_compile_and_diff(
            states in prop::collection::vec(state(), 1..8)
        ) {
            let mut inc = IncrementalPipeline::new();
            let mut installed: Vec<Flow> = Vec::new();
            let mut meters_installed = BTreeMap::new();
            for (valid, d) in &states {
                let whole = compile(d);
                let changes = inc.update(d);
                prop_assert_eq!(sorted(inc.flows()), sorted(&whole.flows));
                prop_assert_eq!(inc.flow_count(), whole.flows.len());
                prop_assert_eq!(inc.meters(), &whole.meters);
                prop_assert_eq!(&inc.skipped_ports(), &whole.skipped_ports);
                skipped_port_says(&inc, d, &whole.skipped_ports)?;
                prop_assert_eq!(inc.flow_counts(), whole.flow_counts());
                let want = plan_flows(whole.flows.iter().map(|f| &f.flow), &installed);
                match &changes {
                    Changes::Segments(segs) => {
                        let got = inc.plan_segments(segs);
                        prop_assert_eq!(sorted_plan(&got), sorted_plan(&want));
                        let ids = inc.meter_ids_of(segs);
                        prop_assert_eq!(
                            plan_meters_of(inc.meters(), &meters_installed, &ids),
                            plan_meters(&whole.meters, &meters_installed)
                        );
                    }
                    Changes::All => prop_assert!(
                        !valid || installed.is_empty() || states.iter().any(|(v, _)| !v)
                    ),
                }
                installed = whole.flows.iter().map(|f| f.flow.clone()).collect();
                meters_installed = whole.meters.clone();
            }
        }
    }

    /// `inc.skipped_port` says of each port of `d` what `skipped` (the
    /// whole compile's) says of its id, when the port ids are distinct.
    fn skipped_port_says(
        inc: &IncrementalPipeline,
        d: &DesiredNetworking,
        skipped: &BTreeMap<String, String>,
    ) -> Result<(), TestCaseError> {
        let ids: BTreeSet<&str> = d.ports.iter().map(|p| p.id.as_str()).collect();
        if ids.len() == d.ports.len() {
            for p in &d.ports {
                prop_assert_eq!(inc.skipped_port(p), skipped.get(&p.id).map(String::as_str));
            }
        }
        Ok(())
    }

    /// `desired` with its ofports hidden: each port's moved out of the
    /// way (+1000, or 5000 for none, in some ports) and no tunnel ports, so
    /// only [`unhide`] finds them.
    fn hidden(d: &DesiredNetworking) -> DesiredNetworking {
        let mut h = d.clone();
        for (i, p) in h.ports.iter_mut().enumerate() {
            let p = Arc::make_mut(p);
            p.ofport = match p.ofport {
                Some(o) => Some(o + 1000),
                None => (i % 2 == 0).then_some(5000),
            };
        }
        h.tunnel_ofports.clear();
        h
    }

    /// The ofport [`hidden`] moved out of the way.
    fn unhide(p: &PortDesc) -> Option<u32> {
        p.ofport.filter(|o| *o < 5000).map(|o| o - 1000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Resolving the ofports in place (`update_resolving`, only the
        /// changed networks' ports copied) gives what `update` of the
        /// resolved copy gives: the same changes, flows, meters, skipped
        /// ports and flow counts (kept up to date per segment), after
        /// every step.
        #[test]
        fn update_resolving_equals_update_of_resolved_copy(
            states in prop::collection::vec(state(), 1..8)
        ) {
            let mut copy = IncrementalPipeline::new();
            let mut in_place = IncrementalPipeline::new();
            for (_, d) in &states {
                let want = copy.update(d);
                let h = hidden(d);
                prop_assert_eq!(&resolved(&h, unhide, &d.tunnel_ofports), d);
                let got = in_place.update_resolving(&h, unhide, &d.tunnel_ofports);
                prop_assert_eq!(got, want);
                prop_assert_eq!(sorted(in_place.flows()), sorted(copy.flows()));
                prop_assert_eq!(in_place.meters(), copy.meters());
                prop_assert_eq!(in_place.skipped_ports(), copy.skipped_ports());
                prop_assert_eq!(in_place.owner_flows(), &compile(d).flow_counts());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// When only ofports move (ports' and tunnels'), updating just the
        /// networks whose ports or tunnel moved gives what the whole update
        /// gives: the same changed segments, flows, meters, skipped ports
        /// and flow counts, and a per-segment plan equal to the whole diff
        /// (or `None`, and the whole update is used, when ofports collide).
        #[test]
        fn update_networks_equals_whole_update_when_only_ofports_move(
            first in state(),
            moves in prop::collection::vec(
                (
                    prop::collection::vec((0usize..10, prop::option::weighted(0.7, 1u32..14)), 0..4),
                    prop::option::of(prop::option::of(20u32..22)),
                ),
                1..6,
            )
        ) {
            let mut whole = IncrementalPipeline::new();
            let mut only = IncrementalPipeline::new();
            let mut d = normalized(first.1);
            whole.update(&d);
            only.update(&d);
            for (ports, vxlan) in &moves {
                let before = d.clone();
                for &(i, o) in ports {
                    if let Some(p) = d.ports.get_mut(i) {
                        Arc::make_mut(p).ofport = o;
                    }
                }
                if let Some(t) = vxlan {
                    match t {
                        Some(t) => d.tunnel_ofports.insert(Encap::Vxlan, *t),
                        None => d.tunnel_ofports.remove(&Encap::Vxlan),
                    };
                }
                let mut networks: std::collections::BTreeSet<&str> = d
                    .ports
                    .iter()
                    .zip(&before.ports)
                    .filter(|(a, b)| a.ofport != b.ofport)
                    .map(|(a, _)| a.network.as_str())
                    .collect();
                if d.tunnel_ofports != before.tunnel_ofports {
                    networks.extend(
                        d.networks
                            .iter()
                            .filter(|n| n.encap == Encap::Vxlan)
                            .map(|n| n.id.as_str()),
                    );
                }
                let installed: Vec<Flow> = whole.flows().map(|f| f.flow.clone()).collect();
                let want = whole.update(&d);
                let got = match only.update_networks(&d, None, &networks, |p| p.ofport, &d.tunnel_ofports) {
                    Some(got) => {
                        prop_assert_eq!(&got, &want);
                        got
                    }
                    None => only.update(&d),
                };
                equals_whole(&only, &got, &d, &installed)?;
            }
        }
    }

    /// `d`'s ports grouped by network, in id order.
    fn by_network(d: &DesiredNetworking) -> crate::pipeline::PortsByNetwork {
        let mut groups: BTreeMap<String, Vec<Arc<PortDesc>>> = BTreeMap::new();
        for p in &d.ports {
            groups.entry(p.network.clone()).or_default().push(p.clone());
        }
        groups.into_iter().map(|(n, v)| (n, v.into())).collect()
    }

    /// `only`, updated to `d` with `got` as its changes, is what the whole
    /// compile of `d` gives (flows, meters, skipped ports, flow counts), and
    /// its per-segment plan against `installed` is the whole diff.
    fn equals_whole(
        only: &IncrementalPipeline,
        got: &Changes,
        d: &DesiredNetworking,
        installed: &[Flow],
    ) -> Result<(), TestCaseError> {
        let compiled = compile(d);
        prop_assert_eq!(sorted(only.flows()), sorted(&compiled.flows));
        prop_assert_eq!(only.meters(), &compiled.meters);
        prop_assert_eq!(only.skipped_ports(), compiled.skipped_ports.clone());
        skipped_port_says(only, d, &compiled.skipped_ports)?;
        prop_assert_eq!(only.owner_flows(), &compiled.flow_counts());
        if let Changes::Segments(segs) = got {
            let plan = only.plan_segments(segs);
            let all = plan_flows(compiled.flows.iter().map(|f| &f.flow), installed);
            prop_assert_eq!(sorted_plan(&plan), sorted_plan(&all));
        }
        Ok(())
    }

    /// `d` as the agent hands it over: networks, ports and endpoints in
    /// strictly ascending id order (of two of one id, the first kept).
    fn normalized(mut d: DesiredNetworking) -> DesiredNetworking {
        d.networks.sort_by(|a, b| a.id.cmp(&b.id));
        d.networks.dedup_by(|a, b| a.id == b.id);
        d.ports.sort_by(|a, b| a.id.cmp(&b.id));
        d.ports.dedup_by(|a, b| a.id == b.id);
        d.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        d.endpoints.dedup_by(|a, b| a.id == b.id);
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// From one desired state to the next, anything changing (networks,
        /// ports and endpoints added, removed, changed or moved between
        /// networks, ofports and tunnels moved), updating only the networks
        /// `changed_networks` names gives what the whole update gives: the
        /// same changed segments, flows, meters, skipped ports and flow
        /// counts, and a per-segment plan equal to the whole diff (or
        /// `None`, and the whole update is used, when ids, VNIs or ofports
        /// collide). Unchanged states name no network.
        #[test]
        fn update_networks_equals_whole_update_for_the_changed_networks(
            states in prop::collection::vec(state(), 1..8)
        ) {
            let mut whole = IncrementalPipeline::new();
            let mut only = IncrementalPipeline::new();
            let mut prev = DesiredNetworking::default();
            let (mut used, mut total) = (0, 0);
            for (_, d) in &states {
                let d = normalized(d.clone());
                let networks = changed_networks(&prev, &d).expect("ids ascending");
                let same = changed_networks(&d, &d).expect("ids ascending");
                prop_assert!(same.is_empty());
                let installed: Vec<Flow> = whole.flows().map(|f| f.flow.clone()).collect();
                let want = whole.update(&d);
                let names: std::collections::BTreeSet<&str> =
                    networks.iter().map(String::as_str).collect();
                total += 1;
                // Every other update with the ports by network, as the
                // agent gives them.
                let by = (total % 2 == 0).then(|| by_network(&d));
                let got = match only.update_networks(&d, by.as_ref(), &names, |p| p.ofport, &d.tunnel_ofports) {
                    Some(got) => {
                        used += 1;
                        prop_assert_eq!(&got, &want);
                        got
                    }
                    None => only.update(&d),
                };
                equals_whole(&only, &got, &d, &installed)?;
                if let Changes::Segments(segs) = &got {
                    for id in segs.keys() {
                        prop_assert!(networks.contains(id), "{} changed but not named", id);
                    }
                }
                prev = d;
            }
            // The first update always takes the whole path.
            prop_assert!(used < total);
        }
    }

    /// A port moved to another network keeps its ofport, so its
    /// classification flow keeps its key: the per-segment plan modifies it
    /// (as the whole diff does) instead of deleting and re-adding it.
    #[test]
    fn port_moved_between_networks_is_modified_not_readded() {
        let mut inc = IncrementalPipeline::new();
        let before = two_tenants();
        inc.update(&before);
        let mut after = before.clone();
        Arc::make_mut(&mut after.ports[1]).network = "net-b".into();
        let Changes::Segments(segs) = inc.update(&after) else {
            panic!("expected per-segment changes");
        };
        assert_eq!(segs.len(), 2);
        let plan = inc.plan_segments(&segs);
        let whole = plan_flows(
            compile(&after).flows.iter().map(|f| &f.flow),
            &flows(&compile(&before)),
        );
        assert_eq!(sorted_plan(&plan), sorted_plan(&whole));
        assert!(
            plan.modify
                .iter()
                .any(|f| f.table == table::CLASSIFY && f.matches.get(Field::InPort).is_some()),
            "{:?}",
            plan.describe()
        );
    }

    /// A change to one network recompiles only that network.
    #[test]
    fn only_the_changed_network_is_recompiled() {
        let mut inc = IncrementalPipeline::new();
        assert_eq!(inc.update(&two_tenants()), Changes::All);
        let Changes::Segments(none) = inc.update(&two_tenants()) else {
            panic!("expected per-segment changes");
        };
        assert!(none.is_empty());
        let mut d = two_tenants();
        Arc::make_mut(&mut d.ports[2])
            .ips
            .push(Ipv4Addr::new(10, 0, 0, 33));
        let Changes::Segments(segs) = inc.update(&d) else {
            panic!("expected per-segment changes");
        };
        assert_eq!(segs.keys().collect::<Vec<_>>(), ["net-b"]);
    }
}
